//! OpenTelemetry: traces and metrics over OTLP/gRPC, on when the standard variables ask for it.
//!
//! A process calls [`start`] once it knows who it is (run id, rank). When neither
//! `OTEL_EXPORTER_OTLP_ENDPOINT` nor a per-signal `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`
//! is set (or `OTEL_SDK_DISABLED=true`), nothing is exported and spans cost what a disabled
//! `tracing` span costs. Otherwise the spans of target [`TRACE_TARGET`] (and warnings inside
//! them) go to the collector through the layer [`crate::logging`] installed, and the
//! instruments of `opentelemetry::global::meter` through a periodic reader.
//!
//! Export never holds training up: spans queue in a bounded batch (dropped when full), every
//! export has the OTLP timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by default), and shutdown
//! waits at most [`SHUTDOWN_TIMEOUT`]. An unreachable collector costs warnings in the log.
//!
//! Resource attributes: `service.name` (`OTEL_SERVICE_NAME`, else `anvil-coordinator` or
//! `anvil-worker`), `anvil.run_id`, `anvil.rank` (workers), `host.name`, plus anything in
//! `OTEL_RESOURCE_ATTRIBUTES`. Traces cross processes through a W3C `traceparent` string
//! ([`trace_parent`] on the coordinator, [`adopt_parent`] in the worker).

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, SpanExporter};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of the spans that are exported (run, generation, epoch, step, ...).
/// The console log leaves them out, so log lines keep their plain form.
pub const TRACE_TARGET: &str = "anvil_trace";

/// How long a process waits at exit for the last spans and metrics to leave.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// How often metrics are exported when `OTEL_METRIC_EXPORT_INTERVAL` does not say: often
/// enough for a live training dashboard (the OpenTelemetry default of 60 s is not).
const DEFAULT_METRIC_INTERVAL: Duration = Duration::from_secs(10);

/// Who is exporting.
pub struct Identity<'a> {
    /// `anvil-coordinator` or `anvil-worker`; `OTEL_SERVICE_NAME` wins when set.
    pub service: &'static str,
    pub run_id: &'a str,
    pub rank: Option<usize>,
}

/// The exporters of a process; dropping it flushes and stops them (bounded wait).
pub struct Telemetry {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
    /// The exporters' gRPC channels live on this runtime (an Option so that drop can shut it
    /// down without blocking: a Telemetry may be dropped inside async code).
    runtime: Option<tokio::runtime::Runtime>,
}

/// Whether the environment asks for export.
pub fn requested() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true");
    !disabled
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
}

/// Starts exporting when the environment asks for it; None (and a warning on failure)
/// otherwise. Call once per process, before the spans it should export are created.
pub fn start(who: &Identity) -> Option<Telemetry> {
    if !requested() {
        return None;
    }
    match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL") {
        Ok(p) if !p.trim().is_empty() && p.trim() != "grpc" => tracing::warn!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={p}: anvil exports OTLP over gRPC only; point \
             OTEL_EXPORTER_OTLP_ENDPOINT at the collector's gRPC port (usually 4317)"
        ),
        _ => {}
    }
    match try_start(who) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("OpenTelemetry export is off: {e}");
            None
        }
    }
}

fn try_start(who: &Identity) -> Result<Telemetry, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otel-export")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start its runtime: {e}"))?;
    let _in_runtime = runtime.enter();
    let resource = resource(who);
    let spans = SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("span exporter: {e}"))?;
    let tracer = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let metrics = MetricExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("metric exporter: {e}"))?;
    let interval = std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_METRIC_INTERVAL);
    let reader = PeriodicReader::builder(metrics)
        .with_interval(interval)
        .build();
    let meter = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_meter_provider(meter.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    crate::logging::export_spans(tracer.tracer("anvil"));
    tracing::info!(
        "OpenTelemetry: exporting traces and metrics to {}",
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap_or_else(|_| "the per-signal OTLP endpoints".into())
    );
    Ok(Telemetry {
        tracer,
        meter,
        runtime: Some(runtime),
    })
}

fn resource(who: &Identity) -> Resource {
    let mut b = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        b = b.with_service_name(who.service);
    }
    b = b
        .with_attribute(KeyValue::new("anvil.run_id", who.run_id.to_string()))
        .with_attribute(KeyValue::new("host.name", host_name()));
    if let Some(rank) = who.rank {
        b = b.with_attribute(KeyValue::new("anvil.rank", rank as i64));
    }
    b.build()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Spans first: a training run's last spans end just before this.
        if let Err(e) = self.tracer.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!("OpenTelemetry: not every span was exported at exit: {e}");
        }
        if let Err(e) = self.meter.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!("OpenTelemetry: the last metrics were not exported at exit: {e}");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The W3C `traceparent` of `span`, for a process that continues its trace; empty when
/// nothing is exported.
pub fn trace_parent(span: &tracing::Span) -> String {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` (not yet entered) a child of the remote span `traceparent` names; a no-op
/// for an empty string or when nothing is exported.
pub fn adopt_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() || span.is_disabled() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}
