//! Supervising one generation of workers: start them (or wait for them to register), follow
//! their heartbeats and metrics, forward checkpoint-and-stop on a signal, and tell how the
//! generation ended.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use proto::v1::{coordinator_message, worker_message, CheckpointAndStop, CoordinatorMessage};
use run::progress::{Progress, Step};
use tokio::sync::mpsc;

use super::args::LaunchArgs;
use super::control::{ControlPlane, Placement};
use super::open::OpenRun;
use super::procs::{kill_all, sibling_executable, LastWords, WorkerCommand, WorkerProc};
use super::signals::Signals;
use super::telemetry::RunWatch;
use crate::server::Event;

/// How one generation of workers ended.
pub enum GenerationEnd {
    Finished,
    Preempted,
    /// A worker died or went silent: restart the group.
    Lost {
        rank: usize,
        why: String,
    },
    /// A worker reported an error of its own (bad data, diverged): stop the run.
    Failed {
        rank: usize,
        message: String,
    },
    /// The user insisted (second signal).
    Aborted,
}

/// What the coordinator knows of one worker of the current generation.
pub struct WorkerView {
    last_seen: Instant,
    /// It reported losing a peer; its own exit is not the cause.
    peer_lost: bool,
    pub finished: Option<proto::v1::Finished>,
    pub host: String,
    pub last_words: LastWords,
}

impl WorkerView {
    fn new() -> Self {
        WorkerView {
            last_seen: Instant::now(),
            peer_lost: false,
            finished: None,
            host: String::new(),
            last_words: Default::default(),
        }
    }

    /// Silent for longer than `timeout` without having finished.
    fn silent(&self, timeout: Duration) -> bool {
        self.finished.is_none() && self.last_seen.elapsed() > timeout
    }
}

/// A generation that has ended: how, what was seen of each worker, and its local processes
/// (still running unless they exited).
pub struct Generation {
    pub end: GenerationEnd,
    pub views: Vec<WorkerView>,
    pub procs: Vec<WorkerProc>,
    /// The generation's trace span; ends when the generation is concluded.
    pub span: tracing::Span,
}

/// Follows a run's generations of workers, from the control plane's events.
pub struct Supervisor {
    pub plane: ControlPlane,
    pub placement: Placement,
    pub progress: Progress,
    pub started: Instant,
    pub watch: RunWatch,
    signals: Signals,
    worker_bin: PathBuf,
    heartbeat_timeout: Duration,
    register_timeout: Duration,
    /// The exit code of a run stopped at a checkpoint before its end (`--preempted-exit-code`).
    pub preempted_exit_code: u8,
    /// "fp32" or "bf16" (the run record's), said when the workers start.
    grad_reduce_dtype: String,
}

impl Supervisor {
    pub fn new(
        args: &LaunchArgs,
        plane: ControlPlane,
        placement: Placement,
        run: &OpenRun,
    ) -> anyhow::Result<Self> {
        Ok(Supervisor {
            plane,
            placement,
            watch: RunWatch::new(&run.record.run_id, run.record.world),
            signals: Signals::new()?,
            progress: {
                let mut p = Progress::stderr("anvil: ");
                if matches!(run.cfg, run::RunConfig::Pose(_)) {
                    p.set_unit("frames");
                }
                p
            },
            started: Instant::now(),
            worker_bin: match &args.worker_bin {
                Some(p) => p.clone(),
                None => sibling_executable("worker")?,
            },
            heartbeat_timeout: Duration::from_secs_f64(args.heartbeat_timeout),
            register_timeout: Duration::from_secs_f64(args.register_timeout),
            preempted_exit_code: args.preempted_exit_code,
            grad_reduce_dtype: run.record.grad_reduce_dtype.clone(),
        })
    }

    /// Runs the run's current generation until it ends.
    pub async fn supervise(&mut self, run: &mut OpenRun) -> anyhow::Result<Generation> {
        run.set_status("running")?;
        let world = run.record.world;
        let generation = run.record.generation;
        let span = self.watch.generation(generation);
        self.plane
            .hub
            .set_trace_parent(run::telemetry::trace_parent(&span));
        let (exit_tx, mut exits) = mpsc::unbounded_channel::<(usize, String)>();
        let mut views: Vec<WorkerView> = (0..world).map(|_| WorkerView::new()).collect();
        let mut procs: Vec<WorkerProc> = Vec::new();
        if !self.placement.external {
            let command = WorkerCommand {
                bin: &self.worker_bin,
                addr: self.plane.addr,
                token: &run.token,
                tls: self.plane.tls.as_ref(),
                local_workers: world,
                generation,
            };
            for (rank, view) in views.iter().enumerate() {
                procs.push(command.spawn(
                    rank,
                    run.dir.worker_log_path(rank),
                    view.last_words.clone(),
                    exit_tx.clone(),
                )?);
            }
        }
        drop(exit_tx);
        let registration_deadline = Instant::now() + self.register_timeout;
        let mut all_registered = false;
        let mut preempting = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));

        let end = loop {
            tokio::select! {
                Some(event) = self.plane.events.recv() => {
                    if let Some(end) = self.on_event(event, generation, &mut views, &mut all_registered, preempting) {
                        break end;
                    }
                }
                Some((rank, status)) = exits.recv() => {
                    if views[rank].finished.is_none() && !views[rank].peer_lost {
                        break self.on_exit(rank, status, &mut views).await;
                    }
                }
                _ = tick.tick() => {
                    if !all_registered {
                        if Instant::now() > registration_deadline {
                            let missing = self.plane.hub.missing_ranks();
                            kill_all(&mut procs).await;
                            bail!("not every worker registered within {:.0}s; ranks that never arrived: {missing:?}", self.register_timeout.as_secs_f64());
                        }
                    } else if let Some(rank) = (0..world).find(|r| views[*r].silent(self.heartbeat_timeout)) {
                        self.watch.workers_alive(world - 1);
                        break GenerationEnd::Lost { rank, why: format!("no heartbeat for {:.1}s", views[rank].last_seen.elapsed().as_secs_f64()) };
                    }
                    if all_registered {
                        self.watch.workers_alive(views.iter().filter(|v| !v.silent(self.heartbeat_timeout)).count());
                    }
                    self.progress.tick();
                }
                signal = self.signals.next() => {
                    if preempting {
                        self.progress.log("second signal: stopping workers now");
                        break GenerationEnd::Aborted;
                    }
                    preempting = true;
                    self.progress.log(&format!("{signal}: asking workers to checkpoint and stop (send again to stop at once)"));
                    self.plane.hub.broadcast(CoordinatorMessage { body: Some(coordinator_message::Body::CheckpointAndStop(CheckpointAndStop {})) });
                }
            }
        };
        self.progress.clear();
        Ok(Generation {
            end,
            views,
            procs,
            span,
        })
    }

    /// Follows one event of the control plane; Some when it ends the generation.
    fn on_event(
        &mut self,
        event: Event,
        generation: u32,
        views: &mut [WorkerView],
        all_registered: &mut bool,
        preempting: bool,
    ) -> Option<GenerationEnd> {
        let world = views.len();
        match event {
            Event::Registered {
                rank,
                generation: g,
                host,
                pid,
            } if g == generation => {
                views[rank].last_seen = Instant::now();
                views[rank].host = host.clone();
                self.progress.log(&format!(
                    "worker rank {rank} registered from {host} (pid {pid})"
                ));
                if self.plane.hub.missing_ranks().is_empty() && !*all_registered {
                    *all_registered = true;
                    self.watch.workers_alive(world);
                    for v in views.iter_mut() {
                        v.last_seen = Instant::now();
                    }
                    let dtype = &self.grad_reduce_dtype;
                    self.progress.log(&format!(
                        "all {world} workers registered; training (gradients averaged in {dtype})"
                    ));
                }
            }
            Event::Message(m) if m.generation == generation && (m.rank as usize) < world => {
                let rank = m.rank as usize;
                views[rank].last_seen = Instant::now();
                match m.body {
                    Some(worker_message::Body::Step(s)) if rank == 0 => {
                        let lost = views
                            .iter()
                            .filter(|v| v.silent(self.heartbeat_timeout))
                            .count();
                        self.progress.workers(world - lost, world);
                        self.progress.step(Step {
                            epoch: s.epoch,
                            step: s.step,
                            total_steps: s.total_steps,
                            loss: s.loss,
                            lr: s.lr,
                            cells_per_s: s.cells_per_s,
                            tokens_per_s: s.tokens_per_s,
                        });
                    }
                    Some(worker_message::Body::Validation(v)) if rank == 0 => {
                        self.progress.validation(v.epoch, v.loss);
                    }
                    Some(worker_message::Body::Checkpoint(c)) => {
                        self.progress
                            .log(&format!("checkpoint at step {}: {}", c.step, c.path));
                    }
                    Some(worker_message::Body::Log(l)) if rank == 0 => {
                        self.progress.log(&format!("[rank {rank}] {}", l.message));
                    }
                    Some(worker_message::Body::Finished(f)) => {
                        views[rank].finished = Some(f);
                        if views.iter().all(|v| v.finished.is_some()) {
                            // A worker's own signal (one evicted pod) stops the run as the
                            // coordinator's does: the workers vote on it in the all-reduce.
                            let interrupted = views
                                .iter()
                                .any(|v| v.finished.as_ref().is_some_and(|f| f.interrupted));
                            return Some(if preempting || interrupted {
                                GenerationEnd::Preempted
                            } else {
                                GenerationEnd::Finished
                            });
                        }
                    }
                    Some(worker_message::Body::Failed(f)) if f.peer_lost => {
                        // Collateral of another worker's loss: find that one.
                        views[rank].peer_lost = true;
                    }
                    Some(worker_message::Body::Failed(f)) => {
                        return Some(GenerationEnd::Failed {
                            rank,
                            message: f.message,
                        });
                    }
                    _ => {}
                }
            }
            Event::SessionClosed {
                rank,
                generation: g,
            } if g == generation && views[rank].finished.is_none() => {
                return Some(GenerationEnd::Lost {
                    rank,
                    why: "its session with the coordinator closed".into(),
                });
            }
            _ => {}
        }
        None
    }

    /// A local worker exited before finishing: a failure it reported, or a loss.
    async fn on_exit(
        &mut self,
        rank: usize,
        status: String,
        views: &mut [WorkerView],
    ) -> GenerationEnd {
        // Give a reported failure a moment to arrive before calling it a loss.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut failed = None;
        while let Ok(ev) = self.plane.events.try_recv() {
            if let Event::Message(m) = ev {
                match m.body {
                    Some(worker_message::Body::Failed(f)) if f.peer_lost => {
                        if let Some(v) = views.get_mut(m.rank as usize) {
                            v.peer_lost = true;
                        }
                    }
                    Some(worker_message::Body::Failed(f)) => {
                        failed = Some((m.rank as usize, f.message));
                    }
                    _ => {}
                }
            }
        }
        match failed {
            Some((rank, message)) => GenerationEnd::Failed { rank, message },
            None => GenerationEnd::Lost {
                rank,
                why: format!("the process exited ({status})"),
            },
        }
    }
}
