//! The synthetic batch both training-step benches (`model_step`, `gpu_step`) train on: random
//! gene ids, every cell full length, `k` random positions of each cell masked.

use data::masking::IGNORE_INDEX;
use data::vocab::{MASK, N_SPECIAL};
use data::Batch;
use kernels::rng::RngKey;

/// `b` cells of `t` tokens over a `vocab`-id vocabulary, `k` positions per cell masked.
pub fn masked_gene_batch(b: usize, t: usize, vocab: usize, k: usize) -> Batch {
    let key = RngKey::new(0x5eed, 0, 0);
    let genes = vocab as u64 - N_SPECIAL as u64;
    let mut gene_ids: Vec<u32> = (0..b * t)
        .map(|i| N_SPECIAL + (u64::from(key.bits(i as u64)) % genes) as u32)
        .collect();
    let mut labels = vec![IGNORE_INDEX; b * t];
    let pick = RngKey::new(0x5eed, 1, 0);
    for r in 0..b {
        // Partial Fisher-Yates: the first k entries of a random permutation of 0..t.
        let mut idx: Vec<usize> = (0..t).collect();
        for j in 0..k {
            let u = pick.bits((r * t + j) as u64) as usize;
            idx.swap(j, j + u % (t - j));
        }
        for &j in &idx[..k] {
            let p = r * t + j;
            labels[p] = gene_ids[p] as i32;
            gene_ids[p] = MASK;
        }
    }
    Batch {
        epoch: 0,
        step: 0,
        batch_size: b,
        seq_len: t,
        cells: (0..b as u64).collect(),
        gene_ids,
        values: vec![0.0; b * t],
        target_values: vec![0.0; b * t],
        labels,
        attention_mask: vec![1; b * t],
    }
}
