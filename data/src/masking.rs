//! BERT-style masking of token sequences.
//!
//! Of the maskable tokens (genes: id >= 4; [PAD], [UNK], [MASK], [CLS] are never masked),
//! round(mask_ratio * n) are chosen (at least one when mask_ratio > 0 and n > 0). Each chosen
//! token independently becomes [MASK] with probability 1 - random_replace_ratio - keep_ratio,
//! a uniformly random gene with probability random_replace_ratio, or stays itself with
//! probability keep_ratio. Labels hold the original gene id at chosen positions and
//! [`IGNORE_INDEX`] elsewhere; chosen positions also get their value replaced by
//! [`MASK_VALUE`]. All choices come from a counter-based generator keyed by
//! (seed, epoch, global cell id), so they do not depend on batch composition, worker count or
//! thread scheduling.

use configs::scmodelforge::MaskingConfig;

use crate::error::{DataError, Result};
use crate::rng::{CounterRng, Stream};
use crate::vocab::{MASK, N_SPECIAL};

/// Label at positions that carry no loss (PyTorch's CrossEntropyLoss default).
pub const IGNORE_INDEX: i32 = -100;
/// Expression value at masked positions (real values are >= 0).
pub const MASK_VALUE: f32 = -1.0;

#[derive(Debug, Clone, PartialEq)]
pub struct Masker {
    pub mask_ratio: f64,
    pub random_replace_ratio: f64,
    pub keep_ratio: f64,
    /// Number of token ids; random replacements draw genes from 4..vocab_len.
    pub vocab_len: u32,
    pub seed: u64,
}

impl Masker {
    pub fn new(cfg: &MaskingConfig, vocab_len: usize, seed: u64) -> Result<Self> {
        let ok = |x: f64| (0.0..=1.0).contains(&x);
        if !ok(cfg.mask_ratio) || !ok(cfg.random_replace_ratio) || !ok(cfg.keep_ratio) {
            return Err(DataError::Config(format!(
                "tokenizer.masking ratios must be in [0, 1] (mask_ratio {}, random_replace_ratio {}, keep_ratio {})",
                cfg.mask_ratio, cfg.random_replace_ratio, cfg.keep_ratio
            )));
        }
        if cfg.random_replace_ratio + cfg.keep_ratio > 1.0 + 1e-12 {
            return Err(DataError::Config(format!(
                "tokenizer.masking: random_replace_ratio + keep_ratio = {} exceeds 1",
                cfg.random_replace_ratio + cfg.keep_ratio
            )));
        }
        Ok(Masker {
            mask_ratio: cfg.mask_ratio,
            random_replace_ratio: cfg.random_replace_ratio,
            keep_ratio: cfg.keep_ratio,
            vocab_len: vocab_len as u32,
            seed,
        })
    }

    /// Mask one sequence in place and write its labels (same length as `ids`).
    pub fn apply(
        &self,
        epoch: u64,
        cell: u64,
        ids: &mut [u32],
        values: &mut [f32],
        labels: &mut [i32],
        positions: &mut Vec<u32>,
    ) {
        labels.iter_mut().for_each(|l| *l = IGNORE_INDEX);
        // Positions of maskable tokens, in order. Usually they are everything after the
        // leading [CLS]: then the list is a plain range (both checks vectorize).
        positions.clear();
        let first = ids
            .iter()
            .position(|&id| id >= N_SPECIAL)
            .unwrap_or(ids.len());
        let maskable = ids[first..].iter().filter(|&&id| id >= N_SPECIAL).count();
        if maskable == ids.len() - first {
            positions.extend(first as u32..ids.len() as u32);
        } else {
            // Branch-free: every position is stored, the count advances past maskable ones.
            positions.resize(ids.len(), 0);
            let mut n = 0;
            for (i, &id) in ids.iter().enumerate() {
                positions[n] = i as u32;
                n += usize::from(id >= N_SPECIAL);
            }
            positions.truncate(n);
        }
        let n = positions.len();
        if n == 0 || self.mask_ratio <= 0.0 {
            return;
        }
        let k = ((self.mask_ratio * n as f64).round() as usize).clamp(1, n);
        let mut rng = CounterRng::new(self.seed, Stream::Masking, &[epoch, cell]);
        let p_mask = 1.0 - self.random_replace_ratio - self.keep_ratio;
        let n_genes = self.vocab_len.saturating_sub(N_SPECIAL) as u64;
        for j in 0..k {
            // Partial Fisher–Yates: positions[..k] become a uniform random k-subset.
            let r = j + rng.below((n - j) as u64) as usize;
            positions.swap(j, r);
            let p = positions[j] as usize;
            labels[p] = ids[p] as i32;
            values[p] = MASK_VALUE;
            let u = rng.next_f64();
            if u < p_mask {
                ids[p] = MASK;
            } else if u < p_mask + self.random_replace_ratio && n_genes > 0 {
                ids[p] = N_SPECIAL + rng.below(n_genes) as u32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::CLS;

    fn cfg(m: f64, r: f64, k: f64) -> MaskingConfig {
        MaskingConfig {
            mask_ratio: m,
            random_replace_ratio: r,
            keep_ratio: k,
        }
    }

    #[test]
    fn ratio_statistics() {
        let m = Masker::new(&cfg(0.15, 0.1, 0.1), 10_004, 42).unwrap();
        let (mut masked, mut as_mask, mut random, mut kept, mut total) = (0, 0, 0, 0, 0);
        let mut pos = Vec::new();
        for cell in 0..2000u64 {
            let orig: Vec<u32> = std::iter::once(CLS)
                .chain((0..200).map(|i| 4 + i))
                .collect();
            let mut ids = orig.clone();
            let mut vals = vec![1.0f32; ids.len()];
            let mut labels = vec![0i32; ids.len()];
            m.apply(3, cell, &mut ids, &mut vals, &mut labels, &mut pos);
            assert_eq!(ids[0], CLS);
            assert_eq!(labels[0], IGNORE_INDEX);
            total += 200;
            for i in 1..ids.len() {
                if labels[i] != IGNORE_INDEX {
                    masked += 1;
                    assert_eq!(labels[i], orig[i] as i32);
                    assert_eq!(vals[i], MASK_VALUE);
                    if ids[i] == MASK {
                        as_mask += 1;
                    } else if ids[i] == orig[i] {
                        kept += 1;
                    } else {
                        random += 1;
                        assert!(ids[i] >= N_SPECIAL && ids[i] < 10_004);
                    }
                } else {
                    assert_eq!(ids[i], orig[i]);
                    assert_eq!(vals[i], 1.0);
                }
            }
        }
        assert_eq!(masked, 2000 * 30); // round(0.15 * 200) per cell
        let f = |x: usize| x as f64 / masked as f64;
        assert!((f(as_mask) - 0.8).abs() < 0.01, "{}", f(as_mask));
        // a random replacement can pick the original gene (1 in 10_000): counted as kept
        assert!((f(random) - 0.1).abs() < 0.01, "{}", f(random));
        assert!((f(kept) - 0.1).abs() < 0.01, "{}", f(kept));
        let _ = total;
    }

    #[test]
    fn deterministic_and_keyed() {
        let m = Masker::new(&cfg(0.3, 0.1, 0.1), 100, 1).unwrap();
        let run = |epoch, cell| {
            let mut ids: Vec<u32> = (4..50).collect();
            let mut v = vec![0.5f32; ids.len()];
            let mut l = vec![0i32; ids.len()];
            m.apply(epoch, cell, &mut ids, &mut v, &mut l, &mut Vec::new());
            (ids, l)
        };
        assert_eq!(run(0, 5), run(0, 5));
        assert_ne!(run(0, 5), run(1, 5));
        assert_ne!(run(0, 5), run(0, 6));
    }

    /// The masking as first written: the maskable positions collected with a filter.
    fn reference(
        m: &Masker,
        epoch: u64,
        cell: u64,
        ids: &mut [u32],
        values: &mut [f32],
    ) -> Vec<i32> {
        let mut labels = vec![IGNORE_INDEX; ids.len()];
        let mut positions: Vec<u32> = ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id >= N_SPECIAL)
            .map(|(i, _)| i as u32)
            .collect();
        let n = positions.len();
        if n == 0 || m.mask_ratio <= 0.0 {
            return labels;
        }
        let k = ((m.mask_ratio * n as f64).round() as usize).clamp(1, n);
        let mut rng = CounterRng::new(m.seed, Stream::Masking, &[epoch, cell]);
        let p_mask = 1.0 - m.random_replace_ratio - m.keep_ratio;
        let n_genes = m.vocab_len.saturating_sub(N_SPECIAL) as u64;
        for j in 0..k {
            let r = j + rng.below((n - j) as u64) as usize;
            positions.swap(j, r);
            let p = positions[j] as usize;
            labels[p] = ids[p] as i32;
            values[p] = MASK_VALUE;
            let u = rng.next_f64();
            if u < p_mask {
                ids[p] = MASK;
            } else if u < p_mask + m.random_replace_ratio && n_genes > 0 {
                ids[p] = N_SPECIAL + rng.below(n_genes) as u32;
            }
        }
        labels
    }

    #[test]
    fn same_as_reference_with_special_tokens_anywhere() {
        let m = Masker::new(&cfg(0.15, 0.1, 0.1), 1000, 7).unwrap();
        let mut pos = Vec::new();
        let mut r = CounterRng::new(3, Stream::Synth, &[]);
        for cell in 0..500u64 {
            let len = r.below(300) as usize;
            // [CLS] first or not; [UNK] (or [PAD]) sprinkled in some cells, none in others.
            let specials = cell % 3;
            let ids: Vec<u32> = (0..len)
                .map(|i| match (i, specials) {
                    (0, 0 | 1) => CLS,
                    (_, 1) if r.below(10) == 0 => r.below(N_SPECIAL as u64) as u32,
                    _ => N_SPECIAL + r.below(996) as u32,
                })
                .collect();
            let vals: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let (mut a_ids, mut a_vals, mut a_labels) = (ids.clone(), vals.clone(), vec![0; len]);
            m.apply(2, cell, &mut a_ids, &mut a_vals, &mut a_labels, &mut pos);
            let (mut b_ids, mut b_vals) = (ids.clone(), vals.clone());
            let b_labels = reference(&m, 2, cell, &mut b_ids, &mut b_vals);
            assert_eq!((a_ids, a_labels), (b_ids, b_labels), "cell {cell}");
            assert_eq!(a_vals, b_vals);
        }
    }

    #[test]
    fn bad_ratios() {
        assert!(Masker::new(&cfg(1.5, 0.1, 0.1), 10, 0).is_err());
        assert!(Masker::new(&cfg(0.15, 0.6, 0.6), 10, 0).is_err());
    }
}
