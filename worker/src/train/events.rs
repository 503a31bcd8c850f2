//! What the trainer is told and what it tells: options, events, the caller's control answer,
//! the summary and errors.

use std::path::PathBuf;

use crate::checkpoint;
use crate::loggers::{LogError, StepMetrics};
use crate::model::ModelError;

/// How this process takes part in a run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub rank: usize,
    pub world: usize,
    /// Rank 0's metric loggers write `version_N/` here (see `crate::loggers`); checkpoints go
    /// under `training.checkpoint_dir` relative to it.
    pub run_dir: PathBuf,
    /// Overrides `training.resume_from`: a checkpoint directory, or a directory of checkpoints
    /// (the verified one with the highest step is used).
    pub resume_from: Option<PathBuf>,
    /// Stop (with a `last` checkpoint) after this many optimizer steps in total.
    pub max_steps: Option<u64>,
    /// W3C traceparent of the coordinator's generation span, continued by this worker's
    /// spans; empty when there is none.
    pub trace_parent: String,
    /// Rank 0's NCCL unique id from the coordinator: GPU workers average gradients through
    /// NCCL with it (empty: no NCCL; gradients go through `sync` on the host).
    pub nccl_unique_id: Vec<u8>,
    /// The format gradients travel in between workers (NCCL; the CPU ring carries its own).
    pub grad_dtype: crate::sync::GradDtype,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions::single("runs/default")
    }
}

impl TrainOptions {
    pub fn single(run_dir: impl Into<PathBuf>) -> Self {
        TrainOptions {
            rank: 0,
            world: 1,
            run_dir: run_dir.into(),
            resume_from: None,
            max_steps: None,
            trace_parent: String::new(),
            nccl_unique_id: Vec::new(),
            grad_dtype: crate::sync::GradDtype::F32,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// Once, before the first step.
    Start {
        run_name: String,
        parameters: usize,
        steps_per_epoch: u64,
        total_steps: u64,
        start_step: u64,
    },
    /// Every `log_every_n_steps` optimizer steps. Throughput is global (all workers) over the
    /// steps since the previous Step event.
    Step {
        epoch: u64,
        step: u64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        cells_per_s: f64,
        tokens_per_s: f64,
        /// Mean wall time of an optimizer step over the same steps (data, forward, backward,
        /// all-reduce, update).
        step_seconds: f64,
        /// Mean time per step spent waiting for the gradient all-reduce after backward (the
        /// part of the communication that backward did not hide); 0 for one worker.
        allreduce_seconds: f64,
    },
    Validation {
        epoch: u64,
        step: u64,
        loss: f64,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
    Log(String),
}

impl From<&StepMetrics> for TrainEvent {
    fn from(m: &StepMetrics) -> Self {
        TrainEvent::Step {
            epoch: m.epoch,
            step: m.step,
            loss: m.loss,
            lr: m.lr,
            grad_norm: m.grad_norm,
            cells_per_s: m.cells_per_s,
            tokens_per_s: m.tokens_per_s,
            step_seconds: m.step_seconds,
            allreduce_seconds: m.allreduce_seconds,
        }
    }
}

/// The caller's answer when polled once per optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    CheckpointAndStop,
    Stop,
}

#[derive(Debug, Clone, Default)]
pub struct TrainSummary {
    pub run_name: String,
    /// Optimizer steps taken in total (including before a resume).
    pub global_step: u64,
    /// Loss of every optimizer step this process ran, in order (skipped 16-mixed steps
    /// included, with their loss).
    pub losses: Vec<f64>,
    /// (epoch, validation loss) after each epoch.
    pub val_losses: Vec<(u64, f64)>,
    pub last_checkpoint: Option<PathBuf>,
    pub best_checkpoint: Option<PathBuf>,
    /// Stopped by `max_steps` or `Control` before `max_epochs`.
    pub stopped_early: bool,
    /// Stopped on request (a checkpoint-and-stop vote after a signal, or the coordinator's
    /// stop) before the run's end; not by `max_steps`.
    pub interrupted: bool,
    pub skipped_steps: u64,
    /// Global training throughput over the whole run (validation and checkpoints excluded).
    pub cells_per_s: f64,
    pub tokens_per_s: f64,
    pub train_seconds: f64,
    pub parameters: usize,
    /// SHA-256 of the final parameters (`params_hash`): equal on every replica.
    pub params_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("config: {0}")]
    Config(String),
    #[error("data: {0}")]
    Data(#[from] data::DataError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("gradient all-reduce failed at step {step}: {message}")]
    Sync { step: u64, message: String },
    #[error(
        "training diverged: the loss at step {step} (epoch {epoch}) is {loss}; stopped. {}",
        describe_checkpoint(.checkpoint)
    )]
    NonFinite {
        step: u64,
        epoch: u64,
        loss: f64,
        checkpoint: Option<PathBuf>,
    },
    #[error("16-mixed: the loss scale fell to {scale} after repeated overflows at step {step}; the model produces non-finite values")]
    LossScaleUnderflow { step: u64, scale: f64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<LogError> for TrainError {
    fn from(e: LogError) -> Self {
        TrainError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

fn describe_checkpoint(c: &Option<PathBuf>) -> String {
    match c {
        Some(p) => format!("The last good state is saved in {}.", p.display()),
        None => "This rank writes no checkpoints; rank 0 saved the last good state.".into(),
    }
}
