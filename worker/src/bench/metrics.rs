//! Classification and clustering metrics, as scikit-learn defines them (the reference
//! implementation the fixtures in `worker/tests/fixtures/benchmark_metrics.json` come from):
//! accuracy, F1 (macro and support-weighted), normalized mutual information (arithmetic
//! normalization), adjusted Rand index and the silhouette coefficient (Euclidean).
//! Labels are class indices `0..k`.

/// Fraction of `pred` equal to `truth`.
pub fn accuracy(truth: &[u32], pred: &[u32]) -> f64 {
    assert_eq!(truth.len(), pred.len());
    if truth.is_empty() {
        return 0.0;
    }
    let hit = truth.iter().zip(pred).filter(|(a, b)| a == b).count();
    hit as f64 / truth.len() as f64
}

/// Per-class (f1, support) over the labels present in `truth` or `pred` (sklearn's label set),
/// F1 = 0 where precision + recall is 0.
fn per_class_f1(truth: &[u32], pred: &[u32]) -> Vec<(f64, usize)> {
    assert_eq!(truth.len(), pred.len());
    let k = truth
        .iter()
        .chain(pred)
        .map(|&c| c as usize + 1)
        .max()
        .unwrap_or(0);
    let (mut tp, mut n_true, mut n_pred) = (vec![0usize; k], vec![0usize; k], vec![0usize; k]);
    for (&t, &p) in truth.iter().zip(pred) {
        n_true[t as usize] += 1;
        n_pred[p as usize] += 1;
        if t == p {
            tp[t as usize] += 1;
        }
    }
    (0..k)
        .filter(|&c| n_true[c] + n_pred[c] > 0)
        .map(|c| {
            // F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (n_true + n_pred).
            let f1 = 2.0 * tp[c] as f64 / (n_true[c] + n_pred[c]) as f64;
            (f1, n_true[c])
        })
        .collect()
}

/// Unweighted mean of the per-class F1 scores (`f1_score(average="macro")`).
pub fn f1_macro(truth: &[u32], pred: &[u32]) -> f64 {
    let per = per_class_f1(truth, pred);
    if per.is_empty() {
        return 0.0;
    }
    per.iter().map(|p| p.0).sum::<f64>() / per.len() as f64
}

/// Per-class F1 weighted by the class's support in `truth` (`average="weighted"`).
pub fn f1_weighted(truth: &[u32], pred: &[u32]) -> f64 {
    let per = per_class_f1(truth, pred);
    let total: usize = per.iter().map(|p| p.1).sum();
    if total == 0 {
        return 0.0;
    }
    per.iter().map(|p| p.0 * p.1 as f64).sum::<f64>() / total as f64
}

/// The contingency table of two labelings (rows: `a`'s labels, columns: `b`'s), with only
/// the labels that occur.
fn contingency(a: &[u32], b: &[u32]) -> (Vec<Vec<f64>>, Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), b.len());
    let compact = |x: &[u32]| {
        let mut ids: Vec<u32> = x.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let idx: Vec<usize> = x.iter().map(|v| ids.binary_search(v).unwrap()).collect();
        (idx, ids.len())
    };
    let (ia, ka) = compact(a);
    let (ib, kb) = compact(b);
    let mut t = vec![vec![0.0; kb]; ka];
    for (&i, &j) in ia.iter().zip(&ib) {
        t[i][j] += 1.0;
    }
    let rows = t.iter().map(|r| r.iter().sum()).collect();
    let cols = (0..kb).map(|j| t.iter().map(|r| r[j]).sum()).collect();
    (t, rows, cols)
}

fn entropy(counts: &[f64], n: f64) -> f64 {
    counts
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| -(c / n) * (c / n).ln())
        .sum()
}

/// Normalized mutual information with the arithmetic mean of the entropies
/// (`normalized_mutual_info_score`'s default, and scib's `nmi`).
pub fn nmi(a: &[u32], b: &[u32]) -> f64 {
    let n = a.len() as f64;
    let (t, rows, cols) = contingency(a, b);
    // Both labelings constant (or one cell): identical partitions, NMI 1 by convention.
    if rows.len() == 1 && cols.len() == 1 || a.is_empty() {
        return 1.0;
    }
    let mut mi = 0.0;
    for (i, r) in t.iter().enumerate() {
        for (j, &nij) in r.iter().enumerate() {
            if nij > 0.0 {
                mi += nij / n * ((nij * n) / (rows[i] * cols[j])).ln();
            }
        }
    }
    let (ha, hb) = (entropy(&rows, n), entropy(&cols, n));
    let norm = (ha + hb) / 2.0;
    if mi.abs() < f64::EPSILON || norm <= 0.0 {
        return 0.0;
    }
    (mi / norm.max(f64::EPSILON)).clamp(0.0, 1.0)
}

fn comb2(x: f64) -> f64 {
    x * (x - 1.0) / 2.0
}

/// Adjusted Rand index (`adjusted_rand_score`).
pub fn ari(a: &[u32], b: &[u32]) -> f64 {
    let n = a.len() as f64;
    let (t, rows, cols) = contingency(a, b);
    // sklearn's special cases: identical trivial partitions score 1.
    if rows.len() == cols.len() && (rows.len() == 1 || rows.len() as f64 == n) {
        return 1.0;
    }
    let sum_ij: f64 = t.iter().flatten().map(|&x| comb2(x)).sum();
    let sum_a: f64 = rows.iter().map(|&x| comb2(x)).sum();
    let sum_b: f64 = cols.iter().map(|&x| comb2(x)).sum();
    let expected = sum_a * sum_b / comb2(n);
    let max = (sum_a + sum_b) / 2.0;
    if max == expected {
        return 1.0;
    }
    (sum_ij - expected) / (max - expected)
}

/// Silhouette coefficient of every cell with Euclidean distances (`silhouette_samples`):
/// (b - a) / max(a, b) with a the mean distance to the other cells of its label and b the
/// smallest mean distance to another label's cells; 0 for cells alone in their label.
/// `x` is row-major [labels.len(), dim]. Needs at least 2 and at most n - 1 labels.
pub fn silhouette_samples(x: &[f64], dim: usize, labels: &[u32]) -> Result<Vec<f64>, String> {
    use rayon::prelude::*;
    let n = labels.len();
    assert_eq!(x.len(), n * dim);
    let k = labels.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
    let mut size = vec![0usize; k];
    for &c in labels {
        size[c as usize] += 1;
    }
    let present = size.iter().filter(|&&s| s > 0).count();
    if present < 2 || present > n.saturating_sub(1) {
        return Err(format!(
            "the silhouette needs between 2 and {} labels, found {present}",
            n.saturating_sub(1)
        ));
    }
    Ok((0..n)
        .into_par_iter()
        .map(|i| {
            let xi = &x[i * dim..(i + 1) * dim];
            let mut dsum = vec![0.0f64; k];
            for j in 0..n {
                if j == i {
                    continue;
                }
                let xj = &x[j * dim..(j + 1) * dim];
                let d2: f64 = xi.iter().zip(xj).map(|(&p, &q)| (p - q) * (p - q)).sum();
                dsum[labels[j] as usize] += d2.sqrt();
            }
            let own = labels[i] as usize;
            if size[own] <= 1 {
                return 0.0;
            }
            let a = dsum[own] / (size[own] - 1) as f64;
            let b = (0..k)
                .filter(|&c| c != own && size[c] > 0)
                .map(|c| dsum[c] / size[c] as f64)
                .fold(f64::INFINITY, f64::min);
            let m = a.max(b);
            if m > 0.0 {
                (b - a) / m
            } else {
                0.0
            }
        })
        .collect())
}

/// Mean silhouette coefficient (`silhouette_score`), see [`silhouette_samples`].
pub fn silhouette(x: &[f64], dim: usize, labels: &[u32]) -> Result<f64, String> {
    let s = silhouette_samples(x, dim, labels)?;
    Ok(s.iter().sum::<f64>() / s.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_and_accuracy_by_hand() {
        // Class 0: tp 2, fn 1, fp 0 -> P 1, R 2/3, F1 0.8. Class 1: tp 1, fp 1, fn 0 ->
        // F1 2/3. Class 2: only predicted... none; class 2 in truth, predicted 1 -> F1 0.
        let truth = [0, 0, 0, 1, 2];
        let pred = [0, 0, 1, 1, 1];
        assert!((accuracy(&truth, &pred) - 0.6).abs() < 1e-15);
        // Class 1: tp 1, n_true 1, n_pred 3 -> 2/4 = 0.5. Class 2: 0.
        let macro_ = (0.8 + 0.5 + 0.0) / 3.0;
        assert!((f1_macro(&truth, &pred) - macro_).abs() < 1e-15);
        let weighted = (0.8 * 3.0 + 0.5 + 0.0) / 5.0;
        assert!((f1_weighted(&truth, &pred) - weighted).abs() < 1e-15);
    }

    #[test]
    fn nmi_ari_limits() {
        let a = [0, 0, 1, 1, 2, 2];
        let relabeled = [5, 5, 3, 3, 9, 9];
        assert!((nmi(&a, &relabeled) - 1.0).abs() < 1e-12);
        assert!((ari(&a, &relabeled) - 1.0).abs() < 1e-12);
        // sklearn: adjusted_rand_score([0,0,1,1],[0,1,0,1]) == -0.5.
        assert!((ari(&[0, 0, 1, 1], &[0, 1, 0, 1]) + 0.5).abs() < 1e-12);
        assert_eq!(nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]), 0.0);
    }

    #[test]
    fn silhouette_by_hand() {
        // Points 0, 1 (label 0) and 4 (label 1) on a line. Cell 0: a 1, b 4 -> 0.75;
        // cell 1: a 1, b 3 -> 2/3; cell 2 alone in its label -> 0.
        let x = [0.0f64, 1.0, 4.0];
        let s = silhouette(&x, 1, &[0, 0, 1]).unwrap();
        assert!((s - (0.75 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!(silhouette(&x, 1, &[0, 0, 0]).is_err());
    }
}
