//! Multinomial logistic regression with an L2 penalty, as scikit-learn's
//! `LogisticRegression(C=1.0)` fits it (lbfgs, intercept fitted and not penalized), solved to
//! convergence with L-BFGS in f64.
//!
//! Objective over weights W [dim, k] and intercepts b [k]:
//! `mean_i(logsumexp(z_i) - z_i[y_i]) + ||W||^2 / (2 C n)` with `z_i = x_i W + b`, the same
//! minimizer as sklearn's `C * sum_i loss_i + ||W||^2 / 2`. Two classes are fitted as sklearn
//! does, as one binary model (class 0's logit fixed at 0), not as a two-class softmax: the
//! penalty differs between the two.

/// A fitted model: `n_fit` columns of logits (k, or 1 for two classes).
#[derive(Debug, Clone)]
pub struct LogReg {
    pub dim: usize,
    pub n_classes: usize,
    /// Row-major [dim, n_fit].
    pub coef: Vec<f64>,
    pub intercept: Vec<f64>,
    /// L-BFGS iterations taken; the largest gradient entry at the end (mean-loss scale, as
    /// scikit-learn's lbfgs measures it); whether that met `FitOptions::tol`.
    pub iterations: usize,
    pub grad_max: f64,
    pub converged: bool,
}

/// Fit options: the inverse penalty strength, the iteration limit (scModelForge passes
/// `max_iter`, 1000 by default), the largest gradient entry at which iterating stops (`gtol`,
/// far below scikit-learn's, so the optimum is reached where max_iter allows) and the one
/// below which the fit counts as converged (`tol`, scikit-learn's default 1e-4).
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    pub c: f64,
    pub max_iter: usize,
    pub gtol: f64,
    pub tol: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            c: 1.0,
            max_iter: 1000,
            gtol: 1e-10,
            tol: 1e-4,
        }
    }
}

struct Problem<'a> {
    x: &'a [f64],
    y: &'a [u32],
    n: usize,
    dim: usize,
    n_fit: usize,
    binary: bool,
    c: f64,
}

impl Problem<'_> {
    /// Logits of row `i` over all classes (class 0 is 0 in the binary case).
    fn logits(&self, w: &[f64], i: usize, z: &mut [f64]) {
        let (dim, nf) = (self.dim, self.n_fit);
        let xi = &self.x[i * dim..(i + 1) * dim];
        let off = usize::from(self.binary);
        if self.binary {
            z[0] = 0.0;
        }
        for c in 0..nf {
            let mut s = w[dim * nf + c];
            for (d, &v) in xi.iter().enumerate() {
                s += v * w[d * nf + c];
            }
            z[c + off] = s;
        }
    }

    /// Loss and its gradient at `w` (coefficients then intercepts).
    fn eval(&self, w: &[f64], g: &mut [f64]) -> f64 {
        let (dim, nf, n) = (self.dim, self.n_fit, self.n as f64);
        let k = nf + usize::from(self.binary);
        let off = usize::from(self.binary);
        g.iter_mut().for_each(|v| *v = 0.0);
        let mut z = vec![0.0; k];
        let mut loss = 0.0;
        for i in 0..self.n {
            self.logits(w, i, &mut z);
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let se: f64 = z.iter().map(|&v| (v - m).exp()).sum();
            let lse = m + se.ln();
            let yi = self.y[i] as usize;
            loss += lse - z[yi];
            let xi = &self.x[i * dim..(i + 1) * dim];
            for c in 0..nf {
                let p = (z[c + off] - lse).exp();
                let r = p - if yi == c + off { 1.0 } else { 0.0 };
                for (d, &v) in xi.iter().enumerate() {
                    g[d * nf + c] += r * v;
                }
                g[dim * nf + c] += r;
            }
        }
        let reg = 1.0 / (self.c * n);
        let mut pen = 0.0;
        for j in 0..dim * nf {
            pen += w[j] * w[j];
            g[j] = g[j] / n + reg * w[j];
        }
        for gj in &mut g[dim * nf..] {
            *gj /= n;
        }
        loss / n + 0.5 * reg * pen
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fits the model on `x` (row-major [y.len(), dim]) and labels `y` in `0..n_classes`.
pub fn fit(x: &[f64], dim: usize, y: &[u32], n_classes: usize, opts: FitOptions) -> LogReg {
    assert_eq!(x.len(), y.len() * dim);
    assert!(n_classes >= 2);
    let binary = n_classes == 2;
    let n_fit = if binary { 1 } else { n_classes };
    let p = Problem {
        x,
        y,
        n: y.len(),
        dim,
        n_fit,
        binary,
        c: opts.c,
    };
    let m = dim * n_fit + n_fit;
    let mut w = vec![0.0; m];
    let mut g = vec![0.0; m];
    let mut f = p.eval(&w, &mut g);
    const HISTORY: usize = 10;
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut iterations = 0;
    let (mut w_new, mut g_new) = (vec![0.0; m], vec![0.0; m]);
    while iterations < opts.max_iter {
        let gmax = g.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        if gmax <= opts.gtol {
            break;
        }
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alpha = vec![0.0; s_hist.len()];
        for j in (0..s_hist.len()).rev() {
            let rho = 1.0 / dot(&y_hist[j], &s_hist[j]);
            alpha[j] = rho * dot(&s_hist[j], &q);
            q.iter_mut()
                .zip(&y_hist[j])
                .for_each(|(qv, yv)| *qv -= alpha[j] * yv);
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(yv)) => dot(s, yv) / dot(yv, yv),
            _ => 1.0 / g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for j in 0..s_hist.len() {
            let rho = 1.0 / dot(&y_hist[j], &s_hist[j]);
            let beta = rho * dot(&y_hist[j], &q);
            q.iter_mut()
                .zip(&s_hist[j])
                .for_each(|(qv, sv)| *qv += (alpha[j] - beta) * sv);
        }
        let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            d = g.iter().map(|v| -v).collect();
            slope = dot(&g, &d);
        }
        // Backtracking line search (Armijo).
        let mut step = 1.0;
        let mut f_new;
        let mut tries = 0;
        loop {
            for j in 0..m {
                w_new[j] = w[j] + step * d[j];
            }
            f_new = p.eval(&w_new, &mut g_new);
            if f_new <= f + 1e-4 * step * slope || tries >= 60 {
                break;
            }
            step *= 0.5;
            tries += 1;
        }
        iterations += 1;
        if f_new > f {
            // No decrease possible in f64: as close to the optimum as this precision allows.
            break;
        }
        let s: Vec<f64> = (0..m).map(|j| w_new[j] - w[j]).collect();
        let yv: Vec<f64> = (0..m).map(|j| g_new[j] - g[j]).collect();
        if dot(&s, &yv) > 1e-16 * dot(&yv, &yv).max(1e-300) {
            if s_hist.len() == HISTORY {
                s_hist.remove(0);
                y_hist.remove(0);
            }
            s_hist.push(s);
            y_hist.push(yv);
        }
        std::mem::swap(&mut w, &mut w_new);
        std::mem::swap(&mut g, &mut g_new);
        let f_old = f;
        f = f_new;
        if (f_old - f).abs() <= f64::EPSILON * f.abs().max(1.0) && step < 1.0 {
            // Stalled at the limit of f64: a further step cannot decrease the loss.
            break;
        }
    }
    let grad_max = g.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let (coef, intercept) = (w[..dim * n_fit].to_vec(), w[dim * n_fit..].to_vec());
    LogReg {
        dim,
        n_classes,
        coef,
        intercept,
        iterations,
        grad_max,
        converged: grad_max <= opts.tol,
    }
}

impl LogReg {
    /// Class probabilities of each row of `x`, row-major [rows, n_classes].
    pub fn predict_proba(&self, x: &[f64]) -> Vec<f64> {
        let rows = x.len() / self.dim;
        let nf = self.intercept.len();
        let off = usize::from(self.n_classes == 2);
        let mut out = vec![0.0; rows * self.n_classes];
        for i in 0..rows {
            let z = &mut out[i * self.n_classes..(i + 1) * self.n_classes];
            let xi = &x[i * self.dim..(i + 1) * self.dim];
            for c in 0..nf {
                let mut s = self.intercept[c];
                for (d, &v) in xi.iter().enumerate() {
                    s += v * self.coef[d * nf + c];
                }
                z[c + off] = s;
            }
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let se: f64 = z.iter().map(|&v| (v - m).exp()).sum();
            z.iter_mut().for_each(|v| *v = (*v - m).exp() / se);
        }
        out
    }

    /// The most probable class of each row (the lowest index on ties, as numpy's argmax).
    pub fn predict(&self, x: &[f64]) -> Vec<u32> {
        let p = self.predict_proba(x);
        p.chunks(self.n_classes)
            .map(|r| {
                let mut best = 0;
                for (c, &v) in r.iter().enumerate() {
                    if v > r[best] {
                        best = c;
                    }
                }
                best as u32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gradient at the optimum is zero: check the stationarity conditions directly.
    #[test]
    fn fit_reaches_the_optimum() {
        // Three noisy classes in 2-D.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..60u32 {
            let c = i % 3;
            let t = i as f64 * 0.37;
            x.push(c as f64 + t.sin());
            x.push((c as f64 * 2.0) - t.cos());
            y.push(c);
        }
        let m = fit(&x, 2, &y, 3, FitOptions::default());
        assert!(m.converged && m.grad_max < 1e-9, "{m:?}");
        // Stationarity: sum_i (p_i - y_i) x_i + W / C = 0 and sum_i (p_i - y_i) = 0.
        let p = m.predict_proba(&x);
        for c in 0..3 {
            let mut gb = 0.0;
            let mut gw = [0.0; 2];
            for i in 0..60 {
                let r = p[i * 3 + c] - f64::from(y[i] == c as u32);
                gb += r;
                gw[0] += r * x[i * 2];
                gw[1] += r * x[i * 2 + 1];
            }
            assert!(gb.abs() < 1e-7, "{gb}");
            for (d, gwd) in gw.iter().enumerate() {
                assert!((gwd + m.coef[d * 3 + c]).abs() < 1e-7);
            }
        }
        assert!(crate::bench::metrics::accuracy(&y, &m.predict(&x)) > 0.6);
    }
}
