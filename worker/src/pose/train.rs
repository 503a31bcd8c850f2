//! Training a pose model (sleap-nn's UNet with a confidence-map head) as one worker of a run,
//! with the same contract as the single-cell trainer: a [`GradientSync`] averages gradients
//! across workers every step, [`TrainEvent`]s report progress, `control` can stop the run, and
//! rank 0 writes checkpoints that a restarted run resumes from.
//!
//! What sleap-nn's trainer does, done here: an epoch is `train_steps_per_epoch` steps (default:
//! the batches in the training data, at least `min_train_steps_per_epoch`), cycling through a
//! seeded shuffle of the training samples; the loss is the mean squared error over every
//! confidence-map value; Adam or AdamW at `optimizer.lr`; validation loss once per epoch drives
//! the learning-rate scheduler, early stopping and the best checkpoint.
//!
//! **World-size invariance.** Each step's global batch is `world × batch_size` consecutive
//! samples of the epoch's order; rank r takes its slice. The gradient of each rank's mean loss,
//! averaged by the all-reduce, is the gradient of the global batch's mean loss.

use std::path::PathBuf;
use std::time::Instant;

use configs::sleap::{ActiveScheduler, OhkmConfig, OptimizerName, SleapNnConfig, ThresholdMode};
use configs::ConfigRoot;
use data::pose::dataset::{split, HeadTargets, Item, PoseDataset};
use data::pose::peaks::find_instance_crop_size;
use data::pose::peaks::{global_peaks, local_peaks, Refinement};
use data::pose::targets::CentroidRule;
use data::pose::viz::{render_prediction, write_png};
use data::pose::Skeleton;
use data::rng::{CounterRng, Stream};
use kernels::backend::ConvDevice;
use kernels::optim::AdamConfig;
use kernels::{Cpu, Device, Precision};

use super::loss::pose_loss;
use super::spec;
use super::unet::{UNetModel, UNetRun};
use crate::checkpoint::{
    self, DataPosition, EpochSchedule, Metrics, RngState, Snapshot, TrainState, FORMAT_VERSION,
};
use crate::loggers::csv::CsvLogger;
use crate::sync::{DeviceReduce, GradientSync};
use crate::train::{Control, TrainError, TrainEvent, TrainOptions, TrainSummary};

/// The training labels files: `data_config.train_labels_path`, required here.
pub fn train_paths(cfg: &SleapNnConfig) -> Result<Vec<PathBuf>, TrainError> {
    match &cfg.data_config.train_labels_path {
        Some(p) if !p.is_empty() => Ok(p.iter().map(PathBuf::from).collect()),
        _ => Err(TrainError::Config(
            "data_config.train_labels_path is null: name the labels, e.g. --set \
             data_config.train_labels_path=[labels.pkg.slp]"
                .into(),
        )),
    }
}

/// sleap-nn's automatic crop size for centered-instance models over the training samples'
/// instances ([`data::pose::peaks::find_instance_crop_size`]).
fn auto_crop_size(cfg: &SleapNnConfig, ds: &PoseDataset, max_stride: usize) -> usize {
    let p = &cfg.data_config.preprocessing;
    let rule = match cfg.model_config.head_configs.centered_instance.as_ref() {
        Some(h) => h
            .confmaps
            .anchor_part
            .as_ref()
            .and_then(|a| ds.skeleton().nodes.iter().position(|n| n == a))
            .map_or(CentroidRule::CenterOfMass, CentroidRule::Anchor),
        None => CentroidRule::CenterOfMass,
    };
    let instances: Vec<Vec<[f64; 2]>> = ds
        .items()
        .iter()
        .flat_map(|it| {
            ds.labels(it.source).frames[it.frame]
                .user_instances()
                .map(|i| i.points.clone())
        })
        .collect();
    find_instance_crop_size(
        &instances,
        rule,
        p.crop_padding.unwrap_or(0),
        max_stride,
        p.min_crop_size,
    )
}

/// metrics.csv columns, sorted as Lightning's CSV logger writes them.
const CSV_COLUMNS: [&str; 8] = [
    "epoch",
    "learning_rate",
    "step",
    "train/frames_per_sec",
    "train/grad_norm",
    "train/loss",
    "train/step_time_ms",
    "val/loss",
];

/// Learning rate per epoch from `trainer_config.lr_scheduler`, as sleap-nn's schedulers step
/// once per epoch.
struct LrSchedule {
    base: f64,
    lr: f64,
    // ReduceLROnPlateau state.
    best: f64,
    bad_epochs: usize,
    cooldown: usize,
}

impl LrSchedule {
    fn new(base: f64) -> Self {
        LrSchedule {
            base,
            lr: base,
            best: f64::MAX, // finite: the state is saved as JSON
            bad_epochs: 0,
            cooldown: 0,
        }
    }

    /// The rate for `epoch` (0-based) of `max_epochs`, after the previous epoch's `val_loss`.
    fn at_epoch(&mut self, cfg: &SleapNnConfig, epoch: usize, prev_val: Option<f64>) -> f64 {
        let t = &cfg.trainer_config;
        let Some(active) = t.lr_scheduler.as_ref().and_then(|s| s.active()) else {
            return self.base;
        };
        let max_epochs = t.max_epochs as f64;
        let e = epoch as f64;
        self.lr = match active {
            ActiveScheduler::StepLr(c) => {
                self.base * c.gamma.powi((epoch / c.step_size.max(1)) as i32)
            }
            ActiveScheduler::CosineAnnealingWarmup(c) => {
                let (w, total) = (
                    c.warmup_epochs as f64,
                    c.max_epochs.map_or(max_epochs, |m| m as f64),
                );
                if e < w {
                    c.warmup_start_lr + (self.base - c.warmup_start_lr) * e / w.max(1.0)
                } else {
                    let prog = ((e - w) / (total - w).max(1.0)).clamp(0.0, 1.0);
                    c.eta_min
                        + 0.5
                            * (self.base - c.eta_min)
                            * (1.0 + (std::f64::consts::PI * prog).cos())
                }
            }
            ActiveScheduler::LinearWarmupLinearDecay(c) => {
                let (w, total) = (
                    c.warmup_epochs as f64,
                    c.max_epochs.map_or(max_epochs, |m| m as f64),
                );
                if e < w {
                    c.warmup_start_lr + (self.base - c.warmup_start_lr) * e / w.max(1.0)
                } else {
                    let prog = ((e - w) / (total - w).max(1.0)).clamp(0.0, 1.0);
                    self.base + (c.end_lr - self.base) * prog
                }
            }
            ActiveScheduler::ReduceLrOnPlateau(c) => {
                if let Some(v) = prev_val {
                    let better = match c.threshold_mode {
                        ThresholdMode::Abs => v < self.best - c.threshold,
                        ThresholdMode::Rel => v < self.best * (1.0 - c.threshold),
                    };
                    if better {
                        self.best = v;
                        self.bad_epochs = 0;
                    } else {
                        self.bad_epochs += 1;
                    }
                    if self.cooldown > 0 {
                        self.cooldown -= 1;
                        self.bad_epochs = 0;
                    }
                    if self.bad_epochs > c.patience {
                        let floor = c.min_lr.values().first().copied().unwrap_or(0.0);
                        self.lr = (self.lr * c.factor).max(floor);
                        self.cooldown = c.cooldown;
                        self.bad_epochs = 0;
                    }
                }
                self.lr
            }
        };
        self.lr
    }
}

fn schedule_state(s: &LrSchedule, e: &EarlyStop) -> EpochSchedule {
    EpochSchedule {
        lr: s.lr,
        plateau_best: s.best,
        plateau_bad_epochs: s.bad_epochs,
        plateau_cooldown: s.cooldown,
        early_best: e.best,
        early_bad_epochs: e.bad,
    }
}

/// Early stopping on the validation loss (`trainer_config.early_stopping`).
struct EarlyStop {
    best: f64,
    bad: usize,
}

/// The skeleton as `skeleton.json` (a checkpoint's data file): nodes, edges, symmetries.
fn skeleton_json(s: &Skeleton) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "name": s.name,
        "nodes": s.nodes,
        "edges": s.edges,
        "symmetries": s.symmetries,
    }))
    .unwrap_or_default()
}

struct Data {
    train: PoseDataset,
    train_items: Vec<Item>,
    /// The validation samples and the dataset they index.
    val: Option<PoseDataset>,
    val_items: Vec<Item>,
}

fn open_data(cfg: &SleapNnConfig) -> Result<(Data, spec::Built), TrainError> {
    let paths = train_paths(cfg)?;
    // Opened with a provisional spec to learn the skeleton and the crop size, which the real
    // spec depends on.
    let probe = spec::probe_spec(cfg);
    let ds = PoseDataset::open(&paths, probe)?;
    let skeleton = ds.skeleton().clone();
    let max_stride = cfg
        .resolved()
        .model_config
        .backbone_config
        .unet
        .as_ref()
        .map_or(16, |u| u.max_stride);
    let crop = auto_crop_size(cfg, &ds, max_stride);
    let built = spec::build(cfg, &skeleton, crop).map_err(TrainError::Config)?;
    let train = ds.with_spec(built.spec.clone());
    let all = train.items().to_vec();
    let d = &cfg.data_config;
    let seed = cfg.trainer_config.seed.unwrap_or(0) as u64;
    let (train_items, val, val_items) = if d.use_same_data_for_val {
        (all.clone(), None, all.clone())
    } else if let Some(v) = d.val_labels_path.as_ref().filter(|v| !v.is_empty()) {
        let mut vs = built.spec.clone();
        vs.augment = None;
        let val = PoseDataset::open(&v.iter().map(PathBuf::from).collect::<Vec<_>>(), vs)?;
        let items = val.items().to_vec();
        (all.clone(), Some(val), items)
    } else {
        let (t, v) = split(&all, d.validation_fraction, seed);
        (t, None, v)
    };
    if train_items.is_empty() {
        return Err(TrainError::Config(format!(
            "data_config.validation_fraction {} leaves no training frame of {}",
            d.validation_fraction,
            all.len()
        )));
    }
    Ok((
        Data {
            train,
            train_items,
            val,
            val_items,
        },
        built,
    ))
}

/// Trains the pose model `cfg` describes as rank `opts.rank` of `opts.world`.
pub fn train_pose(
    cfg: &SleapNnConfig,
    opts: &TrainOptions,
    sync: &mut dyn GradientSync,
    on_event: &mut dyn FnMut(TrainEvent),
    control: &mut dyn FnMut() -> Control,
) -> Result<TrainSummary, TrainError> {
    match crate::device::select_pose(cfg, opts)? {
        crate::device::Selected::Cpu => {
            train_pose_on(Cpu, None, cfg, opts, sync, on_event, control)
        }
        #[cfg(feature = "cuda")]
        crate::device::Selected::Cuda(dev) => {
            on_event(TrainEvent::Log(format!(
                "training on GPU {}",
                dev.describe()
            )));
            let nccl = crate::nccl::for_run(&dev, opts)?;
            train_pose_on(dev, nccl, cfg, opts, sync, on_event, control)
        }
    }
}

/// Averages `grads` over the workers: on the device through `device_reduce` (NCCL) when
/// given, else through the host `sync` (in place on the CPU; a GPU's buffer goes through the
/// host and back).
fn average_grads<D: Device<f32>>(
    dev: &D,
    grads: &mut D::Mem,
    device_reduce: Option<&mut Box<dyn DeviceReduce<D>>>,
    sync: &mut dyn GradientSync,
) -> Result<(), String> {
    if let Some(r) = device_reduce {
        r.begin(dev, grads);
        r.ready(0..dev.len(grads))?;
        return r.finish(dev, grads);
    }
    match dev.host_mut(grads) {
        Some(g) => sync.all_reduce_grads_mean(g),
        None => {
            let mut host = dev.download(grads);
            sync.all_reduce_grads_mean(&mut host)?;
            dev.write(grads, 0, &host);
            Ok(())
        }
    }
}

/// [`train_pose`] on the compute device `dev` (parameters, gradients, the optimizer's moments
/// and every activation live in its buffers; the loss on the confidence maps is computed on the
/// host, as the targets are made there).
#[allow(clippy::too_many_arguments)]
pub fn train_pose_on<D: ConvDevice<f32>>(
    dev: D,
    mut device_reduce: Option<Box<dyn DeviceReduce<D>>>,
    cfg: &SleapNnConfig,
    opts: &TrainOptions,
    sync: &mut dyn GradientSync,
    on_event: &mut dyn FnMut(TrainEvent),
    control: &mut dyn FnMut() -> Control,
) -> Result<TrainSummary, TrainError> {
    let (data, built) = open_data(cfg)?;
    let t = &cfg.trainer_config;
    let model = UNetModel::new(built.plan.clone(), Precision::F32);
    let layout = model.layout().clone();
    let seed = t.seed.unwrap_or(0) as u64;
    let mut params = layout.init_host::<f32>(seed);
    let (mut exp_avg, mut exp_avg_sq) =
        (vec![0.0f32; layout.total()], vec![0.0f32; layout.total()]);
    let run_name = t.run_name.clone().unwrap_or_else(|| {
        opts.run_dir
            .file_name()
            .map_or("pose".into(), |n| n.to_string_lossy().into_owned())
    });
    let ckpt_root = opts.run_dir.join("checkpoints");
    let batch = t.train_data_loader.batch_size.max(1);
    let global_batch = batch * opts.world;
    let n_train = data.train_items.len();
    let steps_per_epoch = t
        .train_steps_per_epoch
        .unwrap_or_else(|| {
            n_train
                .div_ceil(global_batch)
                .max(t.min_train_steps_per_epoch)
        })
        .max(1) as u64;
    let max_epochs = t.max_epochs as u64;
    let mut state = TrainState {
        format_version: FORMAT_VERSION,
        run_name: run_name.clone(),
        architecture: "unet".into(),
        global_step: 0,
        epoch: 0,
        position: DataPosition::default(),
        adam_t: 0,
        loss_scale: 1.0,
        good_steps: 0,
        rng: RngState {
            kind: "counter-splitmix64".into(),
            seed: seed as i64,
        },
        world_size: opts.world,
        global_batch,
        metrics: Metrics::default(),
        epoch_schedule: None,
    };
    if let Some(dir) = &opts.resume_from {
        let l = checkpoint::load(&checkpoint::resolve_resume(dir)?, &layout)?;
        params = l.params;
        exp_avg = l.exp_avg;
        exp_avg_sq = l.exp_avg_sq;
        state = l.state;
        on_event(TrainEvent::Log(format!(
            "resumed from {} at step {}",
            l.dir.display(),
            state.global_step
        )));
    }
    let (mut params, mut exp_avg, mut exp_avg_sq) = (
        dev.upload(&params),
        dev.upload(&exp_avg),
        dev.upload(&exp_avg_sq),
    );
    // The config as trained: an automatic crop size is written in, so prediction crops alike.
    let config_yaml = {
        let mut c = cfg.clone();
        if let data::pose::dataset::HeadTargets::CenteredInstance { crop, .. } = &built.spec.head {
            c.data_config.preprocessing.crop_size = Some(*crop);
        }
        c.to_yaml()
    };
    let skeleton = skeleton_json(data.train.skeleton());
    on_event(TrainEvent::Start {
        run_name: run_name.clone(),
        parameters: layout.entries().iter().map(|e| e.len()).sum(),
        steps_per_epoch,
        total_steps: steps_per_epoch * max_epochs,
        start_step: state.global_step,
    });
    on_event(TrainEvent::Log(format!(
        "{} samples for training, {} for validation; {} x {} batch, {} steps per epoch",
        n_train,
        data.val_items.len(),
        opts.world,
        batch,
        steps_per_epoch
    )));
    let adam = |lr: f64| AdamConfig {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: if matches!(t.optimizer_name, OptimizerName::AdamW) {
            0.01
        } else {
            0.0
        },
        decoupled: matches!(t.optimizer_name, OptimizerName::AdamW),
    };
    let ohkm = t
        .online_hard_keypoint_mining
        .as_ref()
        .filter(|o| o.online_mining);
    let mut sched = LrSchedule::new(t.optimizer.lr);
    let mut early = EarlyStop {
        best: f64::MAX, // finite: the state is saved as JSON
        bad: 0,
    };
    if let Some(e) = state.epoch_schedule {
        sched.lr = e.lr;
        sched.best = e.plateau_best;
        sched.bad_epochs = e.plateau_bad_epochs;
        sched.cooldown = e.plateau_cooldown;
        early.best = e.early_best;
        early.bad = e.early_bad_epochs;
    }
    let mut run = UNetRun::new(&model, &dev);
    let n_params = layout.total();
    let mut grads = dev.zeros(n_params);
    let mut dout: Vec<f32> = Vec::new();
    let mut dout_mem = D::Mem::default();
    let mut summary = TrainSummary {
        run_name: run_name.clone(),
        parameters: layout.entries().iter().map(|e| e.len()).sum(),
        ..TrainSummary::default()
    };
    let started = Instant::now();
    let summary_start_step = state.global_step;
    // Rank 0 writes metrics.csv into the run's version_N/ (Lightning's CSVLogger layout, the
    // columns sleap-nn logs).
    let mut csv = if opts.rank == 0 {
        let resumed = opts.resume_from.is_some().then_some(state.global_step);
        let version = run::versions::for_start(&opts.run_dir, resumed.is_some());
        let dir = run::versions::version_dir(&opts.run_dir, version);
        let path = dir.join(run::versions::METRICS_CSV);
        let io = |source| TrainError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut columns: Vec<&str> = CSV_COLUMNS.to_vec();
        if t.eval.enabled {
            columns.extend(EVAL_METRICS.map(|(name, _)| name));
            columns.sort_unstable();
        }
        let logger = match resumed {
            Some(step) => CsvLogger::resume(&path, &columns, step),
            None => CsvLogger::create(&path, &columns),
        }
        .map_err(io)?;
        Some(logger)
    } else {
        None
    };
    let mut prev_val = state.metrics.val_loss;
    let first_epoch = state.position.epoch;
    let resumed_mid_epoch = opts.resume_from.is_some() && state.position.step > 0;
    'epochs: for epoch in first_epoch..max_epochs {
        // A run resumed inside an epoch continues with that epoch's rate; one resumed at an
        // epoch boundary applies the last validation loss as the uninterrupted run does.
        let lr = if epoch == first_epoch && resumed_mid_epoch {
            sched.lr
        } else {
            let val = (epoch > first_epoch || opts.resume_from.is_some())
                .then_some(prev_val)
                .flatten();
            sched.at_epoch(cfg, epoch as usize, val)
        };
        let order = epoch_order(&data.train_items, seed, epoch, t.train_data_loader.shuffle);
        let first_step = if epoch == state.position.epoch {
            state.position.step
        } else {
            0
        };
        for step in first_step..steps_per_epoch {
            let t0 = Instant::now();
            let start = (step as usize * global_batch + opts.rank * batch) % order.len();
            let items: Vec<Item> = (0..batch)
                .map(|k| order[(start + k) % order.len()])
                .collect();
            let positions: Vec<u64> = (0..batch)
                .map(|k| (step as usize * global_batch + opts.rank * batch + k) as u64)
                .collect();
            let b = data.train.batch(
                &items,
                &positions,
                data.train.spec.augment.as_ref().map(|_| epoch),
            )?;
            let y = run
                .forward(&params, &b.images, b.n, b.height, b.width)
                .map_err(|e| TrainError::Config(e.to_string()))?;
            let y = dev.read(y, 0..dev.len(y));
            dout.resize(y.len(), 0.0);
            let hw = b.map_height * b.map_width;
            let local_loss = pose_loss(&y, &b.targets, b.n, b.maps, hw, ohkm, Some(&mut dout));
            dev.resize(&mut dout_mem, dout.len());
            dev.write(&mut dout_mem, 0, &dout);
            dev.fill_zero(&mut grads);
            run.backward(&params, &mut grads, &dout_mem)
                .map_err(|e| TrainError::Config(e.to_string()))?;
            let t_reduce = Instant::now();
            let mut loss = [local_loss as f32];
            (if opts.world > 1 {
                average_grads(&dev, &mut grads, device_reduce.as_mut(), sync)
            } else {
                Ok(())
            })
            .and_then(|()| sync.all_reduce_mean(&mut loss[..]))
            .map_err(|message| TrainError::Sync {
                step: state.global_step,
                message,
            })?;
            let reduce_s = t_reduce.elapsed().as_secs_f64();
            let loss = loss[0] as f64;
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    step: state.global_step,
                    epoch,
                    loss,
                    checkpoint: summary.last_checkpoint.clone(),
                });
            }
            let grad_norm = dev.global_norm(&grads);
            state.adam_t += 1;
            dev.adam_step(
                &adam(lr),
                state.adam_t,
                &mut params,
                &grads,
                &mut exp_avg,
                &mut exp_avg_sq,
                &[],
            );
            state.global_step += 1;
            state.epoch = epoch;
            state.position = DataPosition {
                epoch,
                step: step + 1,
            };
            summary.losses.push(loss);
            let secs = t0.elapsed().as_secs_f64();
            if let Some(c) = csv.as_mut() {
                let row = [
                    ("epoch", epoch as f64),
                    ("learning_rate", lr),
                    ("train/grad_norm", grad_norm),
                    ("train/loss", loss),
                    ("train/step_time_ms", secs * 1e3),
                    ("train/frames_per_sec", global_batch as f64 / secs.max(1e-9)),
                ];
                c.row(state.global_step, &row)
                    .map_err(|source| TrainError::Io {
                        path: c.path().to_path_buf(),
                        source,
                    })?;
            }
            on_event(TrainEvent::Step {
                epoch,
                step: state.global_step,
                loss,
                lr,
                grad_norm,
                cells_per_s: global_batch as f64 / secs.max(1e-9),
                tokens_per_s: 0.0,
                step_seconds: secs,
                allreduce_seconds: reduce_s,
            });
            let reached_max = opts.max_steps.is_some_and(|m| state.global_step >= m);
            let answer = if reached_max {
                Control::CheckpointAndStop
            } else {
                control()
            };
            match answer {
                Control::Continue => {}
                Control::Stop => {
                    summary.interrupted = true;
                    break 'epochs;
                }
                Control::CheckpointAndStop => {
                    // `max_steps` ends the run here too, with a checkpoint to continue from.
                    summary.interrupted = !reached_max;
                    summary.stopped_early = true;
                    state.epoch_schedule = Some(schedule_state(&sched, &early));
                    if opts.rank == 0 {
                        let host = |m| dev.read(m, 0..n_params);
                        let (p, m, v) = (host(&params), host(&exp_avg), host(&exp_avg_sq));
                        let snap = Snapshot {
                            layout: &layout,
                            params: &p,
                            moments_layout: &layout,
                            exp_avg: &m,
                            exp_avg_sq: &v,
                            state: &state,
                            config_yaml: &config_yaml,
                            data_file: ("skeleton.json", &skeleton),
                        };
                        let p = checkpoint::save(&ckpt_root, "last", &snap)?;
                        on_event(TrainEvent::Checkpoint {
                            step: state.global_step,
                            path: p.clone(),
                        });
                        summary.last_checkpoint = Some(p);
                    }
                    break 'epochs;
                }
            }
        }
        // End of epoch: validation, schedule, checkpoints, early stopping.
        let val = validation_loss(
            &data,
            &mut run,
            &params,
            opts,
            sync,
            ohkm,
            state.global_step,
        )?;
        state.position = DataPosition {
            epoch: epoch + 1,
            step: 0,
        };
        state.metrics.train_loss = summary.losses.last().copied();
        if let Some(v) = val {
            on_event(TrainEvent::Validation {
                epoch,
                step: state.global_step,
                loss: v,
            });
            summary.val_losses.push((state.global_step, v));
            if let Some(c) = csv.as_mut() {
                c.row(
                    state.global_step,
                    &[("epoch", epoch as f64), ("val/loss", v)],
                )
                .map_err(|source| TrainError::Io {
                    path: c.path().to_path_buf(),
                    source,
                })?;
            }
            state.metrics.val_loss = Some(v);
            prev_val = Some(v);
        }
        let mut stop_early = false;
        if let (Some(es), Some(v)) = (
            t.early_stopping
                .as_ref()
                .filter(|e| e.stop_training_on_plateau),
            val,
        ) {
            if v < early.best - es.min_delta {
                early.best = v;
                early.bad = 0;
            } else {
                early.bad += 1;
                if early.bad >= es.patience {
                    on_event(TrainEvent::Log(format!(
                        "early stopping after epoch {epoch}: validation loss has not improved by {} for {} epochs",
                        es.min_delta, es.patience
                    )));
                    stop_early = true;
                }
            }
        }
        state.epoch_schedule = Some(schedule_state(&sched, &early));
        // Evaluation on the validation samples (rank 0), every `eval.frequency` epochs.
        let mut epoch_metrics: Vec<(&'static str, f64)> = Vec::new();
        if let Some(v) = val {
            epoch_metrics.push(("val/loss", v));
        }
        if opts.rank == 0 && t.eval.enabled && (epoch + 1) % t.eval.frequency.max(1) as u64 == 0 {
            let m = evaluate_validation(&data, &mut run, &params, cfg)?;
            let line = m
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ");
            on_event(TrainEvent::Log(format!("epoch {epoch} evaluation: {line}")));
            if let Some(c) = csv.as_mut() {
                let mut row = m.clone();
                row.push(("epoch", epoch as f64));
                c.row(state.global_step, &row)
                    .map_err(|source| TrainError::Io {
                        path: c.path().to_path_buf(),
                        source,
                    })?;
            }
            epoch_metrics.extend(m);
        }
        if opts.rank == 0 {
            // The best checkpoint by `model_ckpt.monitor` (val/loss or an eval/val/* metric) in
            // `model_ckpt.mode`.
            let monitor = t.model_ckpt.monitor.as_str();
            let value = epoch_metrics
                .iter()
                .find(|(k, _)| *k == monitor)
                .map(|m| m.1);
            let maximize = matches!(t.model_ckpt.mode, configs::sleap::CkptMode::Max);
            // `save_top_k` best checkpoints (-1: all, 0: none): with 1 it is `best`; with more,
            // `epoch=NNNN` for each kept one and `best` for the top one.
            let top_k = t.model_ckpt.save_top_k;
            let mut save_as: Vec<String> = Vec::new();
            let mut evicted: Vec<String> = Vec::new();
            if let Some(v) = value.filter(|v| v.is_finite() && top_k != 0) {
                let better = |a: f64, b: f64| if maximize { a > b } else { a < b };
                let is_top = state.metrics.best.first().is_none_or(|b| better(v, b.0));
                let name = if top_k == 1 {
                    "best".to_string()
                } else {
                    format!("epoch={epoch:04}")
                };
                let mut ranked: Vec<(f64, String, bool)> = state
                    .metrics
                    .best
                    .iter()
                    .map(|(x, n)| (*x, n.clone(), false))
                    .collect();
                ranked.push((v, name.clone(), true));
                // Best first; a tie keeps the earlier checkpoint ahead.
                ranked.sort_by(|x, y| {
                    if better(x.0, y.0) {
                        std::cmp::Ordering::Less
                    } else if better(y.0, x.0) {
                        std::cmp::Ordering::Greater
                    } else {
                        x.2.cmp(&y.2)
                    }
                });
                if top_k > 0 && ranked.len() > top_k as usize {
                    evicted = ranked
                        .split_off(top_k as usize)
                        .into_iter()
                        .filter(|e| !e.2 && e.1 != name)
                        .map(|e| e.1)
                        .collect();
                }
                if ranked.iter().any(|e| e.2) {
                    save_as.push(name.clone());
                }
                if is_top && top_k != 1 {
                    save_as.push("best".into());
                }
                state.metrics.best = ranked.into_iter().map(|(x, n, _)| (x, n)).collect();
            }
            let host = |m| dev.read(m, 0..n_params);
            let (p, m, v) = (host(&params), host(&exp_avg), host(&exp_avg_sq));
            let snap = Snapshot {
                layout: &layout,
                params: &p,
                moments_layout: &layout,
                exp_avg: &m,
                exp_avg_sq: &v,
                state: &state,
                config_yaml: &config_yaml,
                data_file: ("skeleton.json", &skeleton),
            };
            for name in &save_as {
                let p = checkpoint::save(&ckpt_root, name, &snap)?;
                if name == "best" {
                    summary.best_checkpoint = Some(p);
                }
            }
            for name in evicted {
                let _ = std::fs::remove_dir_all(ckpt_root.join(name));
            }
            let p = checkpoint::save(&ckpt_root, "last", &snap)?;
            on_event(TrainEvent::Checkpoint {
                step: state.global_step,
                path: p.clone(),
            });
            summary.last_checkpoint = Some(p);
        }
        if opts.rank == 0 && t.visualize_preds_during_training {
            let viz = opts.run_dir.join("viz");
            std::fs::create_dir_all(&viz).map_err(|source| TrainError::Io {
                path: viz.clone(),
                source,
            })?;
            let first_val = data
                .val_items
                .first()
                .map(|it| (data.val.as_ref().unwrap_or(&data.train), it));
            let pictures = [
                (
                    "train",
                    data.train_items.first().map(|it| (&data.train, it)),
                ),
                ("validation", first_val),
            ];
            for (prefix, which) in pictures {
                if let Some((ds, item)) = which {
                    let path = viz.join(format!("{prefix}.{epoch:04}.png"));
                    save_picture(&mut run, &params, ds, item, &path)?;
                }
            }
        }
        if stop_early {
            summary.stopped_early = true;
            break;
        }
    }
    if opts.rank == 0 && t.visualize_preds_during_training && !t.keep_viz {
        // sleap-nn deletes the pictures once training ends unless asked to keep them.
        let _ = std::fs::remove_dir_all(opts.run_dir.join("viz"));
    }
    summary.global_step = state.global_step;
    summary.train_seconds = started.elapsed().as_secs_f64();
    let trained = (state.global_step - summary_start_step) as f64 * global_batch as f64;
    summary.cells_per_s = trained / summary.train_seconds.max(1e-9);
    summary.params_hash = crate::train::params_hash(&dev.read(&params, 0..n_params));
    Ok(summary)
}

/// The metrics sleap-nn's epoch-end evaluation logs, under its names, each with where it is in
/// the evaluator's JSON (sorted by name, as the CSV columns are).
pub const EVAL_METRICS: [(&str, [&str; 2]); 12] = [
    ("eval/val/PCK_10", ["pck_metrics", "PCK@10"]),
    ("eval/val/PCK_5", ["pck_metrics", "PCK@5"]),
    ("eval/val/distance/avg", ["distance_metrics", "avg"]),
    ("eval/val/distance/p50", ["distance_metrics", "p50"]),
    ("eval/val/distance/p95", ["distance_metrics", "p95"]),
    ("eval/val/distance/p99", ["distance_metrics", "p99"]),
    ("eval/val/mOKS", ["mOKS", "mOKS"]),
    ("eval/val/mPCK", ["pck_metrics", "mPCK"]),
    ("eval/val/oks_voc_mAP", ["voc_metrics", "oks_voc.mAP"]),
    ("eval/val/oks_voc_mAR", ["voc_metrics", "oks_voc.mAR"]),
    (
        "eval/val/visibility_precision",
        ["visibility_metrics", "precision"],
    ),
    (
        "eval/val/visibility_recall",
        ["visibility_metrics", "recall"],
    ),
];

/// Predicts every validation sample (unaugmented; a crop for centered_instance) and scores the
/// predictions against its labeled instance as sleap-nn's evaluator does
/// (`trainer_config.eval`: oks_stddev, oks_scale).
fn evaluate_validation<D: ConvDevice<f32>>(
    data: &Data,
    run: &mut UNetRun<D>,
    params: &D::Mem,
    cfg: &SleapNnConfig,
) -> Result<Vec<(&'static str, f64)>, TrainError> {
    use data::pose::{Instance, InstanceKind, LabeledFrame, Labels, Video, VideoSource};
    let ds = data.val.as_ref().unwrap_or(&data.train);
    let nodes: Vec<usize> = match &ds.spec.head {
        HeadTargets::SingleInstance { nodes } | HeadTargets::CenteredInstance { nodes, .. } => {
            nodes.clone()
        }
        HeadTargets::Centroid { .. } => return Ok(Vec::new()),
    };
    let video = Video {
        filename: "validation".into(),
        source: VideoSource::ImageSequence { files: vec![] },
        shape: None,
    };
    let skeleton = ds.skeleton().clone();
    let mut gt = Labels {
        skeletons: vec![skeleton.clone()],
        videos: vec![video.clone()],
        ..Labels::default()
    };
    let mut pred = gt.clone();
    let instance = |points: Vec<[f64; 2]>, kind| Instance {
        skeleton: 0,
        point_scores: vec![],
        points,
        kind,
        track: None,
        tracking_score: 0.0,
    };
    for (i, item) in data.val_items.iter().enumerate() {
        let (s, _) = ds.sample(item, None)?;
        run.forward(params, &s.image, 1, s.height, s.width)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let (maps, (k, gh, gw)) = run.maps().expect("after forward");
        let maps = run.device().read(maps, 0..k * gh * gw);
        let peaks = global_peaks(&maps, k, gh, gw, 0.2, Refinement::Integral, 5)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        // Distances in the frame's own pixels, as sleap-nn scores (undoing `scale`).
        let stride = ds.spec.output_stride as f64 / s.scale;
        let pick = |inst: &Vec<[f64; 2]>| -> Vec<[f64; 2]> {
            nodes
                .iter()
                .map(|&n| {
                    inst.get(n)
                        .map_or([f64::NAN; 2], |p| [p[0] / s.scale, p[1] / s.scale])
                })
                .collect()
        };
        let target = if matches!(ds.spec.head, HeadTargets::CenteredInstance { .. }) {
            item.instance
        } else {
            0
        };
        let Some(truth) = s.instances.get(target) else {
            continue;
        };
        let predicted: Vec<[f64; 2]> = peaks
            .iter()
            .map(|p| [p.x as f64 * stride, p.y as f64 * stride])
            .collect();
        let frame = |instances| LabeledFrame {
            video: 0,
            frame_idx: i as u64,
            instances,
        };
        gt.frames
            .push(frame(vec![instance(pick(truth), InstanceKind::User)]));
        let score = peaks.iter().map(|p| p.score).sum::<f32>() / peaks.len().max(1) as f32;
        pred.frames.push(frame(vec![instance(
            predicted,
            InstanceKind::Predicted { score },
        )]));
    }
    let e = &cfg.trainer_config.eval;
    let opts = data::pose::EvalOptions {
        oks_stddev: e.oks_stddev,
        oks_scale: e.oks_scale,
        ..data::pose::EvalOptions::default()
    };
    let m = match data::pose::evaluate(&gt, &pred, &opts) {
        Ok(m) => m.to_json(),
        Err(err) => return Err(TrainError::Config(format!("evaluation: {err}"))),
    };
    Ok(EVAL_METRICS
        .iter()
        .map(|(name, [group, key])| {
            let v = m
                .get(*group)
                .and_then(|g| g.get(*key))
                .and_then(|v| v.as_f64());
            (*name, v.unwrap_or(f64::NAN))
        })
        .collect())
}

/// The model's prediction on one (unaugmented) sample as a PNG: input, maps, labels, peaks.
fn save_picture<D: ConvDevice<f32>>(
    run: &mut UNetRun<D>,
    params: &D::Mem,
    ds: &PoseDataset,
    item: &Item,
    path: &std::path::Path,
) -> Result<(), TrainError> {
    let (s, _) = ds.sample(item, None)?;
    let dev = run.device();
    let maps = run
        .forward(params, &s.image, 1, s.height, s.width)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let maps = dev.download(maps);
    let (k, gh, gw) = run.output_shape().unwrap_or((0, 0, 0));
    let stride = ds.spec.output_stride;
    let peaks = match ds.spec.head {
        HeadTargets::Centroid { .. } => local_peaks(&maps, gh, gw, 0.2, Refinement::Integral, 5),
        _ => global_peaks(&maps, k, gh, gw, 0.2, Refinement::Integral, 5),
    }
    .map_err(|e| TrainError::Config(e.to_string()))?;
    let predicted: Vec<[f64; 2]> = peaks
        .iter()
        .map(|p| [p.x as f64 * stride as f64, p.y as f64 * stride as f64])
        .collect();
    let labeled: Vec<[f64; 2]> = s.instances.iter().flatten().copied().collect();
    let img = render_prediction(
        &s.image, s.channels, s.height, s.width, &maps, stride, &labeled, &predicted,
    );
    write_png(path, &img)?;
    Ok(())
}

/// The epoch's sample order: a seeded shuffle (or file order), the same on every rank.
fn epoch_order(items: &[Item], seed: u64, epoch: u64, shuffle: bool) -> Vec<Item> {
    let mut v = items.to_vec();
    if shuffle {
        CounterRng::new(seed, Stream::CellOrder, &[epoch]).shuffle(&mut v);
    }
    v
}

/// Mean squared error over the validation samples (each rank takes every world-th one), or None
/// without validation samples.
fn validation_loss<D: ConvDevice<f32>>(
    data: &Data,
    run: &mut UNetRun<D>,
    params: &D::Mem,
    opts: &TrainOptions,
    sync: &mut dyn GradientSync,
    ohkm: Option<&OhkmConfig>,
    step: u64,
) -> Result<Option<f64>, TrainError> {
    if data.val_items.is_empty() {
        return Ok(None);
    }
    let ds = data.val.as_ref().unwrap_or(&data.train);
    let mine: Vec<Item> = data
        .val_items
        .iter()
        .skip(opts.rank)
        .step_by(opts.world)
        .copied()
        .collect();
    let dev = run.device();
    // Each batch's mean loss weighted by its values (exactly the mean squared error over all of
    // them without mining).
    let (mut sum, mut count) = (0.0f64, 0.0f64);
    for chunk in mine.chunks(4) {
        let positions = vec![0; chunk.len()];
        let b = ds.batch(chunk, &positions, None)?;
        let y = run
            .forward(params, &b.images, b.n, b.height, b.width)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let y = dev.read(y, 0..dev.len(y));
        let hw = b.map_height * b.map_width;
        sum += pose_loss(&y, &b.targets, b.n, b.maps, hw, ohkm, None) * y.len() as f64;
        count += y.len() as f64;
    }
    // Means over ranks of (sum, count) keep their ratio.
    let mut totals = [sum as f32, count as f32];
    sync.all_reduce_mean(&mut totals)
        .map_err(|message| TrainError::Sync { step, message })?;
    Ok((totals[1] > 0.0).then(|| totals[0] as f64 / totals[1] as f64))
}
