//! nn.Linear, and a linear layer that keeps its input for backward.

use super::join;
use crate::backend::Device;
use crate::params::{Init, ParamLayout, ParamView};
use crate::{Float, Precision};

/// nn.Linear: y = x·Wᵀ + b, W is [out, in]. Init U(±1/√in) for both, as PyTorch.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: ParamView,
    pub bias: Option<ParamView>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    pub fn new(l: &mut ParamLayout, prefix: &str, in_f: usize, out_f: usize, bias: bool) -> Self {
        let a = 1.0 / (in_f as f64).sqrt();
        let weight = l.add(join(prefix, "weight"), &[out_f, in_f], Init::Uniform(a));
        let bias = bias.then(|| l.add(join(prefix, "bias"), &[out_f], Init::Uniform(a)));
        Self {
            weight,
            bias,
            in_features: in_f,
            out_features: out_f,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn forward<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        prec: Precision,
        params: &D::Mem,
        x: &D::Mem,
        y: &mut D::Mem,
        n: usize,
    ) {
        let (i, o) = (self.in_features, self.out_features);
        dev.linear_forward(prec, y, x, params, self.weight, self.bias, n, i, o)
    }

    /// Accumulates dW, db into `grads`; writes (or adds to) dx when given.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        prec: Precision,
        params: &D::Mem,
        grads: &mut D::Mem,
        x: &D::Mem,
        dy: &D::Mem,
        dx: Option<&mut D::Mem>,
        accumulate_dx: bool,
        n: usize,
    ) {
        let (i, o) = (self.in_features, self.out_features);
        dev.linear_backward(
            prec,
            dx,
            accumulate_dx,
            grads,
            dy,
            x,
            params,
            self.weight,
            self.bias,
            n,
            i,
            o,
        )
    }

    /// The backward with this layer's weight frozen (LoRA): dx and db, no dW.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_frozen_weight<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        prec: Precision,
        params: &D::Mem,
        grads: &mut D::Mem,
        x: &D::Mem,
        dy: &D::Mem,
        dx: &mut D::Mem,
        n: usize,
    ) {
        let (i, o) = (self.in_features, self.out_features);
        dev.linear_backward_frozen_weight(
            prec,
            dx,
            false,
            grads,
            dy,
            x,
            params,
            self.weight,
            self.bias,
            n,
            i,
            o,
        )
    }
}

/// A [`Linear`] with bias over [rows, in] that keeps its input (and output `y`) from the last
/// forward for backward; the row count may change every call.
pub struct SavedLinear<M> {
    pub linear: Linear,
    x: M,
    pub y: M,
}

impl<M: Default> SavedLinear<M> {
    /// Registers `{name}.weight` [o, i] and `{name}.bias` [o] (PyTorch's init).
    pub fn new(l: &mut ParamLayout, name: &str, i: usize, o: usize) -> Self {
        SavedLinear {
            linear: Linear::new(l, name, i, o, true),
            x: M::default(),
            y: M::default(),
        }
    }
}

impl<M> SavedLinear<M> {
    /// y = x·Wᵀ + b over every row of x [rows, in].
    pub fn forward<T: Float, D: Device<T, Mem = M>>(
        &mut self,
        dev: &D,
        prec: Precision,
        params: &M,
        x: &M,
    ) {
        let (i, o) = (self.linear.in_features, self.linear.out_features);
        let n = dev.len(x) / i;
        dev.resize(&mut self.x, dev.len(x));
        dev.copy(&mut self.x, x);
        dev.resize(&mut self.y, n * o);
        if n > 0 {
            self.linear
                .forward(dev, prec, params, &self.x, &mut self.y, n);
        }
    }

    /// From dy [rows, out] of the last forward: accumulates dW, db and returns dx [rows, in].
    pub fn backward<T: Float, D: Device<T, Mem = M>>(
        &self,
        dev: &D,
        prec: Precision,
        params: &M,
        grads: &mut M,
        dy: &M,
    ) -> M {
        let i = self.linear.in_features;
        let n = dev.len(&self.x) / i;
        let mut dx = dev.zeros(n * i);
        if n > 0 {
            let x = &self.x;
            self.linear
                .backward(dev, prec, params, grads, x, dy, Some(&mut dx), false, n);
        }
        dx
    }
}
