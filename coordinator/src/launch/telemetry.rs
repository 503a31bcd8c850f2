//! What the coordinator tells OpenTelemetry (see `run::telemetry`): the `run` span, one
//! `generation` span per start of the workers (their spans continue it through the
//! traceparent they receive at registration), a `restart` span per group restart, and the
//! metrics `anvil.workers.alive` and `anvil.restarts`. All of it is free when nothing is
//! exported.

use opentelemetry::metrics::{Counter, Gauge};
use run::telemetry::TRACE_TARGET;
use tracing::{info_span, Span};

/// The run id is a resource attribute of every series (`run::telemetry`), so the data points
/// carry no attributes of their own.
pub struct RunWatch {
    run: Span,
    workers_alive: Gauge<u64>,
    restarts: Counter<u64>,
}

impl RunWatch {
    pub fn new(run_id: &str, world: usize) -> Self {
        let meter = opentelemetry::global::meter("anvil");
        let restarts = meter
            .u64_counter("anvil.restarts")
            .with_description("Group restarts after a lost worker")
            .build();
        // Zero from the start, so a dashboard shows the series before the first restart.
        restarts.add(0, &[]);
        RunWatch {
            run: info_span!(target: TRACE_TARGET, "run", anvil.run_id = run_id, world),
            workers_alive: meter
                .u64_gauge("anvil.workers.alive")
                .with_description("Workers of the current generation with a fresh heartbeat")
                .build(),
            restarts,
        }
    }

    /// The span of one generation of workers; it ends when the returned span is dropped.
    pub fn generation(&self, generation: u32) -> Span {
        info_span!(target: TRACE_TARGET, parent: &self.run, "generation", generation)
    }

    /// The span of a restart (and one more on `anvil.restarts`).
    pub fn restart(&self, restart: u32, lost_rank: usize, why: &str) -> Span {
        self.restarts.add(1, &[]);
        info_span!(target: TRACE_TARGET, parent: &self.run, "restart", restart, lost_rank, why)
    }

    pub fn workers_alive(&self, alive: usize) {
        self.workers_alive.record(alive as u64, &[]);
    }
}
