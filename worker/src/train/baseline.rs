//! The frequency baseline a masked-gene model must beat to have learned anything.

use std::sync::Arc;

use configs::scmodelforge::ScModelForgeConfig;
use data::masking::IGNORE_INDEX;
use data::vocab::N_SPECIAL;
use data::{Loader, LoaderOptions, Pipeline, Position, ShardPlan, Split};

use super::events::TrainError;

/// The loss of predicting each masked validation gene from gene frequencies alone: genes are
/// counted over every token of the training cells (add-½ smoothing over the vocabulary's
/// genes), and the cross-entropy is averaged over the masked positions of the validation
/// split, the same targets the model's validation loss averages over.
pub fn frequency_baseline(cfg: &ScModelForgeConfig) -> Result<f64, TrainError> {
    let t = &cfg.training;
    let seed = t.seed as u64;
    let pipeline = Arc::new(Pipeline::from_config(cfg)?);
    let plan = ShardPlan::for_dataset(&pipeline.dataset, t.val_split, seed)?;
    let v = pipeline.vocab().len();
    let mut counts = vec![0.0f64; v];
    let bs = t.batch_size.max(1);
    let mut lo = LoaderOptions {
        rank: 0,
        world_size: 1,
        batch_size: bs,
        num_workers: 0,
        split: Split::Train,
        mask: false,
    };
    // Every training cell: walk the training order of epoch 0 in batches, plus the remainder.
    let order = plan.order(Split::Train, 0);
    for chunk in order.chunks(bs) {
        let b = pipeline.batch(chunk, None, &mut Default::default())?;
        for (&id, &m) in b.gene_ids.iter().zip(&b.attention_mask) {
            if m != 0 && id >= N_SPECIAL {
                counts[id as usize] += 1.0;
            }
        }
    }
    let genes = (v - N_SPECIAL as usize) as f64;
    let total: f64 = counts.iter().sum::<f64>() + 0.5 * genes;
    lo.split = Split::Val;
    lo.mask = true;
    let loader = Loader::new(Arc::clone(&pipeline), &plan, lo, Position::default())?;
    let (mut sum, mut n) = (0.0f64, 0.0f64);
    for b in loader {
        let b = b?;
        for &l in &b.labels {
            if l != IGNORE_INDEX {
                sum -= ((counts[l as usize] + 0.5) / total).ln();
                n += 1.0;
            }
        }
    }
    if n == 0.0 {
        return Err(TrainError::Config(
            "no masked validation tokens: set training.val_split > 0".into(),
        ));
    }
    Ok(sum / n)
}
