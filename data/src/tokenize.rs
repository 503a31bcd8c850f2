//! Tokenizers: one cell's preprocessed expressed genes → a sequence of (gene id, value).
//!
//! Every strategy first selects the cell's tokens the same way: expressed genes ordered by
//! preprocessed value, descending; ties keep the order of the cell's row in X (a stable sort,
//! as `numpy.argsort(-x, kind="stable")`); truncated to `max_genes` tokens in total, so to
//! `max_genes - 1` genes when `prepend_cls` puts [CLS] (value 0) first. Then:
//!
//! - `rank_value` (Geneformer): the ids carry the information; values are carried along.
//! - `binned_expression` (scGPT): values become bin indices (as f32). Bin 0 is zero expression;
//!   expressed values fall in bins 1..=n_bins-1. Edges are computed per cell over its selected
//!   tokens: with B = n_bins - 1 expressed bins,
//!   - `uniform`: edges e_k = max * k / B for k = 1..B-1, where max is the cell's largest
//!     value; bin = 1 + #{k : e_k <= v} (so the maximum is in bin B);
//!   - `quantile`: e_k = the k/B quantile of the cell's values (linear interpolation, as
//!     `numpy.quantile`), k = 1..B-1; bin = 1 + #{k : e_k <= v} (as `numpy.digitize`, so ties
//!     go to the highest bin they reach).
//! - `continuous_projection`: ids plus continuous values for a learned projection.
//! - `gene_embedding`: as continuous_projection, plus pretrained gene vectors
//!   ([`crate::embedding::GeneEmbedding`]) aligned to the vocabulary.

use configs::scmodelforge::{BinningMethod, TokenizerConfig, TokenizerStrategy};

use crate::embedding::GeneEmbedding;
use crate::error::{DataError, Result};
use crate::vocab::{GeneVocab, CLS};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizedCell {
    pub genes: Vec<u32>,
    pub values: Vec<f32>,
}

impl TokenizedCell {
    pub fn len(&self) -> usize {
        self.genes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.genes.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Tokenizer {
    pub strategy: TokenizerStrategy,
    /// Sequence length cap, [CLS] included.
    pub max_genes: usize,
    pub prepend_cls: bool,
    pub n_bins: usize,
    pub binning: BinningMethod,
    pub embedding: Option<GeneEmbedding>,
}

/// Reusable buffers so tokenizing does not allocate per cell.
#[derive(Default)]
pub struct Scratch {
    keys: Vec<u64>,
    sorted: Vec<f32>,
}

impl Tokenizer {
    /// From `tokenizer:`; the sequence cap is the smaller of `tokenizer.max_genes` and
    /// `data.max_genes`. Loads pretrained embeddings for `gene_embedding`.
    pub fn from_config(
        cfg: &TokenizerConfig,
        data_max_genes: usize,
        vocab: &GeneVocab,
    ) -> Result<Self> {
        let max_genes = cfg.max_genes.min(data_max_genes);
        if max_genes == 0 || (cfg.prepend_cls && max_genes < 2) {
            return Err(DataError::Config(format!(
                "tokenizer.max_genes = {max_genes} leaves no room for genes"
            )));
        }
        if cfg.strategy == TokenizerStrategy::BinnedExpression && cfg.n_bins < 2 {
            return Err(DataError::Config(format!(
                "tokenizer.n_bins must be at least 2 (bin 0 is zero expression), got {}",
                cfg.n_bins
            )));
        }
        let embedding = if cfg.strategy == TokenizerStrategy::GeneEmbedding {
            let path = cfg.embedding_path.as_deref().ok_or_else(|| {
                DataError::Config(
                    "tokenizer.strategy gene_embedding needs tokenizer.embedding_path".into(),
                )
            })?;
            Some(GeneEmbedding::load(
                std::path::Path::new(path),
                cfg.embedding_dim,
                vocab,
            )?)
        } else {
            None
        };
        Ok(Tokenizer {
            strategy: cfg.strategy,
            max_genes,
            prepend_cls: cfg.prepend_cls,
            n_bins: cfg.n_bins,
            binning: cfg.binning_method,
            embedding,
        })
    }

    /// A tokenizer without embeddings, for tests and benchmarks.
    pub fn new(strategy: TokenizerStrategy, max_genes: usize, prepend_cls: bool) -> Self {
        Tokenizer {
            strategy,
            max_genes,
            prepend_cls,
            n_bins: 51,
            binning: BinningMethod::Uniform,
            embedding: None,
        }
    }

    /// Tokenize one cell's expressed genes (values > 0) into `out` (cleared first).
    pub fn tokenize(
        &self,
        genes: &[u32],
        values: &[f32],
        out: &mut TokenizedCell,
        scratch: &mut Scratch,
    ) {
        out.genes.clear();
        out.values.clear();
        if self.prepend_cls {
            out.genes.push(CLS);
            out.values.push(0.0);
        }
        let room = self.room();
        // Key: descending value (positive f32 bits order like the floats), then position.
        let keys = &mut scratch.keys;
        keys.clear();
        keys.extend(
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| (((u32::MAX - v.to_bits()) as u64) << 32) | i as u64),
        );
        if keys.len() > room {
            keys.select_nth_unstable(room);
            keys.truncate(room);
        }
        keys.sort_unstable();
        for &k in keys.iter() {
            let i = (k & 0xffff_ffff) as usize;
            out.genes.push(genes[i]);
            out.values.push(values[i]);
        }
        self.finish(out, scratch);
    }

    /// Genes for a cell of this many tokens at most (the cap minus [CLS]).
    pub fn room(&self) -> usize {
        self.max_genes.saturating_sub(usize::from(self.prepend_cls))
    }

    /// The strategy-specific last step on a selected, ordered cell (binning).
    pub fn finish(&self, out: &mut TokenizedCell, scratch: &mut Scratch) {
        if self.strategy == TokenizerStrategy::BinnedExpression {
            let start = usize::from(self.prepend_cls);
            self.bin(&mut out.values[start..], &mut scratch.sorted);
        }
    }

    /// Replace positive values by their bin (see the module docs); zeros stay bin 0.
    pub fn bin(&self, values: &mut [f32], sorted: &mut Vec<f32>) {
        let b = (self.n_bins - 1) as f32;
        match self.binning {
            BinningMethod::Uniform => {
                let max = values.iter().copied().fold(0f32, f32::max);
                for v in values.iter_mut() {
                    if *v > 0.0 {
                        // Count of edges max*k/B <= v for k in 1..B, i.e. floor(v * B / max)
                        // clamped to B - 1.
                        let k = ((*v / max) * b).floor().min(b - 1.0);
                        *v = 1.0 + k;
                    } else {
                        *v = 0.0;
                    }
                }
            }
            BinningMethod::Quantile => {
                sorted.clear();
                sorted.extend(values.iter().copied().filter(|&v| v > 0.0));
                if sorted.is_empty() {
                    values.iter_mut().for_each(|v| *v = 0.0);
                    return;
                }
                sorted.sort_by(f32::total_cmp);
                let n = sorted.len();
                let nb = self.n_bins - 1;
                let edges: Vec<f32> = (1..nb)
                    .map(|k| {
                        let h = (n - 1) as f64 * k as f64 / nb as f64;
                        let lo = h.floor() as usize;
                        let hi = (lo + 1).min(n - 1);
                        let t = (h - lo as f64) as f32;
                        sorted[lo] + t * (sorted[hi] - sorted[lo])
                    })
                    .collect();
                for v in values.iter_mut() {
                    if *v > 0.0 {
                        *v = 1.0 + edges.partition_point(|&e| e <= *v) as f32;
                    } else {
                        *v = 0.0;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &Tokenizer, g: &[u32], v: &[f32]) -> TokenizedCell {
        let mut out = TokenizedCell::default();
        t.tokenize(g, v, &mut out, &mut Scratch::default());
        out
    }

    #[test]
    fn rank_value_orders_and_truncates() {
        let t = Tokenizer::new(TokenizerStrategy::RankValue, 4, true);
        let out = run(&t, &[10, 11, 12, 13, 14], &[1.0, 5.0, 3.0, 5.0, 0.5]);
        // Ties (11 and 13 at 5.0) keep row order; 4 tokens = CLS + 3 genes.
        assert_eq!(out.genes, vec![CLS, 11, 13, 12]);
        assert_eq!(out.values, vec![0.0, 5.0, 5.0, 3.0]);
        let t = Tokenizer::new(TokenizerStrategy::RankValue, 10, false);
        let out = run(&t, &[10, 11], &[1.0, 2.0]);
        assert_eq!(out.genes, vec![11, 10]);
        let out = run(&t, &[], &[]);
        assert!(out.is_empty());
    }

    #[test]
    fn continuous_keeps_values() {
        let t = Tokenizer::new(TokenizerStrategy::ContinuousProjection, 8, true);
        let out = run(&t, &[7, 8], &[0.25, 0.75]);
        assert_eq!(out.genes, vec![CLS, 8, 7]);
        assert_eq!(out.values, vec![0.0, 0.75, 0.25]);
    }

    #[test]
    fn uniform_bins() {
        let mut t = Tokenizer::new(TokenizerStrategy::BinnedExpression, 16, false);
        t.n_bins = 5; // 4 expressed bins, edges at 1, 2, 3 for max 4
        let out = run(&t, &[4, 5, 6, 7, 8], &[4.0, 0.5, 1.0, 2.9, 3.0]);
        assert_eq!(out.genes, vec![4, 8, 7, 6, 5]);
        assert_eq!(out.values, vec![4.0, 4.0, 3.0, 2.0, 1.0]);
    }

    #[test]
    fn quantile_bins() {
        let mut t = Tokenizer::new(TokenizerStrategy::BinnedExpression, 16, true);
        t.n_bins = 5;
        t.binning = BinningMethod::Quantile;
        // values 1..=9: edges at quantiles 1/4, 2/4, 3/4 = 3, 5, 7
        let g: Vec<u32> = (4..13).collect();
        let v: Vec<f32> = (1..=9).map(|x| x as f32).collect();
        let out = run(&t, &g, &v);
        let bins: Vec<f32> = out.values[1..].to_vec();
        // descending values 9..1 → bins
        assert_eq!(bins, vec![4.0, 4.0, 4.0, 3.0, 3.0, 2.0, 2.0, 1.0, 1.0]);
        assert_eq!(out.values[0], 0.0);
        // every bin in range
        assert!(bins.iter().all(|&b| (1.0..=4.0).contains(&b)));
    }
}
