//! The op interface a backend implements. Buffers are the backend's own (`Mem`: host `Vec` on
//! CPU, a device allocation on CUDA); parameters are addressed as (flat buffer, [`ParamView`])
//! so a backend never needs more than one allocation for all weights and one for all
//! gradients. Host-side metadata (token ids, targets, padding masks) is passed as slices.
//!
//! `Cpu` is the reference implementation: it forwards to [`crate::ops`].

use crate::ops::{self, attention::AttnOpts, Activation, AdamConfig, AttnShape};
use crate::params::ParamView;
use crate::rng::RngKey;
use crate::{Float, Precision, Result};

pub trait Device<T: Float>: Sync {
    type Mem: Send + Sync;

    fn zeros(&self, len: usize) -> Self::Mem;
    fn upload(&self, host: &[T]) -> Self::Mem;
    fn download(&self, m: &Self::Mem) -> Vec<T>;
    fn len(&self, m: &Self::Mem) -> usize;
    fn fill_zero(&self, m: &mut Self::Mem);
    fn copy(&self, dst: &mut Self::Mem, src: &Self::Mem);

    /// c[m,n] (+)= op(a)·op(b), row-major, operands rounded per `prec`.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        prec: Precision,
        c: &mut Self::Mem,
        a: &Self::Mem,
        ta: bool,
        b: &Self::Mem,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    );
    #[allow(clippy::too_many_arguments)]
    fn linear_forward(
        &self,
        prec: Precision,
        y: &mut Self::Mem,
        x: &Self::Mem,
        params: &Self::Mem,
        w: ParamView,
        b: Option<ParamView>,
        n: usize,
        i: usize,
        o: usize,
    );
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        prec: Precision,
        dx: Option<&mut Self::Mem>,
        accumulate_dx: bool,
        grads: &mut Self::Mem,
        dy: &Self::Mem,
        x: &Self::Mem,
        params: &Self::Mem,
        w: ParamView,
        b: Option<ParamView>,
        n: usize,
        i: usize,
        o: usize,
    );
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &self,
        y: &mut Self::Mem,
        mean: &mut Self::Mem,
        rstd: &mut Self::Mem,
        x: &Self::Mem,
        params: &Self::Mem,
        gamma: ParamView,
        beta: ParamView,
        n: usize,
        c: usize,
        eps: f64,
    );
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dx: &mut Self::Mem,
        accumulate_dx: bool,
        grads: &mut Self::Mem,
        dy: &Self::Mem,
        x: &Self::Mem,
        mean: &Self::Mem,
        rstd: &Self::Mem,
        params: &Self::Mem,
        gamma: ParamView,
        beta: ParamView,
        n: usize,
        c: usize,
    );
    fn embedding_forward(
        &self,
        out: &mut Self::Mem,
        idx: &[u32],
        params: &Self::Mem,
        w: ParamView,
        dim: usize,
    ) -> Result<()>;
    fn embedding_backward(
        &self,
        grads: &mut Self::Mem,
        w: ParamView,
        dout: &Self::Mem,
        idx: &[u32],
        dim: usize,
    ) -> Result<()>;
    fn attention_forward(
        &self,
        out: &mut Self::Mem,
        lse: &mut Self::Mem,
        qkv: &Self::Mem,
        s: AttnShape,
        o: &AttnOpts,
    );
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dqkv: &mut Self::Mem,
        dout: &Self::Mem,
        out: &Self::Mem,
        lse: &Self::Mem,
        qkv: &Self::Mem,
        s: AttnShape,
        o: &AttnOpts,
    );
    fn activation_forward(&self, act: Activation, y: &mut Self::Mem, x: &Self::Mem);
    fn activation_backward(
        &self,
        act: Activation,
        dx: &mut Self::Mem,
        dy: &Self::Mem,
        x: &Self::Mem,
    );
    fn dropout_forward(&self, x: &mut Self::Mem, p: f64, key: RngKey);
    fn dropout_backward(&self, dy: &mut Self::Mem, p: f64, key: RngKey);
    fn residual_forward(&self, out: &mut Self::Mem, a: &Self::Mem, b: &Self::Mem);
    fn add_inplace(&self, acc: &mut Self::Mem, g: &Self::Mem);
    fn cross_entropy(
        &self,
        dlogits: &mut Self::Mem,
        logits: &Self::Mem,
        targets: &[i64],
        n: usize,
        v: usize,
        dloss: f64,
    ) -> Result<f64>;
    fn mse(&self, dx: &mut Self::Mem, x: &Self::Mem, y: &Self::Mem, dloss: f64) -> Result<f64>;
    fn adam_step(
        &self,
        cfg: &AdamConfig,
        t: u64,
        params: &mut Self::Mem,
        grads: &Self::Mem,
        m: &mut Self::Mem,
        v: &mut Self::Mem,
    );
    fn clip_grad_norm(&self, grads: &mut Self::Mem, max_norm: f64) -> f64;
    fn round(&self, prec: Precision, x: &mut Self::Mem);
}

/// The CPU backend (rayon threads, faer GEMM).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// Two disjoint mutable parameter-gradient views of one flat buffer.
fn two_mut<T>(buf: &mut [T], a: ParamView, b: ParamView) -> (&mut [T], &mut [T]) {
    assert!(a.offset + a.len <= b.offset || b.offset + b.len <= a.offset);
    if a.offset < b.offset {
        let (lo, hi) = buf.split_at_mut(b.offset);
        (&mut lo[a.range()], &mut hi[..b.len])
    } else {
        let (lo, hi) = buf.split_at_mut(a.offset);
        (&mut hi[..a.len], &mut lo[b.range()])
    }
}

impl<T: Float> Device<T> for Cpu {
    type Mem = Vec<T>;

    fn zeros(&self, len: usize) -> Vec<T> {
        vec![T::ZERO; len]
    }
    fn upload(&self, host: &[T]) -> Vec<T> {
        host.to_vec()
    }
    fn download(&self, m: &Vec<T>) -> Vec<T> {
        m.clone()
    }
    fn len(&self, m: &Vec<T>) -> usize {
        m.len()
    }
    fn fill_zero(&self, m: &mut Vec<T>) {
        m.fill(T::ZERO)
    }
    fn copy(&self, dst: &mut Vec<T>, src: &Vec<T>) {
        dst[..src.len()].copy_from_slice(src)
    }
    fn matmul(
        &self,
        prec: Precision,
        c: &mut Vec<T>,
        a: &Vec<T>,
        ta: bool,
        b: &Vec<T>,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) {
        ops::matmul(prec, c, a, ta, b, tb, m, n, k, accumulate)
    }
    fn linear_forward(
        &self,
        prec: Precision,
        y: &mut Vec<T>,
        x: &Vec<T>,
        params: &Vec<T>,
        w: ParamView,
        b: Option<ParamView>,
        n: usize,
        i: usize,
        o: usize,
    ) {
        let b = b.map(|b| &params[b.range()]);
        ops::linear_forward(prec, y, x, &params[w.range()], b, n, i, o)
    }
    fn linear_backward(
        &self,
        prec: Precision,
        dx: Option<&mut Vec<T>>,
        accumulate_dx: bool,
        grads: &mut Vec<T>,
        dy: &Vec<T>,
        x: &Vec<T>,
        params: &Vec<T>,
        w: ParamView,
        b: Option<ParamView>,
        n: usize,
        i: usize,
        o: usize,
    ) {
        let dx = dx.map(|d| d.as_mut_slice());
        let wv = &params[w.range()];
        match b {
            Some(b) => {
                let (dw, db) = two_mut(grads, w, b);
                ops::linear_backward(prec, dx, accumulate_dx, dw, Some(db), dy, x, wv, n, i, o)
            }
            None => {
                let dw = &mut grads[w.range()];
                ops::linear_backward(prec, dx, accumulate_dx, dw, None, dy, x, wv, n, i, o)
            }
        }
    }
    fn layernorm_forward(
        &self,
        y: &mut Vec<T>,
        mean: &mut Vec<T>,
        rstd: &mut Vec<T>,
        x: &Vec<T>,
        params: &Vec<T>,
        gamma: ParamView,
        beta: ParamView,
        n: usize,
        c: usize,
        eps: f64,
    ) {
        let (g, b) = (&params[gamma.range()], &params[beta.range()]);
        ops::layernorm_forward(y, mean, rstd, x, g, b, n, c, eps)
    }
    fn layernorm_backward(
        &self,
        dx: &mut Vec<T>,
        accumulate_dx: bool,
        grads: &mut Vec<T>,
        dy: &Vec<T>,
        x: &Vec<T>,
        mean: &Vec<T>,
        rstd: &Vec<T>,
        params: &Vec<T>,
        gamma: ParamView,
        beta: ParamView,
        n: usize,
        c: usize,
    ) {
        let (dg, db) = two_mut(grads, gamma, beta);
        let g = &params[gamma.range()];
        ops::layernorm_backward(dx, accumulate_dx, dg, db, dy, x, mean, rstd, g, n, c)
    }
    fn embedding_forward(
        &self,
        out: &mut Vec<T>,
        idx: &[u32],
        params: &Vec<T>,
        w: ParamView,
        dim: usize,
    ) -> Result<()> {
        ops::embedding_forward(out, idx, &params[w.range()], w.len / dim.max(1), dim)
    }
    fn embedding_backward(
        &self,
        grads: &mut Vec<T>,
        w: ParamView,
        dout: &Vec<T>,
        idx: &[u32],
        dim: usize,
    ) -> Result<()> {
        ops::embedding_backward(&mut grads[w.range()], dout, idx, w.len / dim.max(1), dim)
    }
    fn attention_forward(
        &self,
        out: &mut Vec<T>,
        lse: &mut Vec<T>,
        qkv: &Vec<T>,
        s: AttnShape,
        o: &AttnOpts,
    ) {
        ops::attention_forward(out, lse, qkv, s, o)
    }
    fn attention_backward(
        &self,
        dqkv: &mut Vec<T>,
        dout: &Vec<T>,
        out: &Vec<T>,
        lse: &Vec<T>,
        qkv: &Vec<T>,
        s: AttnShape,
        o: &AttnOpts,
    ) {
        ops::attention_backward(dqkv, dout, out, lse, qkv, s, o)
    }
    fn activation_forward(&self, act: Activation, y: &mut Vec<T>, x: &Vec<T>) {
        ops::activation_forward(act, y, x)
    }
    fn activation_backward(&self, act: Activation, dx: &mut Vec<T>, dy: &Vec<T>, x: &Vec<T>) {
        ops::activation_backward(act, dx, dy, x)
    }
    fn dropout_forward(&self, x: &mut Vec<T>, p: f64, key: RngKey) {
        ops::dropout_forward(x, p, key)
    }
    fn dropout_backward(&self, dy: &mut Vec<T>, p: f64, key: RngKey) {
        ops::dropout_backward(dy, p, key)
    }
    fn residual_forward(&self, out: &mut Vec<T>, a: &Vec<T>, b: &Vec<T>) {
        ops::residual_forward(out, a, b)
    }
    fn add_inplace(&self, acc: &mut Vec<T>, g: &Vec<T>) {
        ops::add_inplace(acc, g)
    }
    fn cross_entropy(
        &self,
        dlogits: &mut Vec<T>,
        logits: &Vec<T>,
        targets: &[i64],
        n: usize,
        v: usize,
        dloss: f64,
    ) -> Result<f64> {
        ops::cross_entropy(dlogits, logits, targets, n, v, dloss)
    }
    fn mse(&self, dx: &mut Vec<T>, x: &Vec<T>, y: &Vec<T>, dloss: f64) -> Result<f64> {
        ops::mse(dx, x, y, dloss)
    }
    fn adam_step(
        &self,
        cfg: &AdamConfig,
        t: u64,
        params: &mut Vec<T>,
        grads: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
    ) {
        ops::adam_step(cfg, t, params, grads, m, v)
    }
    fn clip_grad_norm(&self, grads: &mut Vec<T>, max_norm: f64) -> f64 {
        ops::clip_grad_norm(grads, max_norm)
    }
    fn round(&self, prec: Precision, x: &mut Vec<T>) {
        crate::precision::round_slice(prec, x)
    }
}
