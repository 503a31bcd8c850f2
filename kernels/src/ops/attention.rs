//! Multi-head scaled dot-product attention with a key padding mask and optional causal mask.
//!
//! Flash-attention style on CPU: one rayon task per (batch, head); inside, query rows are
//! processed in blocks so only a [block, keys] score tile exists at a time. Forward saves just
//! the row log-sum-exp; backward recomputes the probabilities from it. Keys after the last
//! unpadded position of a sequence are skipped entirely (they are masked anyway).
//!
//! Math per head, with S = Q·Kᵀ/√d, masked entries −∞:
//!   P = softmax(S) (rowwise), P' = P∘keep/(1−p) (attention dropout), O = P'·V (computed as
//!   (e^{S−max}∘keep/(1−p))·V scaled by 1/Σ per row, so bf16 rounds the unnormalized P as
//!   flash-attention kernels do),
//!   lse_i = log Σⱼ exp(S_ij)
//! Backward, with Dᵢ = Σ_d dO_id·O_id (= Σⱼ dP'_ij·P'_ij):
//!   dV = P'ᵀ·dO,  dP' = dO·Vᵀ,  dS = P∘(dP'∘keep/(1−p) − D)/√d,  dQ = dS·K,  dK = dSᵀ·Q

use rayon::prelude::*;

use crate::precision::{round_slice, Precision};
use crate::rng::{keep_threshold, RngKey};
use crate::Float;

/// Query rows per score tile.
const QB: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    pub fn embed(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Options shared by forward and backward (backward must get the same ones).
#[derive(Clone, Copy, Debug)]
pub struct AttnOpts<'a> {
    /// [B, T], true = padding (PyTorch's `key_padding_mask` convention): that key is ignored.
    pub key_pad: Option<&'a [bool]>,
    pub causal: bool,
    /// Dropout probability on the attention weights (0 = none).
    pub dropout: f64,
    pub key: RngKey,
    pub prec: Precision,
}

impl Default for AttnOpts<'_> {
    fn default() -> Self {
        Self {
            key_pad: None,
            causal: false,
            dropout: 0.0,
            key: RngKey::new(0, 0, 0),
            prec: Precision::F32,
        }
    }
}

/// Raw pointer for writes to provably disjoint strided regions from different rayon tasks.
#[derive(Clone, Copy)]
struct SyncPtr<T>(*mut T);
// SAFETY: each task writes only the (batch, head) columns it owns; no two tasks alias.
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// # Safety
    /// `off..off+src.len()` must be in bounds and written by no other thread concurrently.
    unsafe fn write(self, off: usize, src: &[T])
    where
        T: Copy,
    {
        std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.add(off), src.len());
    }
}

/// Number of leading keys that can be unmasked for sequence `b`.
fn key_len(o: &AttnOpts, b: usize, t: usize) -> usize {
    match o.key_pad {
        None => t,
        Some(m) => m[b * t..(b + 1) * t]
            .iter()
            .rposition(|&pad| !pad)
            .map_or(0, |i| i + 1),
    }
}

/// Copies head `h`'s part `part` (0=q, 1=k, 2=v) of rows 0..rows into a contiguous [rows, dh].
fn gather<T: Float>(
    qkv: &[T],
    s: &AttnShape,
    b: usize,
    h: usize,
    part: usize,
    rows: usize,
) -> Vec<T> {
    let (e3, dh) = (3 * s.embed(), s.head_dim);
    let base = b * s.seq * e3 + part * s.embed() + h * dh;
    let mut out = vec![T::ZERO; rows * dh];
    for (i, r) in out.chunks_exact_mut(dh).enumerate() {
        r.copy_from_slice(&qkv[base + i * e3..base + i * e3 + dh]);
    }
    out
}

fn gather_rows<T: Float>(x: &[T], s: &AttnShape, b: usize, h: usize) -> Vec<T> {
    let (e, dh) = (s.embed(), s.head_dim);
    let mut out = vec![T::ZERO; s.seq * dh];
    for (i, r) in out.chunks_exact_mut(dh).enumerate() {
        let off = (b * s.seq + i) * e + h * dh;
        r.copy_from_slice(&x[off..off + dh]);
    }
    out
}

/// The padding flags of sequence b, if any key inside it is padding.
fn pad_row<'a>(o: &AttnOpts<'a>, b: usize, t: usize) -> Option<&'a [bool]> {
    o.key_pad
        .map(|m| &m[b * t..(b + 1) * t])
        .filter(|r| r.iter().any(|&p| p))
}

/// Masks query i's raw scores: keys that are padding, or j > i when causal, become −∞.
#[inline]
fn mask_row<T: Float>(row: &mut [T], i: usize, pad: Option<&[bool]>, causal: bool) {
    if causal && i + 1 < row.len() {
        row[i + 1..].fill(T::NEG_INFINITY);
    }
    if let Some(pad) = pad {
        for (x, &p) in row.iter_mut().zip(pad) {
            if p {
                *x = T::NEG_INFINITY;
            }
        }
    }
}

/// Forward. `qkv` is [B, T, 3E] (the in-projection output: q | k | v, head h in columns
/// h·d..(h+1)·d of each part); writes `out` [B, T, E] and `lse` [B, H, T]. A query whose keys
/// are all masked gets a zero output (PyTorch gives NaN there).
pub fn attention_forward<T: Float>(
    out: &mut [T],
    lse: &mut [T],
    qkv: &[T],
    s: AttnShape,
    o: &AttnOpts,
) {
    let (t, dh, e) = (s.seq, s.head_dim, s.embed());
    assert!(qkv.len() >= s.batch * t * 3 * e && out.len() >= s.batch * t * e);
    assert!(lse.len() >= s.batch * s.heads * t);
    if let Some(m) = o.key_pad {
        assert!(m.len() >= s.batch * t);
    }
    let scale = T::from_f64(1.0 / (dh as f64).sqrt());
    let drop_scale = T::from_f64(if o.dropout < 1.0 {
        1.0 / (1.0 - o.dropout)
    } else {
        0.0
    });
    let (thr, stream) = (keep_threshold(o.dropout), o.key.stream_state());
    let outp = SyncPtr(out.as_mut_ptr());
    lse[..s.batch * s.heads * t]
        .par_chunks_mut(t)
        .enumerate()
        .for_each(|(task, lse)| {
            let (b, h) = (task / s.heads, task % s.heads);
            let l = key_len(o, b, t);
            let padr = pad_row(o, b, t);
            let mut q = gather(qkv, &s, b, h, 0, t);
            let mut k = gather(qkv, &s, b, h, 1, l);
            let mut v = gather(qkv, &s, b, h, 2, l);
            round_slice(o.prec, &mut q);
            round_slice(o.prec, &mut k);
            round_slice(o.prec, &mut v);
            let mut ob = vec![T::ZERO; t * dh];
            let mut sb = vec![T::ZERO; QB * l];
            let mut inv = vec![T::ZERO; QB];
            for r0 in (0..t).step_by(QB) {
                let r1 = (r0 + QB).min(t);
                let qb = r1 - r0;
                let kend = if o.causal { l.min(r1) } else { l };
                if kend == 0 {
                    lse[r0..r1].fill(T::NEG_INFINITY);
                    continue;
                }
                let sc = &mut sb[..qb * kend];
                super::gemm_rounded(
                    o.prec,
                    sc,
                    kend,
                    &q[r0 * dh..],
                    dh,
                    false,
                    &k,
                    dh,
                    true,
                    qb,
                    kend,
                    dh,
                    false,
                    false,
                );
                for (ii, row) in sc.chunks_exact_mut(kend).enumerate() {
                    let i = r0 + ii;
                    mask_row(row, i, padr, o.causal);
                    let m = T::slice_max(row);
                    if m == T::NEG_INFINITY {
                        row.fill(T::ZERO);
                        lse[i] = T::NEG_INFINITY;
                        inv[ii] = T::ZERO;
                        continue;
                    }
                    // Unnormalized e^{s−max}; the 1/Σ is applied to O's rows after P·V.
                    let ms = m * scale;
                    let sum = T::exp_scaled_sum(row, scale, ms);
                    lse[i] = ms + sum.ln();
                    inv[ii] = T::ONE / sum;
                    if o.dropout > 0.0 {
                        let base = ((task * t + i) * t) as u64;
                        T::dropout_apply(row, stream, base, thr, drop_scale);
                    }
                }
                round_slice(o.prec, sc);
                super::gemm_rounded(
                    o.prec,
                    &mut ob[r0 * dh..],
                    dh,
                    sc,
                    kend,
                    false,
                    &v,
                    dh,
                    false,
                    qb,
                    dh,
                    kend,
                    false,
                    false,
                );
                for (orow, &iv) in ob[r0 * dh..r1 * dh].chunks_exact_mut(dh).zip(&inv) {
                    for x in orow.iter_mut() {
                        *x *= iv;
                    }
                }
            }
            for (i, r) in ob.chunks_exact(dh).enumerate() {
                // SAFETY: row i, columns h·dh..(h+1)·dh of sequence b belong to this task only.
                unsafe { outp.write((b * t + i) * e + h * dh, r) };
            }
        });
}

/// Backward. Overwrites `dqkv` [B, T, 3E] from `dout` [B, T, E], using the forward's `out`,
/// `lse` and `qkv`, and the same options.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Float>(
    dqkv: &mut [T],
    dout: &[T],
    out: &[T],
    lse: &[T],
    qkv: &[T],
    s: AttnShape,
    o: &AttnOpts,
) {
    let (t, dh, e) = (s.seq, s.head_dim, s.embed());
    let e3 = 3 * e;
    assert!(dqkv.len() >= s.batch * t * e3 && dout.len() >= s.batch * t * e);
    let scale = T::from_f64(1.0 / (dh as f64).sqrt());
    let drop_scale = T::from_f64(if o.dropout < 1.0 {
        1.0 / (1.0 - o.dropout)
    } else {
        0.0
    });
    let (thr, stream) = (keep_threshold(o.dropout), o.key.stream_state());
    let separate_p = o.dropout > 0.0 || o.prec != Precision::F32;
    let dp = SyncPtr(dqkv.as_mut_ptr());
    (0..s.batch * s.heads).into_par_iter().for_each(|task| {
        let (b, h) = (task / s.heads, task % s.heads);
        let lse = &lse[task * t..(task + 1) * t];
        let l = key_len(o, b, t);
        let padr = pad_row(o, b, t);
        let mut q = gather(qkv, &s, b, h, 0, t);
        let mut k = gather(qkv, &s, b, h, 1, l);
        let mut v = gather(qkv, &s, b, h, 2, l);
        round_slice(o.prec, &mut q);
        round_slice(o.prec, &mut k);
        round_slice(o.prec, &mut v);
        let mut dob = gather_rows(dout, &s, b, h);
        let ob = gather_rows(out, &s, b, h);
        let d: Vec<T> = dob
            .chunks_exact(dh)
            .zip(ob.chunks_exact(dh))
            .map(|(x, y)| x.iter().zip(y).map(|(&a, &b)| a * b).sum())
            .collect();
        round_slice(o.prec, &mut dob);
        let mut dq = vec![T::ZERO; t * dh];
        let mut dk = vec![T::ZERO; l * dh];
        let mut dv = vec![T::ZERO; l * dh];
        let mut pb = vec![T::ZERO; QB * l];
        let mut pdb = if separate_p {
            vec![T::ZERO; QB * l]
        } else {
            Vec::new()
        };
        let mut dsb = vec![T::ZERO; QB * l];
        for r0 in (0..t).step_by(QB) {
            let r1 = (r0 + QB).min(t);
            let qb = r1 - r0;
            let kend = if o.causal { l.min(r1) } else { l };
            if kend == 0 {
                continue;
            }
            let p = &mut pb[..qb * kend];
            super::gemm_rounded(
                o.prec,
                p,
                kend,
                &q[r0 * dh..],
                dh,
                false,
                &k,
                dh,
                true,
                qb,
                kend,
                dh,
                false,
                false,
            );
            for (ii, row) in p.chunks_exact_mut(kend).enumerate() {
                let i = r0 + ii;
                let li = lse[i];
                if li == T::NEG_INFINITY {
                    row.fill(T::ZERO);
                    continue;
                }
                mask_row(row, i, padr, o.causal);
                T::exp_scaled_sum(row, scale, li);
            }
            // P' (dropped, rounded) feeds the dV product; P itself feeds dS.
            let pd: &[T] = if separate_p {
                let pd = &mut pdb[..qb * kend];
                pd.copy_from_slice(p);
                if o.dropout > 0.0 {
                    for (ii, row) in pd.chunks_exact_mut(kend).enumerate() {
                        let base = ((task * t + r0 + ii) * t) as u64;
                        T::dropout_apply(row, stream, base, thr, drop_scale);
                    }
                }
                round_slice(o.prec, pd);
                pd
            } else {
                p
            };
            let dob_blk = &dob[r0 * dh..];
            super::gemm_rounded(
                o.prec, &mut dv, dh, pd, kend, true, dob_blk, dh, false, kend, dh, qb, true, false,
            );
            let ds = &mut dsb[..qb * kend];
            super::gemm_rounded(
                o.prec, ds, kend, dob_blk, dh, false, &v, dh, true, qb, kend, dh, false, false,
            );
            let p = &pb[..qb * kend];
            for (ii, (dsr, pr)) in ds
                .chunks_exact_mut(kend)
                .zip(p.chunks_exact(kend))
                .enumerate()
            {
                let i = r0 + ii;
                if o.dropout > 0.0 {
                    let base = ((task * t + i) * t) as u64;
                    T::dropout_apply(dsr, stream, base, thr, drop_scale);
                }
                for (x, &pv) in dsr.iter_mut().zip(pr) {
                    *x = pv * (*x - d[i]) * scale;
                }
            }
            round_slice(o.prec, ds);
            super::gemm_rounded(
                o.prec,
                &mut dq[r0 * dh..],
                dh,
                ds,
                kend,
                false,
                &k,
                dh,
                false,
                qb,
                dh,
                kend,
                false,
                false,
            );
            super::gemm_rounded(
                o.prec,
                &mut dk,
                dh,
                ds,
                kend,
                true,
                &q[r0 * dh..],
                dh,
                false,
                kend,
                dh,
                qb,
                true,
                false,
            );
        }
        let zero = vec![T::ZERO; dh];
        for i in 0..t {
            let base = (b * t + i) * e3 + h * dh;
            let (kr, vr) = if i < l {
                (&dk[i * dh..(i + 1) * dh], &dv[i * dh..(i + 1) * dh])
            } else {
                (&zero[..], &zero[..])
            };
            // SAFETY: columns h·dh..(h+1)·dh of the q, k and v parts of row (b, i) belong to
            // this task only.
            unsafe {
                dp.write(base, &dq[i * dh..(i + 1) * dh]);
                dp.write(base + e, kr);
                dp.write(base + 2 * e, vr);
            }
        }
    });
}
