//! `coordinator finetune` end to end: real processes on the bundled PBMC data. A tiny model is
//! pretrained with `coordinator launch`, then `coordinator finetune --checkpoint` trains a
//! cell-type head on its backbone with two workers; the validation metrics reach metrics.csv
//! and the progress output, and the accuracy beats always answering the largest class.
//! Run in release after `cargo build --release -p worker`:
//! `cargo test --release -p coordinator --test finetune`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{describe, repo, worker_bin};

fn scratch(name: &str) -> PathBuf {
    common::scratch("finetune", name)
}

fn coordinator(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.current_dir(repo()).args(args);
    cmd
}

/// Pretrains the tiny quickstart model for two epochs; returns its checkpoints directory.
fn pretrain(dir: &Path) -> PathBuf {
    let mut cmd = coordinator(&["launch", "--config", "configs/quickstart.yaml", "--run-dir"]);
    cmd.arg(dir).arg("--worker-bin").arg(worker_bin());
    common::set_tiny(
        &mut cmd,
        &["training.max_epochs=2", "training.scheduler=null"],
    );
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "pretraining failed:\n{}",
        describe(&out)
    );
    dir.join("checkpoints")
}

/// The values of metrics.csv's column `name` (rows that have one).
fn column(run_dir: &Path, name: &str) -> Vec<f64> {
    let csv = std::fs::read_to_string(run_dir.join("version_0/metrics.csv")).unwrap();
    let mut lines = csv.lines();
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
fn finetune_trains_a_cell_type_head_on_a_pretrained_checkpoint_with_two_workers() {
    let dir = scratch("e2e");
    let ck = pretrain(&dir.join("pre"));

    let ft = dir.join("ft");
    let mut cmd = coordinator(&[
        "finetune",
        "--config",
        "configs/finetune_cell_type.yaml",
        "--nodes",
        "2",
        "--checkpoint",
    ]);
    cmd.arg(&ck)
        .arg("--run-dir")
        .arg(&ft)
        .arg("--worker-bin")
        .arg(worker_bin());
    for s in [
        "data.num_workers=1",
        "training.batch_size=16",
        "training.max_epochs=6",
        "training.log_every_n_steps=5",
        "finetune.head_lr=3e-3",
        "finetune.backbone_lr=1e-3",
    ] {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    let all = describe(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("fine-tuning the backbone of"), "{all}");
    assert!(all.contains("epoch 0: backbone frozen"), "{all}");
    assert!(
        all.contains("epoch 1: backbone trains with the head"),
        "{all}"
    );
    assert!(all.contains("val/accuracy"), "{all}");
    assert!(
        all.contains("all 2 replicas hold identical parameters"),
        "{all}"
    );
    let acc = column(&ft, "val/accuracy");
    let f1 = column(&ft, "val/f1_macro");
    assert_eq!((acc.len(), f1.len()), (6, 6), "{acc:?} {f1:?}");
    // 48 of the 135 validation cells are Dendritic: always answering it scores 0.356.
    let best = acc.iter().cloned().fold(0.0, f64::max);
    assert!(best > 0.45, "accuracy {acc:?} does not beat chance");
    assert!(f1.iter().all(|x| (0.0..=1.0).contains(x)), "{f1:?}");
    // The run's stored config names the checkpoint it fine-tuned (the newest one inside the
    // directory given), so --resume and restarts need no flag and find the same backbone.
    let stored = std::fs::read_to_string(ft.join("config.yaml")).unwrap();
    let abs = ck.canonicalize().unwrap();
    assert!(stored.contains(&format!("{}/", abs.display())), "{stored}");
    assert!(all.contains("anvil: backbone checkpoint"), "{all}");
    assert!(ft.join("checkpoints/last").is_dir());

    // `coordinator launch` runs the same fine-tuning when the config names the checkpoint.
    let launched = dir.join("launched");
    let mut cmd = coordinator(&[
        "launch",
        "--config",
        "configs/finetune_cell_type.yaml",
        "--run-dir",
    ]);
    cmd.arg(&launched)
        .arg("--worker-bin")
        .arg(worker_bin())
        .args([
            "--set",
            "data.num_workers=1",
            "--set",
            "training.max_epochs=1",
        ])
        .arg("--set")
        .arg(format!("finetune.checkpoint_path={}", ck.display()));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(column(&launched, "val/accuracy").len(), 1);
}

#[test]
fn finetune_refuses_what_it_cannot_fine_tune() {
    let dir = scratch("refusals");
    let missing = dir.join("no-such-checkpoint");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--config".into(),
                "configs/quickstart.yaml".into(),
                "--checkpoint".into(),
                dir.display().to_string(),
            ],
            "configs/quickstart.yaml has no finetune section",
        ),
        (
            vec![
                "--config".into(),
                "configs/finetune_cell_type.yaml".into(),
                "--checkpoint".into(),
                missing.display().to_string(),
            ],
            "no such checkpoint",
        ),
        (
            vec![
                "--config".into(),
                "configs/finetune_cell_type.yaml".into(),
                "--set".into(),
                "finetune.checkpoint_path=null".into(),
            ],
            "coordinator finetune --config X.yaml --checkpoint DIR",
        ),
    ];
    for (i, (args, expected)) in cases.into_iter().enumerate() {
        let mut cmd = coordinator(&["finetune", "--run-dir"]);
        cmd.arg(dir.join(format!("run{i}"))).args(&args);
        cmd.arg("--worker-bin").arg(worker_bin());
        let out = cmd.output().unwrap();
        let all = describe(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {all}");
        assert!(
            all.contains(expected),
            "{args:?}: expected {expected:?} in {all}"
        );
        assert!(!all.contains("registered"), "no worker started: {all}");
    }
}

#[test]
fn lora_finetunes_with_two_workers_and_exports_a_model_that_embeds() {
    let dir = scratch("lora");
    let ck = pretrain(&dir.join("pre"));

    let ft = dir.join("ft");
    let mut cmd = coordinator(&[
        "finetune",
        "--config",
        "configs/finetune_cell_type.yaml",
        "--nodes",
        "2",
        "--checkpoint",
    ]);
    cmd.arg(&ck)
        .arg("--run-dir")
        .arg(&ft)
        .arg("--worker-bin")
        .arg(worker_bin());
    for s in [
        "data.num_workers=1",
        "training.max_epochs=2",
        "finetune.lora.enabled=true",
        "finetune.lora.rank=4",
        "finetune.backbone_lr=3e-3",
        // The in-training assessment on both ranks, every epoch.
        "eval.benchmarks=[linear_probe]",
        "eval.every_n_epochs=1",
    ] {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    let all = describe(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("finetune.lora: rank 4 adapters"), "{all}");
    assert!(all.contains("epoch 1 assessment (700 cells"), "{all}");
    assert_eq!(
        column(&ft, "assessment/linear_probe/val/accuracy").len(),
        2,
        "{all}"
    );
    assert!(
        all.contains("all 2 replicas hold identical parameters"),
        "{all}"
    );
    assert_eq!(column(&ft, "val/accuracy").len(), 2);

    // Export merges the adapters; the export is a model `coordinator embed` reads.
    let exported = dir.join("exported");
    let mut cmd = coordinator(&["export", "--checkpoint"]);
    cmd.arg(ft.join("checkpoints"))
        .arg("--output")
        .arg(&exported)
        .arg("--worker-bin")
        .arg(worker_bin());
    let out = cmd.output().unwrap();
    let all = describe(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("3 LoRA adapters merged"), "{all}");
    assert!(exported.join("manifest.json").is_file());
    let mut cmd = coordinator(&["embed", "--checkpoint"]);
    cmd.arg(&exported)
        .arg("--data")
        .arg(repo().join("data/pbmc68k_counts.h5ad"))
        .arg("--output")
        .arg(dir.join("emb.h5ad"))
        .arg("--worker-bin")
        .arg(worker_bin());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(dir.join("emb.h5ad").is_file());

    // Exporting over what exists is refused, and nothing is lost.
    let mut cmd = coordinator(&["export", "--checkpoint"]);
    cmd.arg(ft.join("checkpoints"))
        .arg("--output")
        .arg(&exported)
        .arg("--worker-bin")
        .arg(worker_bin());
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(describe(&out).contains("exists and is not empty"));
    assert!(exported.join("model.safetensors").is_file());
}
