//! The metric loggers `training.logger` chooses, written by rank 0 in Lightning's layout:
//! `{run dir}/version_{N}/` (see `run::versions`; for `worker train` without `--run-dir` the
//! run directory is `{training.log_dir}/{run name}`, where scModelForge's loggers write) holds
//!
//! - `metrics.csv` — always: the run's record, read by `coordinator launch` and the tests;
//! - `hparams.yaml` — always: the hyperparameters scModelForge's LightningModule saves
//!   (`optimizer_config`, `scheduler_config`), as plain YAML mappings;
//! - `events.out.tfevents.*` — for `tensorboard`, and for `wandb`, which has no Rust client:
//!   those event files are what `wandb sync --sync-tensorboard` uploads.
//!
//! Metric names are scModelForge's: `train/loss`, `train/perplexity`, `train/grad_norm`,
//! `val/loss`, `val/perplexity`, `perf/cells_per_sec`, `perf/step_time_ms`, Lightning's
//! `epoch`, and LearningRateMonitor's `lr-AdamW` (`lr-Adam`). anvil adds
//! `perf/tokens_per_sec` and `perf/allreduce_time_ms`. `step` is the number of optimizer
//! steps taken, as in anvil's checkpoint names.
//!
//! **Versions and resume.** A run that starts from scratch takes the next free `version_N`,
//! as each Lightning `fit` does. A run resumed from a checkpoint continues the newest version
//! instead (Lightning would start another one): its metrics.csv keeps the rows up to the
//! checkpoint's step and drops the later ones, which are trained and logged again, and its new
//! event file opens with a SessionLog START at the first step logged again, the marker on
//! which TensorBoard forgets what earlier files logged from that step on. So one run's curve
//! stays in one version, whatever restarts, preemptions and `--resume`s it went through.

pub mod csv;
pub mod tensorboard;

use std::path::{Path, PathBuf};

use configs::schema::{ToValue, Value};
use configs::scmodelforge::{Logger, OptimizerName, ScModelForgeConfig};

pub use self::csv::CsvLogger;
use self::tensorboard::EventWriter;

pub const EPOCH: &str = "epoch";
pub const STEP: &str = "step";
pub const TRAIN_LOSS: &str = "train/loss";
pub const TRAIN_PERPLEXITY: &str = "train/perplexity";
pub const TRAIN_GRAD_NORM: &str = "train/grad_norm";
pub const VAL_LOSS: &str = "val/loss";
pub const VAL_PERPLEXITY: &str = "val/perplexity";
pub const CELLS_PER_SEC: &str = "perf/cells_per_sec";
pub const TOKENS_PER_SEC: &str = "perf/tokens_per_sec";
pub const STEP_TIME_MS: &str = "perf/step_time_ms";
pub const ALLREDUCE_TIME_MS: &str = "perf/allreduce_time_ms";

/// A logger file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .path.display())]
pub struct LogError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// What one logged optimizer step reports (over the steps since the previous one).
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    pub epoch: u64,
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    /// NaN for a skipped (overflowing) 16-mixed step.
    pub grad_norm: f64,
    /// Global (all workers).
    pub cells_per_s: f64,
    pub tokens_per_s: f64,
    /// Mean wall time of an optimizer step.
    pub step_seconds: f64,
    /// Mean time per step spent waiting for the gradient all-reduce after backward.
    pub allreduce_seconds: f64,
}

/// Rank 0's loggers for one run.
pub struct Loggers {
    dir: PathBuf,
    version: u32,
    /// The step a resumed run continues after (None: started from scratch).
    resumed_at: Option<u64>,
    kind: Logger,
    wandb_project: String,
    lr_tag: &'static str,
    csv: CsvLogger,
    events: Option<EventWriter>,
}

impl Loggers {
    /// Opens the version directory of the run in `run_dir` and the files `training.logger`
    /// asks for. `resumed_at` is the step of the checkpoint the run resumed from.
    pub fn open(
        cfg: &ScModelForgeConfig,
        run_dir: &Path,
        resumed_at: Option<u64>,
    ) -> Result<Self, LogError> {
        let t = &cfg.training;
        let version = run::versions::for_start(run_dir, resumed_at.is_some());
        let dir = run::versions::version_dir(run_dir, version);
        std::fs::create_dir_all(&dir).map_err(|source| LogError {
            path: dir.clone(),
            source,
        })?;
        let lr_tag = match t.optimizer.name {
            OptimizerName::AdamW => "lr-AdamW",
            OptimizerName::Adam => "lr-Adam",
        };
        let mut columns = columns(lr_tag);
        if let Some(ft) = &cfg.finetune {
            // A fine-tuning run's validation adds its task's metrics.
            columns.extend(crate::finetune::metric_columns(ft.head.task));
            columns.sort_unstable();
        }
        let csv_path = dir.join(run::versions::METRICS_CSV);
        let csv = match resumed_at {
            Some(step) => CsvLogger::resume(&csv_path, &columns, step),
            None => CsvLogger::create(&csv_path, &columns),
        }
        .map_err(|source| LogError {
            path: csv_path.clone(),
            source,
        })?;
        let hparams = dir.join(run::versions::HPARAMS_YAML);
        std::fs::write(&hparams, hparams_yaml(cfg)).map_err(|source| LogError {
            path: hparams.clone(),
            source,
        })?;
        let events = match t.logger {
            Logger::Csv => None,
            Logger::Tensorboard | Logger::Wandb => {
                let mut w = EventWriter::create(&dir).map_err(|source| LogError {
                    path: dir.clone(),
                    source,
                })?;
                if let Some(step) = resumed_at {
                    w.session_start(step + 1, &format!("resumed from step {step}"))
                        .map_err(|source| LogError {
                            path: w.path().to_path_buf(),
                            source,
                        })?;
                }
                Some(w)
            }
        };
        Ok(Loggers {
            dir,
            version,
            resumed_at,
            kind: t.logger,
            wandb_project: t.wandb_project.clone(),
            lr_tag,
            csv,
            events,
        })
    }

    /// The version directory the metrics go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The one line that says where the metrics go, for the start of a run. For `wandb` it
    /// says that nothing reaches Weights & Biases from here, and how to upload the files.
    pub fn announcement(&self) -> String {
        let dir = self.dir.display();
        let continuing = match self.resumed_at {
            Some(step) => format!(" (continuing version_{} after step {step})", self.version),
            None => String::new(),
        };
        match self.kind {
            Logger::Csv => format!("metrics go to {dir}: metrics.csv, hparams.yaml{continuing}"),
            Logger::Tensorboard => format!(
                "metrics go to {dir}: TensorBoard event files, metrics.csv, hparams.yaml{continuing}; view with `tensorboard --logdir {}`",
                self.dir.parent().unwrap_or(&self.dir).display()
            ),
            Logger::Wandb => format!(
                "training.logger wandb: anvil has no Weights & Biases client, so nothing is sent to project {:?}; metrics go to {dir} as TensorBoard event files, metrics.csv and hparams.yaml instead{continuing}. Upload them with `wandb sync --sync-tensorboard --project {} {dir}`",
                self.wandb_project, self.wandb_project
            ),
        }
    }

    /// A logged optimizer step: one CSV row, one event.
    pub fn step(&mut self, m: &StepMetrics) -> Result<(), LogError> {
        let values = [
            (EPOCH, m.epoch as f64),
            (self.lr_tag, m.lr),
            (ALLREDUCE_TIME_MS, m.allreduce_seconds * 1e3),
            (CELLS_PER_SEC, m.cells_per_s),
            (STEP_TIME_MS, m.step_seconds * 1e3),
            (TOKENS_PER_SEC, m.tokens_per_s),
            (TRAIN_GRAD_NORM, m.grad_norm),
            (TRAIN_LOSS, m.loss),
            (TRAIN_PERPLEXITY, perplexity(m.loss)),
        ];
        self.write(m.step, &values)
    }

    /// The validation loss after an epoch.
    pub fn validation(&mut self, epoch: u64, step: u64, loss: f64) -> Result<(), LogError> {
        let values = [
            (EPOCH, epoch as f64),
            (VAL_LOSS, loss),
            (VAL_PERPLEXITY, perplexity(loss)),
        ];
        self.write(step, &values)
    }

    /// The validation loss after an epoch with a fine-tuning task's metrics (`val/accuracy`,
    /// …).
    pub fn validation_metrics(
        &mut self,
        epoch: u64,
        step: u64,
        loss: f64,
        metrics: &[(&'static str, f64)],
    ) -> Result<(), LogError> {
        let mut values = vec![
            (EPOCH, epoch as f64),
            (VAL_LOSS, loss),
            (VAL_PERPLEXITY, perplexity(loss)),
        ];
        values.extend_from_slice(metrics);
        self.write(step, &values)
    }

    /// Benchmark metrics of an in-training assessment (`eval.every_n_epochs`), under
    /// scModelForge's keys `assessment/{benchmark}/{dataset}/{metric}`; their columns are
    /// added to metrics.csv when they first appear.
    pub fn assessment(
        &mut self,
        epoch: u64,
        step: u64,
        metrics: &[(String, f64)],
    ) -> Result<(), LogError> {
        let names: Vec<&str> = metrics.iter().map(|(n, _)| n.as_str()).collect();
        self.csv.add_columns(&names).map_err(|source| LogError {
            path: self.csv.path().to_path_buf(),
            source,
        })?;
        let mut values: Vec<(&str, f64)> = vec![(EPOCH, epoch as f64)];
        values.extend(metrics.iter().map(|(n, v)| (n.as_str(), *v)));
        self.write(step, &values)
    }

    fn write(&mut self, step: u64, values: &[(&str, f64)]) -> Result<(), LogError> {
        self.csv.row(step, values).map_err(|source| LogError {
            path: self.csv.path().to_path_buf(),
            source,
        })?;
        if let Some(w) = self.events.as_mut() {
            w.scalars(step, values).map_err(|source| LogError {
                path: w.path().to_path_buf(),
                source,
            })?;
        }
        Ok(())
    }
}

/// metrics.csv's header: every metric and `step`, sorted, as Lightning orders the keys it
/// first sees together.
pub fn columns(lr_tag: &'static str) -> Vec<&'static str> {
    let mut c = vec![
        EPOCH,
        STEP,
        lr_tag,
        TRAIN_LOSS,
        TRAIN_PERPLEXITY,
        TRAIN_GRAD_NORM,
        VAL_LOSS,
        VAL_PERPLEXITY,
        CELLS_PER_SEC,
        TOKENS_PER_SEC,
        STEP_TIME_MS,
        ALLREDUCE_TIME_MS,
    ];
    c.sort_unstable();
    c
}

/// scModelForge's perplexity: exp of the loss clamped at 100.
pub fn perplexity(loss: f64) -> f64 {
    loss.min(100.0).exp()
}

/// What scModelForge's LightningModule saves with `save_hyperparameters(ignore=["model"])`:
/// its optimizer and scheduler configs (Lightning writes them as Python objects; here they
/// are plain mappings any YAML reader loads).
fn hparams_yaml(cfg: &ScModelForgeConfig) -> String {
    let t = &cfg.training;
    configs::emit::to_yaml(&Value::Map(vec![
        ("optimizer_config".into(), t.optimizer.to_value()),
        ("scheduler_config".into(), t.scheduler.to_value()),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_sorted_like_lightnings_first_keys() {
        assert_eq!(
            columns("lr-AdamW"),
            vec![
                "epoch",
                "lr-AdamW",
                "perf/allreduce_time_ms",
                "perf/cells_per_sec",
                "perf/step_time_ms",
                "perf/tokens_per_sec",
                "step",
                "train/grad_norm",
                "train/loss",
                "train/perplexity",
                "val/loss",
                "val/perplexity",
            ]
        );
        assert_eq!(perplexity(0.0), 1.0);
        assert_eq!(perplexity(500.0), 100f64.exp());
    }
}
