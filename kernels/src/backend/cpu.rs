//! The CPU backend: buffers are `Vec<T>`, every method forwards to the slice op of the same
//! name in [`crate::ops`] (rayon threads, faer GEMM).

use std::borrow::Cow;
use std::ops::Range;

use super::{Device, ValueProjection};
use crate::ops::{self, attention::AttnOpts, Activation, AdamConfig, AttnShape};
use crate::params::ParamView;
use crate::rng::RngKey;
use crate::{Float, Precision, Result};

/// The CPU backend (rayon threads, faer GEMM).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// Disjoint mutable views of one flat buffer, in the order of `views` (panics if two overlap).
pub(super) fn views_mut<'a, T, const N: usize>(
    mut buf: &'a mut [T],
    views: [ParamView; N],
) -> [&'a mut [T]; N] {
    let mut order: [usize; N] = std::array::from_fn(|i| i);
    order.sort_by_key(|&i| views[i].offset);
    let mut out: [Option<&'a mut [T]>; N] = std::array::from_fn(|_| None);
    let mut base = 0;
    for i in order {
        let v = views[i];
        assert!(v.offset >= base, "overlapping parameter views");
        let rest = std::mem::take(&mut buf);
        let (view, rest) = rest[v.offset - base..].split_at_mut(v.len);
        out[i] = Some(view);
        buf = rest;
        base = v.offset + v.len;
    }
    out.map(|v| v.expect("every view is assigned"))
}

impl<T: Float> Device<T> for Cpu {
    type Mem = Vec<T>;

    fn zeros(&self, len: usize) -> Vec<T> {
        vec![T::ZERO; len]
    }
    fn resize(&self, m: &mut Vec<T>, len: usize) {
        m.resize(len, T::ZERO)
    }
    fn upload(&self, host: &[T]) -> Vec<T> {
        host.to_vec()
    }
    fn download(&self, m: &Vec<T>) -> Vec<T> {
        m.clone()
    }
    fn write(&self, m: &mut Vec<T>, offset: usize, host: &[T]) {
        m[offset..offset + host.len()].copy_from_slice(host)
    }
    fn host_visible(&self) -> bool {
        true
    }
    fn host_mut<'a>(&self, m: &'a mut Vec<T>) -> Option<&'a mut [T]> {
        Some(m.as_mut_slice())
    }
    fn read<'a>(&self, m: &'a Vec<T>, range: Range<usize>) -> Cow<'a, [T]> {
        Cow::Borrowed(&m[range])
    }
    fn len(&self, m: &Vec<T>) -> usize {
        m.len()
    }
    fn fill_zero(&self, m: &mut Vec<T>) {
        m.fill(T::ZERO)
    }
    fn fill_zero_range(&self, m: &mut Vec<T>, range: Range<usize>) {
        m[range].fill(T::ZERO)
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
                let [dw, db] = views_mut(grads, [w, b]);
                ops::linear_backward(prec, dx, accumulate_dx, dw, Some(db), dy, x, wv, n, i, o)
            }
            None => {
                let dw = &mut grads[w.range()];
                ops::linear_backward(prec, dx, accumulate_dx, dw, None, dy, x, wv, n, i, o)
            }
        }
    }
    fn linear_backward_frozen_weight(
        &self,
        prec: Precision,
        dx: &mut Vec<T>,
        accumulate_dx: bool,
        grads: &mut Vec<T>,
        dy: &Vec<T>,
        _x: &Vec<T>,
        params: &Vec<T>,
        w: ParamView,
        b: Option<ParamView>,
        n: usize,
        i: usize,
        o: usize,
    ) {
        ops::linear_backward_input(
            prec,
            dx,
            accumulate_dx,
            b.map(|b| &mut grads[b.range()]),
            dy,
            &params[w.range()],
            n,
            i,
            o,
        )
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
        let [dg, db] = views_mut(grads, [gamma, beta]);
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
    fn token_embedding_forward(
        &self,
        out: &mut Vec<T>,
        ids: &[u32],
        pos: &[u32],
        params: &Vec<T>,
        gene: ParamView,
        position: ParamView,
        value: Option<ValueProjection<'_, Vec<T>>>,
        dim: usize,
    ) -> Result<()> {
        let value = value.map(|(w, b, v)| (&params[w.range()], &params[b.range()], &v[..]));
        let (g, p) = (&params[gene.range()], &params[position.range()]);
        ops::token_embedding_forward(out, ids, pos, g, p, value, dim)
    }
    fn token_embedding_backward(
        &self,
        grads: &mut Vec<T>,
        dout: &Vec<T>,
        ids: &[u32],
        pos: &[u32],
        gene: ParamView,
        position: ParamView,
        value: Option<ValueProjection<'_, Vec<T>>>,
        dim: usize,
    ) -> Result<()> {
        match value {
            Some((w, b, v)) => {
                let [dg, dp, dw, db] = views_mut(grads, [gene, position, w, b]);
                ops::token_embedding_backward(dg, dp, Some((dw, db, v)), dout, ids, pos, dim)
            }
            None => {
                let [dg, dp] = views_mut(grads, [gene, position]);
                ops::token_embedding_backward(dg, dp, None, dout, ids, pos, dim)
            }
        }
    }
    fn gather_rows(&self, out: &mut Vec<T>, x: &Vec<T>, rows: &[usize], dim: usize) {
        ops::gather_rows(out, x, rows, dim)
    }
    fn scatter_rows(
        &self,
        dst: &mut Vec<T>,
        src: &Vec<T>,
        rows: &[usize],
        dim: usize,
        accumulate: bool,
    ) {
        ops::scatter_rows(dst, src, rows, dim, accumulate)
    }
    fn mean_rows(
        &self,
        out: &mut Vec<T>,
        x: &Vec<T>,
        rows: &[usize],
        offsets: &[usize],
        dim: usize,
    ) {
        ops::mean_rows(out, x, rows, offsets, dim)
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
    fn squared_error_sum(
        &self,
        dy: Option<&mut Vec<T>>,
        y: &Vec<T>,
        target: &Vec<T>,
        dscale: f64,
    ) -> Result<f64> {
        ops::squared_error_sum(dy.map(|d| d.as_mut_slice()), y, target, dscale)
    }
    fn adam_step(
        &self,
        cfg: &AdamConfig,
        t: u64,
        params: &mut Vec<T>,
        grads: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        decay_free: &[std::ops::Range<usize>],
    ) {
        ops::adam_step(cfg, t, params, grads, m, v, decay_free)
    }
    fn adam_step_in(
        &self,
        cfg: &AdamConfig,
        t: u64,
        range: std::ops::Range<usize>,
        params: &mut Vec<T>,
        grads: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        moments_at: usize,
        decay_free: &[std::ops::Range<usize>],
    ) {
        ops::adam_step_in(cfg, t, range, params, grads, m, v, moments_at, decay_free)
    }
    fn global_norm(&self, x: &Vec<T>) -> f64 {
        ops::global_norm(x)
    }
    fn clip_grad_norm(&self, grads: &mut Vec<T>, max_norm: f64) -> f64 {
        ops::clip_grad_norm(grads, max_norm)
    }
    fn all_finite(&self, x: &Vec<T>) -> bool {
        ops::all_finite(x)
    }
    fn scale(&self, x: &mut Vec<T>, factor: f64) {
        ops::scale(x, factor)
    }
    fn round(&self, prec: Precision, x: &mut Vec<T>) {
        crate::precision::round_slice(prec, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_mut_splits_in_any_order() {
        let mut buf: Vec<u32> = (0..10).collect();
        let a = ParamView { offset: 6, len: 3 };
        let b = ParamView { offset: 0, len: 2 };
        let c = ParamView { offset: 3, len: 1 };
        let [x, y, z] = views_mut(&mut buf, [a, b, c]);
        assert_eq!(
            (&x[..], &y[..], &z[..]),
            (&[6, 7, 8][..], &[0, 1][..], &[3][..])
        );
        x[0] = 60;
        z[0] = 30;
        assert_eq!(buf[6], 60);
        assert_eq!(buf[3], 30);
    }

    #[test]
    fn buffers_resize_and_read_in_place() {
        let dev = Cpu;
        let mut m: Vec<f32> = dev.upload(&[1.0, 2.0, 3.0]);
        dev.resize(&mut m, 5);
        assert_eq!(m, [1.0, 2.0, 3.0, 0.0, 0.0]);
        dev.resize(&mut m, 2);
        assert_eq!(dev.download(&m), [1.0, 2.0]);
        let v = Device::<f32>::read(&dev, &m, 1..2);
        assert!(matches!(v, Cow::Borrowed(_)), "the CPU lends its buffer");
        assert_eq!(&v[..], &[2.0]);
    }

    #[test]
    #[should_panic(expected = "overlapping")]
    fn views_mut_rejects_overlap() {
        let mut buf = vec![0u8; 8];
        let a = ParamView { offset: 0, len: 4 };
        let b = ParamView { offset: 3, len: 2 };
        let _ = views_mut(&mut buf, [a, b]);
    }
}
