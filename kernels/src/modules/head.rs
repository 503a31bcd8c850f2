//! A prediction head: LayerNorm then Linear, over a subset of the rows of a hidden state.

use super::linear::Linear;
use super::norm::{LayerNorm, LN_EPS};
use crate::backend::Device;
use crate::params::{Init, ParamLayout, ParamView};
use crate::{Float, Precision};

/// LayerNorm followed by Linear over selected rows of a [*, dim] hidden state; keeps what
/// backward needs from the last forward. The output of the last forward is `y` [rows, out].
pub struct NormHead<M> {
    pub norm: LayerNorm,
    pub proj: Linear,
    // saved activations
    x: M,
    h: M,
    mean: M,
    rstd: M,
    pub y: M,
    rows: usize,
}

impl<M: Default> NormHead<M> {
    /// Registers the norm `{norm_name}.weight/bias` and the head `{head_name}.weight` [out,
    /// dim], `{head_name}.bias` [out]; e.g. `norm_name` "encoder.norm", `head_name`
    /// "gene_head".
    pub fn new(
        l: &mut ParamLayout,
        norm_name: &str,
        head_name: &str,
        dim: usize,
        out: usize,
    ) -> Self {
        let norm = LayerNorm::new(l, norm_name, dim, LN_EPS);
        Self::with(norm, Linear::new(l, head_name, dim, out, true))
    }

    /// Like [`NormHead::new`], with the output projection's weight `weight` [out, dim] shared
    /// with another module (weight tying); only `{head_name}.bias` (zeros) is registered.
    pub fn tied(
        l: &mut ParamLayout,
        norm_name: &str,
        head_name: &str,
        weight: ParamView,
        dim: usize,
        out: usize,
    ) -> Self {
        let norm = LayerNorm::new(l, norm_name, dim, LN_EPS);
        let bias = l.add(format!("{head_name}.bias"), &[out], Init::Zeros);
        let proj = Linear {
            weight,
            bias: Some(bias),
            in_features: dim,
            out_features: out,
        };
        Self::with(norm, proj)
    }

    fn with(norm: LayerNorm, proj: Linear) -> Self {
        NormHead {
            norm,
            proj,
            x: M::default(),
            h: M::default(),
            mean: M::default(),
            rstd: M::default(),
            y: M::default(),
            rows: 0,
        }
    }
}

impl<M> NormHead<M> {
    /// Width of the hidden state.
    pub fn dim(&self) -> usize {
        self.proj.in_features
    }

    /// Gathers rows `rows` of `hidden` [*, dim], normalizes them and applies the linear head:
    /// `self.y` = [rows.len(), out].
    pub fn forward<T: Float, D: Device<T, Mem = M>>(
        &mut self,
        dev: &D,
        prec: Precision,
        params: &M,
        hidden: &M,
        rows: &[usize],
    ) {
        let (d, m) = (self.dim(), rows.len());
        self.rows = m;
        dev.resize(&mut self.x, m * d);
        dev.gather_rows(&mut self.x, hidden, rows, d);
        dev.resize(&mut self.h, m * d);
        dev.resize(&mut self.mean, m);
        dev.resize(&mut self.rstd, m);
        dev.resize(&mut self.y, m * self.proj.out_features);
        if m == 0 {
            return;
        }
        let (h, mean, rstd) = (&mut self.h, &mut self.mean, &mut self.rstd);
        self.norm.forward(dev, params, &self.x, h, mean, rstd, m);
        self.proj
            .forward(dev, prec, params, &self.h, &mut self.y, m);
    }

    /// From dy [rows, out] (the last forward's rows): accumulates parameter gradients and adds
    /// the rows' input gradients into `dhidden` [*, dim] at `rows`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Float, D: Device<T, Mem = M>>(
        &self,
        dev: &D,
        prec: Precision,
        params: &M,
        grads: &mut M,
        dy: &M,
        rows: &[usize],
        dhidden: &mut M,
    ) {
        let (d, m) = (self.dim(), self.rows);
        if m == 0 {
            return;
        }
        let mut dh = dev.zeros(m * d);
        self.proj.backward(
            dev,
            prec,
            params,
            grads,
            &self.h,
            dy,
            Some(&mut dh),
            false,
            m,
        );
        let mut dx = dev.zeros(m * d);
        let (x, mean, rstd) = (&self.x, &self.mean, &self.rstd);
        self.norm
            .backward(dev, params, grads, x, mean, rstd, &dh, &mut dx, false, m);
        dev.scatter_rows(dhidden, &dx, rows, d, true);
    }

    /// The head's norm alone over all `n` rows of `hidden` [n, dim] (no projection, nothing
    /// kept): e.g. the final norm of an encoder's states for cell embeddings.
    pub fn normalize<T: Float, D: Device<T, Mem = M>>(
        &self,
        dev: &D,
        params: &M,
        hidden: &M,
        n: usize,
    ) -> M {
        let d = self.dim();
        let mut y = dev.zeros(n * d);
        let (mut mean, mut rstd) = (dev.zeros(n), dev.zeros(n));
        if n > 0 {
            self.norm
                .forward(dev, params, hidden, &mut y, &mut mean, &mut rstd, n);
        }
        y
    }
}
