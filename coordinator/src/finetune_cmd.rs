//! `coordinator finetune --config X.yaml --checkpoint C [--nodes N]`: scModelForge's
//! `finetune` verb. A fine-tuning run is a launch whose workers train the config's `finetune`
//! task on the backbone of checkpoint C: this command checks that the config has a `finetune`
//! section, sets `finetune.checkpoint_path` to C (an absolute path, so every worker finds it;
//! for a directory of checkpoints, its newest complete one)
//! and hands over to `coordinator launch`, with all of its options (`--nodes`, `--run-dir`,
//! `--resume`, `--set`, …).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Args;
use configs::ScModelForgeConfig;

use crate::launch::{self, LaunchArgs};

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The pretrained anvil checkpoint: a checkpoint directory, or a directory of checkpoints
    /// such as <run>/checkpoints (the newest complete one). Its model, tokenizer and vocabulary
    /// are the backbone's. Overrides finetune.checkpoint_path, which may then be null
    #[arg(long, value_name = "DIR", requires = "config")]
    pub checkpoint: Option<PathBuf>,

    #[command(flatten)]
    pub launch: LaunchArgs,
}

pub fn run(args: FinetuneArgs) -> ExitCode {
    match prepare(args) {
        Ok(launch_args) => launch::run(launch_args),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The launch that fine-tunes: `--checkpoint` as an override of `finetune.checkpoint_path`.
pub fn prepare(args: FinetuneArgs) -> anyhow::Result<LaunchArgs> {
    let mut launch = args.launch;
    let Some(path) = launch.config.clone() else {
        // --resume: the run directory's config already says what to fine-tune.
        return Ok(launch);
    };
    let cfg: ScModelForgeConfig =
        configs::load_file_as(&path, &launch.overrides).map_err(|e| anyhow!("{e}"))?;
    if cfg.finetune.is_none() {
        bail!(
            "{} has no finetune section: `coordinator finetune` trains a task head on a pretrained backbone and needs one (finetune.label_key, finetune.head; see configs/finetune_cell_type.yaml); to pretrain, use `coordinator launch`",
            path.display()
        );
    }
    if let Some(why) = run::support::unsupported(&cfg) {
        bail!("{why}");
    }
    if let Some(ck) = args.checkpoint {
        if !ck.exists() {
            bail!("--checkpoint {}: no such checkpoint", ck.display());
        }
        let abs = ck
            .canonicalize()
            .map_err(|e| anyhow!("--checkpoint {}: {e}", ck.display()))?;
        // A directory of checkpoints is pinned to its newest complete one now, so that every
        // worker, restart and resume of this run starts from the same backbone.
        let exact = run::checkpoint::resolve_resume(&abs)
            .map_err(|e| anyhow!("--checkpoint {}: {e}", ck.display()))?;
        eprintln!("anvil: backbone checkpoint {}", exact.display());
        let text = exact.to_string_lossy().replace('\'', "''");
        launch
            .overrides
            .push(format!("finetune.checkpoint_path='{text}'"));
    }
    Ok(launch)
}
