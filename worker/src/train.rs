//! The training loop of one worker: data → model → gradient sync → AdamW, with validation,
//! checkpoints, resume and metrics. No networking here: the caller passes a [`GradientSync`]
//! ([`NoSync`] for one process, the TCP ring for several) and the trainer calls it once per
//! optimizer step, on the last micro-batch of gradient accumulation.
//!
//! **World-size invariance.** A model's backward accumulates the gradient of its loss *sum*
//! over the micro-batch's targets (masked genes). Four extra slots after the gradients carry
//! this rank's loss sum, target count, cells and tokens, so the single all-reduce (mean) also
//! yields their global means. Dividing the reduced gradient by the reduced count gives the
//! gradient of the mean loss over every target of the global batch — exactly what one worker
//! with the whole batch computes, up to floating-point reduction order.
//!
//! **Determinism.** Data order, masking and dropout derive from (seed, epoch, step, …) with
//! counter-based generators, so the loss sequence is a function of the config, and a run
//! resumed from a checkpoint repeats the uninterrupted one.
//!
//! **Masked positions are hidden.** The model sees neither the gene nor the expression value
//! at any masked position (issue 4: [MASK] id and the mask value, as scGPT does), in training
//! and validation alike, so the task cannot be solved by reading the input. The masker's
//! `random_replace_ratio` / `keep_ratio` choices are therefore overridden at the model's input:
//! a kept or replaced gene would let the loss be lowered by copying it (measured: training loss
//! 0.4 nats below the frequency baseline while the hidden-input validation loss stayed above it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use configs::scmodelforge::{
    Logger, OptimizerName, Precision as CfgPrecision, ScModelForgeConfig, TokenizerStrategy,
};
use configs::ConfigRoot;
use data::masking::IGNORE_INDEX;
use data::vocab::{MASK, N_SPECIAL, SPECIAL_TOKENS};
use data::{Batch, Loader, LoaderOptions, Pipeline, Position, ShardPlan, Split};
use kernels::ops::{adam_step, clip_grad_norm, global_norm, AdamConfig};
use kernels::rng::RngKey;
use run::{checkpoint_root, resolve_run_name};

use crate::checkpoint::{self, DataPosition, Metrics, RngState, Snapshot, TrainState};
use crate::metrics::CsvLogger;
use crate::model::{self, DataSpec, ModelError, ScModel};
use crate::overlap::{Overlap, BUCKET_FLOATS};
use crate::schedule::Schedule;

/// How this process takes part in a run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub rank: usize,
    pub world: usize,
    /// metrics.csv goes here; checkpoints under `training.checkpoint_dir` relative to it.
    pub run_dir: PathBuf,
    /// Overrides `training.resume_from`: a checkpoint directory, or a directory of checkpoints
    /// (the verified one with the highest step is used).
    pub resume_from: Option<PathBuf>,
    /// Stop (with a `last` checkpoint) after this many optimizer steps in total.
    pub max_steps: Option<u64>,
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
        }
    }
}

/// Averages a buffer over all workers (in place). Called by every rank in the same order, from
/// a communication thread while backward runs (hence `Send`).
pub trait GradientSync: Send {
    fn all_reduce_mean(&mut self, grads: &mut [f32]) -> Result<(), String>;
}

/// One worker: nothing to average.
pub struct NoSync;

impl GradientSync for NoSync {
    fn all_reduce_mean(&mut self, _grads: &mut [f32]) -> Result<(), String> {
        Ok(())
    }
}

impl GradientSync for crate::ring::Ring {
    fn all_reduce_mean(&mut self, grads: &mut [f32]) -> Result<(), String> {
        crate::ring::Ring::all_reduce_mean(self, grads).map_err(|e| e.to_string())
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
    pub skipped_steps: u64,
    /// Global training throughput over the whole run (validation and checkpoints excluded).
    pub cells_per_s: f64,
    pub tokens_per_s: f64,
    pub train_seconds: f64,
    pub parameters: usize,
    /// [`params_hash`] of the final parameters.
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

fn describe_checkpoint(c: &Option<PathBuf>) -> String {
    match c {
        Some(p) => format!("The last good state is saved in {}.", p.display()),
        None => "This rank writes no checkpoints; rank 0 saved the last good state.".into(),
    }
}

/// Extra slots after the gradients: loss sum, target count, cells, tokens, and the vote to
/// checkpoint and stop (so every rank stops after the same step, whichever one heard first).
const EXTRA: usize = 5;
/// torch.amp.GradScaler defaults.
const INIT_SCALE: f64 = 65536.0;
const GROWTH_INTERVAL: u64 = 2000;
const MIN_SCALE: f64 = 1.0 / (1u64 << 24) as f64;

/// SHA-256 of the parameter buffer: equal on every replica of a data-parallel run.
pub fn params_hash(params: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytemuck::cast_slice::<f32, u8>(params))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check_config(cfg: &ScModelForgeConfig, opts: &TrainOptions) -> Result<(), TrainError> {
    let t = &cfg.training;
    let bad = |m: String| Err(TrainError::Config(m));
    if opts.world == 0 || opts.rank >= opts.world {
        return bad(format!("rank {} of world size {}", opts.rank, opts.world));
    }
    if t.batch_size == 0 {
        return bad("training.batch_size must be positive".into());
    }
    if t.gradient_accumulation == 0 {
        return bad("training.gradient_accumulation must be at least 1".into());
    }
    if !(t.optimizer.lr.is_finite() && t.optimizer.lr >= 0.0) {
        return bad(format!(
            "training.optimizer.lr = {} is not a valid rate",
            t.optimizer.lr
        ));
    }
    if !(t.gradient_clip.is_finite() && t.gradient_clip >= 0.0) {
        return bad(format!(
            "training.gradient_clip = {} must be >= 0 (0 disables clipping)",
            t.gradient_clip
        ));
    }
    if t.log_every_n_steps == 0 {
        return bad("training.log_every_n_steps must be positive".into());
    }
    Ok(())
}

fn vocab_json(p: &Pipeline) -> Vec<u8> {
    let v = serde_json::json!({
        "special_tokens": SPECIAL_TOKENS,
        "genes": p.vocab().genes(),
    });
    serde_json::to_vec_pretty(&v).unwrap_or_default()
}

/// Hides every masked position of a batch completely (see the module docs).
fn hide_masked(batch: &mut Batch) {
    for (id, &l) in batch.gene_ids.iter_mut().zip(&batch.labels) {
        if l != IGNORE_INDEX {
            *id = MASK;
        }
    }
}

struct Run<'a> {
    cfg: &'a ScModelForgeConfig,
    opts: &'a TrainOptions,
    pipeline: Arc<Pipeline>,
    plan: ShardPlan,
    model: Box<dyn ScModel>,
    params: Vec<f32>,
    grads: Vec<f32>,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    state: TrainState,
    ckpt_root: PathBuf,
    config_yaml: String,
    vocab_json: Vec<u8>,
}

impl Run<'_> {
    fn snapshot_state(&self, position: DataPosition) -> TrainState {
        TrainState {
            position,
            ..self.state.clone()
        }
    }

    /// Rank 0 writes checkpoint `name`; other ranks write nothing.
    fn save(
        &self,
        name: &str,
        position: DataPosition,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<Option<PathBuf>, TrainError> {
        if self.opts.rank != 0 {
            return Ok(None);
        }
        let state = self.snapshot_state(position);
        let snap = Snapshot {
            layout: self.model.layout(),
            params: &self.params,
            exp_avg: &self.exp_avg,
            exp_avg_sq: &self.exp_avg_sq,
            state: &state,
            config_yaml: &self.config_yaml,
            vocab_json: &self.vocab_json,
        };
        let path = checkpoint::save(&self.ckpt_root, name, &snap)?;
        on_event(TrainEvent::Checkpoint {
            step: self.state.global_step,
            path: path.clone(),
        });
        Ok(Some(path))
    }

    fn dropout_key(&self, epoch: u64, micro_step: u64) -> RngKey {
        let seed = self.cfg.training.seed as u64;
        let rank_mix = kernels::rng::mix64(self.opts.rank as u64 ^ 0xA5A5_5A5A);
        RngKey::new(seed ^ rank_mix, (epoch << 32) | micro_step, 0)
    }

    /// Mean validation loss over the whole validation split (all ranks), None without one.
    fn validate(&mut self, sync: &mut dyn GradientSync) -> Result<Option<f64>, TrainError> {
        if self.plan.val.is_empty() {
            return Ok(None);
        }
        let lo = LoaderOptions {
            rank: self.opts.rank,
            world_size: self.opts.world,
            batch_size: self.cfg.training.batch_size,
            num_workers: self.cfg.data.num_workers.min(2),
            split: Split::Val,
            mask: true,
        };
        let loader = Loader::new(
            Arc::clone(&self.pipeline),
            &self.plan,
            lo,
            Position::default(),
        )?;
        let (mut sum, mut count) = (0.0f64, 0.0f64);
        for b in loader {
            let mut b = b?;
            hide_masked(&mut b);
            let s = self.model.eval_batch(&self.params, &b)?;
            sum += s.sum;
            count += s.count;
        }
        let mut buf = [sum as f32, count as f32];
        if self.opts.world > 1 {
            sync.all_reduce_mean(&mut buf)
                .map_err(|message| TrainError::Sync {
                    step: self.state.global_step,
                    message,
                })?;
            sum = buf[0] as f64;
            count = buf[1] as f64;
        }
        Ok((count > 0.0).then(|| sum / count))
    }
}

/// Trains `cfg` as rank `opts.rank` of `opts.world`. See the module docs.
pub fn train(
    cfg: &ScModelForgeConfig,
    opts: &TrainOptions,
    sync: &mut dyn GradientSync,
    on_event: &mut dyn FnMut(TrainEvent),
    control: &mut dyn FnMut() -> Control,
) -> Result<TrainSummary, TrainError> {
    check_config(cfg, opts)?;
    let t = &cfg.training;
    let prec = model::precision_of(t.precision);
    let fp16 = t.precision == CfgPrecision::Fp16Mixed;
    let seed = t.seed as u64;
    let pipeline = Arc::new(Pipeline::from_config(cfg)?);
    let plan = ShardPlan::for_dataset(&pipeline.dataset, t.val_split, seed)?;
    let spec = DataSpec {
        vocab_size: pipeline.vocab().len(),
        values_are_bins: cfg.tokenizer.strategy == TokenizerStrategy::BinnedExpression,
    };
    let model = model::build(&cfg.model, spec, prec)?;
    let layout = model.layout().clone();
    let n = layout.total();
    let name = resolve_run_name(cfg, &opts.run_dir);
    let mut run_cfg = cfg.clone();
    run_cfg.training.run_name = Some(name.clone());
    let global_batch = t.batch_size * opts.world;

    if opts.rank == 0 {
        std::fs::create_dir_all(&opts.run_dir).map_err(|source| TrainError::Io {
            path: opts.run_dir.clone(),
            source,
        })?;
    }
    let mut run = Run {
        cfg,
        opts,
        model,
        params: layout.init_host(seed),
        grads: vec![0.0; n + EXTRA],
        exp_avg: vec![0.0; n],
        exp_avg_sq: vec![0.0; n],
        state: TrainState {
            format_version: checkpoint::FORMAT_VERSION,
            run_name: name.clone(),
            architecture: cfg.model.architecture.as_str().to_string(),
            global_step: 0,
            epoch: 0,
            position: DataPosition::default(),
            adam_t: 0,
            loss_scale: if fp16 { INIT_SCALE } else { 1.0 },
            good_steps: 0,
            rng: RngState {
                kind: "counter-based splitmix64 keyed by (seed, epoch, step, index)".into(),
                seed: t.seed,
            },
            world_size: opts.world,
            global_batch,
            metrics: Metrics::default(),
        },
        ckpt_root: checkpoint_root(cfg, &opts.run_dir),
        config_yaml: run_cfg.to_yaml(),
        vocab_json: vocab_json(&pipeline),
        pipeline,
        plan,
    };

    // Resume.
    let resume = opts
        .resume_from
        .clone()
        .or_else(|| t.resume_from.as_ref().map(PathBuf::from));
    if let Some(path) = resume {
        let dir = checkpoint::resolve_resume(&path)?;
        let loaded = checkpoint::load(&dir, &layout)?;
        if loaded.state.global_batch != global_batch {
            on_event(TrainEvent::Log(format!(
                "warning: checkpoint was trained with global batch {}, this run uses {global_batch}; the data order of the current epoch changes",
                loaded.state.global_batch
            )));
        }
        run.params = loaded.params;
        run.exp_avg = loaded.exp_avg;
        run.exp_avg_sq = loaded.exp_avg_sq;
        run.state = TrainState {
            run_name: name.clone(),
            world_size: opts.world,
            global_batch,
            ..loaded.state
        };
        on_event(TrainEvent::Log(format!(
            "resumed from {} at step {} (epoch {}, batch {})",
            dir.display(),
            run.state.global_step,
            run.state.position.epoch,
            run.state.position.step
        )));
    }

    let mut csv = if opts.rank == 0 {
        if t.logger != Logger::Csv {
            on_event(TrainEvent::Log(format!(
                "training.logger {} is not available here; metrics go to metrics.csv",
                t.logger.as_str()
            )));
        }
        let p = opts.run_dir.join("metrics.csv");
        Some(CsvLogger::open(&p).map_err(|source| TrainError::Io { path: p, source })?)
    } else {
        None
    };

    let schedule = Schedule::new(t.optimizer.lr, t.scheduler.clone());
    let micro_per_epoch = run.plan.steps(Split::Train, global_batch);
    if micro_per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "the training split has {} cells, fewer than one global batch of {global_batch} (training.batch_size x workers)",
            run.plan.train.len()
        )));
    }
    let accum = t.gradient_accumulation as u64;
    let steps_per_epoch = micro_per_epoch.div_ceil(accum);
    on_event(TrainEvent::Start {
        run_name: name.clone(),
        parameters: layout.entries().iter().map(|e| e.len()).sum(),
        steps_per_epoch,
        total_steps: steps_per_epoch * t.max_epochs as u64,
        start_step: run.state.global_step,
    });

    let mut summary = TrainSummary {
        run_name: name.clone(),
        parameters: layout.entries().iter().map(|e| e.len()).sum(),
        ..Default::default()
    };
    let (mut total_cells, mut total_tokens, mut train_secs) = (0.0f64, 0.0f64, 0.0f64);
    let (mut log_cells, mut log_tokens, mut log_secs) = (0.0f64, 0.0f64, 0.0f64);
    let max_epochs = t.max_epochs as u64;
    let adam = AdamConfig {
        decoupled: t.optimizer.name == OptimizerName::AdamW,
        ..AdamConfig::adamw(t.optimizer.lr, t.optimizer.weight_decay)
    };

    let mut epoch = run.state.position.epoch;
    let mut stop: Option<Control> = None;
    'epochs: while epoch < max_epochs {
        let start = Position {
            epoch,
            step: if epoch == run.state.position.epoch {
                run.state.position.step
            } else {
                0
            },
        };
        let lo = LoaderOptions {
            rank: opts.rank,
            world_size: opts.world,
            batch_size: t.batch_size,
            num_workers: cfg.data.num_workers,
            split: Split::Train,
            mask: true,
        };
        let mut loader = Loader::new(Arc::clone(&run.pipeline), &run.plan, lo, start)?;
        let (mut acc_sum, mut acc_count, mut acc_cells, mut acc_tokens) = (0.0, 0.0, 0.0, 0.0);
        let mut step_start = Instant::now();
        let mut step_pos = DataPosition {
            epoch,
            step: start.step,
        };
        while let Some(b) = loader.next() {
            let mut batch = b?;
            hide_masked(&mut batch);
            let key = run.dropout_key(epoch, batch.step);
            let scale = run.state.loss_scale as f32;
            let boundary = (batch.step + 1) % accum == 0 || batch.step + 1 == micro_per_epoch;
            // On the step's last micro-batch with peers, finished layers are averaged while
            // backward goes on (see `overlap`); the rest once backward is done.
            let overlap = boundary && opts.world > 1;
            let mut stop_now = false;
            std::thread::scope(|scope| -> Result<(), TrainError> {
                let mut comm = overlap.then(|| Overlap::start(scope, &mut *sync, BUCKET_FLOATS));
                let s = run.model.train_batch(
                    &run.params,
                    &mut run.grads,
                    &batch,
                    key,
                    scale,
                    &mut |range, g| {
                        if let Some(c) = comm.as_mut() {
                            c.ready(range, g)
                        }
                    },
                )?;
                acc_sum += s.sum;
                acc_count += s.count;
                acc_cells += batch.batch_size as f64;
                acc_tokens += batch.attention_mask.iter().map(|&m| m as f64).sum::<f64>();
                if !boundary {
                    return Ok(());
                }
                // A stop at once (a peer failed) needs no agreement; a checkpoint-and-stop
                // does: ranks hear it at different steps, so it is voted in the all-reduce.
                let wants_checkpoint_stop = match control() {
                    Control::Continue => false,
                    Control::CheckpointAndStop => true,
                    Control::Stop => {
                        stop_now = true;
                        return Ok(());
                    }
                };
                let g = &mut run.grads;
                g[n] = acc_sum as f32;
                g[n + 1] = acc_count as f32;
                g[n + 2] = acc_cells as f32;
                g[n + 3] = acc_tokens as f32;
                g[n + 4] = if wants_checkpoint_stop { 1.0 } else { 0.0 };
                if let Some(c) = comm {
                    c.finish(g).map_err(|message| TrainError::Sync {
                        step: run.state.global_step,
                        message,
                    })?;
                }
                Ok(())
            })?;
            if stop_now {
                stop = Some(Control::Stop);
                break 'epochs;
            }
            if !boundary {
                continue;
            }
            // ---- optimizer step ----
            let g = &mut run.grads;
            let count_mean = g[n + 1] as f64;
            let loss = if opts.world > 1 {
                g[n] as f64 / count_mean.max(f64::MIN_POSITIVE)
            } else {
                acc_sum / acc_count.max(f64::MIN_POSITIVE)
            };
            let w = opts.world as f64;
            let (step_cells, step_tokens) = (g[n + 2] as f64 * w, g[n + 3] as f64 * w);
            let stop_voted = g[n + 4] > 0.0;
            (acc_sum, acc_count, acc_cells, acc_tokens) = (0.0, 0.0, 0.0, 0.0);
            let grads = &mut g[..n];
            let finite = loss.is_finite() && grads.iter().all(|x| x.is_finite());
            let lr = schedule.lr(run.state.global_step);
            let mut grad_norm = f64::NAN;
            let mut skipped = false;
            if !finite && fp16 {
                // Overflow under the loss scale: skip the step and back off.
                skipped = true;
                run.state.loss_scale *= 0.5;
                run.state.good_steps = 0;
                run.state.metrics.skipped_steps += 1;
                summary.skipped_steps += 1;
                on_event(TrainEvent::Log(format!(
                    "16-mixed: overflow at step {}, skipped; loss scale now {}",
                    run.state.global_step, run.state.loss_scale
                )));
                if run.state.loss_scale < MIN_SCALE {
                    return Err(TrainError::LossScaleUnderflow {
                        step: run.state.global_step,
                        scale: run.state.loss_scale,
                    });
                }
            } else if !finite {
                let ck = run.save("last", step_pos, on_event)?;
                return Err(TrainError::NonFinite {
                    step: run.state.global_step,
                    epoch,
                    loss,
                    checkpoint: ck,
                });
            } else {
                if count_mean > 0.0 {
                    let f = (1.0 / (run.state.loss_scale * count_mean)) as f32;
                    grads.iter_mut().for_each(|x| *x *= f);
                }
                grad_norm = if t.gradient_clip > 0.0 {
                    clip_grad_norm(grads, t.gradient_clip)
                } else {
                    global_norm(grads)
                };
                run.state.adam_t += 1;
                let cfg_step = AdamConfig { lr, ..adam };
                adam_step(
                    &cfg_step,
                    run.state.adam_t,
                    &mut run.params,
                    grads,
                    &mut run.exp_avg,
                    &mut run.exp_avg_sq,
                );
                if fp16 {
                    run.state.good_steps += 1;
                    if run.state.good_steps >= GROWTH_INTERVAL {
                        run.state.loss_scale *= 2.0;
                        run.state.good_steps = 0;
                    }
                }
            }
            run.grads.iter_mut().for_each(|x| *x = 0.0);
            run.state.global_step += 1;
            run.state.epoch = epoch;
            run.state.metrics.train_loss = Some(loss);
            let pos = loader.position();
            step_pos = DataPosition {
                epoch: pos.epoch,
                step: pos.step,
            };
            run.state.position = step_pos;
            summary.losses.push(loss);
            let secs = step_start.elapsed().as_secs_f64();
            total_cells += step_cells;
            total_tokens += step_tokens;
            train_secs += secs;
            log_cells += step_cells;
            log_tokens += step_tokens;
            log_secs += secs;
            let gs = run.state.global_step;
            if gs.is_multiple_of(t.log_every_n_steps as u64) {
                let (cps, tps) = (
                    log_cells / log_secs.max(1e-9),
                    log_tokens / log_secs.max(1e-9),
                );
                on_event(TrainEvent::Step {
                    epoch,
                    step: gs,
                    loss,
                    lr,
                    grad_norm,
                    cells_per_s: cps,
                    tokens_per_s: tps,
                });
                if let Some(c) = csv.as_mut() {
                    c.step(gs, epoch, loss, lr, grad_norm, cps, tps)
                        .map_err(|source| TrainError::Io {
                            path: opts.run_dir.join("metrics.csv"),
                            source,
                        })?;
                }
                (log_cells, log_tokens, log_secs) = (0.0, 0.0, 0.0);
            }
            let _ = skipped;
            if opts.max_steps.is_some_and(|m| gs >= m) {
                stop = Some(Control::CheckpointAndStop);
                break 'epochs;
            }
            if stop_voted {
                stop = Some(Control::CheckpointAndStop);
                break 'epochs;
            }
            step_start = Instant::now();
        }
        // ---- end of epoch: validation, checkpoints ----
        let val = run.validate(sync)?;
        let gs = run.state.global_step;
        run.state.position = DataPosition {
            epoch: epoch + 1,
            step: 0,
        };
        if let Some(v) = val {
            run.state.metrics.val_loss = Some(v);
            summary.val_losses.push((epoch, v));
            on_event(TrainEvent::Validation {
                epoch,
                step: gs,
                loss: v,
            });
            if let Some(c) = csv.as_mut() {
                c.validation(gs, epoch, v)
                    .map_err(|source| TrainError::Io {
                        path: opts.run_dir.join("metrics.csv"),
                        source,
                    })?;
            }
            let k = t.save_top_k;
            let best = &run.state.metrics.best;
            let qualifies = k > 0 && (best.len() < k || best.last().is_some_and(|(b, _)| v < *b));
            if qualifies {
                let ck_name = format!("epoch={epoch}-step={gs}-val_loss={v:.4}");
                let mut best = run.state.metrics.best.clone();
                best.push((v, ck_name.clone()));
                best.sort_by(|a, b| a.0.total_cmp(&b.0));
                let evicted: Vec<String> = best.drain(k.min(best.len())..).map(|x| x.1).collect();
                run.state.metrics.best = best;
                run.save(&ck_name, run.state.position, on_event)?;
                if opts.rank == 0 {
                    for e in evicted {
                        let p = run.ckpt_root.join(&e);
                        if p.exists() {
                            let _ = std::fs::remove_dir_all(&p);
                        }
                    }
                }
            }
        }
        summary.last_checkpoint = run.save("last", run.state.position, on_event)?;
        epoch += 1;
    }

    if let Some(c) = stop {
        summary.stopped_early = true;
        if c == Control::CheckpointAndStop {
            summary.last_checkpoint = run.save("last", run.state.position, on_event)?;
        }
    }
    summary.global_step = run.state.global_step;
    summary.best_checkpoint = run
        .state
        .metrics
        .best
        .first()
        .map(|(_, n)| run.ckpt_root.join(n));
    summary.params_hash = params_hash(&run.params);
    summary.train_seconds = train_secs;
    summary.cells_per_s = total_cells / train_secs.max(1e-9);
    summary.tokens_per_s = total_tokens / train_secs.max(1e-9);
    Ok(summary)
}

/// The loss of predicting each masked validation gene from gene frequencies alone: genes are
/// counted over every token of the training cells (add-½ smoothing over the vocabulary's
/// genes), and the cross-entropy is averaged over the masked positions of the validation
/// split, the same targets the model's validation loss averages over.
pub fn frequency_baseline(cfg: &ScModelForgeConfig) -> Result<f64, TrainError> {
    let t = &cfg.training;
    let seed = t.seed as u64;
    let pipeline = Arc::new(Pipeline::from_config(cfg)?);
    let plan = ShardPlan::for_dataset(&pipeline.dataset, t.val_split, seed)?;
    let v = pipeline.vocab().len();
    let mut counts = vec![0.0f64; v];
    let bs = t.batch_size.max(1);
    let mut lo = LoaderOptions {
        rank: 0,
        world_size: 1,
        batch_size: bs,
        num_workers: 0,
        split: Split::Train,
        mask: false,
    };
    // Every training cell: walk the training order of epoch 0 in batches, plus the remainder.
    let order = plan.order(Split::Train, 0);
    for chunk in order.chunks(bs) {
        let b = pipeline.batch(chunk, None, &mut Default::default())?;
        for (&id, &m) in b.gene_ids.iter().zip(&b.attention_mask) {
            if m != 0 && id >= N_SPECIAL {
                counts[id as usize] += 1.0;
            }
        }
    }
    let genes = (v - N_SPECIAL as usize) as f64;
    let total: f64 = counts.iter().sum::<f64>() + 0.5 * genes;
    lo.split = Split::Val;
    lo.mask = true;
    let loader = Loader::new(Arc::clone(&pipeline), &plan, lo, Position::default())?;
    let (mut sum, mut n) = (0.0f64, 0.0f64);
    for b in loader {
        let b = b?;
        for &l in &b.labels {
            if l != IGNORE_INDEX {
                sum -= ((counts[l as usize] + 0.5) / total).ln();
                n += 1.0;
            }
        }
    }
    if n == 0.0 {
        return Err(TrainError::Config(
            "no masked validation tokens: set training.val_split > 0".into(),
        ));
    }
    Ok(sum / n)
}
