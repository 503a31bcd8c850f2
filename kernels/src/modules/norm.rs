//! nn.LayerNorm, and a layer norm over every row that keeps what backward needs.

use super::join;
use crate::backend::Device;
use crate::params::{Init, ParamLayout, ParamView};
use crate::Float;

/// PyTorch's nn.LayerNorm / nn.TransformerEncoderLayer default ε.
pub const LN_EPS: f64 = 1e-5;

/// nn.LayerNorm over the last dimension (weight = 1, bias = 0 at init).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: ParamView,
    pub bias: ParamView,
    pub dim: usize,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(l: &mut ParamLayout, prefix: &str, dim: usize, eps: f64) -> Self {
        Self {
            weight: l.add(join(prefix, "weight"), &[dim], Init::Ones),
            bias: l.add(join(prefix, "bias"), &[dim], Init::Zeros),
            dim,
            eps,
        }
    }

    /// y = LayerNorm(x) over n rows; saves each row's mean and 1/σ for backward.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        params: &D::Mem,
        x: &D::Mem,
        y: &mut D::Mem,
        mean: &mut D::Mem,
        rstd: &mut D::Mem,
        n: usize,
    ) {
        let (w, b) = (self.weight, self.bias);
        dev.layernorm_forward(y, mean, rstd, x, params, w, b, n, self.dim, self.eps)
    }

    /// Accumulates dγ, dβ into `grads`; writes dx (adds to it with `accumulate_dx`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        params: &D::Mem,
        grads: &mut D::Mem,
        x: &D::Mem,
        mean: &D::Mem,
        rstd: &D::Mem,
        dy: &D::Mem,
        dx: &mut D::Mem,
        accumulate_dx: bool,
        n: usize,
    ) {
        let (w, b) = (self.weight, self.bias);
        dev.layernorm_backward(
            dx,
            accumulate_dx,
            grads,
            dy,
            x,
            mean,
            rstd,
            params,
            w,
            b,
            n,
            self.dim,
        )
    }
}

/// [`LayerNorm`] over every row of a [rows, dim] tensor, keeping its input and statistics from
/// the last forward for backward; the row count may change every call.
pub struct RowNorm<M> {
    pub norm: LayerNorm,
    x: M,
    mean: M,
    rstd: M,
    pub y: M,
}

impl<M: Default> RowNorm<M> {
    /// Registers `{name}.weight` and `{name}.bias` (ε = [`LN_EPS`]).
    pub fn new(l: &mut ParamLayout, name: &str, dim: usize) -> Self {
        RowNorm {
            norm: LayerNorm::new(l, name, dim, LN_EPS),
            x: M::default(),
            mean: M::default(),
            rstd: M::default(),
            y: M::default(),
        }
    }
}

impl<M> RowNorm<M> {
    /// `self.y` = LayerNorm(x) for x [rows, dim].
    pub fn forward<T: Float, D: Device<T, Mem = M>>(&mut self, dev: &D, params: &M, x: &M) {
        let d = self.norm.dim;
        let m = dev.len(x) / d;
        dev.resize(&mut self.x, dev.len(x));
        dev.copy(&mut self.x, x);
        dev.resize(&mut self.y, m * d);
        dev.resize(&mut self.mean, m);
        dev.resize(&mut self.rstd, m);
        if m > 0 {
            let (y, mean, rstd) = (&mut self.y, &mut self.mean, &mut self.rstd);
            self.norm.forward(dev, params, &self.x, y, mean, rstd, m);
        }
    }

    /// dx [rows, dim] from dy (the last forward's rows); accumulates dγ, dβ.
    pub fn backward<T: Float, D: Device<T, Mem = M>>(
        &self,
        dev: &D,
        params: &M,
        grads: &mut M,
        dy: &M,
    ) -> M {
        let d = self.norm.dim;
        let m = dev.len(&self.x) / d;
        let mut dx = dev.zeros(m * d);
        if m > 0 {
            let (x, mean, rstd) = (&self.x, &self.mean, &self.rstd);
            self.norm
                .backward(dev, params, grads, x, mean, rstd, dy, &mut dx, false, m);
        }
        dx
    }
}
