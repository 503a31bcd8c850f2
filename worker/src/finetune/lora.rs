//! LoRA fine-tuning (`finetune.lora`), as scModelForge applies HuggingFace peft to its
//! backbone: adapters on the encoder layers' `target_modules`, the base weights frozen, the
//! adapters (and biases as `bias` says) training with the backbone's learning rate and the
//! head with its own. `freeze_backbone` and `freeze_backbone_epochs` do nothing under LoRA, as
//! in scModelForge, where LoRA "manages its own trainable/frozen split".
//!
//! A LoRA run's checkpoints hold what trains (adapters, trained biases, head) and their Adam
//! moments; the frozen backbone is the one `finetune.checkpoint_path` names.
//! [`merge`] folds the adapters into the base weights (`coordinator export`, and any
//! embedding of a LoRA checkpoint).

use std::ops::Range;

use configs::scmodelforge::{LoRAConfig, LoraBias};
use kernels::modules::LoraSpec;
use kernels::ParamLayout;

/// peft's `LoraConfig` from the config section.
pub fn spec(cfg: &LoRAConfig) -> LoraSpec {
    LoraSpec {
        rank: cfg.rank,
        alpha: cfg.alpha as f64,
        dropout: cfg.dropout,
        targets: cfg.target_modules(),
    }
}

/// Whether `name` is an adapter's parameter.
pub fn is_adapter(name: &str) -> bool {
    name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight")
}

/// The backbone's parameters that train under LoRA: every adapter, and the biases `bias`
/// selects (peft: `all` = every bias of the backbone, `lora_only` = the adapted layers'),
/// as ranges of the parameter buffer. `layout` is the backbone's with its adapters attached.
pub fn trainable(layout: &ParamLayout, adapted: &[String], bias: LoraBias) -> Vec<Range<usize>> {
    let bias_trains = |name: &str| match bias {
        LoraBias::None => false,
        LoraBias::All => name.ends_with("bias"),
        LoraBias::LoraOnly => adapted.iter().any(|m| name == format!("{m}.bias")),
    };
    layout
        .entries()
        .iter()
        .filter(|e| is_adapter(&e.name) || bias_trains(&e.name))
        .map(|e| e.view().range())
        .collect()
}

/// The ranges of `0..total` outside `keep` (sorted or not).
pub fn complement(keep: &[Range<usize>], total: usize) -> Vec<Range<usize>> {
    let mut keep = keep.to_vec();
    keep.sort_by_key(|r| r.start);
    let mut out = Vec::new();
    let mut at = 0;
    for r in keep {
        if r.start > at {
            out.push(at..r.start);
        }
        at = at.max(r.end);
    }
    if at < total {
        out.push(at..total);
    }
    out
}

/// `params` with every adapter folded into its base weight (W + alpha/rank · B·A, peft's
/// `merge_and_unload`); the adapters' own entries are left as they are. Errors name a module
/// whose base weight is missing or whose shapes do not fit.
pub fn merge(layout: &ParamLayout, params: &[f32], alpha: f64) -> Result<Vec<f32>, String> {
    let mut out = params.to_vec();
    for e in layout.entries() {
        let Some(module) = e.name.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let get = |n: String| {
            layout
                .get(&n)
                .map_err(|_| format!("the adapter {} has no {n}", e.name))
        };
        let w = get(format!("{module}.weight"))?;
        let b = get(format!("{module}.lora_B.weight"))?;
        let (rank, in_f) = (e.shape[0], e.shape[1]);
        let out_f = b.shape[0];
        if w.shape != [out_f, in_f] || b.shape != [out_f, rank] {
            return Err(format!(
                "{module}: weight {:?}, lora_A {:?} and lora_B {:?} do not fit together",
                w.shape, e.shape, b.shape
            ));
        }
        let merged = kernels::modules::lora::merge_weight(
            &params[w.view().range()],
            &params[e.view().range()],
            &params[b.view().range()],
            in_f,
            rank,
            alpha / rank as f64,
        );
        out[w.view().range()].copy_from_slice(&merged);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complement_covers_the_gaps() {
        assert_eq!(complement(&[4..6, 0..2], 10), vec![2..4, 6..10]);
        assert_eq!(complement(&[], 3), vec![0..3]);
        let all = vec![Range { start: 0, end: 3 }];
        assert_eq!(complement(&all, 3), Vec::<Range<usize>>::new());
    }
}
