//! Checking a run's inputs before any worker starts, so a bad path fails here, once, clearly.
//!
//! **Why the coordinator does not plan the run.** The plan (the gene vocabulary, the
//! train/validation split, each rank's shard of cells and its order per epoch) is a pure,
//! deterministic function of the resolved config, the data files and the world size: every
//! rank computes the same plan from the same inputs (`data::ShardPlan` and the pipeline in
//! `worker::train`) and takes its own part. The coordinator hands each worker only what differs
//! between them (its rank, the world size, the run directory and the checkpoint to resume
//! from) with the resolved config. Sending the vocabulary and per-rank shard lists instead
//! would repeat work each worker must do anyway (it reads the same files to tokenize them),
//! make registration messages grow with the dataset, and put a second source of truth beside
//! the config. What the coordinator can usefully do ahead of the workers is what is here: see
//! that the inputs exist and say what the run will do with them.

use std::path::Path;

use anyhow::bail;
use configs::{ScModelForgeConfig, SleapNnConfig};
use run::RunConfig;

/// Fails on a config section this build cannot train or a data path that does not exist;
/// prints the run's inputs and global batch.
pub fn check_inputs(cfg: &RunConfig, world: usize) -> anyhow::Result<()> {
    match cfg {
        RunConfig::Cells(c) => check_cells(c, world),
        RunConfig::Pose(c) => check_pose(c, world),
    }
}

/// A pose run: the labels files exist (the workers check every field they cannot honour, by
/// name, before training; the first to fail stops the run with that message).
fn check_pose(cfg: &SleapNnConfig, world: usize) -> anyhow::Result<()> {
    let d = &cfg.data_config;
    let Some(train) = d.train_labels_path.as_ref().filter(|p| !p.is_empty()) else {
        bail!("data_config.train_labels_path is null: name the labels, e.g. --set data_config.train_labels_path=[labels.pkg.slp]");
    };
    for (field, p) in d.labels_files() {
        if !Path::new(p).exists() {
            bail!("{field}: {p} does not exist (paths are relative to the current directory)");
        }
    }
    let b = cfg.trainer_config.train_data_loader.batch_size;
    let heads: Vec<&str> = cfg
        .model_config
        .head_configs
        .kinds()
        .iter()
        .map(|k| k.as_str())
        .collect();
    eprintln!(
        "anvil: {} head, {} labels file(s), global batch {} ({b} per worker x {world})",
        heads.join(" + "),
        train.len(),
        b * world
    );
    Ok(())
}

fn check_cells(cfg: &ScModelForgeConfig, world: usize) -> anyhow::Result<()> {
    if let Some(why) = run::support::unsupported(cfg) {
        bail!("{why}");
    }
    if let Some(ft) = &cfg.finetune {
        let Some(ck) = ft.checkpoint() else {
            bail!("finetune.checkpoint_path is empty: a fine-tuning run needs the pretrained checkpoint; run `coordinator finetune --config X.yaml --checkpoint DIR`, or name it in finetune.checkpoint_path");
        };
        if !Path::new(ck).exists() {
            bail!(
                "finetune.checkpoint_path: {} does not exist (a checkpoint directory, or a directory of checkpoints such as <run>/checkpoints; relative paths are from the current directory)",
                ck
            );
        }
        eprintln!(
            "anvil: fine-tuning the backbone of {} for {} of obs/{}",
            ck, ft.head.task, ft.label_key
        );
    }
    for p in &cfg.data.paths {
        if !Path::new(p).exists() {
            bail!("data.paths: {p} does not exist (paths are relative to the current directory)");
        }
    }
    let sources = if cfg.data.shards.enabled {
        let dir = Path::new(&cfg.data.shards.shard_dir);
        if !dir.join("manifest.json").is_file() {
            bail!(
                "data.shards.shard_dir: {} has no manifest.json (write shards with `coordinator shard --config X.yaml --output-dir DIR`; relative paths are from the current directory)",
                dir.display()
            );
        }
        format!("shards of {}", dir.display())
    } else {
        format!("{} file(s)", cfg.data.paths.len())
    };
    let global = cfg.training.batch_size * world;
    eprintln!(
        "anvil: {sources}, {} tokenizer, global batch {} ({} per worker x {world}){}",
        cfg.tokenizer.strategy,
        global,
        cfg.training.batch_size,
        if cfg.training.gradient_accumulation > 1 {
            format!(
                ", gradient accumulation {}",
                cfg.training.gradient_accumulation
            )
        } else {
            String::new()
        }
    );
    Ok(())
}
