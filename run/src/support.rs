//! What this build can train: config sections it cannot honour yet are refused at start, by
//! the coordinator before any worker starts and by `worker train`, never silently skipped.

use configs::ScModelForgeConfig;

/// The first section of `cfg` this build cannot train, as a message naming its key.
pub fn unsupported(cfg: &ScModelForgeConfig) -> Option<String> {
    if let Some(ft) = &cfg.finetune {
        if ft.lora.enabled {
            return Some("finetune.lora: LoRA adapters are not implemented yet; set finetune.lora.enabled: false to fine-tune the backbone itself (or freeze it with finetune.freeze_backbone: true)".into());
        }
    }
    cfg.eval.benchmarks.first().map(|b| {
        format!(
            "eval.benchmarks: evaluation benchmarks ({}) are not implemented yet; remove them (the validation loss is computed every epoch)",
            b.name
        )
    })
}
