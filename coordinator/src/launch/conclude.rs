//! After a generation: a finished or preempted run's summary, a stop, a failure, or a lost
//! worker, which restarts the group from the last complete checkpoint while restarts remain.

use std::process::ExitCode;
use std::time::Duration;

use proto::v1::{coordinator_message, CoordinatorMessage, Stop};
use run::progress::Summary;

use super::open::OpenRun;
use super::procs::{kill_all, wait_all};
use super::supervise::{Generation, GenerationEnd, Supervisor, WorkerView};

/// What follows a generation.
pub enum Next {
    /// A new generation, from the last complete checkpoint.
    Restart,
    /// The run is over; the coordinator exits with this code.
    Exit(ExitCode),
}

impl Supervisor {
    pub async fn conclude(
        &mut self,
        generation: Generation,
        run: &mut OpenRun,
        max_restarts: u32,
    ) -> anyhow::Result<Next> {
        let Generation {
            end,
            views,
            mut procs,
            span: _generation_span,
        } = generation;
        let code = match end {
            GenerationEnd::Finished | GenerationEnd::Preempted => {
                wait_all(&mut procs, Duration::from_secs(10)).await;
                let preempted = matches!(end, GenerationEnd::Preempted);
                run.set_status(if preempted { "preempted" } else { "finished" })?;
                let consistent = self.finished(run, &views, preempted);
                match (consistent, preempted) {
                    (false, _) => ExitCode::FAILURE,
                    (true, true) => ExitCode::from(self.preempted_exit_code),
                    (true, false) => ExitCode::SUCCESS,
                }
            }
            GenerationEnd::Aborted => {
                kill_all(&mut procs).await;
                run.set_status("aborted")?;
                self.progress.log(&format!(
                    "stopped. Checkpoints already written are intact; continue with\n  coordinator launch --resume {}",
                    run.dir.path.display()
                ));
                ExitCode::from(130)
            }
            GenerationEnd::Failed { rank, message } => {
                self.plane.hub.broadcast(CoordinatorMessage {
                    body: Some(coordinator_message::Body::Stop(Stop {
                        reason: format!("rank {rank} failed"),
                    })),
                });
                wait_all(&mut procs, Duration::from_secs(5)).await;
                kill_all(&mut procs).await;
                run.set_status("failed")?;
                let host = self.plane.hub.host_of(rank).unwrap_or_else(|| "?".into());
                eprintln!("error: worker rank {rank} on {host} failed: {message}");
                ExitCode::FAILURE
            }
            GenerationEnd::Lost { rank, why } => {
                kill_all(&mut procs).await;
                self.report_loss(&views[rank], rank, &why);
                if run.record.restarts < max_restarts {
                    let _span = self.watch.restart(run.record.restarts + 1, rank, &why);
                    self.restart(run, max_restarts)?;
                    return Ok(Next::Restart);
                }
                run.set_status("failed")?;
                eprintln!(
                    "error: giving up after {} restart(s) (--max-restarts {max_restarts})",
                    run.record.restarts
                );
                ExitCode::FAILURE
            }
        };
        Ok(Next::Exit(code))
    }

    /// The summary of a finished (or preempted) run, and the check that every replica holds
    /// the same parameters (false when they differ).
    fn finished(&mut self, run: &OpenRun, views: &[WorkerView], preempted: bool) -> bool {
        let finished: Vec<&proto::v1::Finished> =
            views.iter().filter_map(|v| v.finished.as_ref()).collect();
        let last = self.progress.last().unwrap_or_default();
        self.progress.summary(&Summary {
            outcome: if preempted { "preempted" } else { "finished" },
            steps: finished.iter().map(|f| f.steps).max().unwrap_or(0),
            seconds: self.started.elapsed().as_secs_f64(),
            cells_per_s: last.cells_per_s,
            tokens_per_s: last.tokens_per_s,
            best_val_loss: finished
                .iter()
                .map(|f| f.best_val_loss)
                .filter(|l| l.is_finite())
                .fold(f64::NAN, f64::min),
        });
        let checkpoints = run.cfg.checkpoint_root(&run::dir::absolute(&run.dir.path));
        self.progress.log(&format!(
            "checkpoints in {}, metrics in {}",
            checkpoints.display(),
            run.dir.metrics_path().display()
        ));
        if preempted && self.preempted_exit_code != 0 {
            self.progress.log(&format!(
                "exiting with code {} (--preempted-exit-code) so that the scheduler starts the \
                 coordinator again, which continues the run",
                self.preempted_exit_code
            ));
        } else if preempted {
            self.progress.log(&format!(
                "continue this run with\n  coordinator launch --resume {}",
                run.dir.path.display()
            ));
        }
        let hashes: Vec<&str> = finished.iter().map(|f| f.params_hash.as_str()).collect();
        if hashes.is_empty() || hashes.iter().any(|h| h.is_empty() || *h != hashes[0]) {
            eprintln!("error: model replicas diverged: parameter hashes per rank {hashes:?}");
            return false;
        }
        self.progress.log(&format!(
            "all {} replicas hold identical parameters (sha256 {})",
            hashes.len(),
            &hashes[0][..hashes[0].len().min(16)]
        ));
        true
    }

    fn report_loss(&mut self, view: &WorkerView, rank: usize, why: &str) {
        let host = if view.host.is_empty() {
            "?"
        } else {
            &view.host
        };
        let words: Vec<String> = view
            .last_words
            .lock()
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default();
        self.progress
            .log(&format!("lost worker rank {rank} on {host}: {why}"));
        if !words.is_empty() {
            self.progress
                .log(&format!("its last words:\n  {}", words.join("\n  ")));
        }
    }

    /// Opens the next generation, from the last complete checkpoint.
    fn restart(&mut self, run: &mut OpenRun, max_restarts: u32) -> anyhow::Result<()> {
        if self.placement.external {
            self.progress.log(
                "waiting for the scheduler to restart workers (they re-register with the same token)",
            );
        }
        run.record.restarts += 1;
        run.record.generation += 1;
        let resume_text = run
            .rewind()?
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.progress.log(&format!(
            "restart {}/{max_restarts}: generation {} from {}",
            run.record.restarts,
            run.record.generation,
            if resume_text.is_empty() {
                "the beginning (no complete checkpoint yet)"
            } else {
                &resume_text
            }
        ));
        self.plane
            .hub
            .new_generation(run.record.generation, resume_text);
        Ok(())
    }
}
