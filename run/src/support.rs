//! What this build can train: config sections it cannot honour yet are refused at start, by
//! the coordinator before any worker starts and by `worker train`, never silently skipped.

use configs::ScModelForgeConfig;

/// The first section of `cfg` this build cannot train, as a message naming its key.
pub fn unsupported(cfg: &ScModelForgeConfig) -> Option<String> {
    if cfg.finetune.is_some() {
        return Some("finetune: fine-tuning is not implemented yet; this build pretrains only (remove the finetune section to pretrain)".into());
    }
    cfg.eval.benchmarks.first().map(|b| {
        format!(
            "eval.benchmarks: evaluation benchmarks ({}) are not implemented yet; remove them (the validation loss is computed every epoch)",
            b.name
        )
    })
}
