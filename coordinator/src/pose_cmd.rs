//! The pose commands: `coordinator track` (predictions with trained models, computed by the
//! sibling `worker track`, as the coordinator never links compute), `coordinator eval`
//! (predictions against ground truth, as sleap-nn's evaluator scores them) and
//! `coordinator model summary` (the network a sleap-nn config describes, level by level).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use configs::pose_net::UNetPlan;
use configs::sleap::HeadKind;
use configs::SleapNnConfig;
use data::pose::eval::{evaluate, EvalOptions};
use data::pose::slp::read_labels;

use crate::config_cmd::ConfigArgs;
use crate::launch::procs::{run_worker_verb, sibling_executable};

#[derive(Args)]
pub struct TrackArgs {
    /// A trained pose model (run directory, its checkpoints/ or one checkpoint); repeat for
    /// top-down: a centroid model and a centered_instance model
    #[arg(long = "model", value_name = "DIR", required = true)]
    models: Vec<PathBuf>,
    /// Labels (.slp / .pkg.slp) whose labeled frames to predict, or a video (mp4, avi, mov,
    /// mkv, decoded by ffmpeg; or a multi-page TIFF stack) to predict every frame of; never
    /// modified
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Where to write the predictions (.slp, opens in SLEAP / sleap-io)
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
    /// Peaks below this confidence are left out
    #[arg(long, default_value_t = 0.2)]
    peak_threshold: f32,
    /// With a video: only these frames, as sleap-nn's --frames (`0-99`, `1,5,9`, `0-9,20`)
    #[arg(long, value_name = "LIST")]
    frames: Option<String>,
    /// Where the models run, as sleap-nn's --device: auto (a GPU when the worker has CUDA
    /// and one is visible), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: String,
    /// The worker executable that predicts [default: `worker` beside this one]
    #[arg(long, value_name = "FILE")]
    worker_bin: Option<PathBuf>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Labels holding the ground truth (user-labeled instances)
    #[arg(long, value_name = "FILE")]
    ground_truth: PathBuf,
    /// Labels holding the predictions (e.g. from `coordinator track`)
    #[arg(long, value_name = "FILE")]
    predictions: PathBuf,
    /// Directory for metrics.json and metrics.md (created) [default: print only]
    #[arg(long, short = 'o', value_name = "DIR")]
    output: Option<PathBuf>,
    /// Per-node OKS spread
    #[arg(long, default_value_t = 0.025)]
    oks_stddev: f64,
    /// OKS scale for every instance [default: each instance's bounding-box area]
    #[arg(long)]
    oks_scale: Option<f64>,
}

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Print the network a sleap-nn config describes: each block's output shape and parameters,
    /// and the total (what sleap-nn writes as model_config.total_params)
    Summary(SummaryArgs),
}

#[derive(Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Input size HxW [default: max_height x max_width, the crop size, or the labels' first frame]
    #[arg(long, value_name = "HxW")]
    input: Option<String>,
}

fn exit(r: anyhow::Result<ExitCode>) -> ExitCode {
    r.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

pub fn run_track(args: TrackArgs) -> ExitCode {
    exit(track(args))
}

pub fn run_eval(args: EvalArgs) -> ExitCode {
    exit(eval(args).map(|()| ExitCode::SUCCESS))
}

pub fn run_model(cmd: ModelCommand) -> ExitCode {
    match cmd {
        ModelCommand::Summary(a) => exit(summary(a).map(|()| ExitCode::SUCCESS)),
    }
}

fn track(args: TrackArgs) -> anyhow::Result<ExitCode> {
    if !args.data.exists() {
        bail!("--data {}: file not found", args.data.display());
    }
    let bin = match args.worker_bin {
        Some(b) => b,
        None => sibling_executable("worker")?,
    };
    let mut cmd = Command::new(&bin);
    cmd.arg("track");
    for m in &args.models {
        cmd.arg("--model").arg(m);
    }
    cmd.arg("--data")
        .arg(&args.data)
        .arg("--output")
        .arg(&args.output)
        .arg("--peak-threshold")
        .arg(args.peak_threshold.to_string());
    if let Some(f) = &args.frames {
        cmd.arg("--frames").arg(f);
    }
    cmd.arg("--device").arg(&args.device);
    run_worker_verb(&bin, "track", &mut cmd)
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let gt = read_labels(&args.ground_truth).with_context(|| "--ground-truth".to_string())?;
    let pred = read_labels(&args.predictions).with_context(|| "--predictions".to_string())?;
    let opts = EvalOptions {
        oks_stddev: args.oks_stddev,
        oks_scale: args.oks_scale,
        ..EvalOptions::default()
    };
    let m = evaluate(&gt, &pred, &opts).map_err(|e| anyhow!("{e}"))?;
    let md = m.to_markdown();
    println!("{md}");
    if let Some(dir) = &args.output {
        std::fs::create_dir_all(dir).with_context(|| format!("--output {}", dir.display()))?;
        let json = serde_json::to_string_pretty(&m.to_json())?;
        write(&dir.join("metrics.json"), json.as_bytes())?;
        write(&dir.join("metrics.md"), md.as_bytes())?;
        eprintln!(
            "wrote {} and {}",
            dir.join("metrics.json").display(),
            dir.join("metrics.md").display()
        );
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Confidence maps the config's head makes: its part names, the skeleton saved in the config,
/// or the skeleton of its first training labels (1 for a centroid head).
fn head_channels(cfg: &SleapNnConfig) -> anyhow::Result<(usize, Option<(usize, usize)>)> {
    let h = &cfg.model_config.head_configs;
    let parts = match h.kinds().first() {
        Some(HeadKind::Centroid) => return Ok((1, first_frame_size(cfg))),
        Some(HeadKind::SingleInstance) => h
            .single_instance
            .as_ref()
            .and_then(|c| c.confmaps.part_names.clone()),
        Some(HeadKind::CenteredInstance) => h
            .centered_instance
            .as_ref()
            .and_then(|c| c.confmaps.part_names.clone()),
        _ => None,
    };
    if let Some(p) = parts {
        return Ok((p.len(), first_frame_size(cfg)));
    }
    // The skeleton sleap-nn saves into training_config.yaml: {nodes: [...], ...}.
    let saved_nodes =
        cfg.data_config
            .skeletons
            .as_ref()
            .and_then(|s| s.first())
            .and_then(|s| match s {
                configs::Value::Map(entries) => entries
                    .iter()
                    .find(|(k, _)| k == "nodes")
                    .and_then(|(_, v)| match v {
                        configs::Value::List(n) => Some(n.len()),
                        _ => None,
                    }),
                _ => None,
            });
    if let Some(n) = saved_nodes {
        return Ok((n, first_frame_size(cfg)));
    }
    let path = cfg
        .data_config
        .train_labels_path
        .as_ref()
        .and_then(|p| p.first())
        .ok_or_else(|| anyhow!("the head's part_names are null and data_config.train_labels_path too: name the parts or the labels"))?;
    let labels = read_labels(Path::new(path))?;
    let n = labels.skeletons.first().map_or(0, |s| s.nodes.len());
    let size = labels
        .videos
        .first()
        .and_then(|v| v.shape)
        .map(|s| (s[1], s[2]));
    Ok((n, size.or_else(|| first_frame_size(cfg))))
}

fn first_frame_size(cfg: &SleapNnConfig) -> Option<(usize, usize)> {
    let p = &cfg.data_config.preprocessing;
    match (p.max_height, p.max_width, p.crop_size) {
        (Some(h), Some(w), _) => Some((h, w)),
        (_, _, Some(c)) if cfg.model_config.head_configs.centered_instance.is_some() => {
            Some((c, c))
        }
        _ => None,
    }
}

fn summary(a: SummaryArgs) -> anyhow::Result<()> {
    let cfg: SleapNnConfig = match a.config.load().map_err(|e| anyhow!("{e}"))? {
        configs::AnyConfig::SleapNn(c) => c,
        configs::AnyConfig::ScModelForge(_) => {
            bail!(
                "{}: model summary is for sleap-nn (pose) configs",
                a.config.config.display()
            )
        }
    };
    let (channels, size) = head_channels(&cfg)?;
    let plan = UNetPlan::from_config(&cfg, channels)
        .map_err(|e| anyhow!("{}: {e}", a.config.config.display()))?;
    let (h, w) = match &a.input {
        Some(s) => {
            let (h, w) = s
                .split_once(['x', 'X'])
                .and_then(|(h, w)| Some((h.trim().parse().ok()?, w.trim().parse().ok()?)))
                .ok_or_else(|| anyhow!("--input {s}: expected HxW, e.g. 384x384"))?;
            (h, w)
        }
        None => size.unwrap_or((384, 384)),
    };
    let m = plan.max_stride;
    let (h, w) = (usize::div_ceil(h, m) * m, usize::div_ceil(w, m) * m);
    println!(
        "{} (input padded to {h} x {w}, a multiple of max stride {m})",
        a.config.config.display()
    );
    print!("{}", plan.summary(h, w));
    if let Some(t) = cfg.model_config.total_params {
        let same = if t == plan.total_params() {
            "matches"
        } else {
            "DIFFERS from"
        };
        println!("model_config.total_params in the file: {t} ({same} this network)");
    }
    Ok(())
}
