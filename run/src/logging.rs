//! The log subscriber of both binaries: `tracing` events (from `data`, the worker's ring,
//! checkpoint resolution, ...) to stderr, one plain line each, at `info` and above unless
//! `RUST_LOG` says otherwise (`RUST_LOG=debug`, `RUST_LOG=warn,data=info`). Colours only on a
//! terminal, so a Slurm log or a worker's log file holds plain text.
//!
//! The subscriber is a [`tracing_subscriber::registry`] with the filter and the formatting
//! layer on it; further layers (an OpenTelemetry exporter, say) go on the same registry.

use std::io::{IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::progress::clear_stderr_line;

/// The filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info";

/// Installs the process's log subscriber; call once, first thing in `main`. A second call, or
/// one after another subscriber was installed, changes nothing.
pub fn init() {
    let (filter, bad_env) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new(DEFAULT_FILTER),
                Some(format!("{spec:?}: {e}")),
            ),
        },
        _ => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let fmt_layer = tracing_subscriber::fmt::layer()
        .with_writer(Stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .try_init()
        .is_ok();
    if let (true, Some(why)) = (installed, bad_env) {
        tracing::warn!("RUST_LOG is not a valid filter ({why}); logging at {DEFAULT_FILTER}");
    }
}

/// Stderr that first erases a progress line standing on it.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = StderrLine;

    fn make_writer(&'a self) -> Self::Writer {
        StderrLine
    }
}

struct StderrLine;

impl Write for StderrLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        clear_stderr_line(&mut err);
        err.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
