//! Fine-tuning in one process: pretrain a tiny model on the bundled PBMC cells, fine-tune a
//! cell-type classifier and a regression head on its backbone, and refuse bad labels with
//! messages that say what is wrong. Run in release: `cargo test --release -p worker --test
//! finetune`.

use std::path::{Path, PathBuf};

use configs::scmodelforge::ScModelForgeConfig;
use data::anndata::ObsColumn;
use data::write::{write_h5ad, Compression};
use worker::embed::Embedder;
use worker::train::{train, Control, NoSync, TrainError, TrainEvent, TrainOptions, TrainSummary};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pbmc() -> PathBuf {
    repo().join("data/pbmc68k_counts.h5ad")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anvil-finetune-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Pretrains a tiny quickstart model for two epochs in `dir`; returns its checkpoints.
fn pretrain(dir: &Path) -> PathBuf {
    let overrides = vec![
        format!("data.paths=[{}]", pbmc().display()),
        "data.max_genes=64".into(),
        "data.num_workers=1".into(),
        "tokenizer.max_genes=64".into(),
        "model.hidden_dim=32".into(),
        "model.num_layers=1".into(),
        "model.num_heads=2".into(),
        "model.ffn_dim=64".into(),
        "model.max_seq_len=64".into(),
        "model.dropout=0.0".into(),
        "training.max_epochs=2".into(),
        "training.scheduler=null".into(),
    ];
    let cfg: ScModelForgeConfig =
        configs::load_file_as(&repo().join("configs/quickstart.yaml"), &overrides)
            .expect("config loads");
    run(&cfg, dir, &mut Vec::new()).expect("pretraining");
    dir.join("checkpoints")
}

/// The shipped fine-tuning config on the PBMC file with the backbone `checkpoint`.
fn finetune_config(checkpoint: &Path, data: &Path, more: &[&str]) -> ScModelForgeConfig {
    let mut overrides = vec![
        format!("data.paths=[{}]", data.display()),
        format!("finetune.checkpoint_path={}", checkpoint.display()),
        "data.num_workers=1".into(),
        "training.log_every_n_steps=4".into(),
    ];
    overrides.extend(more.iter().map(|s| s.to_string()));
    configs::load_file_as(&repo().join("configs/finetune_cell_type.yaml"), &overrides)
        .expect("config loads")
}

fn run(
    cfg: &ScModelForgeConfig,
    dir: &Path,
    logs: &mut Vec<String>,
) -> Result<TrainSummary, TrainError> {
    train(
        cfg,
        &TrainOptions::single(dir),
        &mut NoSync,
        &mut |e| {
            if let TrainEvent::Log(m) = e {
                logs.push(m)
            }
        },
        &mut || Control::Continue,
    )
}

/// metrics.csv of a run: header and the rows that have a value in `column`.
fn column(dir: &Path, name: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join("version_0/metrics.csv")).expect("metrics.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let i = header
        .iter()
        .position(|h| *h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"));
    lines
        .filter_map(|l| l.split(',').nth(i).and_then(|v| v.parse().ok()))
        .collect()
}

#[test]
fn a_cell_type_head_learns_on_a_pretrained_backbone_and_logs_accuracy_and_macro_f1() {
    let dir = tmp("classify");
    let ck = pretrain(&dir.join("pre"));
    let pretrained = Embedder::load(&ck).expect("pretrained checkpoint");

    // One epoch with the backbone frozen: only the head moves.
    let frozen_dir = dir.join("frozen");
    let cfg = finetune_config(&ck, &pbmc(), &["training.max_epochs=1"]);
    let mut logs = Vec::new();
    let s = run(&cfg, &frozen_dir, &mut logs).expect("frozen epoch");
    assert!(
        logs.iter().any(|l| l.contains("epoch 0: backbone frozen")),
        "{logs:?}"
    );
    let after = Embedder::load(s.last_checkpoint.as_ref().unwrap()).expect("fine-tuned");
    assert_eq!(
        after.params, pretrained.params,
        "a frozen backbone is not stepped"
    );
    assert_eq!(after.vocab.genes(), pretrained.vocab.genes());

    // Then the backbone thaws and trains with the head.
    let ft_dir = dir.join("ft");
    let cfg = finetune_config(
        &ck,
        &pbmc(),
        &[
            "training.max_epochs=6",
            "finetune.head_lr=3e-3",
            "finetune.backbone_lr=1e-3",
        ],
    );
    let mut logs = Vec::new();
    let s = run(&cfg, &ft_dir, &mut logs).expect("fine-tuning");
    assert!(
        logs.iter().any(|l| l.contains("epoch 1: backbone trains")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("10 classes in obs/cell_type")),
        "{logs:?}"
    );
    let after = Embedder::load(s.last_checkpoint.as_ref().unwrap()).expect("fine-tuned");
    assert_ne!(
        after.params, pretrained.params,
        "the thawed backbone trains"
    );
    let acc = column(&ft_dir, "val/accuracy");
    let f1 = column(&ft_dir, "val/f1_macro");
    let loss = column(&ft_dir, "val/loss");
    assert_eq!((acc.len(), f1.len(), loss.len()), (6, 6, 6));
    assert!(acc.iter().chain(&f1).all(|x| (0.0..=1.0).contains(x)));
    // Chance: the stratified validation split holds 48 of its 135 cells in the largest class
    // (Dendritic), so always answering it scores 0.356.
    let best = acc.iter().cloned().fold(0.0, f64::max);
    assert!(best > 0.45, "accuracy {acc:?} does not beat chance");
    assert!(loss.last().unwrap() < &loss[0], "{loss:?}");
    // The best checkpoint is kept by validation loss.
    let best_ck = s.best_checkpoint.expect("a best checkpoint");
    assert!(
        best_ck.to_string_lossy().contains("val_loss="),
        "{best_ck:?}"
    );
}

#[test]
fn a_regression_head_reports_mse_and_pearson() {
    let dir = tmp("regress");
    let ck = pretrain(&dir.join("pre"));
    let ft_dir = dir.join("ft");
    let cfg = finetune_config(
        &ck,
        &pbmc(),
        &[
            "training.max_epochs=3",
            "finetune.label_key=n_genes",
            "finetune.head.task=regression",
            "finetune.freeze_backbone_epochs=0",
            "finetune.head_lr=1e-2",
        ],
    );
    run(&cfg, &ft_dir, &mut Vec::new()).expect("fine-tuning a regression head");
    let mse = column(&ft_dir, "val/mse");
    let r = column(&ft_dir, "val/pearson");
    assert_eq!((mse.len(), r.len()), (3, 3));
    assert!(mse.iter().all(|x| x.is_finite() && *x >= 0.0), "{mse:?}");
    assert!(r.iter().all(|x| (-1.0..=1.0).contains(x)), "{r:?}");
    // The validation loss is the MSE (one output per cell).
    let loss = column(&ft_dir, "val/loss");
    for (l, m) in loss.iter().zip(&mse) {
        assert!((l - m).abs() <= 1e-3 * m.max(1.0), "{loss:?} vs {mse:?}");
    }
}

/// A copy of the first 60 PBMC cells with obs columns `type` (one class of a single cell) and
/// `score` (numbers, one NaN).
fn odd_labels_file(path: &Path) {
    let src = data::anndata::open(pbmc()).unwrap();
    let n = 60;
    let rows = src.read_rows(0, n).unwrap();
    let block: Vec<(Vec<u32>, Vec<f32>)> = (0..n)
        .map(|i| {
            let (idx, val) = rows.row(i);
            (idx.to_vec(), val.to_vec())
        })
        .collect();
    let obs_names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let mut codes: Vec<i32> = (0..n as i32).map(|i| i % 2).collect();
    codes[7] = 2;
    let mut score: Vec<f64> = (0..n).map(|i| i as f64 * 0.5).collect();
    score[13] = f64::NAN;
    let obs = vec![
        (
            "type".to_string(),
            ObsColumn::Categorical {
                codes,
                categories: vec!["a".into(), "b".into(), "lonely".into()],
            },
        ),
        ("score".to_string(), ObsColumn::Numeric(score)),
    ];
    write_h5ad(
        path,
        src.var_names(),
        &obs_names,
        &obs,
        vec![Ok(block)],
        Compression::None,
    )
    .unwrap();
}

#[test]
fn bad_labels_are_refused_with_messages_that_say_what_is_wrong() {
    let dir = tmp("labels");
    let ck = pretrain(&dir.join("pre"));
    let odd = dir.join("odd.h5ad");
    odd_labels_file(&odd);
    let pbmc = pbmc();
    let cases: Vec<(&Path, Vec<&str>, Vec<String>)> = vec![
        (
            &pbmc,
            vec!["finetune.label_key=celltype"],
            vec![
                "has no obs column \"celltype\"".into(),
                "cell_type (categorical (10 categories))".into(),
                "percent_mito (numeric".into(),
            ],
        ),
        (
            &pbmc,
            vec!["finetune.label_key=n_counts"],
            vec![
                "obs/n_counts".into(),
                "is numeric".into(),
                "finetune.head.task: regression".into(),
            ],
        ),
        (
            &pbmc,
            vec!["finetune.head.task=regression"],
            vec!["obs/cell_type".into(), "needs a numeric column".into()],
        ),
        (
            &odd,
            vec!["finetune.label_key=score", "finetune.head.task=regression"],
            vec![
                "obs/score".into(),
                "1 NaN or infinite value(s) (first at row 13".into(),
            ],
        ),
        (
            &odd,
            vec!["finetune.label_key=type"],
            vec![
                "class \"lonely\" has 1 cell(s)".into(),
                "training.val_split = 0.2".into(),
                "at least 2".into(),
            ],
        ),
        (
            &pbmc,
            vec!["finetune.head.n_classes=4"],
            vec!["finetune.head.n_classes = 4".into(), "10 classes".into()],
        ),
    ];
    for (i, (data, more, expected)) in cases.into_iter().enumerate() {
        let cfg = finetune_config(&ck, data, &more);
        let run_dir = dir.join(format!("case{i}"));
        let err = run(&cfg, &run_dir, &mut Vec::new())
            .expect_err("bad labels are refused")
            .to_string();
        for e in expected {
            assert!(err.contains(&e), "{more:?}: expected {e:?} in {err}");
        }
        assert!(
            !run_dir.join("version_0").exists(),
            "{more:?}: nothing trained"
        );
    }
    // The odd file's own valid classes train (the singleton class is the only problem).
    let cfg = finetune_config(
        &ck,
        &odd,
        &[
            "finetune.label_key=type",
            "training.val_split=0.0",
            "training.max_epochs=1",
        ],
    );
    run(&cfg, &dir.join("ok"), &mut Vec::new()).expect("every class fits without a split");
}

#[test]
fn a_resumed_fine_tuning_run_repeats_the_uninterrupted_one() {
    let dir = tmp("resume");
    let ck = pretrain(&dir.join("pre"));
    // The backbone thaws at epoch 1, after the stop: the resumed run must thaw it too.
    let cfg = finetune_config(&ck, &pbmc(), &["training.max_epochs=2"]);
    let whole = run(&cfg, &dir.join("whole"), &mut Vec::new()).expect("uninterrupted");

    let part = dir.join("part");
    let mut opts = TrainOptions::single(&part);
    opts.max_steps = Some(7);
    let first = train(&cfg, &opts, &mut NoSync, &mut |_| {}, &mut || {
        Control::Continue
    })
    .expect("first part");
    assert!(first.stopped_early);
    let mut opts = TrainOptions::single(&part);
    opts.resume_from = first.last_checkpoint.clone();
    let rest = train(&cfg, &opts, &mut NoSync, &mut |_| {}, &mut || {
        Control::Continue
    })
    .expect("resumed");
    let mut losses = first.losses.clone();
    losses.extend(&rest.losses);
    assert_eq!(losses, whole.losses);
    assert_eq!(rest.val_losses, whole.val_losses);
    assert_eq!(rest.params_hash, whole.params_hash);
    assert_eq!(
        column(&part, "val/accuracy"),
        column(&dir.join("whole"), "val/accuracy")
    );
}

/// Tensor names of a safetensors file, sorted.
fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).expect("safetensors file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
}

fn tensor(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("safetensors file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor(name).expect("tensor");
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn lora_trains_only_adapters_and_head_resumes_exactly_and_exports_a_merged_model() {
    let dir = tmp("lora");
    let ck = pretrain(&dir.join("pre"));
    let pretrained = Embedder::load(&ck).expect("pretrained checkpoint");
    let cfg = finetune_config(
        &ck,
        &pbmc(),
        &[
            "training.max_epochs=2",
            "finetune.lora.enabled=true",
            "finetune.lora.rank=4",
            "finetune.lora.alpha=8",
            "finetune.backbone_lr=3e-3",
        ],
    );
    let mut logs = Vec::new();
    let whole = run(&cfg, &dir.join("whole"), &mut logs).expect("LoRA fine-tuning");
    assert!(
        logs.iter()
            .any(|l| l.contains("finetune.lora: rank 4 adapters on out_proj, linear1, linear2")),
        "{logs:?}"
    );
    // The shipped config freezes the backbone for an epoch: a no-op under LoRA, said so.
    assert!(
        logs.iter().any(|l| l.contains("do nothing under LoRA")),
        "{logs:?}"
    );
    assert_eq!(column(&dir.join("whole"), "val/accuracy").len(), 2);

    // The checkpoint holds the adapters and the head, and Adam moments of exactly those.
    let last = whole.last_checkpoint.clone().expect("a checkpoint");
    let names = tensor_names(&last.join("model.safetensors"));
    let adapters: Vec<&String> = names.iter().filter(|n| n.contains(".lora_")).collect();
    assert_eq!(adapters.len(), 6, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.contains(".lora_") || n.starts_with("head.")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("head.")), "{names:?}");
    let moments = tensor_names(&last.join("optimizer.safetensors"));
    let mut want: Vec<String> = names
        .iter()
        .flat_map(|n| [format!("exp_avg.{n}"), format!("exp_avg_sq.{n}")])
        .collect();
    want.sort();
    assert_eq!(moments, want);
    // The optimizer state holds only these (packed, in memory too): every tensor that trained
    // has second moments, all finite and non-negative, and none is left at zero.
    for n in &names {
        let v = tensor(
            &last.join("optimizer.safetensors"),
            &format!("exp_avg_sq.{n}"),
        );
        assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0), "{n}");
        assert!(v.iter().any(|x| *x > 0.0), "{n}: no optimizer state");
    }

    // Loaded for embedding, the backbone is the pretrained one with the adapters merged into
    // the adapted weights (W + alpha/rank · B·A), every other tensor bit for bit.
    let tuned = Embedder::load(&last).expect("LoRA checkpoint loads");
    let layout = pretrained.model.layout();
    let mut adapted = 0;
    for e in layout.entries() {
        let r = e.view().range();
        let module = e.name.strip_suffix(".weight").unwrap_or("");
        let is_adapted = ["self_attn.out_proj", "linear1", "linear2"]
            .iter()
            .any(|m| module.ends_with(m));
        if !is_adapted {
            assert_eq!(tuned.params[r.clone()], pretrained.params[r], "{}", e.name);
            continue;
        }
        adapted += 1;
        let ckf = last.join("model.safetensors");
        let a = tensor(&ckf, &format!("{module}.lora_A.weight"));
        let b = tensor(&ckf, &format!("{module}.lora_B.weight"));
        let (out_f, in_f) = (e.shape[0], e.shape[1]);
        let mut moved = 0.0f64;
        for o in 0..out_f {
            for i in 0..in_f {
                let ba: f64 = (0..4)
                    .map(|k| b[o * 4 + k] as f64 * a[k * in_f + i] as f64)
                    .sum();
                let want = pretrained.params[r.start + o * in_f + i] as f64 + 2.0 * ba;
                let got = tuned.params[r.start + o * in_f + i] as f64;
                assert!(
                    (got - want).abs() < 1e-6,
                    "{}[{o},{i}]: {got} vs {want}",
                    e.name
                );
                moved += ba.abs();
            }
        }
        assert!(moved > 0.0, "{}: the adapter did not train", e.name);
    }
    assert_eq!(adapted, 3);

    // A run stopped after 7 steps and resumed repeats the uninterrupted one.
    let part = dir.join("part");
    let mut opts = TrainOptions::single(&part);
    opts.max_steps = Some(7);
    let first = train(&cfg, &opts, &mut NoSync, &mut |_| {}, &mut || {
        Control::Continue
    })
    .expect("first part");
    let mut opts = TrainOptions::single(&part);
    opts.resume_from = first.last_checkpoint.clone();
    let rest = train(&cfg, &opts, &mut NoSync, &mut |_| {}, &mut || {
        Control::Continue
    })
    .expect("resumed");
    let mut losses = first.losses.clone();
    losses.extend(&rest.losses);
    assert_eq!(losses, whole.losses);
    assert_eq!(rest.params_hash, whole.params_hash);

    // Export: a weights-only model with the adapters merged; it embeds exactly as the LoRA
    // checkpoint does and says it has no adapters.
    let out = dir.join("exported");
    let e = worker::export::export(&last, &out).expect("export");
    assert_eq!(e.merged, 3);
    let exp_names = tensor_names(&out.join("model.safetensors"));
    assert!(
        exp_names.iter().all(|n| !n.contains("lora")),
        "{exp_names:?}"
    );
    assert!(
        exp_names.iter().any(|n| n.starts_with("head.")),
        "{exp_names:?}"
    );
    assert!(!out.join("optimizer.safetensors").exists());
    let exported = Embedder::load(&out).expect("export loads");
    assert_eq!(exported.params, tuned.params);
    assert!(!exported.cfg.finetune.as_ref().unwrap().lora.enabled);
    let err = worker::export::export(&last, &out).expect_err("output exists");
    assert!(err.to_string().contains("exists and is not empty"), "{err}");
}

#[test]
fn lora_adapters_learn_what_the_frozen_backbones_head_cannot() {
    let dir = tmp("lora-learns");
    let ck = pretrain(&dir.join("pre"));
    // With this backbone frozen the head stays at the largest class (0.356) for all six
    // epochs; with rank-8 adapters the run gets past it.
    let cfg = finetune_config(
        &ck,
        &pbmc(),
        &[
            "training.max_epochs=6",
            "finetune.freeze_backbone_epochs=0",
            "finetune.lora.enabled=true",
            "finetune.backbone_lr=3e-3",
        ],
    );
    run(&cfg, &dir.join("lora"), &mut Vec::new()).expect("LoRA fine-tuning");
    let acc = column(&dir.join("lora"), "val/accuracy");
    let best = acc.iter().cloned().fold(0.0, f64::max);
    assert!(best > 0.45, "LoRA accuracy {acc:?} does not beat chance");
}

#[test]
fn lora_target_modules_that_match_nothing_are_refused_by_name() {
    let dir = tmp("lora-bad");
    let ck = pretrain(&dir.join("pre"));
    let cfg = finetune_config(
        &ck,
        &pbmc(),
        &[
            "finetune.lora.enabled=true",
            "finetune.lora.target_modules=[linear1, in_proj]",
        ],
    );
    let err = run(&cfg, &dir.join("run"), &mut Vec::new()).expect_err("in_proj is no module");
    let msg = err.to_string();
    assert!(msg.contains("finetune.lora.target_modules"), "{msg}");
    assert!(msg.contains("in_proj"), "{msg}");
}
