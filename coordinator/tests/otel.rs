//! OpenTelemetry export end to end: an OTLP/gRPC receiver in this test, a real 2-worker
//! `coordinator launch` pointed at it with the standard variables, and checks that the spans
//! (names, parent-child structure across the three processes, resource attributes) and the
//! metrics arrived.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

use common::{repo, worker_bin};

/// Every metric anvil exports: (name, kind, who exports it).
const METRICS: &[(&str, Kind, &str)] = &[
    ("anvil.train.loss", Kind::Gauge, "anvil-worker"),
    ("anvil.train.learning_rate", Kind::Gauge, "anvil-worker"),
    ("anvil.train.grad_norm", Kind::Gauge, "anvil-worker"),
    ("anvil.train.cells_per_second", Kind::Gauge, "anvil-worker"),
    ("anvil.train.tokens_per_second", Kind::Gauge, "anvil-worker"),
    ("anvil.step.duration", Kind::Seconds, "anvil-worker"),
    ("anvil.allreduce.duration", Kind::Seconds, "anvil-worker"),
    ("anvil.workers.alive", Kind::Gauge, "anvil-coordinator"),
    ("anvil.restarts", Kind::Counter, "anvil-coordinator"),
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Gauge,
    /// A histogram in seconds.
    Seconds,
    Counter,
}

/// The name the OpenTelemetry Collector's Prometheus exporter gives a metric.
fn prometheus_name(name: &str, kind: Kind) -> String {
    let base = name.replace('.', "_");
    match kind {
        Kind::Gauge => base,
        Kind::Seconds => format!("{base}_seconds"),
        Kind::Counter => format!("{base}_total"),
    }
}

/// What the receiver got.
#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().traces.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Starts the receiver on a free local port.
fn start_receiver(rt: &tokio::runtime::Runtime) -> (Receiver, SocketAddr) {
    let receiver = Receiver::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = receiver.clone();
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(svc.clone()))
            .add_service(MetricsServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (receiver, addr)
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        kv.value.as_ref().and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            Some(any_value::Value::IntValue(i)) => Some(i.to_string()),
            Some(any_value::Value::DoubleValue(d)) => Some(d.to_string()),
            Some(any_value::Value::BoolValue(b)) => Some(b.to_string()),
            _ => None,
        })
    })
}

/// One received span with its process's resource.
#[derive(Debug, Clone)]
struct SpanSeen {
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    service: String,
    rank: Option<String>,
    run_id: Option<String>,
    host: Option<String>,
    attrs: Vec<KeyValue>,
}

fn spans(r: &Received) -> Vec<SpanSeen> {
    let mut out = Vec::new();
    for req in &r.traces {
        for rs in &req.resource_spans {
            let res = rs
                .resource
                .as_ref()
                .map(|r| r.attributes.clone())
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push(SpanSeen {
                        name: s.name.clone(),
                        trace: s.trace_id.clone(),
                        id: s.span_id.clone(),
                        parent: s.parent_span_id.clone(),
                        service: attr(&res, "service.name").unwrap_or_default(),
                        rank: attr(&res, "anvil.rank"),
                        run_id: attr(&res, "anvil.run_id"),
                        host: attr(&res, "host.name"),
                        attrs: s.attributes.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The last value of each gauge and the count of each histogram, by (metric, service, rank).
fn metrics(r: &Received) -> HashMap<(String, String, Option<String>), f64> {
    let mut out = HashMap::new();
    for req in &r.metrics {
        for rm in &req.resource_metrics {
            let res = rm
                .resource
                .as_ref()
                .map(|r| r.attributes.clone())
                .unwrap_or_default();
            let service = attr(&res, "service.name").unwrap_or_default();
            let rank = attr(&res, "anvil.rank");
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let value = match &m.data {
                        Some(metric::Data::Gauge(g)) => g.data_points.last().map(number),
                        Some(metric::Data::Sum(s)) => s.data_points.last().map(number),
                        Some(metric::Data::Histogram(h)) => {
                            h.data_points.last().map(|p| p.count as f64)
                        }
                        _ => None,
                    };
                    if let Some(v) = value {
                        out.insert((m.name.clone(), service.clone(), rank.clone()), v);
                    }
                }
            }
        }
    }
    out
}

fn number(p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> f64 {
    match p.value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => f64::NAN,
    }
}

#[test]
fn a_two_worker_launch_exports_its_span_tree_and_metrics() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (receiver, addr) = start_receiver(&rt);
    let run_dir = std::env::temp_dir().join(format!("anvil-otel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.current_dir(repo())
        .args([
            "launch",
            "--config",
            "configs/quickstart.yaml",
            "--nodes",
            "2",
        ])
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--worker-bin")
        .arg(worker_bin())
        .args(["--max-steps", "4"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_SDK_DISABLED");
    common::set_tiny(
        &mut cmd,
        &["training.batch_size=16", "training.log_every_n_steps=1"],
    );
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "launch failed:\n{stderr}");

    // Every process flushes at exit; give the receiver a moment for the last request.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let r = receiver.0.lock().unwrap();
        let s = spans(&r);
        let done = s.iter().filter(|s| s.name == "run").count() == 1
            && s.iter()
                .filter(|s| s.name == "epoch")
                .map(|s| s.rank.clone())
                .collect::<HashSet<_>>()
                .len()
                == 2;
        if done || Instant::now() > deadline {
            break s;
        }
        drop(r);
        std::thread::sleep(Duration::from_millis(100));
    };
    let by_id: HashMap<&[u8], &SpanSeen> = seen.iter().map(|s| (s.id.as_slice(), s)).collect();
    let parent_name = |s: &SpanSeen| by_id.get(s.parent.as_slice()).map(|p| p.name.clone());
    let named = |n: &str| seen.iter().filter(|s| s.name == n).collect::<Vec<_>>();

    let run = named("run");
    assert_eq!(run.len(), 1, "one run span; got {:?}", names(&seen));
    let run = run[0];
    assert_eq!(run.service, "anvil-coordinator");
    assert!(run.parent.is_empty(), "the run span is the root");
    let run_id = run.run_id.clone().expect("anvil.run_id on the coordinator");
    assert!(run.host.as_deref().is_some_and(|h| !h.is_empty()));

    let generation = named("generation");
    assert_eq!(generation.len(), 1, "one generation (no restart)");
    assert_eq!(parent_name(generation[0]).as_deref(), Some("run"));

    // The workers' spans continue the coordinator's trace.
    let epochs = named("epoch");
    for rank in ["0", "1"] {
        let mine: Vec<_> = epochs
            .iter()
            .filter(|s| s.rank.as_deref() == Some(rank))
            .collect();
        assert!(!mine.is_empty(), "no epoch span from rank {rank}");
        for e in mine {
            assert_eq!(e.service, "anvil-worker");
            assert_eq!(e.run_id.as_deref(), Some(run_id.as_str()));
            assert_eq!(
                e.trace, run.trace,
                "rank {rank}'s epoch is in the run's trace"
            );
            assert_eq!(
                e.parent, generation[0].id,
                "epoch's parent is the generation"
            );
        }
    }
    let steps = named("step");
    assert_eq!(steps.len(), 2 * 4, "4 steps on each of 2 ranks");
    for s in &steps {
        assert_eq!(parent_name(s).as_deref(), Some("epoch"));
        assert!(
            attr(&s.attrs, "loss").is_some(),
            "step span records its loss"
        );
    }
    for phase in ["data", "forward", "backward", "all-reduce", "optimizer"] {
        let spans = named(phase);
        assert!(spans.len() >= steps.len(), "{phase}: {} spans", spans.len());
        for s in spans {
            assert_eq!(
                parent_name(s).as_deref(),
                Some("step"),
                "{phase} under step"
            );
        }
    }
    let checkpoints = named("checkpoint");
    assert!(!checkpoints.is_empty(), "a checkpoint span");
    for c in checkpoints {
        assert_eq!(c.rank.as_deref(), Some("0"), "rank 0 writes checkpoints");
        let p = parent_name(c).unwrap_or_default();
        assert!(p == "step" || p == "epoch", "checkpoint under {p}");
    }

    let m = metrics(&receiver.0.lock().unwrap());
    let get = |name: &str, service: &str, rank: Option<&str>| {
        m.get(&(name.into(), service.into(), rank.map(String::from)))
            .copied()
    };
    for &(name, kind, service) in METRICS {
        let ranks: &[Option<&str>] = if service == "anvil-worker" {
            &[Some("0"), Some("1")]
        } else {
            &[None]
        };
        for &rank in ranks {
            let v = get(name, service, rank);
            match (name, kind) {
                ("anvil.restarts", _) => assert_eq!(v, Some(0.0), "{name}"),
                ("anvil.workers.alive", _) => assert_eq!(v, Some(2.0), "{name}"),
                // Histograms: the count, one per optimizer step.
                (_, Kind::Seconds) => assert_eq!(v, Some(4.0), "{name} from rank {rank:?}"),
                _ => assert!(
                    v.is_some_and(|v| v.is_finite() && v > 0.0),
                    "{name} from rank {rank:?}: {v:?}"
                ),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&run_dir);
}

fn names(s: &[SpanSeen]) -> Vec<String> {
    s.iter().map(|s| s.name.clone()).collect()
}

#[test]
fn an_unreachable_collector_costs_a_warning_not_the_run() {
    // Nothing listens on the port: export fails fast and the run finishes as usual.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run_dir = std::env::temp_dir().join(format!("anvil-otel-off-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    let start = Instant::now();
    let mut cmd = Command::new(worker_bin());
    cmd.current_dir(repo())
        .args([
            "train",
            "--config",
            "configs/quickstart.yaml",
            "--max-steps",
            "3",
        ])
        .arg("--run-dir")
        .arg(&run_dir);
    common::set_tiny(&mut cmd, &[]);
    let out = cmd
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env_remove("OTEL_SDK_DISABLED")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "train failed:\n{stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        stderr.contains("WARN") && stderr.contains("export"),
        "a warning about the failed export:\n{stderr}"
    );
    assert!(stderr.contains("after 3 steps"), "{stderr}");
    assert!(
        !stderr.contains("GlobalSet"),
        "no OpenTelemetry info noise:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&run_dir);
}

#[test]
fn the_grafana_dashboard_shows_every_exported_metric_and_no_other() {
    let path = repo().join("deploy/grafana/dashboards/anvil.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            if let Some(e) = t["expr"].as_str() {
                exprs.push(e.to_string());
            }
        }
    }
    let expected: HashSet<String> = METRICS
        .iter()
        .map(|&(n, k, _)| prometheus_name(n, k))
        .collect();
    // Every anvil_* series an expression reads must be one that is exported.
    let mut used = HashSet::new();
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("anvil_")
                && !word.starts_with("anvil_run_id")
                && word != "anvil_rank"
            {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .filter(|b| expected.contains(*b))
                    .unwrap_or(word);
                assert!(
                    expected.contains(base),
                    "the dashboard reads {word}, which nothing exports"
                );
                used.insert(base.to_string());
            }
        }
    }
    let missing: Vec<_> = expected.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "exported but not on the dashboard: {missing:?}"
    );
}
