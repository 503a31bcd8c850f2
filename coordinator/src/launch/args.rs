//! `coordinator launch`'s command line.

use std::path::PathBuf;

use clap::Args;

use crate::tls::TlsArgs;

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// scModelForge YAML config to train (not needed with --resume)
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        required_unless_present = "resume"
    )]
    pub config: Option<PathBuf>,

    /// Override one config field, typed and validated like the file (repeatable)
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub overrides: Vec<String>,

    /// Number of nodes (machines) in the run
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub nodes: usize,

    /// Workers per node, one per device [default: the devices per node the config asks for
    /// (`training.num_gpus`, `trainer_config.trainer_devices` or `trainer_device_indices`),
    /// else 1]
    #[arg(long, value_name = "K")]
    pub workers_per_node: Option<usize>,

    /// Do not start workers; wait for N x K workers started elsewhere (Slurm, Kubernetes, by
    /// hand) to register with `worker --coordinator HOST:PORT`. Implied under Slurm/Kubernetes.
    #[arg(long)]
    pub external: bool,

    /// Start workers locally even when running under Slurm or Kubernetes
    #[arg(long, conflicts_with = "external")]
    pub local: bool,

    /// Address the coordinator listens on for workers [default: 127.0.0.1:0 for local
    /// workers, 0.0.0.0:50051 for external ones]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,

    /// Directory of the run: resolved config, token, worker logs, checkpoints, and the metric
    /// loggers' version_N/ (metrics.csv, TensorBoard events)
    /// [default: runs/<run_name>]
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,

    /// Continue the run in RUN_DIR (after the coordinator was stopped or killed) from its last
    /// complete checkpoint
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
    pub resume: Option<PathBuf>,

    /// With --config and --run-dir: when RUN_DIR already holds a run of the same config,
    /// continue it from its last complete checkpoint (as --resume would) instead of refusing; a
    /// finished one exits 0 at once. For schedulers that restart the coordinator with the same
    /// command line (`coordinator deploy k8s` runs it as a Kubernetes Job)
    #[arg(long, requires_all = ["config", "run_dir"])]
    pub resume_existing: bool,

    /// Use the run token in FILE (e.g. a mounted Kubernetes Secret) instead of a fresh random
    /// one; workers must present the same token. The run directory's token file is set to it
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Exit with CODE instead of 0 when the run stopped at a checkpoint before its end (a signal
    /// to the coordinator or to any worker). A Kubernetes Job restarts a coordinator that exits
    /// non-zero and counts one that exits 0 as done for good, so `coordinator deploy k8s` sets
    /// this
    #[arg(long, default_value_t = 0, value_name = "CODE")]
    pub preempted_exit_code: u8,

    /// Seconds without a heartbeat after which a worker counts as lost
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub heartbeat_timeout: f64,

    /// Seconds to wait for every worker to register
    #[arg(long, default_value_t = 120.0, value_name = "SECS")]
    pub register_timeout: f64,

    /// Group restarts from the last complete checkpoint before giving up
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub max_restarts: u32,

    /// The format gradients travel in between workers: fp32 (exact), or bf16 (half the bytes,
    /// as PyTorch DDP's bf16_compress_hook: averaged gradients are rounded to bf16). Step
    /// totals stay fp32. A resumed run keeps the dtype it was started with unless this is given
    /// [default: fp32]
    #[arg(long, value_name = "DTYPE", value_parser = ["fp32", "bf16"])]
    pub grad_reduce_dtype: Option<String>,

    /// Stop after this many optimizer steps (for smoke tests)
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// The worker executable [default: `worker` beside this executable]
    #[arg(long, value_name = "PATH", hide = true)]
    pub worker_bin: Option<PathBuf>,
}
