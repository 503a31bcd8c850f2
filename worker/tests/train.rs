//! Trainer tests on the bundled PBMC file with small models: determinism, exact resume,
//! checkpoint integrity, world-size invariance, non-finite handling and 16-mixed skipping.
//! Run in release: `cargo test --release -p worker --test train`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};

use configs::scmodelforge::{Precision, ScModelForgeConfig};
use worker::checkpoint;
use worker::train::{
    train, Control, GradientSync, NoSync, TrainError, TrainEvent, TrainOptions, TrainSummary,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tiny model on the PBMC cells so a step takes milliseconds.
fn small_config() -> ScModelForgeConfig {
    let path = repo().join("configs/quickstart.yaml");
    let data = repo().join("data/pbmc68k_counts.h5ad");
    let overrides = vec![
        format!("data.paths=[{}]", data.display()),
        "data.max_genes=64".into(),
        "tokenizer.max_genes=64".into(),
        "model.hidden_dim=32".into(),
        "model.num_layers=2".into(),
        "model.num_heads=2".into(),
        "model.ffn_dim=64".into(),
        "model.max_seq_len=64".into(),
        "training.batch_size=16".into(),
        "training.max_epochs=2".into(),
        "training.log_every_n_steps=1".into(),
        "training.save_top_k=2".into(),
        "training.gradient_accumulation=2".into(),
    ];
    configs::load_file_as::<ScModelForgeConfig>(&path, &overrides).expect("config loads")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anvil-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run(cfg: &ScModelForgeConfig, opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    train(cfg, opts, &mut NoSync, &mut |_| {}, &mut || {
        Control::Continue
    })
}

/// [`run`], keeping every log message the run sent.
fn run_logged(
    cfg: &ScModelForgeConfig,
    opts: &TrainOptions,
) -> Result<(TrainSummary, Vec<String>), TrainError> {
    let mut logs = Vec::new();
    let s = train(
        cfg,
        opts,
        &mut NoSync,
        &mut |e| {
            if let TrainEvent::Log(m) = e {
                logs.push(m);
            }
        },
        &mut || Control::Continue,
    )?;
    Ok((s, logs))
}

#[test]
fn same_seed_same_losses_and_exact_resume() {
    let cfg = small_config();
    let a = run(&cfg, &TrainOptions::single(tmp("a"))).expect("run a");
    assert!(a.losses.len() >= 10, "{} steps", a.losses.len());
    assert!(a.losses.iter().all(|l| l.is_finite()));
    let b = run(&cfg, &TrainOptions::single(tmp("b"))).expect("run b");
    assert_eq!(a.losses, b.losses, "same seed must give identical losses");
    assert_eq!(a.val_losses, b.val_losses);

    // Stop after k steps (mid-epoch), resume from the checkpoint it wrote.
    let k = 5u64;
    let dir = tmp("c");
    let mut opts = TrainOptions::single(&dir);
    opts.max_steps = Some(k);
    let c1 = run(&cfg, &opts).expect("run c, first part");
    assert!(c1.stopped_early);
    assert_eq!(c1.losses, a.losses[..k as usize].to_vec());
    let last = c1.last_checkpoint.expect("a last checkpoint");
    let mut opts = TrainOptions::single(&dir);
    opts.resume_from = Some(last.clone());
    let c2 = run(&cfg, &opts).expect("run c, resumed");
    assert_eq!(
        c2.losses,
        a.losses[k as usize..].to_vec(),
        "resume must repeat the run"
    );
    assert_eq!(c2.val_losses, a.val_losses);

    // The checkpoint holds PyTorch names and verifies.
    let files = checkpoint::verify(&last).expect("manifest verifies");
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
        "config.yaml",
        "vocab.json",
    ] {
        assert!(files.contains_key(f), "{f}");
    }
    let st = safetensors::SafeTensors::deserialize(&files["model.safetensors"]).expect("st");
    let names = st.names();
    for n in [
        "gene_embedding.weight",
        "encoder.layers.0.self_attn.in_proj_weight",
        "encoder.layers.1.linear2.bias",
        "encoder.norm.weight",
    ] {
        assert!(names.contains(&n), "{n} missing in {names:?}");
    }
    // The resumed run continued the first part's logger version.
    let csv = std::fs::read_to_string(dir.join("version_0/metrics.csv")).expect("metrics.csv");
    assert!(csv.starts_with("epoch,lr-AdamW,"), "{csv}");
    assert!(!dir.join("version_1").exists());
    // A run directory of checkpoints resumes from the newest verified one; a corrupted one is
    // never chosen.
    let root = dir.join("checkpoints");
    let newest = checkpoint::resolve_resume(&root).expect("resolves");
    let bytes = std::fs::read(newest.join("model.safetensors")).expect("read");
    let mut bad = bytes.clone();
    let at = bad.len() - 3;
    bad[at] ^= 0x55;
    std::fs::write(newest.join("model.safetensors"), &bad).expect("corrupt");
    assert!(checkpoint::verify(&newest).is_err());
    if let Ok(p) = checkpoint::resolve_resume(&root) {
        assert_ne!(p, newest, "a corrupted checkpoint was chosen");
    }
    let mut opts = TrainOptions::single(tmp("d"));
    opts.resume_from = Some(newest.clone());
    assert!(
        run(&cfg, &opts).is_err(),
        "resuming from a corrupted checkpoint must fail"
    );
}

/// An in-process all-reduce for rank threads: deposit, wait, average in rank order.
struct ThreadSync {
    rank: usize,
    world: usize,
    slots: Arc<Mutex<Vec<Vec<f32>>>>,
    barrier: Arc<Barrier>,
}

impl GradientSync for ThreadSync {
    fn all_reduce_mean(&mut self, grads: &mut [f32]) -> Result<(), String> {
        self.slots.lock().map_err(|e| e.to_string())?[self.rank] = grads.to_vec();
        self.barrier.wait();
        {
            let slots = self.slots.lock().map_err(|e| e.to_string())?;
            for (i, g) in grads.iter_mut().enumerate() {
                let s: f32 = (0..self.world).map(|r| slots[r][i]).sum();
                *g = s / self.world as f32;
            }
        }
        self.barrier.wait();
        Ok(())
    }
}

#[test]
fn two_workers_follow_one_worker_with_twice_the_batch() {
    let mut cfg = small_config();
    cfg.model.dropout = 0.0;
    cfg.training.gradient_accumulation = 1;
    cfg.training.max_epochs = 1;
    cfg.training.batch_size = 16;
    let one = run(&cfg, &TrainOptions::single(tmp("w1"))).expect("one worker");
    cfg.training.batch_size = 8;
    let world = 2;
    let slots = Arc::new(Mutex::new(vec![Vec::new(); world]));
    let barrier = Arc::new(Barrier::new(world));
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let cfg = cfg.clone();
            let mut sync = ThreadSync {
                rank,
                world,
                slots: Arc::clone(&slots),
                barrier: Arc::clone(&barrier),
            };
            std::thread::spawn(move || {
                let opts = TrainOptions {
                    rank,
                    world,
                    run_dir: tmp(&format!("w2-{rank}")),
                    resume_from: None,
                    max_steps: None,
                    trace_parent: String::new(),
                    nccl_unique_id: Vec::new(),
                    grad_dtype: Default::default(),
                };
                train(&cfg, &opts, &mut sync, &mut |_| {}, &mut || {
                    Control::Continue
                })
            })
        })
        .collect();
    let results: Vec<TrainSummary> = handles
        .into_iter()
        .map(|h| h.join().expect("thread").expect("rank trains"))
        .collect();
    assert_eq!(results[0].losses, results[1].losses);
    assert_eq!(one.losses.len(), results[0].losses.len());
    for (i, (a, b)) in one.losses.iter().zip(&results[0].losses).enumerate() {
        let rel = (a - b).abs() / a.abs();
        assert!(rel < 2e-4, "step {i}: one worker {a}, two workers {b}");
    }
    let (va, vb) = (one.val_losses[0].1, results[0].val_losses[0].1);
    assert!((va - vb).abs() / va < 2e-4, "validation {va} vs {vb}");
}

#[test]
fn divergence_stops_with_a_checkpoint_of_the_last_good_state() {
    let mut cfg = small_config();
    cfg.training.optimizer.lr = 1e35;
    cfg.training.scheduler = None;
    cfg.training.gradient_clip = 0.0;
    cfg.training.gradient_accumulation = 1;
    let dir = tmp("nan");
    let mut events = Vec::new();
    let r = train(
        &cfg,
        &TrainOptions::single(&dir),
        &mut NoSync,
        &mut |e| events.push(e),
        &mut || Control::Continue,
    );
    match r {
        Err(TrainError::NonFinite {
            checkpoint: Some(p),
            step,
            ..
        }) => {
            let files = checkpoint::verify(&p).expect("the last good state verifies");
            let state: checkpoint::TrainState =
                serde_json::from_slice(&files["state.json"]).expect("state");
            assert_eq!(state.global_step, step);
            let msg = format!(
                "{}",
                TrainError::NonFinite {
                    step,
                    epoch: 0,
                    loss: f64::NAN,
                    checkpoint: Some(p)
                }
            );
            assert!(msg.contains("diverged"), "{msg}");
        }
        other => panic!(
            "expected a non-finite stop, got {:?}",
            other.map(|s| s.losses)
        ),
    }
}

#[test]
fn fp16_mixed_skips_overflowing_steps_and_trains() {
    let mut cfg = small_config();
    cfg.training.precision = Precision::Fp16Mixed;
    cfg.training.max_epochs = 1;
    let (s, logs) = run_logged(&cfg, &TrainOptions::single(tmp("fp16"))).expect("16-mixed trains");
    let skipped = logs.iter().filter(|m| m.contains("overflow")).count() as u64;
    assert_eq!(s.skipped_steps, skipped);
    assert!(s.losses.iter().all(|l| l.is_finite()));
    assert!(s.val_losses[0].1.is_finite());
}

#[test]
fn bf16_mixed_says_which_bf16_instructions_this_cpu_multiplies_with() {
    let mut cfg = small_config();
    cfg.training.precision = Precision::Bf16Mixed;
    cfg.training.max_epochs = 1;
    let (s, logs) =
        run_logged(&cfg, &TrainOptions::single(tmp("bf16note"))).expect("bf16-mixed trains");
    let notes: Vec<&String> = logs
        .iter()
        .filter(|m| m.starts_with("bf16-mixed on the CPU"))
        .collect();
    assert!(s.losses.iter().all(|l| l.is_finite()));
    let path = kernels::bf16gemm::path();
    eprintln!("bf16 path on this CPU: {path:?}; said: {notes:?}");
    assert_eq!(notes.len(), 1, "one note at start: {notes:?}");
    let expect = match path {
        Some(kernels::bf16gemm::Bf16Path::Amx) => "AMX tiles",
        Some(kernels::bf16gemm::Bf16Path::Avx512) => "AVX512_BF16",
        None => "no bf16 instructions in use",
    };
    assert!(notes[0].contains(expect), "{expect:?} in {:?}", notes[0]);
    // fp32 says nothing.
    assert_eq!(
        worker::device::cpu_precision_note(kernels::Precision::F32),
        None
    );
}

#[test]
fn control_checkpoint_and_stop() {
    let cfg = small_config();
    let dir = tmp("ctl");
    let mut polls = 0;
    let s = train(
        &cfg,
        &TrainOptions::single(&dir),
        &mut NoSync,
        &mut |_| {},
        &mut || {
            polls += 1;
            if polls == 3 {
                Control::CheckpointAndStop
            } else {
                Control::Continue
            }
        },
    )
    .expect("trains");
    assert!(s.stopped_early);
    assert_eq!(s.global_step, 3);
    let last = s.last_checkpoint.expect("checkpoint");
    checkpoint::verify(&last).expect("verifies");
}

/// Backward reports every encoder layer's gradients as soon as the layer is done, top layer
/// first, with the values it leaves in the buffer: what the overlapped all-reduce relies on.
#[test]
fn backward_reports_each_finished_layer_for_every_architecture() {
    use configs::scmodelforge::Architecture;
    use data::masking::IGNORE_INDEX;
    use kernels::rng::RngKey;
    use worker::model::{build, DataSpec};

    for arch in [
        Architecture::TransformerEncoder,
        Architecture::AutoregressiveTransformer,
        Architecture::MaskedAutoencoder,
    ] {
        let mut cfg = small_config().model;
        cfg.architecture = arch;
        cfg.decoder_layers = 2;
        let spec = DataSpec {
            vocab_size: 40,
            values_are_bins: false,
        };
        let mut m = build(&cfg, spec, kernels::Precision::F32).expect("model");
        let layout = m.layout().clone();
        let params: Vec<f32> = layout.init_host(7);
        let (b, t) = (2, 12);
        let ids: Vec<u32> = (0..b * t).map(|i| 4 + (i as u32 * 7) % 36).collect();
        let batch = data::Batch {
            batch_size: b,
            seq_len: t,
            cells: vec![0, 1],
            gene_ids: ids.clone(),
            values: (0..b * t).map(|i| (i % 5) as f32).collect(),
            target_values: (0..b * t).map(|i| (i % 5) as f32).collect(),
            labels: ids
                .iter()
                .enumerate()
                .map(|(i, &g)| if i % 4 == 1 { g as i32 } else { IGNORE_INDEX })
                .collect(),
            attention_mask: vec![1; b * t],
            ..Default::default()
        };
        let mut grads = vec![0.0f32; layout.total()];
        let mut reported: Vec<(std::ops::Range<usize>, Vec<f32>)> = Vec::new();
        m.train_batch(
            &params,
            &mut grads,
            &batch,
            RngKey::new(1, 0, 0),
            1.0,
            &mut |r, g| reported.push((r, g.to_vec())),
        )
        .expect("step");
        let layers = cfg.num_layers
            + if arch == Architecture::MaskedAutoencoder {
                cfg.decoder_layers
            } else {
                0
            };
        assert_eq!(reported.len(), layers, "{arch:?}");
        for (r, g) in &reported {
            // What was reported is final: backward wrote nothing there afterwards.
            assert_eq!(&grads[r.clone()], &g[..], "{arch:?} {r:?}");
            assert!(
                g.iter().any(|&x| x != 0.0),
                "{arch:?} {r:?} has no gradient"
            );
            // Exactly the parameters of one `...layers.N.` prefix.
            let inside: Vec<&str> = layout
                .entries()
                .iter()
                .filter(|e| e.offset >= r.start && e.offset < r.end)
                .map(|e| e.name.as_str())
                .collect();
            let prefix = inside[0].split(".self_attn").next().unwrap_or("");
            assert!(prefix.contains("layers."), "{arch:?}: {inside:?}");
            assert!(inside.iter().all(|n| n.starts_with(prefix)), "{inside:?}");
        }
        // Within one stack, the top layer comes first.
        assert!(
            reported.windows(2).any(|w| w[1].0.end <= w[0].0.start),
            "{arch:?}: not reported top-down"
        );
    }
}

#[test]
fn benchmarks_run_during_training_every_n_epochs_and_reach_metrics_csv() {
    let mut cfg = small_config();
    cfg.training.max_epochs = 3;
    cfg.eval.every_n_epochs = 2;
    let spec = |name: &str| configs::scmodelforge::BenchmarkSpec {
        name: name.into(),
        dataset: None,
        params: Default::default(),
    };
    cfg.eval.benchmarks = vec![spec("linear_probe"), spec("embedding_quality")];
    let dir = tmp("assess");
    let mut logs = Vec::new();
    train(
        &cfg,
        &TrainOptions::single(&dir),
        &mut NoSync,
        &mut |e| {
            if let TrainEvent::Log(m) = e {
                logs.push(m)
            }
        },
        &mut || Control::Continue,
    )
    .expect("training with an in-training assessment");
    // scModelForge's callback runs at epochs 0, n, 2n, … (0 and 2 of 0..3).
    let assessed: Vec<&String> = logs.iter().filter(|l| l.contains("assessment (")).collect();
    assert_eq!(assessed.len(), 2, "{logs:?}");
    assert!(
        assessed[0].starts_with("epoch 0 assessment (700 cells"),
        "{assessed:?}"
    );
    assert!(
        assessed[1].starts_with("epoch 2 assessment"),
        "{assessed:?}"
    );
    assert!(
        assessed[0].contains("linear_probe/val/accuracy"),
        "{assessed:?}"
    );
    let csv = std::fs::read_to_string(dir.join("version_0/metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == header.len()), "{csv}");
    for name in [
        "assessment/linear_probe/val/accuracy",
        "assessment/linear_probe/val/f1_macro",
        "assessment/embedding_quality/val/nmi",
    ] {
        let i = header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name} in {header:?}"));
        let values: Vec<f64> = rows.iter().filter_map(|r| r[i].parse().ok()).collect();
        assert_eq!(values.len(), 2, "{name}: {csv}");
        assert!(
            values.iter().all(|v| (0.0..=1.0).contains(v)),
            "{name}: {values:?}"
        );
    }
    // The training rows logged before the columns appeared are still there.
    let loss = header.iter().position(|h| *h == "train/loss").unwrap();
    assert!(
        rows.iter().filter(|r| !r[loss].is_empty()).count() > 10,
        "{csv}"
    );

    // A benchmark's label column that the file lacks stops the run before training.
    let mut bad = small_config();
    let mut probe = spec("linear_probe");
    probe.params.0.push((
        "cell_type_key".into(),
        configs::schema::Value::Str("tissue".into()),
    ));
    bad.eval.benchmarks = vec![probe];
    let dir = tmp("assess-bad");
    let err = train(
        &bad,
        &TrainOptions::single(&dir),
        &mut NoSync,
        &mut |_| {},
        &mut || Control::Continue,
    )
    .expect_err("no obs/tissue");
    assert!(err.to_string().contains("tissue"), "{err}");
    assert!(!dir.join("checkpoints").exists(), "nothing was trained");
}

/// Averages nothing (one replica's values are their own mean) but takes `delay` per call, like
/// a slow network.
struct SlowSync {
    delay: std::time::Duration,
}

impl GradientSync for SlowSync {
    fn all_reduce_mean(&mut self, _grads: &mut [f32]) -> Result<(), String> {
        std::thread::sleep(self.delay);
        Ok(())
    }
}

#[test]
fn step_events_carry_the_real_step_and_all_reduce_times() {
    let mut cfg = small_config();
    cfg.training.max_epochs = 1;
    cfg.training.gradient_accumulation = 1;
    let step_times = |events: &[TrainEvent]| -> Vec<(f64, f64)> {
        events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Step {
                    step_seconds,
                    allreduce_seconds,
                    ..
                } => Some((*step_seconds, *allreduce_seconds)),
                _ => None,
            })
            .collect()
    };
    // One worker: steps take time, nothing waits for an all-reduce.
    let mut events = Vec::new();
    train(
        &cfg,
        &TrainOptions::single(tmp("times-1")),
        &mut NoSync,
        &mut |e| events.push(e),
        &mut || Control::Continue,
    )
    .expect("trains");
    let times = step_times(&events);
    assert!(!times.is_empty());
    assert!(times.iter().all(|&(s, a)| s > 0.0 && a == 0.0), "{times:?}");

    // A rank of two whose all-reduce takes 30 ms a call: the part after backward (at least the
    // last bucket) is reported, and is part of the step time.
    let mut events = Vec::new();
    let opts = TrainOptions {
        rank: 0,
        world: 2,
        run_dir: tmp("times-2"),
        resume_from: None,
        max_steps: Some(3),
        trace_parent: String::new(),
        nccl_unique_id: Vec::new(),
        grad_dtype: Default::default(),
    };
    let mut sync = SlowSync {
        delay: std::time::Duration::from_millis(30),
    };
    train(&cfg, &opts, &mut sync, &mut |e| events.push(e), &mut || {
        Control::Continue
    })
    .expect("trains");
    let times = step_times(&events);
    assert_eq!(times.len(), 3, "{times:?}");
    assert!(
        times.iter().all(|&(s, a)| a >= 0.025 && s >= a),
        "{times:?}"
    );
}
