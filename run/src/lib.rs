//! The run-directory contract: what the coordinator and the workers both know about a run
//! without either linking the other's code.
//!
//! - [`family`]: a run's config of either family (single-cell or pose) as the coordinator sees it;
//! - [`naming`]: a run's name and where its directory and checkpoints go;
//! - [`checkpoint`]: a checkpoint's manifest, its verification and which one a run resumes from;
//! - [`dir`]: the coordinator's state files in the run directory (config, token, run record,
//!   worker logs);
//! - [`versions`]: the `version_N` directories the metric loggers write (Lightning's layout);
//! - [`progress`]: the one progress printer for `coordinator launch` and `worker train`;
//! - [`logging`]: the log subscriber both binaries install;
//! - [`support`]: the config sections this build cannot train yet, refused at start;
//! - [`telemetry`]: OpenTelemetry export of traces and metrics (OTLP/gRPC), when asked for.
//!
//! The worker writes and reads checkpoint tensors itself (`worker::checkpoint`); this crate
//! holds only names, files and checks, so the coordinator stays free of compute.

pub mod checkpoint;
pub mod dir;
pub mod family;
pub mod logging;
pub mod naming;
pub mod progress;
pub mod support;
pub mod telemetry;
pub mod versions;

pub use dir::{RunDir, RunRecord};
pub use family::RunConfig;
pub use naming::{checkpoint_root, default_run_dir, resolve_run_name, run_name};
