//! The expression baseline: principal components of log-normalized expression (scanpy's
//! `normalize_total(target_sum=1e4)`, `log1p`, then `pca` without scaling: centred genes,
//! thin SVD), computed from an AnnData file's X.

use anyhow::{bail, Context};
use faer::Mat;

/// Log-normalized expression of every cell of `path`, row-major [cells, genes] in f64.
pub fn log_normalized(path: &std::path::Path) -> anyhow::Result<(Vec<f64>, usize, usize)> {
    let file = data::anndata::open(path).with_context(|| format!("--data {}", path.display()))?;
    let (n, g) = (file.n_obs(), file.n_vars());
    let rows = file
        .read_rows(0, n)
        .with_context(|| format!("reading X of {}", path.display()))?;
    let mut x = vec![0.0f64; n * g];
    for i in 0..n {
        let (idx, val) = rows.row(i);
        let total: f64 = val.iter().map(|&v| v as f64).sum();
        let scale = if total > 0.0 { 1e4 / total } else { 0.0 };
        for (&j, &v) in idx.iter().zip(val) {
            x[i * g + j as usize] = (v as f64 * scale).ln_1p();
        }
    }
    Ok((x, n, g))
}

/// The first `k` principal-component scores of `x` (row-major [n, g]), row-major [n, k].
/// Each component's sign is fixed so that its largest-magnitude gene loading is positive.
pub fn scores(x: &[f64], n: usize, g: usize, k: usize) -> anyhow::Result<Vec<f64>> {
    if k > n.min(g) {
        bail!("{k} principal components asked of a {n} x {g} matrix");
    }
    let mut mean = vec![0.0; g];
    for i in 0..n {
        for j in 0..g {
            mean[j] += x[i * g + j];
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let a = Mat::<f64>::from_fn(n, g, |i, j| x[i * g + j] - mean[j]);
    let svd = a
        .thin_svd()
        .map_err(|e| anyhow::anyhow!("SVD did not converge: {e:?}"))?;
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    let mut out = vec![0.0; n * k];
    for c in 0..k {
        let mut big = 0;
        for j in 0..g {
            if v[(j, c)].abs() > v[(big, c)].abs() {
                big = j;
            }
        }
        let sign = if v[(big, c)] < 0.0 { -1.0 } else { 1.0 };
        for i in 0..n {
            out[i * k + c] = sign * u[(i, c)] * s[c];
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_of_a_rank_one_matrix() {
        // Rows t * (1, 2) + (3, 3): one component carrying all the variance.
        let ts = [-1.0, 0.0, 2.0, 3.0];
        let x: Vec<f64> = ts.iter().flat_map(|t| [t + 3.0, 2.0 * t + 3.0]).collect();
        let s = scores(&x, 4, 2, 1).unwrap();
        let norm = 5f64.sqrt();
        let mean_t = 1.0;
        for (i, t) in ts.iter().enumerate() {
            assert!((s[i] - (t - mean_t) * norm).abs() < 1e-12, "{s:?}");
        }
    }
}
