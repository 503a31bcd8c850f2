//! Validation metrics of a fine-tuned task head, from sums that add up across workers:
//! accuracy and macro-F1 from per-class counts (classification), MSE and Pearson's r from
//! moment sums (regression). Each rank adds its cells' contributions; the trainer adds the
//! ranks' sums; the functions here turn the totals into the metrics.

/// Per-class counts of a classifier's predictions: `tp[k]` cells of class k predicted k,
/// `predicted[k]` cells predicted k, `support[k]` cells of class k.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClassCounts {
    pub tp: Vec<f64>,
    pub predicted: Vec<f64>,
    pub support: Vec<f64>,
}

impl ClassCounts {
    pub fn new(n_classes: usize) -> Self {
        ClassCounts {
            tp: vec![0.0; n_classes],
            predicted: vec![0.0; n_classes],
            support: vec![0.0; n_classes],
        }
    }

    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.support[truth] += 1.0;
        self.predicted[predicted] += 1.0;
        if truth == predicted {
            self.tp[truth] += 1.0;
        }
    }

    /// tp, predicted, support concatenated (what the all-reduce carries).
    pub fn to_sums(&self) -> Vec<f64> {
        [&self.tp[..], &self.predicted[..], &self.support[..]].concat()
    }

    pub fn from_sums(s: &[f64]) -> Self {
        let k = s.len() / 3;
        ClassCounts {
            tp: s[..k].to_vec(),
            predicted: s[k..2 * k].to_vec(),
            support: s[2 * k..3 * k].to_vec(),
        }
    }

    /// Correct predictions over all cells (NaN without cells).
    pub fn accuracy(&self) -> f64 {
        let n: f64 = self.support.iter().sum();
        if n == 0.0 {
            return f64::NAN;
        }
        self.tp.iter().sum::<f64>() / n
    }

    /// The unweighted mean over classes of F1 = 2·tp / (predicted + support), over the classes
    /// that occur in the truth or the predictions (scikit-learn's `f1_score(average="macro")`
    /// on those labels; NaN without cells).
    pub fn macro_f1(&self) -> f64 {
        let (mut sum, mut n) = (0.0, 0usize);
        for k in 0..self.tp.len() {
            let denom = self.predicted[k] + self.support[k];
            if denom > 0.0 {
                sum += 2.0 * self.tp[k] / denom;
                n += 1;
            }
        }
        if n == 0 {
            f64::NAN
        } else {
            sum / n as f64
        }
    }
}

/// Moment sums of (prediction p, target y) pairs: n, Σp, Σy, Σp², Σy², Σpy, Σ(p−y)². Values
/// are added shifted by a constant (the targets' mean, the same on every rank), which changes
/// neither metric and keeps the sums small for the f32 all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PairSums {
    pub n: f64,
    pub p: f64,
    pub y: f64,
    pub pp: f64,
    pub yy: f64,
    pub py: f64,
    pub sq_err: f64,
}

impl PairSums {
    pub fn add(&mut self, p: f64, y: f64) {
        self.n += 1.0;
        self.p += p;
        self.y += y;
        self.pp += p * p;
        self.yy += y * y;
        self.py += p * y;
        self.sq_err += (p - y) * (p - y);
    }

    pub fn to_sums(&self) -> Vec<f64> {
        vec![
            self.n,
            self.p,
            self.y,
            self.pp,
            self.yy,
            self.py,
            self.sq_err,
        ]
    }

    pub fn from_sums(s: &[f64]) -> Self {
        PairSums {
            n: s[0],
            p: s[1],
            y: s[2],
            pp: s[3],
            yy: s[4],
            py: s[5],
            sq_err: s[6],
        }
    }

    /// Mean squared error (NaN without pairs).
    pub fn mse(&self) -> f64 {
        if self.n == 0.0 {
            f64::NAN
        } else {
            self.sq_err / self.n
        }
    }

    /// Pearson's correlation of p and y (NaN when either is constant or there are no pairs).
    pub fn pearson(&self) -> f64 {
        let n = self.n;
        let cov = n * self.py - self.p * self.y;
        let vp = n * self.pp - self.p * self.p;
        let vy = n * self.yy - self.y * self.y;
        if n < 2.0 || vp <= 0.0 || vy <= 0.0 {
            return f64::NAN;
        }
        (cov / (vp.sqrt() * vy.sqrt())).clamp(-1.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(truth: &[usize], pred: &[usize], k: usize) -> ClassCounts {
        let mut c = ClassCounts::new(k);
        for (&t, &p) in truth.iter().zip(pred) {
            c.add(t, p);
        }
        c
    }

    #[test]
    fn accuracy_and_macro_f1_match_hand_computed_values() {
        // truth 0 0 0 1 1 2, predicted 0 0 1 1 2 2:
        // class 0: tp 2, predicted 2, support 3 -> F1 = 4/5
        // class 1: tp 1, predicted 2, support 2 -> F1 = 2/4
        // class 2: tp 1, predicted 2, support 1 -> F1 = 2/3
        let c = counts(&[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 2, 2], 3);
        assert!((c.accuracy() - 4.0 / 6.0).abs() < 1e-12);
        let f1 = (0.8 + 0.5 + 2.0 / 3.0) / 3.0;
        assert!((c.macro_f1() - f1).abs() < 1e-12, "{}", c.macro_f1());
        // A class absent from truth and predictions does not count; one only predicted does
        // (F1 0), as scikit-learn's macro average over the labels present.
        let c = counts(&[0, 0, 1, 1], &[0, 0, 1, 3], 5);
        assert!((c.accuracy() - 0.75).abs() < 1e-12);
        let f1 = (1.0 + 2.0 / 3.0 + 0.0) / 3.0;
        assert!((c.macro_f1() - f1).abs() < 1e-12, "{}", c.macro_f1());
        // Sums round-trip and add across workers.
        let a = counts(&[0, 1], &[0, 0], 2);
        let b = counts(&[1, 1], &[1, 0], 2);
        let added: Vec<f64> = a
            .to_sums()
            .iter()
            .zip(b.to_sums())
            .map(|(x, y)| x + y)
            .collect();
        let whole = counts(&[0, 1, 1, 1], &[0, 0, 1, 0], 2);
        assert_eq!(ClassCounts::from_sums(&added), whole);
        assert!(ClassCounts::new(3).accuracy().is_nan());
    }

    #[test]
    fn mse_and_pearson_match_hand_computed_values() {
        // p = 1 2 3 4, y = 2 4 5 9: mean p 2.5, mean y 5;
        // cov = Σ(p−2.5)(y−5) = (−1.5)(−3) + (−0.5)(−1) + (0.5)(0) + (1.5)(4) = 11
        // var p = 5, var y = 9 + 1 + 0 + 16 = 26 -> r = 11 / √130
        // mse = (1 + 4 + 4 + 25) / 4 = 8.5
        let mut s = PairSums::default();
        for (p, y) in [(1.0, 2.0), (2.0, 4.0), (3.0, 5.0), (4.0, 9.0)] {
            s.add(p, y);
        }
        assert!((s.mse() - 8.5).abs() < 1e-12);
        assert!(
            (s.pearson() - 11.0 / 130f64.sqrt()).abs() < 1e-12,
            "{}",
            s.pearson()
        );
        // Shifting both by a constant changes neither.
        let mut t = PairSums::default();
        for (p, y) in [(1.0, 2.0), (2.0, 4.0), (3.0, 5.0), (4.0, 9.0)] {
            t.add(p - 5.0, y - 5.0);
        }
        assert!((t.pearson() - s.pearson()).abs() < 1e-12);
        assert_eq!(PairSums::from_sums(&s.to_sums()), s);
        // A constant prediction has no correlation.
        let mut c = PairSums::default();
        c.add(1.0, 2.0);
        c.add(1.0, 3.0);
        assert!(c.pearson().is_nan());
        assert!((c.mse() - 2.5).abs() < 1e-12);
    }
}
