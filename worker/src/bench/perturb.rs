//! scModelForge's `perturbation` benchmark (`scmodelforge/eval/perturbation.py`): can a ridge
//! regression map a perturbation's mean cell embedding to its mean expression change?
//!
//! - Each non-control label's delta is its cells' mean expression minus the control cells'
//!   mean (over X, as the reader gives it), and its embedding is its cells' mean embedding.
//! - The sorted labels are split into train and test: `n_test = max(1, int(n * test_fraction))`,
//!   at most `n - 1`. The permutation is anvil's own seeded shuffle (`data::rng`), not numpy's
//!   PCG64, so a seed picks a different split than scModelForge's.
//! - Ridge (alpha 1, intercept unpenalized, one output per gene) is fitted on the training
//!   labels and predicts the test labels' deltas; the mean-shift baseline predicts the mean of
//!   the training deltas for every test label.
//! - Each test label is scored on its top `n_top_genes` genes by |true delta|: Pearson's r,
//!   MSE and direction accuracy (the share of those genes where sign(prediction) equals
//!   sign(truth), 0 being a sign of its own), for the model and the baseline; the scores are
//!   averaged over test labels.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use configs::schema::Value;
use configs::scmodelforge::BenchmarkSpec;
use data::anndata::{AnnDataReader, ObsColumn};
use data::rng::{CounterRng, Stream};

/// Word that keeps this split's random stream apart from the other splits'.
const PERTURB_SPLIT: u64 = 0x9e47_0b5a;

/// Rows of X read at a time for the group means.
const BLOCK_ROWS: usize = 4096;

/// scModelForge's ridge penalty (`Ridge(alpha=1.0)`).
pub const ALPHA: f64 = 1.0;

/// perturbation's parameters, with scModelForge's defaults.
#[derive(Debug, Clone)]
pub struct PerturbParams {
    pub perturbation_key: String,
    pub control_label: String,
    pub n_top_genes: usize,
    pub test_fraction: f64,
    pub seed: u64,
}

impl PerturbParams {
    pub fn from_spec(spec: &BenchmarkSpec) -> anyhow::Result<Self> {
        let mut p = PerturbParams {
            perturbation_key: "perturbation".into(),
            control_label: "control".into(),
            n_top_genes: 50,
            test_fraction: 0.2,
            seed: 42,
        };
        for (k, v) in &spec.params.0 {
            match (k.as_str(), v) {
                ("perturbation_key", Value::Str(s)) => p.perturbation_key = s.clone(),
                ("control_label", Value::Str(s)) => p.control_label = s.clone(),
                // Pearson's r needs at least two genes.
                ("n_top_genes", Value::Int(i)) if *i >= 2 => p.n_top_genes = *i as usize,
                ("test_fraction", Value::Float(f)) if *f > 0.0 && *f < 1.0 => {
                    p.test_fraction = *f
                }
                ("seed", Value::Int(i)) if *i >= 0 => p.seed = *i as u64,
                (k, v) => bail!(
                    "{}: {k}: {v:?} is not allowed (perturbation_key: a string, control_label: a string, n_top_genes: an integer of at least 2, test_fraction: a number between 0 and 1, seed: a non-negative integer)",
                    spec.name
                ),
            }
        }
        Ok(p)
    }
}

/// The cells' perturbation labels: every distinct label (sorted), each cell's label index, and
/// which one is the control.
#[derive(Debug, Clone, PartialEq)]
pub struct Groups {
    pub names: Vec<String>,
    pub of_cell: Vec<usize>,
    pub control: usize,
}

impl Groups {
    /// The non-control labels' indices into `names`, in sorted order.
    pub fn perturbations(&self) -> Vec<usize> {
        (0..self.names.len())
            .filter(|&g| g != self.control)
            .collect()
    }
}

/// Groups the cells of `file` by `obs[key]`; refuses a missing column (listing those there
/// are), a control label that is absent (listing the labels found) and fewer than two
/// non-control labels.
pub fn read_groups(
    file: &dyn AnnDataReader,
    key: &str,
    control_label: &str,
) -> anyhow::Result<Groups> {
    let path = file.path().display();
    let cols = file.obs_columns()?;
    if !cols.iter().any(|(n, _)| n == key) {
        let list: Vec<String> = cols.iter().map(|(n, k)| format!("{n} ({k})")).collect();
        bail!(
            "perturbation_key: {path} has no obs column {key:?}; its obs columns are: {}",
            if list.is_empty() {
                "none".into()
            } else {
                list.join(", ")
            }
        );
    }
    let text: Vec<String> = match file.obs_column(key)? {
        ObsColumn::Categorical { codes, categories } => {
            if let Some(row) = codes.iter().position(|&c| c < 0) {
                bail!("perturbation_key: obs/{key} of {path} has cells without a label (first at row {row})");
            }
            codes
                .iter()
                .map(|&c| categories[c as usize].clone())
                .collect()
        }
        ObsColumn::String(v) => v,
        ObsColumn::Boolean(v) => v.iter().map(|b| b.to_string()).collect(),
        ObsColumn::Numeric(_) => bail!(
            "perturbation_key: obs/{key} of {path} is numeric; perturbation labels must be a categorical or string column (control_label {control_label:?} is compared as text)"
        ),
    };
    let mut names = text.clone();
    names.sort();
    names.dedup();
    let Ok(control) = names.binary_search_by(|n| n.as_str().cmp(control_label)) else {
        bail!(
            "control_label: {control_label:?} is not a label of obs/{key} in {path}; the labels found are: {}",
            names.join(", ")
        );
    };
    if names.len() < 3 {
        let others: Vec<&str> = names
            .iter()
            .filter(|n| n.as_str() != control_label)
            .map(String::as_str)
            .collect();
        bail!(
            "obs/{key} of {path} has {} non-control perturbation(s) ({}); the benchmark needs at least 2",
            others.len(),
            if others.is_empty() {
                "none".into()
            } else {
                others.join(", ")
            }
        );
    }
    let of_cell = text
        .iter()
        .map(|t| names.binary_search(t).unwrap_or(0))
        .collect();
    Ok(Groups {
        names,
        of_cell,
        control,
    })
}

/// Each group's mean expression over X of `file` (as the reader decodes it, sparse or dense),
/// `[groups][genes]` in f64; X is read in blocks of rows.
pub fn group_mean_expression(
    file: &dyn AnnDataReader,
    groups: &Groups,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let (n, g) = (file.n_obs(), file.n_vars());
    if groups.of_cell.len() != n {
        bail!(
            "{}: {} labels for {n} cells",
            file.path().display(),
            groups.of_cell.len()
        );
    }
    let mut sums = vec![vec![0.0f64; g]; groups.names.len()];
    let mut counts = vec![0usize; groups.names.len()];
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK_ROWS).min(n);
        let rows = file
            .read_rows(start, end)
            .with_context(|| format!("reading X of {}", file.path().display()))?;
        for r in 0..rows.n_rows() {
            let k = groups.of_cell[start + r];
            counts[k] += 1;
            let (idx, val) = rows.row(r);
            for (&j, &v) in idx.iter().zip(val) {
                sums[k][j as usize] += v as f64;
            }
        }
        start = end;
    }
    for (s, &c) in sums.iter_mut().zip(&counts) {
        s.iter_mut().for_each(|v| *v /= c.max(1) as f64);
    }
    Ok(sums)
}

/// Each group's mean embedding, `[groups][dim]`, from `x` (row-major [cells, dim]).
pub fn group_mean_embedding(x: &[f64], dim: usize, groups: &Groups) -> Vec<Vec<f64>> {
    let mut sums = vec![vec![0.0f64; dim]; groups.names.len()];
    let mut counts = vec![0usize; groups.names.len()];
    for (i, &k) in groups.of_cell.iter().enumerate() {
        counts[k] += 1;
        for (s, &v) in sums[k].iter_mut().zip(&x[i * dim..(i + 1) * dim]) {
            *s += v;
        }
    }
    for (s, &c) in sums.iter_mut().zip(&counts) {
        s.iter_mut().for_each(|v| *v /= c.max(1) as f64);
    }
    sums
}

/// The split of `n` perturbations into (train, test) positions: `n_test = max(1,
/// int(n * test_fraction))` (at most `n - 1`), the first `n_test` of a seeded permutation.
pub fn split(n: usize, test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let n_test = ((n as f64 * test_fraction) as usize)
        .max(1)
        .min(n.saturating_sub(1));
    let mut order: Vec<usize> = (0..n).collect();
    CounterRng::new(seed, Stream::Split, &[PERTURB_SPLIT]).shuffle(&mut order);
    let test = order[..n_test].to_vec();
    let train = order[n_test..].to_vec();
    (train, test)
}

/// A fitted multi-output ridge regression: `predict(x) = x · coef + intercept`.
#[derive(Debug, Clone)]
pub struct Ridge {
    /// Row-major [dim, outputs].
    pub coef: Vec<f64>,
    pub intercept: Vec<f64>,
    pub dim: usize,
    pub outputs: usize,
}

impl Ridge {
    /// Fits `y` (row-major [n, outputs]) on `x` (row-major [n, dim]) with penalty `alpha` on
    /// the weights only: the closed form on centred data, as scikit-learn's `Ridge` with its
    /// cholesky solver (the d x d normal equations, or the n x n kernel form when dim > n).
    pub fn fit(x: &[f64], dim: usize, y: &[f64], outputs: usize, alpha: f64) -> Self {
        let n = x.len() / dim.max(1);
        let xm = column_means(x, n, dim);
        let ym = column_means(y, n, outputs);
        let xc: Vec<f64> = (0..n * dim).map(|i| x[i] - xm[i % dim]).collect();
        let yc: Vec<f64> = (0..n * outputs).map(|i| y[i] - ym[i % outputs]).collect();
        let mut coef = vec![0.0; dim * outputs];
        if dim <= n {
            // (Xc^T Xc + alpha I) W = Xc^T Yc
            let mut a = vec![0.0; dim * dim];
            for r in 0..n {
                let row = &xc[r * dim..(r + 1) * dim];
                for i in 0..dim {
                    for j in 0..dim {
                        a[i * dim + j] += row[i] * row[j];
                    }
                }
            }
            (0..dim).for_each(|i| a[i * dim + i] += alpha);
            for r in 0..n {
                for i in 0..dim {
                    let xi = xc[r * dim + i];
                    let (dst, src) = (
                        &mut coef[i * outputs..(i + 1) * outputs],
                        &yc[r * outputs..(r + 1) * outputs],
                    );
                    dst.iter_mut().zip(src).for_each(|(d, &s)| *d += xi * s);
                }
            }
            cholesky_solve(&mut a, dim, &mut coef, outputs);
        } else {
            // W = Xc^T D with (Xc Xc^T + alpha I) D = Yc
            let mut k = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    k[i * n + j] = (0..dim).map(|c| xc[i * dim + c] * xc[j * dim + c]).sum();
                }
            }
            (0..n).for_each(|i| k[i * n + i] += alpha);
            let mut d = yc.clone();
            cholesky_solve(&mut k, n, &mut d, outputs);
            for r in 0..n {
                for i in 0..dim {
                    let xi = xc[r * dim + i];
                    let (dst, src) = (
                        &mut coef[i * outputs..(i + 1) * outputs],
                        &d[r * outputs..(r + 1) * outputs],
                    );
                    dst.iter_mut().zip(src).for_each(|(d, &s)| *d += xi * s);
                }
            }
        }
        let mut intercept = ym;
        for i in 0..dim {
            for (b, &w) in intercept
                .iter_mut()
                .zip(&coef[i * outputs..(i + 1) * outputs])
            {
                *b -= xm[i] * w;
            }
        }
        Ridge {
            coef,
            intercept,
            dim,
            outputs,
        }
    }

    /// Predictions for one input row of width `dim`.
    pub fn predict_one(&self, x: &[f64]) -> Vec<f64> {
        let mut out = self.intercept.clone();
        for (i, &xi) in x.iter().enumerate().take(self.dim) {
            for (o, &w) in out
                .iter_mut()
                .zip(&self.coef[i * self.outputs..(i + 1) * self.outputs])
            {
                *o += xi * w;
            }
        }
        out
    }
}

fn column_means(x: &[f64], n: usize, cols: usize) -> Vec<f64> {
    let mut m = vec![0.0; cols];
    for r in 0..n {
        m.iter_mut()
            .zip(&x[r * cols..(r + 1) * cols])
            .for_each(|(m, &v)| *m += v);
    }
    m.iter_mut().for_each(|v| *v /= n.max(1) as f64);
    m
}

/// Solves `a · X = b` in place for symmetric positive definite `a` ([n, n], overwritten by its
/// Cholesky factor) and `b` ([n, cols], overwritten by X).
fn cholesky_solve(a: &mut [f64], n: usize, b: &mut [f64], cols: usize) {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        // alpha > 0 keeps the matrix positive definite; the floor only guards rounding.
        let d = d.max(f64::MIN_POSITIVE).sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    // L y = b, then L^T x = y.
    for i in 0..n {
        for k in 0..i {
            let l = a[i * n + k];
            let (head, tail) = b.split_at_mut(i * cols);
            let src = &head[k * cols..(k + 1) * cols];
            tail[..cols]
                .iter_mut()
                .zip(src)
                .for_each(|(t, &s)| *t -= l * s);
        }
        let d = a[i * n + i];
        b[i * cols..(i + 1) * cols].iter_mut().for_each(|v| *v /= d);
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            let l = a[k * n + i];
            let (head, tail) = b.split_at_mut(k * cols);
            head[i * cols..(i + 1) * cols]
                .iter_mut()
                .zip(&tail[..cols])
                .for_each(|(h, &s)| *h -= l * s);
        }
        let d = a[i * n + i];
        b[i * cols..(i + 1) * cols].iter_mut().for_each(|v| *v /= d);
    }
}

/// The `n_top` genes with the largest |delta|, largest first (ties: the lower gene index
/// first; numpy's argpartition leaves the order of ties unspecified).
pub fn top_degs(delta: &[f64], n_top: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..delta.len()).collect();
    idx.sort_by(|&a, &b| delta[b].abs().total_cmp(&delta[a].abs()).then(a.cmp(&b)));
    idx.truncate(n_top.min(delta.len()));
    idx
}

/// scipy's `pearsonr` statistic: NaN when either input is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let constant = |v: &[f64]| v.iter().all(|&a| a == v[0]);
    if x.len() < 2 || constant(x) || constant(y) {
        return f64::NAN;
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (da, db) = (a - mx, b - my);
        sxy += da * db;
        sxx += da * da;
        syy += db * db;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

fn mse(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / x.len() as f64
}

/// numpy's `sign`: -1, 0 or 1.
fn sign(v: f64) -> i8 {
    if v > 0.0 {
        1
    } else if v < 0.0 {
        -1
    } else {
        0
    }
}

fn direction_accuracy(truth: &[f64], pred: &[f64]) -> f64 {
    let hits = truth
        .iter()
        .zip(pred)
        .filter(|(a, b)| sign(**a) == sign(**b))
        .count();
    hits as f64 / truth.len() as f64
}

/// What [`evaluate`] returns.
#[derive(Debug, Clone)]
pub struct PerturbScores {
    /// scModelForge's metric names and values, in its order.
    pub metrics: Vec<(String, f64)>,
    /// The model's predicted delta of each test perturbation, in `test` order.
    pub predictions: Vec<Vec<f64>>,
    /// Test perturbations whose Pearson r (model or baseline) is undefined (a constant input).
    pub undefined_r: usize,
}

/// Fits ridge on the `train` rows of `embeddings` -> `deltas` and scores the `test` rows
/// against the truth and the mean-shift baseline, on each test row's top `n_top` genes.
pub fn evaluate(
    embeddings: &[Vec<f64>],
    deltas: &[Vec<f64>],
    train: &[usize],
    test: &[usize],
    n_top: usize,
) -> PerturbScores {
    let dim = embeddings.first().map_or(0, Vec::len);
    let genes = deltas.first().map_or(0, Vec::len);
    let xtr: Vec<f64> = train
        .iter()
        .flat_map(|&i| embeddings[i].iter().copied())
        .collect();
    let ytr: Vec<f64> = train
        .iter()
        .flat_map(|&i| deltas[i].iter().copied())
        .collect();
    let ridge = Ridge::fit(&xtr, dim, &ytr, genes, ALPHA);
    let mut baseline = vec![0.0; genes];
    for &i in train {
        baseline
            .iter_mut()
            .zip(&deltas[i])
            .for_each(|(b, &d)| *b += d);
    }
    baseline
        .iter_mut()
        .for_each(|b| *b /= train.len().max(1) as f64);

    let n_top = n_top.min(genes);
    let mut sums = [0.0f64; 6];
    let mut above = 0usize;
    let mut undefined_r = 0usize;
    let mut predictions = Vec::with_capacity(test.len());
    for &t in test {
        let pred = ridge.predict_one(&embeddings[t]);
        let top = top_degs(&deltas[t], n_top);
        let pick = |v: &[f64]| top.iter().map(|&j| v[j]).collect::<Vec<f64>>();
        let (truth, p, b) = (pick(&deltas[t]), pick(&pred), pick(&baseline));
        let (r_model, r_base) = (pearson(&truth, &p), pearson(&truth, &b));
        if r_model.is_nan() || r_base.is_nan() {
            undefined_r += 1;
        }
        // NaN > x is false, as in the reference.
        if r_model > r_base {
            above += 1;
        }
        let scores = [
            r_model,
            mse(&truth, &p),
            direction_accuracy(&truth, &p),
            r_base,
            mse(&truth, &b),
            direction_accuracy(&truth, &b),
        ];
        sums.iter_mut().zip(scores).for_each(|(s, v)| *s += v);
        predictions.push(pred);
    }
    let m = test.len().max(1) as f64;
    let names = [
        "pearson_mean",
        "mse_mean",
        "direction_accuracy",
        "baseline_pearson_mean",
        "baseline_mse_mean",
        "baseline_direction_accuracy",
    ];
    let mut metrics: Vec<(String, f64)> = names
        .iter()
        .zip(sums)
        .map(|(n, s)| (n.to_string(), s / m))
        .collect();
    metrics.push(("fraction_above_baseline".into(), above as f64 / m));
    PerturbScores {
        metrics,
        predictions,
        undefined_r,
    }
}

/// Everything the benchmark computes on a file and an embedding, before the split.
pub struct Prepared {
    pub groups: Groups,
    /// Non-control labels' indices into `groups.names`, sorted by name.
    pub perturbations: Vec<usize>,
    /// Per perturbation (in `perturbations` order): mean embedding and expression delta.
    pub embeddings: Vec<Vec<f64>>,
    pub deltas: Vec<Vec<f64>>,
    pub n_genes: usize,
}

/// Reads the labels and X of `path` and averages `x` (row-major [cells, dim]) per label.
pub fn prepare(path: &Path, x: &[f64], dim: usize, p: &PerturbParams) -> anyhow::Result<Prepared> {
    let file = data::anndata::open(path).with_context(|| format!("--data {}", path.display()))?;
    let groups = read_groups(file.as_ref(), &p.perturbation_key, &p.control_label)?;
    if groups.of_cell.len() * dim != x.len() {
        return Err(anyhow!(
            "{} labels for {} embedded cells",
            groups.of_cell.len(),
            x.len() / dim.max(1)
        ));
    }
    if file.n_vars() < 2 {
        bail!(
            "{} has {} gene(s); Pearson's r over the top genes needs at least 2",
            path.display(),
            file.n_vars()
        );
    }
    let means = group_mean_expression(file.as_ref(), &groups)?;
    let emb = group_mean_embedding(x, dim, &groups);
    let perturbations = groups.perturbations();
    let ctrl = &means[groups.control];
    let deltas = perturbations
        .iter()
        .map(|&k| means[k].iter().zip(ctrl).map(|(a, c)| a - c).collect())
        .collect();
    let embeddings = perturbations.iter().map(|&k| emb[k].clone()).collect();
    Ok(Prepared {
        n_genes: file.n_vars(),
        groups,
        perturbations,
        embeddings,
        deltas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sizes_follow_the_reference_and_are_seeded() {
        for (n, f, want) in [
            (2, 0.2, 1),
            (4, 0.2, 1),
            (10, 0.2, 2),
            (9, 0.4, 3),
            (3, 0.9, 2),
        ] {
            let (train, test) = split(n, f, 42);
            assert_eq!(test.len(), want, "n {n} fraction {f}");
            let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
        }
        assert_eq!(split(20, 0.2, 42), split(20, 0.2, 42));
        assert_ne!(split(20, 0.2, 42).1, split(20, 0.2, 7).1);
    }

    #[test]
    fn ridge_recovers_a_linear_map_and_both_forms_agree() {
        // y = 2 x0 - x1 + 3 exactly; with alpha tiny the fit recovers it.
        let x = [0.0, 1.0, 1.0, 0.0, 2.0, 3.0, -1.0, 0.5, 4.0, -2.0];
        let y: Vec<f64> = x.chunks(2).map(|r| 2.0 * r[0] - r[1] + 3.0).collect();
        let r = Ridge::fit(&x, 2, &y, 1, 1e-12);
        assert!((r.coef[0] - 2.0).abs() < 1e-9 && (r.coef[1] + 1.0).abs() < 1e-9);
        assert!((r.intercept[0] - 3.0).abs() < 1e-9, "{r:?}");
        // More features than rows: the kernel form; it must equal the primal solution, which
        // for 2 rows is checked against the 1-D closed form w = sum(xc yc) / (sum(xc^2) + a).
        let x = [1.0, 2.0, 3.0, 3.0, 2.0, 1.0];
        let y = [1.0, 5.0];
        let r = Ridge::fit(&x, 3, &y, 1, 1.0);
        // Xc rows: (-1, 0, 1), (1, 0, -1); yc: -2, 2. Along u = (1, 0, -1)/sqrt2 the data has
        // scores -sqrt2, sqrt2, so w_u = (2 sqrt2 + 2 sqrt2) / (4 + 1).
        let wu = 4.0 * 2f64.sqrt() / 5.0;
        let want = [wu / 2f64.sqrt(), 0.0, -wu / 2f64.sqrt()];
        for (g, w) in r.coef.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{r:?}");
        }
        assert!((r.predict_one(&[2.0, 2.0, 2.0])[0] - 3.0).abs() < 1e-12);
    }

    #[test]
    fn metrics_by_hand() {
        assert_eq!(top_degs(&[0.1, -5.0, 3.0, -1.0, 0.5], 2), vec![1, 2]);
        assert_eq!(top_degs(&[1.0, 2.0, 3.0], 100), vec![2, 1, 0]);
        assert_eq!(top_degs(&[1.0, -1.0, 0.5], 1), vec![0]);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 7.0]) - 0.9933992677987828).abs() < 1e-12);
        assert!(pearson(&[1.0, 2.0], &[3.0, 3.0]).is_nan());
        // Zero matches zero, as numpy's sign compares.
        assert_eq!(
            direction_accuracy(&[1.0, -2.0, 0.0, 3.0], &[2.0, 1.0, 0.0, -1.0]),
            0.5
        );
    }
}
