//! What a worker tells OpenTelemetry (see `run::telemetry`): the span tree of its training —
//! epoch > step > {data, forward, backward, all-reduce, optimizer}, validation and
//! checkpoint — continuing the coordinator's generation span when it has one, and the training
//! metrics. Free when nothing is exported: disabled spans and no-op instruments.

use opentelemetry::metrics::{Gauge, Histogram, Meter};
use run::telemetry::TRACE_TARGET;
use tracing::field::Empty;
use tracing::{info_span, Span};

/// The open spans of a training run and its instruments.
pub struct TrainTrace {
    /// W3C traceparent of the coordinator's generation span ("" when training alone).
    trace_parent: String,
    epoch: Span,
    step: Span,
    meters: Meters,
}

struct Meters {
    loss: Gauge<f64>,
    learning_rate: Gauge<f64>,
    grad_norm: Gauge<f64>,
    cells_per_second: Gauge<f64>,
    tokens_per_second: Gauge<f64>,
    step_duration: Histogram<f64>,
    allreduce_duration: Histogram<f64>,
}

impl Meters {
    fn new(meter: &Meter) -> Self {
        // No unit on the gauges: their names say it, and a Prometheus exporter would append
        // it again (`..._per_second_per_second`).
        let gauge = |name: &'static str, what: &'static str| {
            meter.f64_gauge(name).with_description(what).build()
        };
        let seconds = |name: &'static str, what: &'static str| {
            meter
                .f64_histogram(name)
                .with_description(what)
                .with_unit("s")
                .build()
        };
        Meters {
            loss: gauge(
                "anvil.train.loss",
                "Training loss, mean over the logged steps",
            ),
            learning_rate: gauge("anvil.train.learning_rate", "Learning rate"),
            grad_norm: gauge(
                "anvil.train.grad_norm",
                "Global gradient norm before clipping",
            ),
            cells_per_second: gauge(
                "anvil.train.cells_per_second",
                "Cells trained per second, all workers",
            ),
            tokens_per_second: gauge(
                "anvil.train.tokens_per_second",
                "Real (unpadded) tokens trained per second, all workers",
            ),
            step_duration: seconds("anvil.step.duration", "Wall time of one optimizer step"),
            allreduce_duration: seconds(
                "anvil.allreduce.duration",
                "Wait for the gradient all-reduce after backward, per optimizer step",
            ),
        }
    }
}

impl TrainTrace {
    pub fn new(trace_parent: &str) -> Self {
        TrainTrace {
            trace_parent: trace_parent.to_string(),
            epoch: Span::none(),
            step: Span::none(),
            meters: Meters::new(&opentelemetry::global::meter("anvil")),
        }
    }

    pub fn start_epoch(&mut self, epoch: u64) {
        let span = info_span!(target: TRACE_TARGET, "epoch", epoch);
        run::telemetry::adopt_parent(&span, &self.trace_parent);
        self.epoch = span;
    }

    pub fn end_epoch(&mut self) {
        self.step = Span::none();
        self.epoch = Span::none();
    }

    /// The span of the optimizer step `global_step` (counting from 0), opened by its first
    /// call and closed by [`TrainTrace::end_step`].
    pub fn step(&mut self, global_step: u64) -> &Span {
        if self.step.is_none() {
            self.step = info_span!(
                target: TRACE_TARGET,
                parent: &self.epoch,
                "step",
                step = global_step + 1,
                loss = Empty
            );
        }
        &self.step
    }

    /// A span for waiting on the next batch, inside the step it is for.
    pub fn data(&mut self, global_step: u64) -> Span {
        info_span!(target: TRACE_TARGET, parent: self.step(global_step), "data")
    }

    /// The step or, between steps, the epoch: where a checkpoint or validation belongs.
    pub fn current(&self) -> &Span {
        if self.step.is_none() {
            &self.epoch
        } else {
            &self.step
        }
    }

    /// Closes the step's span and records its durations.
    pub fn end_step(&mut self, loss: f64, seconds: f64, allreduce_seconds: f64) {
        self.step.record("loss", loss);
        self.step = Span::none();
        self.meters.step_duration.record(seconds, &[]);
        self.meters
            .allreduce_duration
            .record(allreduce_seconds, &[]);
    }

    /// The values of a logged step (means since the last one).
    pub fn logged(&self, loss: f64, lr: f64, grad_norm: f64, cells_per_s: f64, tokens_per_s: f64) {
        let m = &self.meters;
        m.loss.record(loss, &[]);
        m.learning_rate.record(lr, &[]);
        if grad_norm.is_finite() {
            m.grad_norm.record(grad_norm, &[]);
        }
        m.cells_per_second.record(cells_per_s, &[]);
        m.tokens_per_second.record(tokens_per_s, &[]);
    }
}
