//! `worker`: trains as one of a coordinator's workers (`worker --coordinator HOST:PORT`), or on
//! its own (`worker train --config X.yaml`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use proto::v1::{worker_message::Body, CheckpointSaved, Finished, LogLine, StepMetrics};
use run::progress::{Progress, Step, Summary};
use worker::join::{Command, JoinOptions, Session, TlsOptions};
use worker::train::{self, Control, TrainEvent, TrainOptions, TrainSummary};

#[derive(Parser)]
#[command(
    name = "worker",
    version,
    about = "anvil worker: joins a coordinator's run, or trains on its own with `worker train`",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<WorkerCommand>,
    #[command(flatten)]
    join: JoinArgs,
}

#[derive(Subcommand)]
enum WorkerCommand {
    /// Train in this one process (no coordinator): checkpoints, metrics and progress locally
    Train(TrainArgs),
    /// Write a trained model's cell embeddings into obsm["X_anvil"] of a copy of an .h5ad file
    Embed(EmbedArgs),
    /// Write a checkpoint as a weights-only model directory (LoRA adapters merged in)
    Export(ExportArgs),
    /// Run the config's eval.benchmarks on a checkpoint's cell embeddings (results.json, report.md)
    Benchmark(BenchmarkArgs),
    /// Predict poses on the labeled frames of a .slp file with trained pose models
    Track(TrackArgs),
}

#[derive(Args)]
struct TrackArgs {
    /// A trained pose model: its run directory, checkpoints directory or checkpoint. One
    /// single_instance model, or a centroid and a centered_instance model (top-down)
    #[arg(long = "model", value_name = "DIR", required = true)]
    models: Vec<PathBuf>,
    /// The labels (.slp / .pkg.slp) whose labeled frames to predict, or a video (mp4, avi,
    /// mov, mkv; decoded by ffmpeg) to predict every frame of; never modified
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Where to write the predictions (.slp)
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
    /// Peaks below this confidence are left out
    #[arg(long, default_value_t = 0.2)]
    peak_threshold: f32,
    /// Window of the sub-pixel (integral) refinement
    #[arg(long, default_value_t = 5)]
    integral_patch: usize,
    /// With a video: only these frames, as sleap-nn's --frames (`0-99`, `1,5,9`, `0-9,20`)
    #[arg(long, value_name = "LIST")]
    frames: Option<String>,
    /// Where the models run, as sleap-nn's --device: auto (a GPU when this build has CUDA and
    /// one is visible), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: String,
}

#[derive(Args)]
struct BenchmarkArgs {
    /// scModelForge YAML config whose eval.benchmarks to run
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Override one field, e.g. `--set eval.batch_size=64` (repeatable)
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    overrides: Vec<String>,
    /// A checkpoint directory, or a directory of checkpoints (the newest complete one is used)
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// The AnnData file to benchmark on [default: the config's data.paths, if it names one file]
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Directory for results.json, report.md and embedding.png (created; those files are replaced)
    #[arg(long, short = 'o', value_name = "DIR")]
    output: PathBuf,
    /// What to score: the checkpoint's embeddings (model), its architecture at
    /// initialization (untrained), or principal components of log-normalized expression (pca)
    #[arg(long, default_value = "model", value_parser = ["model", "untrained", "pca"])]
    embedding: String,
    /// Principal components for --embedding pca
    #[arg(long, default_value_t = 50, value_name = "N")]
    n_pcs: usize,
    /// Cells per forward pass [default: eval.batch_size]
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Score the embeddings that N workers left in --parts-dir (`worker embed --part`) instead
    /// of computing them (what `coordinator benchmark --nodes N` runs)
    #[arg(long, value_name = "N", requires = "parts_dir", hide = true)]
    from_parts: Option<usize>,
    /// The directory of part files (--from-parts)
    #[arg(long, value_name = "DIR", hide = true)]
    parts_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ExportArgs {
    /// A checkpoint directory, or a directory of checkpoints (the newest complete one is used)
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// The new directory to write (it must not exist, or be empty)
    #[arg(long, short = 'o', value_name = "DIR")]
    output: PathBuf,
}

#[derive(Args)]
struct EmbedArgs {
    /// A checkpoint directory, or a directory of checkpoints (the newest complete one is used)
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// The AnnData file (.h5ad) whose cells to embed; it is never modified
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Where to write the copy of --data with obsm["X_anvil"] added
    #[arg(
        long,
        short = 'o',
        value_name = "FILE",
        required_unless_present = "part"
    )]
    output: Option<PathBuf>,
    /// Cells per forward pass [default: the checkpoint's training.batch_size]
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Replace --output if it exists
    #[arg(long)]
    overwrite: bool,
    /// Embed only this worker's share of the cells, RANK/WORKERS, into a part file in
    /// --parts-dir (what `coordinator embed --nodes N` starts)
    #[arg(long, value_name = "RANK/WORKERS", requires = "parts_dir", conflicts_with_all = ["output", "from_parts"], hide = true)]
    part: Option<String>,
    /// Write the copy from the part files that N workers left in --parts-dir
    #[arg(long, value_name = "N", requires = "parts_dir", hide = true)]
    from_parts: Option<usize>,
    /// The directory of part files (--part, --from-parts)
    #[arg(long, value_name = "DIR", hide = true)]
    parts_dir: Option<PathBuf>,
    /// With --part: embed with the architecture at initialization (training.seed)
    #[arg(long, requires = "part", hide = true)]
    untrained: bool,
}

#[derive(Args)]
struct JoinArgs {
    /// The coordinator's address (HOST:PORT) to register with
    #[arg(long, value_name = "HOST:PORT")]
    coordinator: Option<String>,
    /// Ask for this rank (locally started workers); by default the coordinator assigns one
    #[arg(long)]
    rank: Option<usize>,
    /// File holding the run token (default: the ANVIL_RUN_TOKEN environment variable)
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Interval between heartbeats, in milliseconds
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Reach a coordinator started with --tls-cert over TLS, trusting this CA certificate (PEM;
    /// for a self-signed certificate, the certificate itself)
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Name the coordinator's certificate must carry [default: the host in --coordinator]
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_domain: Option<String>,
    /// Exit with CODE instead of 0 when the run stopped at a checkpoint before its end (a
    /// signal, or the coordinator's stop). A Kubernetes Job restarts a worker that exits
    /// non-zero, and counts one that exits 0 as done for good, so `coordinator deploy k8s`
    /// sets this
    #[arg(long, default_value_t = 0, value_name = "CODE")]
    preempted_exit_code: u8,
}

#[derive(Args)]
struct TrainArgs {
    /// scModelForge YAML config
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Override one field, e.g. `--set training.max_epochs=2` (repeatable)
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    overrides: Vec<String>,
    /// Directory for checkpoints and metrics (default: <training.log_dir>/<run_name>, where
    /// scModelForge's loggers write; metrics go to its version_N/)
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Stop after this many optimizer steps
    #[arg(long)]
    max_steps: Option<u64>,
}

fn main() -> ExitCode {
    worker::alloc::keep_freed_memory();
    worker::threads::main_thread_joins_the_pool();
    let cli = Cli::parse();
    run::logging::init();
    worker::preempt::install();
    let result = match cli.command {
        Some(WorkerCommand::Train(args)) => train_alone(args).map(|()| ExitCode::SUCCESS),
        Some(WorkerCommand::Embed(a)) => embed(a).map(|()| ExitCode::SUCCESS),
        Some(WorkerCommand::Export(a)) => match worker::export::export(&a.checkpoint, &a.output) {
            Ok(e) => {
                println!(
                    "exported {} tensors to {}{}",
                    e.tensors,
                    e.dir.display(),
                    if e.merged > 0 {
                        format!(" ({} LoRA adapters merged into their base weights)", e.merged)
                    } else {
                        String::new()
                    }
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(e),
        },
        Some(WorkerCommand::Benchmark(a)) => {
            let embedding = match a.embedding.as_str() {
                "untrained" => worker::bench::Embedding::Untrained,
                "pca" => worker::bench::Embedding::Pca(a.n_pcs),
                _ => worker::bench::Embedding::Model,
            };
            worker::bench::run(&worker::bench::BenchmarkOptions {
                config: a.config,
                overrides: a.overrides,
                checkpoint: a.checkpoint,
                data: a.data,
                output: a.output,
                embedding,
                batch_size: a.batch_size,
                from_parts: a.from_parts.zip(a.parts_dir),
            })
            .map(|_| ExitCode::SUCCESS)
        }
        Some(WorkerCommand::Track(a)) => track(a).map(|()| ExitCode::SUCCESS),
        None => match cli.join.coordinator.clone() {
            Some(addr) => join_run(&cli.join, addr).map(|interrupted| {
                if interrupted {
                    ExitCode::from(cli.join.preempted_exit_code)
                } else {
                    ExitCode::SUCCESS
                }
            }),
            None => Err(anyhow::anyhow!(
                "nothing to do: pass --coordinator HOST:PORT to join a run, or use `worker train --config X.yaml`"
            )),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn embed(a: EmbedArgs) -> anyhow::Result<()> {
    let parts_dir = a.parts_dir.unwrap_or_default();
    if let Some(spec) = &a.part {
        let part = worker::embed_parts::Part::parse(spec, parts_dir)?;
        worker::embed::run_part(&a.checkpoint, &a.data, a.batch_size, a.untrained, &part)?;
        return Ok(());
    }
    worker::embed::run(&worker::embed::EmbedOptions {
        checkpoint: a.checkpoint,
        data: a.data,
        output: a.output.unwrap_or_default(),
        batch_size: a.batch_size,
        overwrite: a.overwrite,
        from_parts: a.from_parts.map(|n| (n, parts_dir)),
    })?;
    Ok(())
}

fn train_alone(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = match configs::load_file(&args.config, &args.overrides)
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        configs::AnyConfig::ScModelForge(c) => c,
        configs::AnyConfig::SleapNn(c) => return train_pose_alone(&c, args),
    };
    let run_dir = args.run_dir.unwrap_or_else(|| run::default_run_dir(&cfg));
    let opts = TrainOptions {
        rank: 0,
        world: 1,
        run_dir: run_dir.clone(),
        resume_from: cfg.training.resume_from.as_ref().map(PathBuf::from),
        max_steps: args.max_steps,
        trace_parent: String::new(),
        nccl_unique_id: Vec::new(),
        grad_dtype: Default::default(),
    };
    let run_id = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _export = run::telemetry::start(&run::telemetry::Identity {
        service: "anvil-worker",
        run_id: &run_id,
        rank: Some(0),
    });
    let run_span = tracing::info_span!(target: run::telemetry::TRACE_TARGET, "run", anvil.run_id = %run_id, world = 1);
    let _in_run = run_span.enter();
    let mut progress = Progress::stderr("");
    let mut total_steps = 0;
    let summary = train::train(
        &cfg,
        &opts,
        &mut train::NoSync,
        &mut |e| show(&mut progress, &mut total_steps, e),
        &mut || {
            if worker::preempt::requested() {
                Control::CheckpointAndStop
            } else {
                Control::Continue
            }
        },
    )?;
    let outcome = match (&summary.last_checkpoint, summary.stopped_early) {
        (Some(ck), true) => format!(
            "stopped {} on request with a checkpoint at {} (continue with --set training.resume_from={})",
            summary.run_name,
            ck.display(),
            ck.display()
        ),
        _ => format!("finished {}", summary.run_name),
    };
    progress.summary(&Summary {
        outcome: &outcome,
        steps: summary.global_step,
        seconds: summary.train_seconds,
        cells_per_s: summary.cells_per_s,
        tokens_per_s: summary.tokens_per_s,
        best_val_loss: best_val_loss(&summary),
    });
    progress.log(&format!("run dir {}", run_dir.display()));
    Ok(())
}

/// `worker train` on a sleap-nn config: one process, checkpoints in `<run dir>/checkpoints`
/// (default run dir: `<trainer_config.ckpt_dir>/<run_name>`, as sleap-nn saves its models).
fn train_pose_alone(cfg: &configs::SleapNnConfig, args: TrainArgs) -> anyhow::Result<()> {
    let t = &cfg.trainer_config;
    let run_dir = args.run_dir.unwrap_or_else(|| {
        PathBuf::from(t.ckpt_dir.as_deref().unwrap_or("."))
            .join(t.run_name.as_deref().unwrap_or("anvil_pose"))
    });
    let opts = TrainOptions {
        max_steps: args.max_steps,
        ..TrainOptions::single(run_dir.clone())
    };
    let mut progress = Progress::stderr("");
    progress.set_unit("frames");
    let mut total_steps = 0;
    let summary = worker::pose::train_pose(
        cfg,
        &opts,
        &mut train::NoSync,
        &mut |e| show(&mut progress, &mut total_steps, e),
        &mut || {
            if worker::preempt::requested() {
                Control::CheckpointAndStop
            } else {
                Control::Continue
            }
        },
    )?;
    progress.summary(&Summary {
        outcome: &format!("finished {}", summary.run_name),
        steps: summary.global_step,
        seconds: summary.train_seconds,
        cells_per_s: summary.cells_per_s,
        tokens_per_s: 0.0,
        best_val_loss: best_val_loss(&summary),
    });
    progress.log(&format!("run dir {}", run_dir.display()));
    Ok(())
}

fn track(args: TrackArgs) -> anyhow::Result<()> {
    use worker::pose::predict::{predict_on, Pipeline, PredictOptions, TrainedPose};
    if args.output.exists() && args.data.canonicalize().ok() == args.output.canonicalize().ok() {
        anyhow::bail!(
            "--output {} is the --data file; predictions never overwrite the labels",
            args.output.display()
        );
    }
    let models = args
        .models
        .iter()
        .map(|m| TrainedPose::load(m))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pipe = Pipeline::from_models(models)?;
    let opts = PredictOptions {
        peak_threshold: args.peak_threshold,
        integral_patch: args.integral_patch.max(1),
    };
    let started = std::time::Instant::now();
    let mut progress = Progress::stderr("");
    let frames = args
        .frames
        .as_deref()
        .map(worker::pose::predict::parse_frames)
        .transpose()?;
    let report = |done: usize, total: usize| {
        if done == total || done.is_multiple_of(50) {
            match total {
                0 => progress.log(&format!("predicted {done} frames")),
                _ => progress.log(&format!("predicted {done}/{total} frames")),
            }
        }
    };
    let (data, frames) = (&args.data, frames.as_deref());
    let labels = match worker::device::select_for_predict(&args.device)
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        worker::device::Selected::Cpu => {
            predict_on(&kernels::Cpu, &pipe, data, frames, &opts, report)?
        }
        #[cfg(feature = "cuda")]
        worker::device::Selected::Cuda(dev) => {
            eprintln!("predicting on GPU {}", dev.describe());
            predict_on(&dev, &pipe, data, frames, &opts, report)?
        }
    };
    data::pose::slp::write_labels(&args.output, &labels)?;
    let n: usize = labels.frames.iter().map(|f| f.instances.len()).sum();
    progress.log(&format!(
        "wrote {n} predicted instances on {} frames to {} in {:.1}s",
        labels.frames.len(),
        args.output.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// A training event on the progress printer.
fn show(progress: &mut Progress, total_steps: &mut u64, e: TrainEvent) {
    match e {
        TrainEvent::Start {
            run_name,
            parameters,
            total_steps: total,
            start_step,
            ..
        } => {
            *total_steps = total;
            progress.log(&format!(
                "training {run_name}: {parameters} parameters, {total} steps (from step {start_step})"
            ));
        }
        TrainEvent::Step {
            epoch,
            step,
            loss,
            lr,
            cells_per_s,
            tokens_per_s,
            ..
        } => progress.step(Step {
            epoch,
            step,
            total_steps: *total_steps,
            loss,
            lr,
            cells_per_s,
            tokens_per_s,
        }),
        TrainEvent::Validation { epoch, loss, .. } => progress.validation(epoch, loss),
        TrainEvent::Checkpoint { step, path } => {
            progress.log(&format!("checkpoint at step {step}: {}", path.display()))
        }
        TrainEvent::Log(m) => progress.log(&m),
    }
}

/// The lowest validation loss of a run (NaN when none ran).
fn best_val_loss(summary: &TrainSummary) -> f64 {
    summary
        .val_losses
        .iter()
        .map(|(_, l)| *l)
        .fold(f64::NAN, f64::min)
}

/// Trains as one of a coordinator's workers; Ok(true) when the run stopped on request before
/// its end (see `--preempted-exit-code`).
fn join_run(args: &JoinArgs, coordinator: String) -> anyhow::Result<bool> {
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?
            .trim()
            .to_string(),
        None => std::env::var("ANVIL_RUN_TOKEN").map_err(|_| {
            anyhow::anyhow!("no run token: set ANVIL_RUN_TOKEN or pass --token-file")
        })?,
    };
    let tls = match &args.tls_ca {
        Some(path) => Some(TlsOptions {
            ca_pem: std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read the CA certificate {}: {e}", path.display())
            })?,
            domain: args.tls_domain.clone(),
        }),
        None => None,
    };
    let (session, mut ring) = Session::join(&JoinOptions {
        coordinator,
        token,
        requested_rank: args.rank,
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(50)),
        tls,
    })?;
    if !session.assignment.task.is_empty() {
        let outcome = run_task(&session);
        session.finish(match &outcome {
            Ok(()) => Ok(Finished::default()),
            Err(e) => Err((format!("{e:#}"), false)),
        });
        return outcome.map(|()| false);
    }
    // Declared first so that it outlives the training spans it exports.
    let _export = run::telemetry::start(&run::telemetry::Identity {
        service: "anvil-worker",
        run_id: &session.assignment.run_id,
        rank: Some(session.assignment.rank as usize),
    });
    let outcome = train_in_session(&session, &mut ring);
    let report = match &outcome {
        Ok(f) => Ok(f.clone()),
        Err(e) => {
            let peer_lost = matches!(
                e.downcast_ref::<train::TrainError>(),
                Some(train::TrainError::Sync { .. })
            );
            Err((format!("{e:#}"), peer_lost))
        }
    };
    session.finish(report);
    outcome.map(|f| f.interrupted)
}

/// The command the coordinator handed out instead of training (a share of `embed`), run as
/// `worker <task> --part RANK/WORLD`.
fn run_task(session: &Session) -> anyhow::Result<()> {
    let a = &session.assignment;
    let part = format!("{}/{}", a.rank, a.world_size);
    let argv = std::iter::once("worker")
        .chain(a.task.iter().map(String::as_str))
        .chain(["--part", part.as_str()]);
    let cli = Cli::try_parse_from(argv)
        .map_err(|e| anyhow::anyhow!("the coordinator's task `{}`: {e}", a.task.join(" ")))?;
    match cli.command {
        Some(WorkerCommand::Embed(args)) => embed(args),
        _ => anyhow::bail!(
            "the coordinator asked for `{}`, which workers do not run for it",
            a.task.join(" ")
        ),
    }
}

fn train_in_session(session: &Session, ring: &mut worker::ring::Ring) -> anyhow::Result<Finished> {
    let a = session.assignment.clone();
    let cfg = configs::Sources::from_str(&a.config_yaml, "config from coordinator")
        .and_then(|s| s.load())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = TrainOptions {
        rank: a.rank as usize,
        world: a.world_size as usize,
        run_dir: PathBuf::from(&a.run_dir),
        resume_from: (!a.resume_from.is_empty()).then(|| PathBuf::from(&a.resume_from)),
        max_steps: (a.max_steps > 0).then_some(a.max_steps),
        trace_parent: a.trace_parent.clone(),
        nccl_unique_id: a.nccl_unique_id.clone(),
        grad_dtype: ring.grad_dtype(),
    };
    let rest = session;
    let (mut steps_per_epoch, mut total_steps) = (0, 0);
    let mut on_event = |e| match e {
        TrainEvent::Start {
            steps_per_epoch: spe,
            total_steps: total,
            ..
        } => {
            steps_per_epoch = spe;
            total_steps = total;
        }
        TrainEvent::Step {
            epoch,
            step,
            loss,
            lr,
            grad_norm,
            cells_per_s,
            tokens_per_s,
            step_seconds,
            allreduce_seconds,
        } => {
            rest.set_step(step);
            rest.send(Body::Step(StepMetrics {
                epoch,
                step,
                loss,
                lr,
                grad_norm,
                cells_per_s,
                tokens_per_s,
                steps_per_epoch,
                total_steps,
                step_time_s: step_seconds,
                allreduce_time_s: allreduce_seconds,
            }));
        }
        TrainEvent::Validation { epoch, step, loss } => {
            rest.send(Body::Validation(proto::v1::ValidationMetrics {
                epoch,
                step,
                loss,
            }))
        }
        TrainEvent::Checkpoint { step, path } => rest.send(Body::Checkpoint(CheckpointSaved {
            step,
            path: path.display().to_string(),
        })),
        TrainEvent::Log(message) => rest.send(Body::Log(LogLine {
            level: "info".into(),
            message,
        })),
    };
    let mut control = || match rest.command() {
        Command::Continue if worker::preempt::requested() => Control::CheckpointAndStop,
        Command::Continue => Control::Continue,
        Command::CheckpointAndStop => Control::CheckpointAndStop,
        Command::Stop => Control::Stop,
    };
    let summary = match cfg {
        configs::AnyConfig::ScModelForge(cfg) => {
            train::train(&cfg, &opts, ring, &mut on_event, &mut control)?
        }
        configs::AnyConfig::SleapNn(cfg) => {
            worker::pose::train_pose(&cfg, &opts, ring, &mut on_event, &mut control)?
        }
    };
    Ok(Finished {
        steps: summary.global_step,
        final_loss: summary.losses.last().copied().unwrap_or(f64::NAN),
        best_val_loss: best_val_loss(&summary),
        params_hash: summary.params_hash.clone(),
        interrupted: summary.interrupted,
    })
}
