//! Per-cell preprocessing: library-size normalization to `target_sum`, log1p, and restriction
//! to highly variable genes.
//!
//! Highly variable genes follow scanpy's default `flavor="seurat"` (`sc.pp.highly_variable_genes`
//! after `normalize_total` and `log1p`): for each gene, the mean and variance (ddof = 1) of the
//! normalized, non-log values over all cells; dispersion = log(var / mean), mean = log1p(mean);
//! genes are put in 20 equal-width bins of mean (as `pandas.cut`), the dispersion is z-scored
//! within its bin (a bin with one gene gets a normalized dispersion of 1), and the `n_top`
//! genes with the highest normalized dispersion are kept (ties at the cut-off are kept too).
//! The statistics come from one streaming pass over the files (sums and sums of squares), so the
//! matrix is never held in memory. Genes that are absent from a file count as zeros there.

use configs::scmodelforge::PreprocessingConfig;

use crate::anndata::CsrRows;
use crate::dataset::{CellBlock, Dataset};
use crate::error::{DataError, Result};
use crate::vocab::N_SPECIAL;

/// Rows per read during the statistics pass: small enough that a block's arrays stay in cache
/// while its cells are summed (a few MB at ~2,000 genes per cell).
const SCAN_BLOCK: usize = 256;
/// scanpy's default number of mean bins for the seurat flavor.
pub const HVG_MEAN_BINS: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessor {
    /// Scale every cell to this total; None leaves raw values.
    pub target_sum: Option<f32>,
    pub log1p: bool,
    /// Indexed by token id: keep this gene. None keeps every gene (including [UNK]).
    pub keep: Option<Vec<bool>>,
}

/// Per-gene statistics of a pass over the data, indexed by gene (token id - 4).
#[derive(Debug, Clone)]
pub struct GeneStats {
    pub n_cells: u64,
    pub sum: Vec<f64>,
    pub sum_sq: Vec<f64>,
    /// Median library size of cells with a positive total.
    pub median_total: f64,
}

/// scanpy-compatible highly-variable-gene table, indexed by gene (token id - 4).
#[derive(Debug, Clone)]
pub struct HvgTable {
    pub means: Vec<f64>,
    pub dispersions: Vec<f64>,
    pub dispersions_norm: Vec<f64>,
    pub highly_variable: Vec<bool>,
}

impl Preprocessor {
    /// Normalize (if configured), log1p (if configured) and filter one cell's expressed genes.
    /// Explicit zeros are dropped. Appends to `out_genes` / `out_values`.
    #[inline]
    pub fn apply(
        &self,
        genes: &[u32],
        raw: &[f32],
        out_genes: &mut Vec<u32>,
        out_values: &mut Vec<f32>,
    ) {
        let scale = match self.target_sum {
            Some(t) => {
                let total: f32 = raw.iter().sum();
                if total > 0.0 {
                    t / total
                } else {
                    0.0
                }
            }
            None => 1.0,
        };
        for (&g, &v) in genes.iter().zip(raw) {
            if v <= 0.0 {
                continue;
            }
            if let Some(keep) = &self.keep {
                if !keep.get(g as usize).copied().unwrap_or(false) {
                    continue;
                }
            }
            let x = v * scale;
            out_genes.push(g);
            out_values.push(if self.log1p { x.ln_1p() } else { x });
        }
    }

    /// Build from the config. Needs a pass over the data when `hvg_selection` is set or when
    /// normalizing with `target_sum: null` (then the median library size is the target, as in
    /// scanpy's `normalize_total`).
    pub fn build(cfg: &PreprocessingConfig, dataset: &Dataset) -> Result<Self> {
        Ok(Self::build_with_hvg(cfg, dataset)?.0)
    }

    /// As [`Preprocessor::build`], also returning the highly-variable-gene table when
    /// `hvg_selection` is set (`coordinator preprocess` writes it into `var` as scanpy does).
    pub fn build_with_hvg(
        cfg: &PreprocessingConfig,
        dataset: &Dataset,
    ) -> Result<(Self, Option<HvgTable>)> {
        let normalize = cfg.normalize.is_some();
        let needs_median = normalize && cfg.target_sum.is_none();
        if let Some(t) = cfg.target_sum {
            if !(t > 0.0 && t.is_finite()) {
                return Err(DataError::Config(format!(
                    "data.preprocessing.target_sum must be positive, got {t}"
                )));
            }
        }
        let mut pre = Preprocessor {
            target_sum: if normalize {
                cfg.target_sum.map(|t| t as f32)
            } else {
                None
            },
            log1p: cfg.log1p,
            keep: None,
        };
        let mut hvg = None;
        if needs_median || cfg.hvg_selection.is_some() {
            // The pass normalizes with the target if known; for the median case, run it raw.
            let stats = gene_stats(dataset, pre.target_sum)?;
            if needs_median {
                pre.target_sum = Some(stats.median_total as f32);
                tracing::info!(
                    "target_sum null: using the median library size {}",
                    stats.median_total
                );
            }
            if let Some(n_top) = cfg.hvg_selection {
                let stats = if needs_median {
                    gene_stats(dataset, pre.target_sum)?
                } else {
                    stats
                };
                let table = seurat_hvg(&stats, n_top);
                let mut keep = vec![false; N_SPECIAL as usize + table.highly_variable.len()];
                for (i, &hv) in table.highly_variable.iter().enumerate() {
                    keep[N_SPECIAL as usize + i] = hv;
                }
                let n = keep.iter().filter(|&&k| k).count();
                tracing::info!(
                    "highly variable genes: kept {n} of {}",
                    table.highly_variable.len()
                );
                pre.keep = Some(keep);
                hvg = Some(table);
            }
        }
        Ok((pre, hvg))
    }
}

/// One pass over every cell: per-gene sum and sum of squares of the normalized (non-log)
/// values, and the median library size.
pub fn gene_stats(dataset: &Dataset, target_sum: Option<f32>) -> Result<GeneStats> {
    let n_genes = dataset.vocab().n_genes();
    let mut sum = vec![0f64; n_genes];
    let mut sum_sq = vec![0f64; n_genes];
    let mut totals = Vec::with_capacity(dataset.n_cells() as usize);
    let (mut block, mut rows) = (CellBlock::default(), CsrRows::default());
    for (f, file) in dataset.files().iter().enumerate() {
        let n = file.n_obs();
        let mut start = 0;
        while start < n {
            let end = (start + SCAN_BLOCK).min(n);
            dataset.read_file_rows_into(f, start, end, &mut block, &mut rows)?;
            for i in 0..block.len() {
                let (_, genes, vals) = block.cell(i);
                let total: f32 = vals.iter().sum();
                if total > 0.0 {
                    totals.push(total as f64);
                }
                let scale = match target_sum {
                    Some(t) if total > 0.0 => t / total,
                    Some(_) => 0.0,
                    None => 1.0,
                };
                for (&g, &v) in genes.iter().zip(vals) {
                    if g < N_SPECIAL {
                        continue;
                    }
                    let x = (v * scale) as f64;
                    let k = (g - N_SPECIAL) as usize;
                    sum[k] += x;
                    sum_sq[k] += x * x;
                }
            }
            start = end;
        }
    }
    totals.sort_by(|a, b| a.total_cmp(b));
    let median_total = match totals.len() {
        0 => 0.0,
        n if n % 2 == 1 => totals[n / 2],
        n => 0.5 * (totals[n / 2 - 1] + totals[n / 2]),
    };
    Ok(GeneStats {
        n_cells: dataset.n_cells(),
        sum,
        sum_sq,
        median_total,
    })
}

/// scanpy's seurat-flavor highly variable genes from streaming statistics.
pub fn seurat_hvg(stats: &GeneStats, n_top: usize) -> HvgTable {
    let n = stats.n_cells as f64;
    let g = stats.sum.len();
    let mut means = vec![0f64; g];
    let mut disp = vec![f64::NAN; g];
    for k in 0..g {
        let mean = stats.sum[k] / n;
        let var = if n > 1.0 {
            ((stats.sum_sq[k] / n - mean * mean) * n / (n - 1.0)).max(0.0)
        } else {
            0.0
        };
        let mean = if mean == 0.0 { 1e-12 } else { mean };
        let d = var / mean;
        disp[k] = if d == 0.0 { f64::NAN } else { d.ln() };
        means[k] = mean.ln_1p();
    }
    // pandas.cut(means, 20): equal-width edges over [min, max], the first edge lowered by 0.1%
    // of the range; intervals are right-closed.
    let (mn, mx) = means
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &m| {
            (a.min(m), b.max(m))
        });
    let nb = HVG_MEAN_BINS;
    let bin_of = |m: f64| -> usize {
        if mx.partial_cmp(&mn) != Some(std::cmp::Ordering::Greater) {
            return 0;
        }
        let mut edges: Vec<f64> = (0..=nb)
            .map(|i| mn + (mx - mn) * i as f64 / nb as f64)
            .collect();
        edges[0] -= (mx - mn) * 0.001;
        // first i with m <= edges[i + 1]
        let pos = edges[1..].partition_point(|&e| e < m);
        pos.min(nb - 1)
    };
    let bins: Vec<usize> = means.iter().map(|&m| bin_of(m)).collect();
    let mut cnt = vec![0usize; nb];
    let mut s = vec![0f64; nb];
    for k in 0..g {
        if !disp[k].is_nan() {
            cnt[bins[k]] += 1;
            s[bins[k]] += disp[k];
        }
    }
    let avg: Vec<f64> = (0..nb)
        .map(|b| {
            if cnt[b] > 0 {
                s[b] / cnt[b] as f64
            } else {
                f64::NAN
            }
        })
        .collect();
    let mut ss = vec![0f64; nb];
    for k in 0..g {
        if !disp[k].is_nan() {
            let d = disp[k] - avg[bins[k]];
            ss[bins[k]] += d * d;
        }
    }
    let mut dev: Vec<f64> = (0..nb)
        .map(|b| {
            if cnt[b] > 1 {
                (ss[b] / (cnt[b] - 1) as f64).sqrt()
            } else {
                f64::NAN
            }
        })
        .collect();
    let mut avg = avg;
    for b in 0..nb {
        // A bin whose std is undefined (one gene): normalized dispersion becomes 1.
        if dev[b].is_nan() {
            dev[b] = avg[b];
            avg[b] = 0.0;
        }
    }
    let dispersions_norm: Vec<f64> = (0..g)
        .map(|k| (disp[k] - avg[bins[k]]) / dev[bins[k]])
        .collect();
    let mut finite: Vec<f64> = dispersions_norm
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .collect();
    finite.sort_by(|a, b| b.total_cmp(a));
    let highly_variable = if finite.is_empty() || n_top == 0 {
        vec![false; g]
    } else {
        let cut = finite[n_top.min(finite.len()) - 1];
        dispersions_norm
            .iter()
            .map(|&x| !x.is_nan() && x >= cut)
            .collect()
    };
    HvgTable {
        means,
        dispersions: disp,
        dispersions_norm,
        highly_variable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_log_filter() {
        let p = Preprocessor {
            target_sum: Some(10.0),
            log1p: true,
            keep: Some(vec![false, false, false, false, true, false, true]),
        };
        let (mut g, mut v) = (vec![], vec![]);
        p.apply(&[4, 5, 6, 1], &[1.0, 2.0, 0.0, 2.0], &mut g, &mut v);
        assert_eq!(g, vec![4]);
        assert!((v[0] - 2.0f32.ln_1p()).abs() < 1e-6);

        let p = Preprocessor {
            target_sum: None,
            log1p: false,
            keep: None,
        };
        let (mut g, mut v) = (vec![], vec![]);
        p.apply(&[4, 5], &[3.0, 0.0], &mut g, &mut v);
        assert_eq!((g, v), (vec![4], vec![3.0]));
    }
}
