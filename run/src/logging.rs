//! The log subscriber of both binaries: `tracing` events (from `data`, the worker's ring,
//! checkpoint resolution, ...) to stderr, one plain line each, at `info` and above unless
//! `RUST_LOG` says otherwise (`RUST_LOG=debug`, `RUST_LOG=warn,data=info`). Colours only on a
//! terminal, so a Slurm log or a worker's log file holds plain text.
//!
//! The subscriber is a [`tracing_subscriber::registry`] with two layers: the formatting layer
//! behind its filter, and a slot for the OpenTelemetry layer that [`crate::telemetry::start`]
//! fills once the process knows its run and rank (spans of target
//! [`TRACE_TARGET`](crate::telemetry::TRACE_TARGET) and warnings; the console never shows
//! those spans).

use std::any::TypeId;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::progress::clear_stderr_line;
use crate::telemetry::TRACE_TARGET;

/// The filter when `RUST_LOG` is unset (the OpenTelemetry crates' own info lines are noise).
const DEFAULT_FILTER: &str = "info,opentelemetry=warn";

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
    let filter = filter.add_directive(
        format!("{TRACE_TARGET}=off")
            .parse()
            .expect("a constant directive"),
    );
    let fmt_layer = tracing_subscriber::fmt::layer()
        .with_writer(Stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let installed = tracing_subscriber::registry()
        .with(OtelSlot.with_filter(filter_fn(exported)))
        .with(fmt_layer)
        .try_init()
        .is_ok();
    if let (true, Some(why)) = (installed, bad_env) {
        tracing::warn!("RUST_LOG is not a valid filter ({why}); logging at {DEFAULT_FILTER}");
    }
}

type OtelLayer =
    tracing_opentelemetry::OpenTelemetryLayer<Registry, opentelemetry_sdk::trace::Tracer>;

/// The OpenTelemetry layer, once [`export_spans`] set it.
static OTEL: OnceLock<OtelLayer> = OnceLock::new();

/// Sends the exported spans to `tracer` from now on (first call wins).
pub(crate) fn export_spans(tracer: opentelemetry_sdk::trace::Tracer) {
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false);
    let _ = OTEL.set(layer);
    // `exported` said no to every call site seen so far; ask it again.
    tracing::callsite::rebuild_interest_cache();
}

/// Forwards to the OpenTelemetry layer once there is one. (Unlike a `reload` layer it forwards
/// `downcast_raw`, which setting a span's remote parent needs.)
struct OtelSlot;

/// What the OpenTelemetry layer is shown: the spans of [`TRACE_TARGET`] and warnings, so the
/// other `debug!`/`trace!` call sites stay off; nothing before export starts (the spans are
/// then disabled and cost next to nothing).
fn exported(meta: &Metadata<'_>) -> bool {
    if OTEL.get().is_none() {
        false
    } else if meta.is_span() {
        meta.target() == TRACE_TARGET
    } else {
        *meta.level() <= Level::WARN
    }
}

impl Layer<Registry> for OtelSlot {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, Registry>) {
        if let Some(l) = OTEL.get() {
            l.on_new_span(attrs, id, ctx)
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, Registry>) {
        if let Some(l) = OTEL.get() {
            l.on_record(id, values, ctx)
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, Registry>) {
        if let Some(l) = OTEL.get() {
            l.on_follows_from(id, follows, ctx)
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, Registry>) {
        if let Some(l) = OTEL.get() {
            l.on_event(event, ctx)
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, Registry>) {
        if let Some(l) = OTEL.get() {
            l.on_enter(id, ctx)
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, Registry>) {
        if let Some(l) = OTEL.get() {
            l.on_exit(id, ctx)
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, Registry>) {
        if let Some(l) = OTEL.get() {
            l.on_close(id, ctx)
        }
    }

    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: the inner layer lives in a static, so the pointer it hands out stays valid.
        OTEL.get().and_then(|l| unsafe { l.downcast_raw(id) })
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
