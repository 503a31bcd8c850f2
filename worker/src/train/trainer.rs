//! One worker's training run: [`train`] is the loop; [`Trainer`] holds the run's state and
//! each step the loop takes — [`Trainer::new`], then per epoch [`Trainer::start_epoch`], per
//! micro-batch [`Trainer::micro_step`] (forward and backward; on the last micro-batch of an
//! optimizer step also the gradient all-reduce), [`Trainer::optimizer_step`] (unscale, clip,
//! AdamW), [`Trainer::end_epoch`] (validation, checkpoints), and [`Trainer::finish`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use configs::scmodelforge::{
    OptimizerName, Precision as CfgPrecision, ScModelForgeConfig, TokenizerStrategy,
};
use configs::ConfigRoot;
use data::masking::IGNORE_INDEX;
use data::vocab::{MASK, SPECIAL_TOKENS};
use data::{Batch, Loader, LoaderOptions, Pipeline, Position, ShardPlan, Split};
use kernels::optim::{AdamConfig, LossScaler};
use kernels::rng::RngKey;
use kernels::{Cpu, Device};
use run::{checkpoint_root, resolve_run_name};

use super::events::{Control, TrainError, TrainEvent, TrainOptions, TrainSummary};
use super::param_groups::Moments;
use super::totals::StepTotals;
use crate::checkpoint::{self, DataPosition, Metrics, RngState, Snapshot, TrainState};
use crate::finetune::{self, labels::Labels, Backbone, FinetuneModel};
use crate::loggers::{Loggers, StepMetrics};
use crate::model::{self, DataSpec, ScModel};
use crate::overlap::{Overlap, BUCKET_FLOATS};
use crate::schedule::Schedule;
use crate::sync::{DeviceReduce, GradientSync};
use crate::telemetry::TrainTrace;
use run::telemetry::TRACE_TARGET;
use tracing::info_span;

/// Named validation metrics of a fine-tuning task (`val/accuracy`, …); empty in pretraining.
type TaskMetrics = Vec<(&'static str, f64)>;

/// Below this loss scale a 16-mixed run gives up: every step overflows.
const MIN_SCALE: f64 = 1.0 / (1u64 << 24) as f64;

/// Trains `cfg` as rank `opts.rank` of `opts.world`: per micro-batch forward and backward, per
/// optimizer step the all-reduce and the update, per epoch validation and checkpoints. `sync`
/// averages across workers, `on_event` hears of progress, and `control`, asked once per
/// optimizer step, can stop the run.
pub fn train(
    cfg: &ScModelForgeConfig,
    opts: &TrainOptions,
    sync: &mut dyn GradientSync,
    on_event: &mut dyn FnMut(TrainEvent),
    control: &mut dyn FnMut() -> Control,
) -> Result<TrainSummary, TrainError> {
    check_config(cfg, opts)?;
    let (resolved, backbone) = match &cfg.finetune {
        Some(_) => {
            let (c, b, replaced) = finetune::resolve(cfg).map_err(TrainError::Config)?;
            if !replaced.is_empty() {
                on_event(TrainEvent::Log(format!(
                    "finetune: {} are the pretrained checkpoint's ({}), whose weights and vocabulary were trained with them",
                    replaced.join(", "),
                    b.dir.display()
                )));
            }
            (Some(c), Some(b))
        }
        None => (None, None),
    };
    let cfg = resolved.as_ref().unwrap_or(cfg);
    match crate::device::select(cfg, opts)? {
        crate::device::Selected::Cpu => {
            let prec = model::precision_of(cfg.training.precision);
            if let Some(note) = crate::device::cpu_precision_note(prec) {
                on_event(TrainEvent::Log(note));
            }
            train_on(Cpu, None, cfg, opts, backbone, sync, on_event, control)
        }
        #[cfg(feature = "cuda")]
        crate::device::Selected::Cuda(dev) => {
            on_event(TrainEvent::Log(format!(
                "training on GPU {}",
                dev.describe()
            )));
            let nccl = crate::nccl::for_run(&dev, opts)?;
            train_on(dev, nccl, cfg, opts, backbone, sync, on_event, control)
        }
    }
}

/// [`train`] on the compute device `dev`; with `device_reduce`, gradients are averaged on the
/// device (NCCL) and only the step's totals go through `sync`. A fine-tuning config comes with
/// its pretrained `backbone` (see [`finetune::resolve`]).
#[allow(clippy::too_many_arguments)]
pub fn train_on<D: Device<f32> + Clone + 'static>(
    dev: D,
    device_reduce: Option<Box<dyn DeviceReduce<D>>>,
    cfg: &ScModelForgeConfig,
    opts: &TrainOptions,
    backbone: Option<Backbone>,
    sync: &mut dyn GradientSync,
    on_event: &mut dyn FnMut(TrainEvent),
    control: &mut dyn FnMut() -> Control,
) -> Result<TrainSummary, TrainError> {
    let mut trainer = Trainer::new(dev, cfg, opts, backbone, on_event)?;
    trainer.device_reduce = device_reduce;
    let mut stop = None;
    'epochs: while let Some(mut loader) = trainer.start_epoch(on_event)? {
        // One batch is read ahead, so that its arrays can go to the device while this one
        // computes (see `micro_step`); each batch keeps the loader position after it, and has
        // its masked genes hidden once, here.
        let mut pull = |trainer: &mut Trainer<D>| {
            let _data = trainer.data_span(loader.position()).entered();
            let batch = loader.next().map(|b| {
                b.map(|mut b| {
                    hide_masked(&mut b);
                    b
                })
            });
            (batch, loader.position())
        };
        let mut ahead = pull(&mut trainer);
        loop {
            let (batch, position) = ahead;
            let Some(batch) = batch else { break };
            ahead = pull(&mut trainer);
            let next = match &ahead.0 {
                Some(Ok(b)) => Some(b),
                _ => None,
            };
            let reduced = match trainer.micro_step(batch?, next, sync, control)? {
                MicroStep::Accumulating => continue,
                MicroStep::StepReady(reduced) => reduced,
                MicroStep::StopNow => {
                    stop = Some(Control::Stop);
                    break 'epochs;
                }
            };
            if let Some(how) = trainer.optimizer_step(reduced, position, on_event)? {
                stop = Some(how);
                break 'epochs;
            }
        }
        trainer.end_epoch(sync, on_event)?;
    }
    trainer.finish(stop, on_event)
}

/// What a micro-step leaves for the loop to do.
pub enum MicroStep {
    /// More micro-batches to accumulate before the optimizer step.
    Accumulating,
    /// The gradients are complete (and averaged over the workers): take the optimizer step.
    StepReady(Reduced),
    /// The caller said stop at once (a peer failed): no agreement, no checkpoint.
    StopNow,
}

/// The step's totals after the all-reduce, and how long it waited for it after backward.
pub struct Reduced {
    totals: StepTotals,
    allreduce: Duration,
}

/// Throughput and timing since the last Step event (or over the whole run).
#[derive(Default)]
struct Window {
    cells: f64,
    tokens: f64,
    seconds: f64,
    allreduce_seconds: f64,
    steps: u64,
}

impl Window {
    fn add(&mut self, cells: f64, tokens: f64, seconds: f64, allreduce_seconds: f64) {
        self.cells += cells;
        self.tokens += tokens;
        self.seconds += seconds;
        self.allreduce_seconds += allreduce_seconds;
        self.steps += 1;
    }
}

/// The training state on compute device `D` (the CPU by default): parameters, gradients and
/// AdamW's moments live in `D`'s buffers.
pub struct Trainer<'a, D: Device<f32> + 'static = Cpu> {
    cfg: &'a ScModelForgeConfig,
    opts: &'a TrainOptions,
    pipeline: Arc<Pipeline>,
    plan: ShardPlan,
    model: Box<dyn ScModel<D>>,
    /// Where the buffers live and the optimizer step runs.
    dev: D,
    /// The flat buffers: parameters and their gradients (one layout), AdamW's two moments
    /// (placed by `moments`).
    params: D::Mem,
    grads: D::Mem,
    exp_avg: D::Mem,
    exp_avg_sq: D::Mem,
    /// Averages gradients on the device (NCCL); None: through the host `sync`, overlapped.
    device_reduce: Option<Box<dyn DeviceReduce<D>>>,
    /// Everything a checkpoint records besides the buffers.
    state: TrainState,
    ckpt_root: PathBuf,
    config_yaml: String,
    vocab_json: Vec<u8>,
    /// Rank 0's metric loggers (`training.logger`).
    loggers: Option<Loggers>,
    schedule: Schedule,
    adam: AdamConfig,
    /// Parameters without weight decay (biases, LayerNorm), as scModelForge groups them.
    decay_free: Vec<std::ops::Range<usize>>,
    /// Fine-tuning: whether the backbone is frozen this epoch (only the head trains).
    backbone_frozen: bool,
    /// What checkpoints save: every parameter, or under LoRA only what trains.
    saved_layout: kernels::ParamLayout,
    /// Where the moments of what trains live (under LoRA: only those, packed).
    moments: Moments,
    /// Under LoRA: the ranges that train besides the head (adapters, biases).
    lora: Option<Vec<std::ops::Range<usize>>>,
    /// Under LoRA: the frozen ranges, whose gradients are dropped before the step.
    frozen: Vec<std::ops::Range<usize>>,
    /// 16-mixed's dynamic loss scale; None trains unscaled.
    scaler: Option<LossScaler>,
    micro_per_epoch: u64,
    accum: u64,
    /// The epoch being trained.
    epoch: u64,
    /// This rank's sums over the micro-batches of the current optimizer step.
    totals: StepTotals,
    step_start: Instant,
    /// Where the data stood after the last optimizer step.
    step_pos: DataPosition,
    since_log: Window,
    whole_run: Window,
    summary: TrainSummary,
    /// The open trace spans (epoch, step) and the training metrics.
    trace: TrainTrace,
}

impl<'a, D: Device<f32> + Clone + 'static> Trainer<'a, D> {
    /// Data, model and buffers for `cfg` as rank `opts.rank` of `opts.world` on `dev`, resumed
    /// from a checkpoint when asked; announces the run with [`TrainEvent::Start`].
    ///
    /// A fine-tuning config (`finetune` section) comes with its pretrained `backbone`, and
    /// with the backbone's model and tokenizer sections (see [`finetune::resolve`]).
    pub fn new(
        dev: D,
        cfg: &'a ScModelForgeConfig,
        opts: &'a TrainOptions,
        backbone: Option<Backbone>,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<Self, TrainError> {
        check_config(cfg, opts)?;
        let t = &cfg.training;
        let scaler = (t.precision == CfgPrecision::Fp16Mixed).then(LossScaler::default);
        let seed = t.seed as u64;
        if cfg.finetune.is_some() != backbone.is_some() {
            return Err(TrainError::Config(
                "a fine-tuning config and a pretrained backbone go together (train() resolves them with finetune::resolve)".into(),
            ));
        }
        let (pipeline, plan, model, backbone_params) = match backbone {
            None => {
                let pipeline = Pipeline::from_config(cfg)?;
                let plan = ShardPlan::for_dataset(&pipeline.dataset, t.val_split, seed)?;
                let spec = DataSpec {
                    vocab_size: pipeline.vocab().len(),
                    values_are_bins: cfg.tokenizer.strategy == TokenizerStrategy::BinnedExpression,
                };
                let prec = model::precision_of(t.precision);
                let model = model::build_on(dev.clone(), &cfg.model, spec, prec)?;
                (pipeline, plan, model, None)
            }
            Some(b) => {
                let (pipeline, plan, model) = finetune_setup(cfg, &b, on_event)?;
                (pipeline, plan, cpu_only(model)?, Some(b.params))
            }
        };
        let pipeline = Arc::new(pipeline);
        // The in-training assessment's labels are checked now, not after an epoch.
        if let (false, [path]) = (cfg.eval.benchmarks.is_empty(), cfg.data.paths.as_slice()) {
            crate::bench::check_labels(&crate::bench::benchmarks(cfg), Path::new(path))
                .map_err(|e| TrainError::Config(format!("{e:#}")))?;
        }
        let decay_free = super::param_groups::decay_free_ranges(model.layout());
        let layout = model.layout().clone();
        let n = layout.total();
        // LoRA: the adapters, trained biases and head train; the optimizer state and
        // checkpoints hold only those.
        let lora = model.lora_trainable();
        let (saved_layout, frozen, moments) = match (lora.clone(), model.head_range()) {
            (Some(mut train), Some(head)) => {
                train.push(head);
                let saved = layout.subset(|e| {
                    let r = e.view().range();
                    train.iter().any(|t| t.start <= r.start && r.end <= t.end)
                });
                let moments = Moments::only(&saved, &train);
                (saved, crate::finetune::lora::complement(&train, n), moments)
            }
            _ => (layout.clone(), Vec::new(), Moments::full(&layout)),
        };
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
        let micro_per_epoch = plan.steps(Split::Train, global_batch);
        if micro_per_epoch == 0 {
            return Err(TrainError::Config(format!(
                "the training split has {} cells, fewer than one global batch of {global_batch} (training.batch_size x workers)",
                plan.train.len()
            )));
        }
        let parameters = layout.entries().iter().map(|e| e.len()).sum();
        let mut trainer = Trainer {
            cfg,
            opts,
            model,
            params: {
                let mut p: Vec<f32> = layout.init_host(seed);
                // Fine-tuning: the backbone's parameters come first in the layout.
                if let Some(b) = &backbone_params {
                    p[..b.len()].copy_from_slice(b);
                }
                dev.upload(&p)
            },
            grads: dev.zeros(n),
            exp_avg: dev.zeros(moments.len),
            exp_avg_sq: dev.zeros(moments.len),
            device_reduce: None,
            dev,
            state: TrainState {
                format_version: checkpoint::FORMAT_VERSION,
                run_name: name.clone(),
                architecture: cfg.model.architecture.as_str().to_string(),
                global_step: 0,
                epoch: 0,
                position: DataPosition::default(),
                adam_t: 0,
                // The scaler's, written at save.
                loss_scale: 1.0,
                good_steps: 0,
                rng: RngState {
                    kind: "counter-based splitmix64 keyed by (seed, epoch, step, index)".into(),
                    seed: t.seed,
                },
                world_size: opts.world,
                global_batch,
                metrics: Metrics::default(),
                epoch_schedule: None,
            },
            ckpt_root: checkpoint_root(cfg, &opts.run_dir),
            config_yaml: run_cfg.to_yaml(),
            vocab_json: vocab_json(&pipeline),
            pipeline,
            plan,
            loggers: None,
            schedule: Schedule::new(t.optimizer.lr, t.scheduler.clone()),
            adam: AdamConfig {
                decoupled: t.optimizer.name == OptimizerName::AdamW,
                ..AdamConfig::adamw(t.optimizer.lr, t.optimizer.weight_decay)
            },
            decay_free,
            backbone_frozen: false,
            saved_layout,
            moments,
            lora,
            frozen,
            scaler,
            micro_per_epoch,
            accum: t.gradient_accumulation as u64,
            epoch: 0,
            totals: StepTotals::default(),
            step_start: Instant::now(),
            step_pos: DataPosition::default(),
            since_log: Window::default(),
            whole_run: Window::default(),
            summary: TrainSummary {
                run_name: name.clone(),
                parameters,
                ..Default::default()
            },
            trace: TrainTrace::new(&opts.trace_parent),
        };
        let resumed = trainer.resume(on_event)?;
        trainer.epoch = trainer.state.position.epoch;
        if opts.rank == 0 {
            let resumed_at = resumed.then_some(trainer.state.global_step);
            let loggers = Loggers::open(cfg, &opts.run_dir, resumed_at)?;
            on_event(TrainEvent::Log(loggers.announcement()));
            trainer.loggers = Some(loggers);
        }
        if let (Some(ft), Some(_)) = (&cfg.finetune, &trainer.lora) {
            let count =
                |l: &kernels::ParamLayout| -> usize { l.entries().iter().map(|e| e.len()).sum() };
            on_event(TrainEvent::Log(format!(
                "finetune.lora: rank {} adapters on {}; they train with the head ({} of {} parameters), the backbone's weights stay frozen{}",
                ft.lora.rank,
                ft.lora.target_modules().join(", "),
                count(&trainer.saved_layout),
                count(&layout),
                if ft.freeze_backbone || ft.freeze_backbone_epochs > 0 {
                    " (freeze_backbone and freeze_backbone_epochs do nothing under LoRA)"
                } else {
                    ""
                }
            )));
        }
        let steps_per_epoch = micro_per_epoch.div_ceil(trainer.accum);
        on_event(TrainEvent::Start {
            run_name: name,
            parameters,
            steps_per_epoch,
            total_steps: steps_per_epoch * t.max_epochs as u64,
            start_step: trainer.state.global_step,
        });
        Ok(trainer)
    }

    /// Loads the checkpoint `--resume` or `training.resume_from` names, if any; true when it
    /// did.
    fn resume(&mut self, on_event: &mut dyn FnMut(TrainEvent)) -> Result<bool, TrainError> {
        let resume = self
            .opts
            .resume_from
            .clone()
            .or_else(|| self.cfg.training.resume_from.as_ref().map(PathBuf::from));
        let Some(path) = resume else {
            return Ok(false);
        };
        let dir = checkpoint::resolve_resume(&path)?;
        let mut loaded = checkpoint::load_with(&dir, &self.saved_layout, &self.moments.layout)?;
        // Under LoRA the checkpoint holds what trains; the frozen rest is the backbone's.
        if !self.frozen.is_empty() {
            let now = self.host(&self.params).into_owned();
            for r in &self.frozen {
                loaded.params[r.clone()].copy_from_slice(&now[r.clone()]);
            }
        }
        let global_batch = self.state.global_batch;
        if loaded.state.global_batch != global_batch {
            on_event(TrainEvent::Log(format!(
                "warning: checkpoint was trained with global batch {}, this run uses {global_batch}; the data order of the current epoch changes",
                loaded.state.global_batch
            )));
        }
        self.params = self.dev.upload(&loaded.params);
        self.exp_avg = self.dev.upload(&loaded.exp_avg);
        self.exp_avg_sq = self.dev.upload(&loaded.exp_avg_sq);
        self.state = TrainState {
            run_name: self.state.run_name.clone(),
            world_size: self.opts.world,
            global_batch,
            ..loaded.state
        };
        if let Some(scaler) = self.scaler.as_mut() {
            scaler.scale = self.state.loss_scale;
            scaler.good_steps = self.state.good_steps;
        }
        on_event(TrainEvent::Log(format!(
            "resumed from {} at step {} (epoch {}, batch {})",
            dir.display(),
            self.state.global_step,
            self.state.position.epoch,
            self.state.position.step
        )));
        Ok(true)
    }

    /// The training loader of the next epoch, or None when `training.max_epochs` are done. A
    /// resumed run starts inside its epoch, at the batch after the checkpoint.
    pub fn start_epoch(
        &mut self,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<Option<Loader>, TrainError> {
        if self.epoch >= self.cfg.training.max_epochs as u64 {
            return Ok(None);
        }
        let epoch = self.epoch;
        let start = Position {
            epoch,
            step: if epoch == self.state.position.epoch {
                self.state.position.step
            } else {
                0
            },
        };
        let lo = LoaderOptions {
            rank: self.opts.rank,
            world_size: self.opts.world,
            batch_size: self.cfg.training.batch_size,
            num_workers: self.cfg.data.num_workers,
            split: Split::Train,
            mask: self.cfg.finetune.is_none(),
        };
        // Under LoRA the freezing settings do nothing (announced at the start).
        if let (Some(ft), None) = (&self.cfg.finetune, &self.lora) {
            // scModelForge: a backbone frozen for `freeze_backbone_epochs` thaws at that
            // epoch; otherwise `freeze_backbone` holds for the whole run.
            let frozen = if ft.freeze_backbone_epochs > 0 {
                epoch < ft.freeze_backbone_epochs as u64
            } else {
                ft.freeze_backbone
            };
            if frozen != self.backbone_frozen || epoch == start.epoch {
                on_event(TrainEvent::Log(format!(
                    "epoch {epoch}: backbone {}",
                    if frozen {
                        "frozen (only the head trains)"
                    } else {
                        "trains with the head"
                    }
                )));
            }
            self.backbone_frozen = frozen;
            self.model.set_backbone_trainable(!frozen);
        }
        let loader = Loader::new(Arc::clone(&self.pipeline), &self.plan, lo, start)?;
        self.trace.start_epoch(epoch);
        self.totals = StepTotals::default();
        self.step_start = Instant::now();
        self.step_pos = DataPosition {
            epoch,
            step: start.step,
        };
        Ok(Some(loader))
    }

    /// The span of waiting for the batch after `position` (none past the epoch's end).
    pub fn data_span(&mut self, position: Position) -> tracing::Span {
        if position.step >= self.micro_per_epoch {
            return tracing::Span::none();
        }
        self.trace.data(self.state.global_step)
    }

    /// Forward and backward of one micro-batch, accumulating into the gradients. On the last
    /// micro-batch of an optimizer step it also asks `control` whether to go on and averages
    /// gradients and totals over the workers: finished layers while backward goes on with the
    /// layers below (see `overlap`), the rest once backward is done. `next`, the batch after
    /// this one, is handed to the device to copy ahead while backward runs (GPUs). Both come
    /// with their masked genes hidden (`hide_masked`, as `train_on` reads them).
    pub fn micro_step(
        &mut self,
        batch: Batch,
        next: Option<&Batch>,
        sync: &mut dyn GradientSync,
        control: &mut dyn FnMut() -> Control,
    ) -> Result<MicroStep, TrainError> {
        let key = self.dropout_key(self.epoch, batch.step);
        let scale = self.loss_scale() as f32;
        let boundary =
            (batch.step + 1).is_multiple_of(self.accum) || batch.step + 1 == self.micro_per_epoch;
        let on_device = self.device_reduce.is_some() && self.opts.world > 1;
        let overlap = boundary && self.opts.world > 1 && !on_device;
        let step = self.state.global_step;
        // Forward, backward and the all-reduce are spans inside the step's.
        let step_span = self.trace.step(step).clone();
        let _in_step = step_span.enter();
        // The device path (NCCL): each finished layer is averaged on the device while backward
        // goes on; the rest after backward, below.
        let mut reduce = if boundary && on_device {
            self.device_reduce.as_deref_mut()
        } else {
            None
        };
        let (model, dev, params, grads) =
            (&mut self.model, &self.dev, &self.params, &mut self.grads);
        if let Some(r) = reduce.as_mut() {
            r.begin(dev, grads);
        }
        let mut ready_err = None;
        let totals = &mut self.totals;
        let mut out = std::thread::scope(|scope| -> Result<MicroStep, TrainError> {
            let mut comm = overlap.then(|| Overlap::start(scope, &mut *sync, BUCKET_FLOATS));
            // Layers' gradients reach the host while backward runs only where buffers are host
            // memory; on a GPU without NCCL, `finish` averages the whole buffer at the end.
            let early = dev.host_visible();
            let s = model.train_batch(params, grads, &batch, key, scale, &mut |range, g| {
                if let Some(r) = reduce.as_mut() {
                    if let Err(e) = r.ready(range) {
                        ready_err.get_or_insert(e);
                    }
                } else if let (Some(c), true) = (comm.as_mut(), early) {
                    c.ready(range, g)
                }
            })?;
            // Backward is queued on the device: the next batch's arrays are copied meanwhile.
            if let (Some(next), false) = (next, dev.host_visible()) {
                model.prefetch(next);
            }
            totals.loss_sum += s.sum;
            totals.targets += s.count;
            totals.cells += batch.batch_size as f64;
            totals.tokens += batch.attention_mask.iter().map(|&m| m as f64).sum::<f64>();
            if !boundary {
                return Ok(MicroStep::Accumulating);
            }
            // A stop at once needs no agreement; a checkpoint-and-stop does: ranks hear it at
            // different steps, so it is voted in the all-reduce.
            totals.stop_vote = match control() {
                Control::Continue => 0.0,
                Control::CheckpointAndStop => 1.0,
                Control::Stop => return Ok(MicroStep::StopNow),
            };
            let mut wire = totals.to_wire();
            let _allreduce =
                info_span!(target: TRACE_TARGET, "all-reduce", overlapped = overlap).entered();
            let allreduce = match comm {
                Some(c) => c
                    .finish(dev, grads, &mut wire)
                    .map_err(|message| TrainError::Sync { step, message })?,
                None => Duration::ZERO,
            };
            Ok(MicroStep::StepReady(Reduced {
                totals: StepTotals::from_wire(&wire),
                allreduce,
            }))
        })?;
        // The device path: what backward did not hand over yet is averaged now and waited for;
        // the totals (a few floats) go through the host `sync`.
        if let (MicroStep::StepReady(r), Some(reduce)) = (&mut out, reduce) {
            let start = Instant::now();
            let fail = |message| TrainError::Sync { step, message };
            if let Some(e) = ready_err {
                return Err(fail(e));
            }
            reduce.finish(&self.dev, &mut self.grads).map_err(fail)?;
            let mut wire = r.totals.to_wire();
            sync.all_reduce_mean(&mut wire).map_err(fail)?;
            r.totals = StepTotals::from_wire(&wire);
            r.allreduce = start.elapsed();
        }
        Ok(out)
    }

    /// Turns the summed gradients into the mean-loss gradient and takes the AdamW step (under
    /// 16-mixed, an overflowing step is skipped and the loss scale backs off). Then records the
    /// step and reports it every `log_every_n_steps`. `position` is the loader's position after
    /// the step. Returns how to stop when the run should stop after this step.
    pub fn optimizer_step(
        &mut self,
        reduced: Reduced,
        position: Position,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<Option<Control>, TrainError> {
        let t = &self.cfg.training;
        let r = reduced.totals;
        let count_mean = r.targets;
        let loss = if self.opts.world > 1 {
            r.loss_sum / count_mean.max(f64::MIN_POSITIVE)
        } else {
            self.totals.loss_sum / self.totals.targets.max(f64::MIN_POSITIVE)
        };
        let w = self.opts.world as f64;
        let (step_cells, step_tokens) = (r.cells * w, r.tokens * w);
        let stop_voted = r.stop_vote > 0.0;
        self.totals = StepTotals::default();
        let optimizer_span =
            info_span!(target: TRACE_TARGET, parent: self.trace.current(), "optimizer");
        let in_optimizer = optimizer_span.enter();
        // LoRA: the frozen weights' gradients (computed on the way to the adapters) are
        // dropped, so the norm, clipping and the step see only what trains.
        for r in &self.frozen {
            self.dev.fill_zero_range(&mut self.grads, r.clone());
        }
        let finite = loss.is_finite() && self.dev.all_finite(&self.grads);
        // Fine-tuning logs the head's rate (the group that always trains).
        let lr = match &self.cfg.finetune {
            Some(ft) => {
                ft.head_lr.unwrap_or(t.optimizer.lr) * self.schedule.factor(self.state.global_step)
            }
            None => self.schedule.lr(self.state.global_step),
        };
        let mut grad_norm = f64::NAN;
        if !finite {
            let Some(scaler) = self.scaler.as_mut() else {
                let checkpoint = self.save("last", self.step_pos, on_event)?;
                return Err(TrainError::NonFinite {
                    step: self.state.global_step,
                    epoch: self.epoch,
                    loss,
                    checkpoint,
                });
            };
            // Overflow under the loss scale: skip the step and back off.
            scaler.update(false);
            self.state.metrics.skipped_steps += 1;
            self.summary.skipped_steps += 1;
            on_event(TrainEvent::Log(format!(
                "16-mixed: overflow at step {}, skipped; loss scale now {}",
                self.state.global_step, scaler.scale
            )));
            if scaler.scale < MIN_SCALE {
                return Err(TrainError::LossScaleUnderflow {
                    step: self.state.global_step,
                    scale: scaler.scale,
                });
            }
        } else {
            // The mean-loss gradient: divide by the targets of the global batch (and the scale).
            let loss_scale = self.loss_scale();
            let (dev, grads) = (&self.dev, &mut self.grads);
            if count_mean > 0.0 {
                dev.scale(grads, 1.0 / (loss_scale * count_mean));
            }
            grad_norm = if t.gradient_clip > 0.0 {
                dev.clip_grad_norm(grads, t.gradient_clip)
            } else {
                dev.global_norm(grads)
            };
            self.state.adam_t += 1;
            match (self.model.head_range(), &self.cfg.finetune) {
                (Some(head), Some(ft)) => {
                    // Two parameter groups, each with its own base rate under the same
                    // schedule; a frozen backbone is not stepped at all.
                    let factor = self.schedule.factor(self.state.global_step);
                    let base = t.optimizer.lr;
                    let mut groups = vec![(head.clone(), ft.head_lr.unwrap_or(base))];
                    let backbone_lr = ft.backbone_lr.unwrap_or(base);
                    if let Some(lora) = &self.lora {
                        groups.extend(lora.iter().map(|r| (r.clone(), backbone_lr)));
                    } else if !self.backbone_frozen {
                        groups.push((0..head.start, backbone_lr));
                    }
                    for (range, group_lr) in groups.into_iter().filter(|(r, _)| !r.is_empty()) {
                        let cfg_step = AdamConfig {
                            lr: group_lr * factor,
                            ..self.adam
                        };
                        let moments_at = self.moments.at(range.start);
                        dev.adam_step_in(
                            &cfg_step,
                            self.state.adam_t,
                            range,
                            &mut self.params,
                            grads,
                            &mut self.exp_avg,
                            &mut self.exp_avg_sq,
                            moments_at,
                            &self.decay_free,
                        );
                    }
                }
                _ => {
                    let cfg_step = AdamConfig { lr, ..self.adam };
                    dev.adam_step(
                        &cfg_step,
                        self.state.adam_t,
                        &mut self.params,
                        grads,
                        &mut self.exp_avg,
                        &mut self.exp_avg_sq,
                        &self.decay_free,
                    );
                }
            }
            if let Some(scaler) = self.scaler.as_mut() {
                scaler.update(true);
            }
        }
        self.dev.fill_zero(&mut self.grads);
        drop(in_optimizer);

        self.state.global_step += 1;
        self.state.epoch = self.epoch;
        self.state.metrics.train_loss = Some(loss);
        self.step_pos = DataPosition {
            epoch: position.epoch,
            step: position.step,
        };
        self.state.position = self.step_pos;
        self.summary.losses.push(loss);
        let seconds = self.step_start.elapsed().as_secs_f64();
        let allreduce = reduced.allreduce.as_secs_f64();
        self.trace.end_step(loss, seconds, allreduce);
        self.whole_run
            .add(step_cells, step_tokens, seconds, allreduce);
        self.since_log
            .add(step_cells, step_tokens, seconds, allreduce);
        let gs = self.state.global_step;
        if gs.is_multiple_of(t.log_every_n_steps as u64) {
            self.log_step(loss, lr, grad_norm, on_event)?;
        }
        self.step_start = Instant::now();
        let reached_max_steps = self.opts.max_steps.is_some_and(|m| gs >= m);
        if reached_max_steps || stop_voted {
            self.summary.interrupted = stop_voted && !reached_max_steps;
            return Ok(Some(Control::CheckpointAndStop));
        }
        Ok(None)
    }

    /// A Step event and the loggers' record of the steps since the last one.
    fn log_step(
        &mut self,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<(), TrainError> {
        let (gs, epoch) = (self.state.global_step, self.epoch);
        let wdw = std::mem::take(&mut self.since_log);
        let secs = wdw.seconds.max(1e-9);
        let (cps, tps) = (wdw.cells / secs, wdw.tokens / secs);
        let steps = wdw.steps.max(1) as f64;
        self.trace.logged(loss, lr, grad_norm, cps, tps);
        let metrics = StepMetrics {
            epoch,
            step: gs,
            loss,
            lr,
            grad_norm,
            cells_per_s: cps,
            tokens_per_s: tps,
            step_seconds: wdw.seconds / steps,
            allreduce_seconds: wdw.allreduce_seconds / steps,
        };
        on_event(TrainEvent::from(&metrics));
        if let Some(l) = self.loggers.as_mut() {
            l.step(&metrics)?;
        }
        Ok(())
    }

    /// Validation over the whole validation split, the best-k checkpoints by validation loss,
    /// and the `last` checkpoint.
    pub fn end_epoch(
        &mut self,
        sync: &mut dyn GradientSync,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<(), TrainError> {
        let epoch = self.epoch;
        let val = self.validate(sync)?;
        let gs = self.state.global_step;
        self.state.position = DataPosition {
            epoch: epoch + 1,
            step: 0,
        };
        if let Some((v, metrics)) = val {
            self.state.metrics.val_loss = Some(v);
            self.summary.val_losses.push((epoch, v));
            on_event(TrainEvent::Validation {
                epoch,
                step: gs,
                loss: v,
            });
            if !metrics.is_empty() {
                let text: Vec<String> =
                    metrics.iter().map(|(n, x)| format!("{n} {x:.4}")).collect();
                on_event(TrainEvent::Log(format!(
                    "epoch {epoch} validation: val/loss {v:.4}, {}",
                    text.join(", ")
                )));
            }
            if let Some(l) = self.loggers.as_mut() {
                if metrics.is_empty() {
                    l.validation(epoch, gs, v)?;
                } else {
                    l.validation_metrics(epoch, gs, v, &metrics)?;
                }
            }
            self.save_if_best(v, on_event)?;
        }
        self.summary.last_checkpoint = self.save("last", self.state.position, on_event)?;
        self.assess(epoch, on_event)?;
        self.epoch += 1;
        self.trace.end_epoch();
        Ok(())
    }

    /// scModelForge's in-training assessment: `eval.benchmarks` every `eval.every_n_epochs`
    /// epochs (epoch 0 first, as its callback counts), after the epoch's checkpoint. Every
    /// rank embeds every cell of the training file with the current weights (`eval.batch_size`
    /// cells per pass, dropout off) and runs the benchmarks as `coordinator benchmark` does,
    /// as Lightning runs the package's callback on every rank: the ranks stay in step, so none
    /// waits out an all-reduce timeout meanwhile. The weights are the same everywhere, so are
    /// the results; rank 0 logs them as `assessment/{benchmark}/val/{metric}` (the package
    /// names the dataset it assesses on "val").
    fn assess(
        &mut self,
        epoch: u64,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<(), TrainError> {
        let e = &self.cfg.eval;
        let due = !e.benchmarks.is_empty()
            && e.every_n_epochs > 0
            && epoch.is_multiple_of(e.every_n_epochs as u64);
        if !due {
            return Ok(());
        }
        let span = info_span!(target: TRACE_TARGET, parent: self.trace.current(), "assessment");
        let _in_assessment = span.enter();
        let t0 = Instant::now();
        let n = self.pipeline.dataset.n_cells();
        let dim = self.model.embedding_dim();
        let emb = crate::embed::embed_dataset(
            self.model.as_mut(),
            &self.params,
            &self.pipeline,
            e.batch_size.max(1),
            &mut |_, _| {},
        )
        .map_err(|err| TrainError::Config(format!("eval.benchmarks at epoch {epoch}: {err:#}")))?;
        let x: Vec<f64> = emb.iter().map(|&v| v as f64).collect();
        let Some(path) = self.cfg.data.paths.first() else {
            return Ok(());
        };
        let specs = crate::bench::benchmarks(self.cfg);
        let results =
            crate::bench::run_specs(&x, dim, Path::new(path), "val", &specs).map_err(|err| {
                TrainError::Config(format!("eval.benchmarks at epoch {epoch}: {err:#}"))
            })?;
        let metrics: Vec<(String, f64)> = results
            .iter()
            .flat_map(|r| {
                r.metrics.iter().map(move |(k, v)| {
                    (
                        format!("assessment/{}/{}/{k}", r.benchmark_name, r.dataset_name),
                        *v,
                    )
                })
            })
            .collect();
        if self.opts.rank != 0 {
            return Ok(());
        }
        let text: Vec<String> = metrics
            .iter()
            .map(|(k, v)| format!("{} {v:.4}", k.trim_start_matches("assessment/")))
            .collect();
        on_event(TrainEvent::Log(format!(
            "epoch {epoch} assessment ({n} cells, {:.1}s): {}",
            t0.elapsed().as_secs_f64(),
            text.join(", ")
        )));
        let gs = self.state.global_step;
        if let Some(l) = self.loggers.as_mut() {
            l.assessment(epoch, gs, &metrics)?;
        }
        Ok(())
    }

    /// Keeps the `training.save_top_k` checkpoints with the lowest validation loss.
    fn save_if_best(
        &mut self,
        v: f64,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<(), TrainError> {
        let (k, epoch, gs) = (
            self.cfg.training.save_top_k,
            self.epoch,
            self.state.global_step,
        );
        let best = &self.state.metrics.best;
        let qualifies = k > 0 && (best.len() < k || best.last().is_some_and(|(b, _)| v < *b));
        if !qualifies {
            return Ok(());
        }
        let ck_name = format!("epoch={epoch}-step={gs}-val_loss={v:.4}");
        let mut best = self.state.metrics.best.clone();
        best.push((v, ck_name.clone()));
        best.sort_by(|a, b| a.0.total_cmp(&b.0));
        let evicted: Vec<String> = best.drain(k.min(best.len())..).map(|x| x.1).collect();
        self.state.metrics.best = best;
        self.save(&ck_name, self.state.position, on_event)?;
        if self.opts.rank == 0 {
            for e in evicted {
                let p = self.ckpt_root.join(&e);
                if p.exists() {
                    let _ = std::fs::remove_dir_all(&p);
                }
            }
        }
        Ok(())
    }

    /// Saves the `last` checkpoint when the run stopped early with a checkpoint, and sums up.
    pub fn finish(
        mut self,
        stop: Option<Control>,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<TrainSummary, TrainError> {
        if let Some(c) = stop {
            self.summary.stopped_early = true;
            if c == Control::Stop {
                self.summary.interrupted = true;
            }
            if c == Control::CheckpointAndStop {
                self.summary.last_checkpoint = self.save("last", self.state.position, on_event)?;
            }
        }
        let run = &self.whole_run;
        let mut summary = self.summary;
        summary.global_step = self.state.global_step;
        summary.best_checkpoint = self
            .state
            .metrics
            .best
            .first()
            .map(|(_, n)| self.ckpt_root.join(n));
        summary.params_hash =
            params_hash(&self.dev.read(&self.params, 0..self.dev.len(&self.params)));
        summary.train_seconds = run.seconds;
        summary.cells_per_s = run.cells / run.seconds.max(1e-9);
        summary.tokens_per_s = run.tokens / run.seconds.max(1e-9);
        Ok(summary)
    }

    /// Rank 0 writes checkpoint `name` with the data at `position`; other ranks write nothing.
    fn save(
        &self,
        name: &str,
        position: DataPosition,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<Option<PathBuf>, TrainError> {
        if self.opts.rank != 0 {
            return Ok(None);
        }
        let span =
            info_span!(target: TRACE_TARGET, parent: self.trace.current(), "checkpoint", name);
        let _in_checkpoint = span.enter();
        let state = TrainState {
            position,
            loss_scale: self.loss_scale(),
            good_steps: self.scaler.as_ref().map_or(0, |s| s.good_steps),
            ..self.state.clone()
        };
        // Host views: borrowed on the CPU backend, a download on a GPU.
        let (params, exp_avg, exp_avg_sq) = (
            self.host(&self.params),
            self.host(&self.exp_avg),
            self.host(&self.exp_avg_sq),
        );
        let snap = Snapshot {
            layout: &self.saved_layout,
            params: &params,
            moments_layout: &self.moments.layout,
            exp_avg: &exp_avg,
            exp_avg_sq: &exp_avg_sq,
            state: &state,
            config_yaml: &self.config_yaml,
            data_file: ("vocab.json", &self.vocab_json),
        };
        let path = checkpoint::save(&self.ckpt_root, name, &snap)?;
        on_event(TrainEvent::Checkpoint {
            step: self.state.global_step,
            path: path.clone(),
        });
        Ok(Some(path))
    }

    /// A whole buffer on the host: borrowed on the CPU backend, downloaded from a GPU.
    fn host<'m>(&self, m: &'m D::Mem) -> std::borrow::Cow<'m, [f32]> {
        self.dev.read(m, 0..self.dev.len(m))
    }

    /// The factor on the loss before backward: 16-mixed's dynamic scale, else 1.
    fn loss_scale(&self) -> f64 {
        self.scaler.as_ref().map_or(1.0, |s| s.scale)
    }

    /// Dropout masks differ per rank, epoch and micro-batch.
    fn dropout_key(&self, epoch: u64, micro_step: u64) -> RngKey {
        let seed = self.cfg.training.seed as u64;
        let rank_mix = kernels::rng::mix64(self.opts.rank as u64 ^ 0xA5A5_5A5A);
        RngKey::new(seed ^ rank_mix, (epoch << 32) | micro_step, 0)
    }

    /// Mean validation loss over the whole validation split (all ranks) and the model's task
    /// metrics (fine-tuning), None without a validation split.
    fn validate(
        &mut self,
        sync: &mut dyn GradientSync,
    ) -> Result<Option<(f64, TaskMetrics)>, TrainError> {
        if self.plan.val.is_empty() {
            return Ok(None);
        }
        let span = info_span!(target: TRACE_TARGET, parent: self.trace.current(), "validation");
        let _in_validation = span.enter();
        let lo = LoaderOptions {
            rank: self.opts.rank,
            world_size: self.opts.world,
            batch_size: self.cfg.training.batch_size,
            num_workers: self.cfg.data.num_workers.min(2),
            split: Split::Val,
            mask: self.cfg.finetune.is_none(),
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
        let mut task_sums = self.model.take_eval_sums();
        if self.opts.world > 1 {
            let mut buf = vec![sum as f32, count as f32];
            buf.extend(task_sums.iter().map(|&x| x as f32));
            sync.all_reduce_mean(&mut buf)
                .map_err(|message| TrainError::Sync {
                    step: self.state.global_step,
                    message,
                })?;
            sum = buf[0] as f64;
            count = buf[1] as f64;
            // Means back to sums: counts stay whole numbers.
            let w = self.opts.world as f64;
            for (s, &b) in task_sums.iter_mut().zip(&buf[2..]) {
                *s = b as f64 * w;
            }
        }
        let metrics = if task_sums.is_empty() {
            Vec::new()
        } else {
            self.model.eval_metrics(&task_sums)
        };
        Ok((count > 0.0).then(|| (sum / count, metrics)))
    }
}

/// The data, split and model of a fine-tuning run: the files read with the backbone's
/// vocabulary, no masking, labels from `obs[finetune.label_key]`, a split stratified by class
/// for classification, and the backbone with its task head.
/// A model that exists for the CPU backend only (fine-tuning's), as the trainer's device's:
/// Ok exactly when `D` is [`Cpu`].
fn cpu_only<D: Device<f32> + 'static>(
    model: Box<dyn ScModel>,
) -> Result<Box<dyn ScModel<D>>, TrainError> {
    let any: Box<dyn std::any::Any> = Box::new(model);
    any.downcast::<Box<dyn ScModel<D>>>()
        .map(|m| *m)
        .map_err(|_| {
            TrainError::Config(
                "fine-tuning runs on the CPU in this build; remove training.num_gpus".into(),
            )
        })
}

fn finetune_setup(
    cfg: &ScModelForgeConfig,
    backbone: &Backbone,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<(Pipeline, ShardPlan, Box<dyn ScModel>), TrainError> {
    let t = &cfg.training;
    let Some(ft) = &cfg.finetune else {
        return Err(TrainError::Config("no finetune section".into()));
    };
    let files = data::dataset::open_data(&cfg.data, None)?;
    let dataset = data::dataset::Dataset::new(files, backbone.vocab.clone());
    for (f, &unknown) in dataset.files().iter().zip(dataset.unknown_genes()) {
        if unknown >= f.n_vars() {
            return Err(TrainError::Config(format!(
                "data.paths: none of the {} genes of {} is in the pretrained checkpoint's vocabulary ({} genes, {})",
                f.n_vars(),
                f.path().display(),
                backbone.vocab.n_genes(),
                backbone.dir.display()
            )));
        }
    }
    let labels = finetune::labels::read(&dataset, ft).map_err(TrainError::Config)?;
    let mut pipeline = Pipeline::with_dataset(cfg, dataset)?;
    pipeline.masker = None;
    let nnz = pipeline.dataset.row_nnz()?;
    let offsets = pipeline.dataset.file_offsets();
    let seed = t.seed as u64;
    let block = data::plan::DEFAULT_BLOCK_SIZE;
    let plan = match &labels {
        Labels::Classes { names, of_cell } => {
            on_event(TrainEvent::Log(format!(
                "finetune: {} classes in obs/{}: {}",
                names.len(),
                ft.label_key,
                names.join(", ")
            )));
            ShardPlan::stratified(offsets, &nnz, of_cell, names, t.val_split, seed, block)?
        }
        Labels::Values(_) => ShardPlan::new(offsets, &nnz, t.val_split, seed, block)?,
    };
    let spec = DataSpec {
        vocab_size: pipeline.vocab().len(),
        values_are_bins: cfg.tokenizer.strategy == TokenizerStrategy::BinnedExpression,
    };
    let prec = model::precision_of(t.precision);
    let trunk = model::build(&cfg.model, spec, prec)?;
    if trunk.layout().total() != backbone.params.len() {
        return Err(TrainError::Config(format!(
            "the pretrained checkpoint {} holds {} parameter values, its model section builds {}",
            backbone.dir.display(),
            backbone.params.len(),
            trunk.layout().total()
        )));
    }
    let m = FinetuneModel::new(trunk, ft, std::sync::Arc::new(labels), prec)
        .map_err(TrainError::Config)?;
    Ok((pipeline, plan, Box::new(m)))
}

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
    if let Some(why) = run::support::unsupported(cfg) {
        return bad(why);
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

/// Hides every masked position of a batch completely (see the module docs of `train`).
fn hide_masked(batch: &mut Batch) {
    for (id, &l) in batch.gene_ids.iter_mut().zip(&batch.labels) {
        if l != IGNORE_INDEX {
            *id = MASK;
        }
    }
}
