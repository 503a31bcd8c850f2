//! LoRA adapters (Hu et al. 2021, as HuggingFace peft's `LoraLayer` applies them to an
//! `nn.Linear`): the adapted layer computes
//!
//! ```text
//! y = x·Wᵀ + b + (alpha / rank) · dropout(x)·Aᵀ·Bᵀ      A: [rank, in], B: [out, rank]
//! ```
//!
//! with `W` and `b` frozen. peft's initialisation: `A` kaiming-uniform with a = √5, which is
//! U(±1/√in), and `B` zeros, so an adapted model starts as the base model. The adapter's
//! parameters are named as peft saves them, `{module}.lora_A.weight` and `{module}.lora_B.weight`.
//!
//! Backward recomputes the adapter's two small activations (the dropout mask comes from the
//! same counter-based key), so nothing is saved between forward and backward.

use super::join;
use super::linear::Linear;
use crate::backend::Device;
use crate::params::{Init, ParamLayout};
use crate::rng::RngKey;
use crate::{Float, Precision};

#[derive(Clone, Debug)]
pub struct LoraAdapter {
    /// `lora_A`: in → rank.
    pub a: Linear,
    /// `lora_B`: rank → out.
    pub b: Linear,
    /// alpha / rank.
    pub scale: f64,
    /// Dropout on the adapter's input (0 in evaluation).
    pub dropout: f64,
}

impl LoraAdapter {
    /// Registers `{module}.lora_A.weight` [rank, in] and `{module}.lora_B.weight` [out, rank].
    pub fn new(
        l: &mut ParamLayout,
        module: &str,
        in_f: usize,
        out_f: usize,
        rank: usize,
        alpha: f64,
        dropout: f64,
    ) -> Self {
        // nn.Linear's own init, U(±1/√in), is peft's kaiming-uniform(a = √5) for A.
        let a = Linear::new(l, &join(module, "lora_A"), in_f, rank, false);
        let b_w = l.add(join(module, "lora_B.weight"), &[out_f, rank], Init::Zeros);
        LoraAdapter {
            a,
            b: Linear {
                weight: b_w,
                bias: None,
                in_features: rank,
                out_features: out_f,
            },
            scale: alpha / rank as f64,
            dropout,
        }
    }

    /// The same adapter without dropout (evaluation).
    pub fn eval(&self) -> Self {
        LoraAdapter {
            dropout: 0.0,
            ..self.clone()
        }
    }

    /// dropout(x) over n rows (a copy when dropout is on).
    fn input<T: Float, D: Device<T>>(&self, dev: &D, x: &D::Mem, n: usize, key: RngKey) -> D::Mem {
        let mut u = dev.zeros(n * self.a.in_features);
        dev.copy(&mut u, x);
        if self.dropout > 0.0 {
            dev.dropout_forward(&mut u, self.dropout, key);
        }
        u
    }

    /// scale · A·u over n rows: [n, rank].
    fn down<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        prec: Precision,
        params: &D::Mem,
        u: &D::Mem,
        n: usize,
    ) -> D::Mem {
        let mut t = dev.zeros(n * self.a.out_features);
        self.a.forward(dev, prec, params, u, &mut t, n);
        dev.scale(&mut t, self.scale);
        t
    }

    /// Adds the adapter's output for x [n, in] to y [n, out] (the base layer's output).
    #[allow(clippy::too_many_arguments)]
    pub fn forward<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        prec: Precision,
        params: &D::Mem,
        x: &D::Mem,
        y: &mut D::Mem,
        n: usize,
        key: RngKey,
    ) {
        if n == 0 {
            return;
        }
        let u = self.input(dev, x, n, key);
        let t = self.down(dev, prec, params, &u, n);
        let mut z = dev.zeros(n * self.b.out_features);
        self.b.forward(dev, prec, params, &t, &mut z, n);
        dev.add_inplace(y, &z);
    }

    /// From the adapted layer's dy [n, out] and its input x [n, in] (as in forward):
    /// accumulates dA and dB into `grads` and adds the adapter's share of dx to `dx`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        prec: Precision,
        params: &D::Mem,
        grads: &mut D::Mem,
        x: &D::Mem,
        dy: &D::Mem,
        dx: &mut D::Mem,
        n: usize,
        key: RngKey,
    ) {
        if n == 0 {
            return;
        }
        let u = self.input(dev, x, n, key);
        let t = self.down(dev, prec, params, &u, n);
        // B: dB += dyᵀ·t; dt = dy·B, then the scale t carried.
        let mut dt = dev.zeros(n * self.a.out_features);
        self.b
            .backward(dev, prec, params, grads, &t, dy, Some(&mut dt), false, n);
        dev.scale(&mut dt, self.scale);
        // A: dA += dtᵀ·u; du = dt·A, through the dropout mask into dx.
        if self.dropout > 0.0 {
            let mut du = dev.zeros(n * self.a.in_features);
            self.a
                .backward(dev, prec, params, grads, &u, &dt, Some(&mut du), false, n);
            dev.dropout_backward(&mut du, self.dropout, key);
            dev.add_inplace(dx, &du);
        } else {
            self.a
                .backward(dev, prec, params, grads, &u, &dt, Some(dx), true, n);
        }
    }
}

/// W + scale · B·A for W [out, in], A [rank, in], B [out, rank] (row-major), each element
/// summed in f64.
pub fn merge_weight<T: Float>(
    weight: &[T],
    a: &[T],
    b: &[T],
    in_f: usize,
    rank: usize,
    scale: f64,
) -> Vec<T> {
    let mut w = weight.to_vec();
    let mut acc = vec![0.0f64; in_f];
    for (row, wr) in w.chunks_exact_mut(in_f).enumerate() {
        acc.fill(0.0);
        for k in 0..rank {
            let bk = b[row * rank + k].to_f64();
            for (s, &av) in acc.iter_mut().zip(&a[k * in_f..(k + 1) * in_f]) {
                *s += bk * av.to_f64();
            }
        }
        for (wv, s) in wr.iter_mut().zip(&acc) {
            *wv = T::from_f64(wv.to_f64() + scale * s);
        }
    }
    w
}
