//! The worker's GPU suite: a 50-step training run on CUDA whose losses follow the same run on
//! the CPU within bf16 tolerance, a two-rank NCCL all-reduce (fp32 and bf16), and a rank that dies without
//! hanging the other (the watchdog aborts the communicator). For the pose family: a UNet's
//! forward and backward on CUDA against the CPU (bilinear and transposed-conv decoders), a
//! pose training run on synthetic frames whose losses follow the CPU run, and a trained pose
//! model whose predictions on the GPU are the CPU's.
//!
//! `cargo test --release -p worker --features cuda --test gpu`. Its own harness: where no
//! device can be opened every case prints `SKIPPED` with the reason and the summary counts
//! them as skipped (ANVIL_REQUIRE_GPU=1 makes that a failure, as scripts/gpu-check.sh does).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use configs::pose_net::UNetPlan;
use configs::scmodelforge::ScModelForgeConfig;
use configs::SleapNnConfig;
use kernels::backend::cuda::suite::{self, Case};
use kernels::backend::cuda::Cuda;
use kernels::backend::ConvDevice;
use kernels::{Cpu, Device, Precision};
use worker::nccl::Nccl;
use worker::pose::train::train_pose_on;
use worker::pose::unet::{UNetModel, UNetRun};
use worker::sync::{DeviceReduce, GradDtype};
use worker::train::{train_on, Control, NoSync, TrainOptions, TrainSummary};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The quickstart model, shrunk, in bf16-mixed, for 50 optimizer steps.
fn config() -> ScModelForgeConfig {
    let path = repo().join("configs/quickstart.yaml");
    let data = repo().join("data/pbmc68k_counts.h5ad");
    let overrides = vec![
        format!("data.paths=[{}]", data.display()),
        "data.max_genes=128".into(),
        "tokenizer.max_genes=128".into(),
        "model.hidden_dim=64".into(),
        "model.num_layers=2".into(),
        "model.num_heads=2".into(),
        "model.ffn_dim=128".into(),
        "model.max_seq_len=128".into(),
        "training.batch_size=16".into(),
        "training.max_epochs=20".into(),
        "training.precision=bf16-mixed".into(),
        "training.log_every_n_steps=10".into(),
    ];
    configs::load_file_as::<ScModelForgeConfig>(&path, &overrides).expect("config loads")
}

fn run<D: Device<f32> + Clone + 'static>(dev: D, name: &str) -> TrainSummary {
    let dir = std::env::temp_dir().join(format!("anvil-gpu-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut opts = TrainOptions::single(&dir);
    opts.max_steps = Some(50);
    let cfg = config();
    let s = train_on(
        dev,
        None,
        &cfg,
        &opts,
        None,
        &mut NoSync,
        &mut |_| {},
        &mut || Control::Continue,
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    s
}

fn training_follows_the_cpu(gpu: &Cuda) -> Result<(), String> {
    let cpu = run(Cpu, "cpu");
    let cuda = run(gpu.clone(), "cuda");
    if cpu.losses.len() != 50 || cuda.losses.len() != 50 {
        return Err(format!(
            "{} CPU and {} GPU steps, expected 50",
            cpu.losses.len(),
            cuda.losses.len()
        ));
    }
    // bf16 operands round differently after different summation orders; the trajectories
    // must stay together within a few percent and both must learn.
    for (i, (a, b)) in cpu.losses.iter().zip(&cuda.losses).enumerate() {
        if (a - b).abs() > 0.03 * a.abs() + 0.02 {
            return Err(format!("step {i}: CPU loss {a:.4}, GPU {b:.4}"));
        }
    }
    let (first, last) = (cuda.losses[0], cuda.losses[49]);
    if last >= first {
        return Err(format!("GPU loss did not fall: {first:.4} -> {last:.4}"));
    }
    println!(
        "    losses: CPU {:.4} -> {:.4}, GPU {first:.4} -> {last:.4}",
        cpu.losses[0], cpu.losses[49]
    );
    Ok(())
}

/// Deterministic values in [-1, 1).
fn rand(n: usize, seed: u64) -> Vec<f32> {
    let k = kernels::rng::RngKey::new(seed, 3, 1);
    (0..n)
        .map(|i| k.bits(i as u64) as f32 / 2_147_483_648.0 - 1.0)
        .collect()
}

fn pose_yaml(labels: &Path, up_interpolate: bool) -> String {
    format!(
        "data_config:\n  train_labels_path: [{}]\n  validation_fraction: 0.2\n  \
         use_augmentations_train: false\n\
         model_config:\n  backbone_config:\n    unet: {{in_channels: 1, filters: 8, filters_rate: 2.0, \
         max_stride: 8, up_interpolate: {up_interpolate}, output_stride: 2}}\n  head_configs:\n    \
         single_instance:\n      confmaps: {{sigma: 2.5, output_stride: 2}}\n\
         trainer_config:\n  train_data_loader: {{batch_size: 4}}\n  max_epochs: 100\n  seed: 0\n  \
         save_ckpt: false\n  optimizer: {{lr: 0.001}}\n",
        labels.display()
    )
}

fn pose_config(yaml: &str) -> SleapNnConfig {
    configs::Sources::from_str(yaml, "gpu-pose.yaml")
        .and_then(|s| s.load_as())
        .expect("pose config loads")
}

/// One UNet forward and backward on `dev`: confidence maps and parameter gradients.
fn unet_pass<D: ConvDevice<f32>>(dev: &D, model: &UNetModel) -> (Vec<f32>, Vec<f32>) {
    let (n, h, w) = (3, 32, 24);
    let params = dev.upload(&model.layout().init_host::<f32>(7));
    let mut run = UNetRun::new(model, dev);
    let y = run
        .forward(&params, &rand(n * h * w, 1), n, h, w)
        .expect("forward");
    let maps = dev.download(y);
    let dout = dev.upload(&rand(maps.len(), 2));
    let mut grads = dev.zeros(model.layout().total());
    run.backward(&params, &mut grads, &dout).expect("backward");
    (maps, dev.download(&grads))
}

fn unet_follows_the_cpu(gpu: &Cuda) -> Result<(), String> {
    for up_interpolate in [true, false] {
        let cfg = pose_config(&pose_yaml(Path::new("unused.slp"), up_interpolate));
        let plan = UNetPlan::from_config(&cfg, 3).map_err(|e| e.to_string())?;
        let model = UNetModel::new(plan, Precision::F32);
        let (cpu_maps, cpu_grads) = unet_pass(&Cpu, &model);
        let (gpu_maps, gpu_grads) = unet_pass(gpu, &model);
        for (what, a, b) in [
            ("maps", &cpu_maps, &gpu_maps),
            ("grads", &cpu_grads, &gpu_grads),
        ] {
            let mag = a.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                if x.is_nan() || y.is_nan() || (x - y).abs() > 1e-4 * mag {
                    return Err(format!(
                        "up_interpolate {up_interpolate}: {what}[{i}]: CPU {x}, GPU {y} (of {mag})"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// 30 training steps of the test's pose config on `labels`, the run in `run_dir`.
fn train_30_steps<D: ConvDevice<f32>>(
    dev: D,
    labels: &Path,
    run_dir: &Path,
) -> Result<TrainSummary, String> {
    let mut opts = TrainOptions::single(run_dir);
    opts.max_steps = Some(30);
    let cfg = pose_config(&pose_yaml(labels, true));
    train_pose_on(
        dev,
        None,
        &cfg,
        &opts,
        &mut NoSync,
        &mut |_| {},
        &mut || Control::Continue,
    )
    .map_err(|e| e.to_string())
}

fn pose_run<D: ConvDevice<f32>>(dev: D, labels: &Path, name: &str) -> TrainSummary {
    let dir = std::env::temp_dir().join(format!("anvil-gpu-pose-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = train_30_steps(dev, labels, &dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    s
}

/// 20 synthetic 64x64 frames in `dir`.
fn synth_labels(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let labels = dir.join("synth.pkg.slp");
    let synth = data::pose::synth::SynthPoseOptions {
        frames: 20,
        height: 64,
        width: 64,
        seed: 0,
    };
    data::pose::synth::write_synth_pose(&labels, &synth).map_err(|e| e.to_string())?;
    Ok(labels)
}

/// A model trained 30 steps on the CPU predicts the same keypoints on the GPU (`track`).
fn pose_prediction_follows_the_cpu(gpu: &Cuda) -> Result<(), String> {
    use worker::pose::predict::{predict_on, Pipeline, PredictOptions, TrainedPose};
    let dir = std::env::temp_dir().join(format!("anvil-gpu-predict-{}", std::process::id()));
    let labels = synth_labels(&dir)?;
    let run = dir.join("run");
    train_30_steps(Cpu, &labels, &run)?;
    let model = TrainedPose::load(&run).map_err(|e| format!("{e:#}"))?;
    let pipe = Pipeline::from_models(vec![model]).map_err(|e| format!("{e:#}"))?;
    let o = PredictOptions::default();
    let on = |p: Result<data::pose::Labels, anyhow::Error>| p.map_err(|e| format!("{e:#}"));
    let cpu = on(predict_on(&Cpu, &pipe, &labels, None, &o, |_, _| {}))?;
    let cuda = on(predict_on(gpu, &pipe, &labels, None, &o, |_, _| {}))?;
    let _ = std::fs::remove_dir_all(&dir);
    for (a, b) in cpu.frames.iter().zip(&cuda.frames) {
        for (p, q) in a.instances[0].points.iter().zip(&b.instances[0].points) {
            let d = ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
            if p[0].is_finite() != q[0].is_finite() || d > 0.05 {
                return Err(format!("frame {}: CPU {p:?}, GPU {q:?}", a.frame_idx));
            }
        }
    }
    if cpu.frames.len() != 20 || cuda.frames.len() != 20 {
        return Err(format!(
            "{} CPU and {} GPU frames",
            cpu.frames.len(),
            cuda.frames.len()
        ));
    }
    Ok(())
}

fn pose_training_follows_the_cpu(gpu: &Cuda) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("anvil-gpu-pose-data-{}", std::process::id()));
    let labels = synth_labels(&dir)?;
    let cpu = pose_run(Cpu, &labels, "cpu");
    let cuda = pose_run(gpu.clone(), &labels, "cuda");
    let _ = std::fs::remove_dir_all(&dir);
    if cpu.losses.len() != 30 || cuda.losses.len() != 30 {
        return Err(format!(
            "{} CPU and {} GPU steps, expected 30",
            cpu.losses.len(),
            cuda.losses.len()
        ));
    }
    // fp32 on both; sums run in other orders, so the trajectories drift apart slowly.
    for (i, (a, b)) in cpu.losses.iter().zip(&cuda.losses).enumerate() {
        if (a - b).abs() > 0.02 * a.abs() + 1e-6 {
            return Err(format!("step {i}: CPU loss {a:.6}, GPU {b:.6}"));
        }
    }
    let (first, last) = (cuda.losses[0], cuda.losses[29]);
    if last >= first {
        return Err(format!("GPU loss did not fall: {first:.6} -> {last:.6}"));
    }
    println!(
        "    pose losses: CPU {:.6} -> {:.6}, GPU {first:.6} -> {last:.6}",
        cpu.losses[0], cpu.losses[29]
    );
    Ok(())
}

/// Two ranks on two GPUs, one thread each (NCCL's one-process setup).
fn two_ranks<R: Send>(f: impl Fn(usize, Cuda, Vec<u8>) -> R + Sync) -> Result<Vec<R>, String> {
    if Cuda::device_count() < 2 {
        return Err("SKIP: needs two GPUs".into());
    }
    let id = worker::nccl::offer_unique_id();
    if id.is_empty() {
        return Err("SKIP: libnccl not found".into());
    }
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let (f, id) = (&f, id.clone());
                s.spawn(move || {
                    let dev = Cuda::open(r).map_err(|e| e.to_string())?;
                    Ok::<R, String>(f(r, dev, id))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().map_err(|_| "rank panicked".to_string())?)
            .collect()
    })
}

/// Two ranks average 0..1000 and twice that, with ranges handed over during "backward" and the
/// rest at the end; in bf16 within bf16's rounding (two roundings: inputs and the mean).
fn all_reduce_averages_in(dtype: GradDtype) -> Result<(), String> {
    let out = two_ranks(|rank, dev, id| {
        let mut nccl = Nccl::connect(&dev, rank, 2, &id, dtype, Duration::from_secs(60))?;
        let host: Vec<f32> = (0..1000).map(|i| (i * (rank + 1)) as f32).collect();
        let mut buf = dev.upload(&host);
        nccl.begin(&dev, &buf);
        nccl.ready(600..1000)?;
        nccl.ready(200..400)?;
        nccl.finish(&dev, &mut buf)?;
        Ok::<Vec<f32>, String>(dev.download(&buf))
    })?;
    let tolerance = |want: f32| match dtype {
        GradDtype::F32 => 1e-3,
        GradDtype::Bf16 => want.abs() * 2.0f32.powi(-7),
    };
    let mut replicas = Vec::new();
    for r in out {
        let v = r?;
        for (i, x) in v.iter().enumerate() {
            let want = 1.5 * i as f32;
            if (x - want).abs() > tolerance(want) {
                return Err(format!("{dtype:?}: element {i}: {x}, expected {want}"));
            }
            if dtype == GradDtype::Bf16 && x.to_bits() & 0xFFFF != 0 {
                return Err(format!("bf16: element {i} = {x} is not a bf16 value"));
            }
        }
        replicas.push(v);
    }
    if replicas.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!("{dtype:?}: the ranks hold different averages"));
    }
    Ok(())
}

fn nccl_all_reduce_averages(_: &Cuda) -> Result<(), String> {
    all_reduce_averages_in(GradDtype::F32)
}

fn nccl_all_reduce_averages_in_bf16(_: &Cuda) -> Result<(), String> {
    all_reduce_averages_in(GradDtype::Bf16)
}

fn a_dead_rank_does_not_hang_the_other(_: &Cuda) -> Result<(), String> {
    let out = two_ranks(|rank, dev, id| {
        let mut nccl = Nccl::connect(&dev, rank, 2, &id, GradDtype::F32, Duration::from_secs(5))?;
        if rank == 1 {
            // Dies before the collective: its communicator is torn down, never joins.
            drop(nccl);
            return Ok(Duration::ZERO);
        }
        let mut buf = dev.zeros(1 << 20);
        let start = Instant::now();
        match nccl.finish(&dev, &mut buf) {
            Ok(()) => Err("the all-reduce completed without its peer".to_string()),
            Err(_) => Ok(start.elapsed()),
        }
    })?;
    let waited = out.into_iter().next().ok_or("no rank 0")??;
    if waited > Duration::from_secs(30) {
        return Err(format!("rank 0 waited {waited:?}"));
    }
    Ok(())
}

fn main() {
    let cases: Vec<Case> = vec![
        (
            "training_follows_the_cpu".into(),
            Box::new(training_follows_the_cpu),
        ),
        (
            "unet_follows_the_cpu".into(),
            Box::new(unet_follows_the_cpu),
        ),
        (
            "pose_training_follows_the_cpu".into(),
            Box::new(pose_training_follows_the_cpu),
        ),
        (
            "pose_prediction_follows_the_cpu".into(),
            Box::new(pose_prediction_follows_the_cpu),
        ),
        (
            "nccl_all_reduce_averages".into(),
            Box::new(nccl_all_reduce_averages),
        ),
        (
            "nccl_all_reduce_averages_in_bf16".into(),
            Box::new(nccl_all_reduce_averages_in_bf16),
        ),
        (
            "a_dead_rank_does_not_hang_the_other".into(),
            Box::new(a_dead_rank_does_not_hang_the_other),
        ),
    ];
    suite::run("worker GPU suite", cases);
}
