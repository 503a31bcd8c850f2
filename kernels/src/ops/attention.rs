//! Multi-head scaled dot-product attention with a key padding mask and optional causal mask.
//!
//! Flash-attention style on CPU: one rayon task per (batch, head); inside, query rows are
//! processed in blocks so only a [block, keys] score tile exists at a time. Forward saves just
//! the row log-sum-exp; backward recomputes the probabilities from it. Keys after the last
//! unpadded position of a sequence are skipped entirely (they are masked anyway).
//!
//! Two row layouts ([`SeqLayout`]): *padded*, sequence b in rows b·T..(b+1)·T with a key padding
//! mask, and *packed* (variable length, as flash-attention's `cu_seqlens`), sequence b in rows
//! starts[b]..starts[b+1] with no padding at all, so no work is spent on it.
//!
//! Math per head, with S = Q·Kᵀ/√d, masked entries −∞:
//!   P = softmax(S) (rowwise), P' = P∘keep/(1−p) (attention dropout), O = P'·V (computed as
//!   (e^{S−max}∘keep/(1−p))·V scaled by 1/Σ per row, so bf16 rounds the unnormalized P as
//!   flash-attention kernels do),
//!   lse_i = log Σⱼ exp(S_ij)
//! Backward, with Dᵢ = Σ_d dO_id·O_id (= Σⱼ dP'_ij·P'_ij):
//!   dV = P'ᵀ·dO,  dP' = dO·Vᵀ,  dS = P∘(dP'∘keep/(1−p) − D)/√d,  dQ = dS·K,  dK = dSᵀ·Q

use rayon::prelude::*;

use super::{gemm_rhs, gemm_rounds_operands, round_gemm_operand, Rhs};
use crate::precision::Precision;
use crate::rng::{keep_threshold, RngKey};
use crate::Float;

/// Query rows per score tile.
const QB: usize = 64;

#[cfg(test)]
thread_local! {
    /// Tests turn the per-head packing of K and V off to compare against the plain products.
    static PACK_ONCE: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether a head's K and V are packed once for all its blocks (see [`Rhs`]): when there is
/// more than one block and every block sees all keys (not causal).
fn pack_once(o: &AttnOpts, queries: usize) -> bool {
    #[cfg(test)]
    if !PACK_ONCE.with(|c| c.get()) {
        return false;
    }
    !o.causal && queries > QB
}

/// The padded shape: `seq` rows per sequence. In the packed layout (`AttnOpts::packed`), `seq`
/// is the longest sequence (it spaces the dropout streams) and `batch` the number of sequences.
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
    /// Packed layout: B + 1 row offsets, sequence b is rows `packed[b]..packed[b + 1]` (each at
    /// most `AttnShape::seq` long); `key_pad` must then be None.
    pub packed: Option<&'a [usize]>,
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
            packed: None,
            causal: false,
            dropout: 0.0,
            key: RngKey::new(0, 0, 0),
            prec: Precision::F32,
        }
    }
}

/// How the rows of a [rows, E] activation group into sequences: what an encoder layer needs
/// besides the rows themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeqLayout {
    /// `batch` sequences of `seq` rows; `key_pad` [batch, seq] (true = padding) marks keys to
    /// ignore. Padding rows are computed and carry no gradient.
    Padded {
        batch: usize,
        seq: usize,
        key_pad: Option<Vec<bool>>,
    },
    /// Sequence b is rows `starts[b]..starts[b + 1]`: no padding rows at all.
    Packed { starts: Vec<usize>, max_len: usize },
}

impl SeqLayout {
    /// Packed sequences of the given lengths.
    pub fn packed(lens: impl IntoIterator<Item = usize>) -> Self {
        let mut starts = vec![0];
        for l in lens {
            starts.push(starts[starts.len() - 1] + l);
        }
        Self::from_starts(starts)
    }

    /// Packed sequences at row offsets `starts` (sequence b is rows starts[b]..starts[b + 1]).
    pub fn from_starts(starts: Vec<usize>) -> Self {
        let max_len = starts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        SeqLayout::Packed { starts, max_len }
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        match self {
            SeqLayout::Padded { batch, .. } => *batch,
            SeqLayout::Packed { starts, .. } => starts.len() - 1,
        }
    }

    /// Rows of the activations.
    pub fn rows(&self) -> usize {
        match self {
            SeqLayout::Padded { batch, seq, .. } => batch * seq,
            SeqLayout::Packed { starts, .. } => starts[starts.len() - 1],
        }
    }

    /// The attention's shape for `heads` heads of `head_dim`.
    pub fn attn_shape(&self, heads: usize, head_dim: usize) -> AttnShape {
        let (batch, seq) = match self {
            SeqLayout::Padded { batch, seq, .. } => (*batch, *seq),
            SeqLayout::Packed { starts, max_len } => (starts.len() - 1, *max_len),
        };
        AttnShape {
            batch,
            seq,
            heads,
            head_dim,
        }
    }

    /// The padding mask (padded layout) and row offsets (packed layout) for [`AttnOpts`].
    pub fn masks(&self) -> (Option<&[bool]>, Option<&[usize]>) {
        match self {
            SeqLayout::Padded { key_pad, .. } => (key_pad.as_deref(), None),
            SeqLayout::Packed { starts, .. } => (None, Some(starts)),
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

/// Where sequence b's rows lie: the first row, its query rows, its key rows (1 + the last
/// unpadded key when padded), the start of its [heads, queries] block of the lse, and its
/// padded-layout index b·H·T, which numbers the dropout streams in both layouts (so a packed
/// batch run through a padded kernel draws the same masks).
#[derive(Clone, Copy)]
struct SeqRows {
    row0: usize,
    queries: usize,
    keys: usize,
    lse0: usize,
    drop0: usize,
    seq: usize,
}

impl SeqRows {
    fn of(s: &AttnShape, o: &AttnOpts, b: usize) -> Self {
        let t = s.seq;
        match o.packed {
            Some(st) => {
                let len = st[b + 1] - st[b];
                SeqRows {
                    row0: st[b],
                    queries: len,
                    keys: len,
                    lse0: st[b] * s.heads,
                    drop0: b * s.heads * t,
                    seq: t,
                }
            }
            None => SeqRows {
                row0: b * t,
                queries: t,
                keys: key_len(o, b, t),
                lse0: b * s.heads * t,
                drop0: b * s.heads * t,
                seq: t,
            },
        }
    }

    /// Index in the lse of query i of head h.
    fn lse_index(&self, h: usize, i: usize) -> usize {
        self.lse0 + h * self.queries + i
    }

    /// Start of the dropout stream of query i of head h (key j draws number start + j).
    fn drop_base(&self, h: usize, i: usize) -> u64 {
        ((self.drop0 + h * self.seq + i) * self.seq) as u64
    }
}

/// Rows of the [rows, 3E] / [rows, E] tensors the layout covers (after checking it).
pub fn layout_rows(s: &AttnShape, o: &AttnOpts) -> usize {
    match o.packed {
        None => s.batch * s.seq,
        Some(st) => {
            assert!(o.key_pad.is_none(), "a packed layout has no padding mask");
            assert_eq!(
                st.len(),
                s.batch + 1,
                "packed offsets for {} sequences",
                s.batch
            );
            assert!(
                st[0] == 0 && st.windows(2).all(|w| w[0] <= w[1] && w[1] - w[0] <= s.seq),
                "packed offsets must start at 0, not decrease, and hold sequences of at most {} rows",
                s.seq
            );
            st[s.batch]
        }
    }
}

/// Number of leading keys that can be unmasked for sequence `b` (padded layout).
fn key_len(o: &AttnOpts, b: usize, t: usize) -> usize {
    match o.key_pad {
        None => t,
        Some(m) => m[b * t..(b + 1) * t]
            .iter()
            .rposition(|&pad| !pad)
            .map_or(0, |i| i + 1),
    }
}

/// Copies head `h`'s part `part` (0=q, 1=k, 2=v) of `rows` rows from `row0` into a contiguous
/// [rows, dh].
fn gather<T: Float>(
    qkv: &[T],
    s: &AttnShape,
    row0: usize,
    h: usize,
    part: usize,
    rows: usize,
) -> Vec<T> {
    let (e3, dh) = (3 * s.embed(), s.head_dim);
    let base = row0 * e3 + part * s.embed() + h * dh;
    let mut out = vec![T::ZERO; rows * dh];
    for (i, r) in out.chunks_exact_mut(dh).enumerate() {
        r.copy_from_slice(&qkv[base + i * e3..base + i * e3 + dh]);
    }
    out
}

/// Head `h`'s columns of `rows` rows of an [rows, E] tensor from `row0`.
fn gather_rows<T: Float>(x: &[T], s: &AttnShape, row0: usize, h: usize, rows: usize) -> Vec<T> {
    let (e, dh) = (s.embed(), s.head_dim);
    let mut out = vec![T::ZERO; rows * dh];
    for (i, r) in out.chunks_exact_mut(dh).enumerate() {
        let off = (row0 + i) * e + h * dh;
        r.copy_from_slice(&x[off..off + dh]);
    }
    out
}

/// Head h's q (every query of `sr`), k and v (its unmasked keys), contiguous and rounded to
/// the precision (where the GEMMs, their only readers, do not round them): what forward and
/// backward both start from.
fn head_qkv<T: Float>(
    qkv: &[T],
    s: &AttnShape,
    o: &AttnOpts,
    sr: &SeqRows,
    h: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut q = gather(qkv, s, sr.row0, h, 0, sr.queries);
    let mut k = gather(qkv, s, sr.row0, h, 1, sr.keys);
    let mut v = gather(qkv, s, sr.row0, h, 2, sr.keys);
    round_gemm_operand(o.prec, &mut q);
    round_gemm_operand(o.prec, &mut k);
    round_gemm_operand(o.prec, &mut v);
    (q, k, v)
}

/// Raw scores of `qb` query rows against the first `kend` keys: out [qb, kend] = Q·Kᵀ (`kt` is
/// Kᵀ of all the head's keys).
fn score_block<T: Float>(
    prec: Precision,
    out: &mut [T],
    q: &[T],
    kt: &Rhs<T>,
    qb: usize,
    kend: usize,
    dh: usize,
) {
    gemm_rhs(prec, out, kend, q, dh, false, kt, qb, kend, dh, false);
}

/// The padding flags of sequence b, if any key inside it is padding.
fn pad_row<'a>(o: &AttnOpts<'a>, b: usize, t: usize) -> Option<&'a [bool]> {
    if o.packed.is_some() {
        return None;
    }
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

/// Forward. `qkv` is [rows, 3E] (the in-projection output: q | k | v, head h in columns
/// h·d..(h+1)·d of each part; rows = B·T padded or the packed total); writes `out` [rows, E]
/// and `lse` (per sequence a [H, queries] block: [B, H, T] when padded). A query whose keys
/// are all masked gets a zero output (PyTorch gives NaN there).
pub fn attention_forward<T: Float>(
    out: &mut [T],
    lse: &mut [T],
    qkv: &[T],
    s: AttnShape,
    o: &AttnOpts,
) {
    let (t, dh, e) = (s.seq, s.head_dim, s.embed());
    let n = layout_rows(&s, o);
    assert!(qkv.len() >= n * 3 * e && out.len() >= n * e);
    assert!(lse.len() >= s.heads * n);
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
    let lsep = SyncPtr(lse.as_mut_ptr());
    (0..s.batch * s.heads).into_par_iter().for_each(|task| {
        let (b, h) = (task / s.heads, task % s.heads);
        let sr = SeqRows::of(&s, o, b);
        let (nq, l) = (sr.queries, sr.keys);
        let padr = pad_row(o, b, t);
        let (q, k, v) = head_qkv(qkv, &s, o, &sr, h);
        // K and V as the B operands of every block's products, packed once per head (causal
        // blocks each see their own number of keys, so they are not reused there).
        let reused = pack_once(o, nq);
        let kt = Rhs::new(o.prec, &k, dh, true, l, dh, reused);
        let vr = Rhs::new(o.prec, &v, dh, false, dh, l, reused);
        let mut lse = vec![T::ZERO; nq];
        let mut ob = vec![T::ZERO; nq * dh];
        let mut sb = vec![T::ZERO; QB * l];
        let mut inv = vec![T::ZERO; QB];
        for r0 in (0..nq).step_by(QB) {
            let r1 = (r0 + QB).min(nq);
            let qb = r1 - r0;
            let kend = if o.causal { l.min(r1) } else { l };
            if kend == 0 {
                lse[r0..r1].fill(T::NEG_INFINITY);
                continue;
            }
            let sc = &mut sb[..qb * kend];
            score_block(o.prec, sc, &q[r0 * dh..], &kt, qb, kend, dh);
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
                    let base = sr.drop_base(h, i);
                    T::dropout_apply(row, stream, base, thr, drop_scale);
                }
            }
            round_gemm_operand(o.prec, sc);
            gemm_rhs(
                o.prec,
                &mut ob[r0 * dh..],
                dh,
                sc,
                kend,
                false,
                &vr,
                qb,
                dh,
                kend,
                false,
            );
            for (orow, &iv) in ob[r0 * dh..r1 * dh].chunks_exact_mut(dh).zip(&inv) {
                for x in orow.iter_mut() {
                    *x *= iv;
                }
            }
        }
        // SAFETY: the lse block of (b, h) and columns h·dh..(h+1)·dh of sequence b's rows
        // belong to this task only.
        unsafe { lsep.write(sr.lse_index(h, 0), &lse) };
        for (i, r) in ob.chunks_exact(dh).enumerate() {
            unsafe { outp.write((sr.row0 + i) * e + h * dh, r) };
        }
    });
}

/// Backward. Overwrites `dqkv` [rows, 3E] from `dout` [rows, E], using the forward's `out`,
/// `lse` and `qkv`, and the same options (and layout).
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
    let n = layout_rows(&s, o);
    assert!(dqkv.len() >= n * e3 && dout.len() >= n * e && lse.len() >= s.heads * n);
    let scale = T::from_f64(1.0 / (dh as f64).sqrt());
    let drop_scale = T::from_f64(if o.dropout < 1.0 {
        1.0 / (1.0 - o.dropout)
    } else {
        0.0
    });
    let (thr, stream) = (keep_threshold(o.dropout), o.key.stream_state());
    // P' is P itself unless dropped or rounded here (the bf16 GEMM rounds it as it packs it).
    let separate_p =
        o.dropout > 0.0 || (o.prec != Precision::F32 && !gemm_rounds_operands::<T>(o.prec));
    // Whether a kept P' entry stays non-zero after rounding (fp16 flushes small probabilities
    // to zero, so it draws the mask again instead).
    let mask_from_pd = o.prec != Precision::F16Mixed;
    let dp = SyncPtr(dqkv.as_mut_ptr());
    (0..s.batch * s.heads).into_par_iter().for_each(|task| {
        let (b, h) = (task / s.heads, task % s.heads);
        let sr = SeqRows::of(&s, o, b);
        let (nq, l) = (sr.queries, sr.keys);
        let lse = &lse[sr.lse_index(h, 0)..sr.lse_index(h, nq)];
        let padr = pad_row(o, b, t);
        let (q, k, v) = head_qkv(qkv, &s, o, &sr, h);
        // Kᵀ (scores), Vᵀ (dP') and K (dQ) as the B operands of every block, packed once.
        let reused = pack_once(o, nq);
        let kt = Rhs::new(o.prec, &k, dh, true, l, dh, reused);
        let vt = Rhs::new(o.prec, &v, dh, true, l, dh, reused);
        let kr = Rhs::new(o.prec, &k, dh, false, dh, l, reused);
        let mut dob = gather_rows(dout, &s, sr.row0, h, nq);
        let ob = gather_rows(out, &s, sr.row0, h, nq);
        let d: Vec<T> = dob
            .chunks_exact(dh)
            .zip(ob.chunks_exact(dh))
            .map(|(x, y)| x.iter().zip(y).map(|(&a, &b)| a * b).sum())
            .collect();
        round_gemm_operand(o.prec, &mut dob);
        let mut dq = vec![T::ZERO; nq * dh];
        let mut dk = vec![T::ZERO; l * dh];
        let mut dv = vec![T::ZERO; l * dh];
        let mut pb = vec![T::ZERO; QB * l];
        let mut pdb = if separate_p {
            vec![T::ZERO; QB * l]
        } else {
            Vec::new()
        };
        let mut dsb = vec![T::ZERO; QB * l];
        for r0 in (0..nq).step_by(QB) {
            let r1 = (r0 + QB).min(nq);
            let qb = r1 - r0;
            let kend = if o.causal { l.min(r1) } else { l };
            if kend == 0 {
                continue;
            }
            let p = &mut pb[..qb * kend];
            score_block(o.prec, p, &q[r0 * dh..], &kt, qb, kend, dh);
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
                        let base = sr.drop_base(h, r0 + ii);
                        T::dropout_apply(row, stream, base, thr, drop_scale);
                    }
                }
                round_gemm_operand(o.prec, pd);
                pd
            } else {
                p
            };
            let dob_blk = &dob[r0 * dh..];
            super::gemm_rounded(
                o.prec, &mut dv, dh, pd, kend, true, dob_blk, dh, false, kend, dh, qb, true, false,
            );
            let ds = &mut dsb[..qb * kend];
            gemm_rhs(
                o.prec, ds, kend, dob_blk, dh, false, &vt, qb, kend, dh, false,
            );
            let p = &pb[..qb * kend];
            for (ii, (dsr, pr)) in ds
                .chunks_exact_mut(kend)
                .zip(p.chunks_exact(kend))
                .enumerate()
            {
                let i = r0 + ii;
                if o.dropout > 0.0 && mask_from_pd {
                    // The keep mask read off P' instead of drawn again: P' is zero exactly where
                    // a key was dropped or P is zero, and where P is zero the product is zero
                    // either way (same values as the draw, one hash per score fewer).
                    let pdr = &pdb[ii * kend..(ii + 1) * kend];
                    T::softmax_grad_row(dsr, pr, Some(pdr), d[i], drop_scale, scale);
                    continue;
                }
                if o.dropout > 0.0 {
                    let base = sr.drop_base(h, i);
                    T::dropout_apply(dsr, stream, base, thr, drop_scale);
                }
                T::softmax_grad_row(dsr, pr, None, d[i], T::ONE, scale);
            }
            round_gemm_operand(o.prec, ds);
            gemm_rhs(
                o.prec,
                &mut dq[r0 * dh..],
                dh,
                ds,
                kend,
                false,
                &kr,
                qb,
                dh,
                kend,
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
        for i in 0..nq {
            let base = (sr.row0 + i) * e3 + h * dh;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// bf16-mixed forward and backward run twice, with `switch` set false then true on the
    /// (one) thread that runs them, on shapes of several query blocks, with dropout, padding
    /// and the packed layout: both runs must give the same bits.
    fn same_bits_either_way(what: &str, switch: impl Fn(bool) + Sync) {
        if crate::bf16gemm::path().is_none() {
            eprintln!("SKIPPED: {what}: no avx512_bf16 or amx_bf16 here");
            return;
        }
        let lcg = |seed: u64, len: usize| -> Vec<f32> {
            let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..len)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
                })
                .collect()
        };
        let (b, t, heads, dh) = (2, 150, 2, 32);
        let s = AttnShape {
            batch: b,
            seq: t,
            heads,
            head_dim: dh,
        };
        let e = heads * dh;
        let qkv = lcg(1, b * t * 3 * e);
        let dout = lcg(2, b * t * e);
        let mut pad = vec![false; b * t];
        pad[t + 140..].fill(true);
        let starts = [0, 150, 280];
        for (key_pad, packed, dropout) in [
            (None, None, 0.0),
            (Some(&pad[..]), None, 0.1),
            (None, Some(&starts[..]), 0.1),
        ] {
            let o = AttnOpts {
                key_pad,
                packed,
                dropout,
                key: RngKey::new(3, 1, 4),
                prec: Precision::Bf16Mixed,
                ..Default::default()
            };
            let run = |on: bool| {
                let n = layout_rows(&s, &o);
                let mut out = vec![0f32; n * e];
                let mut lse = vec![0f32; heads * n];
                let mut dqkv = vec![0f32; n * 3 * e];
                // A pool of one thread, the flag set on it: every task runs there and reads it.
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap();
                pool.install(|| {
                    switch(on);
                    attention_forward(&mut out, &mut lse, &qkv, s, &o);
                    attention_backward(&mut dqkv, &dout[..n * e], &out, &lse, &qkv, s, &o);
                });
                (out, lse, dqkv)
            };
            let (off, on) = (run(false), run(true));
            assert!(off.2.iter().any(|&x| x != 0.0));
            assert_eq!(
                off,
                on,
                "{what}: pad {:?} packed {:?}",
                key_pad.is_some(),
                packed
            );
        }
    }

    /// bf16-mixed attention with K and V packed once per head gives the bits of the plain
    /// products, forward and backward.
    #[test]
    fn packing_k_and_v_once_changes_no_bit() {
        same_bits_either_way("K/V packing for the bf16 GEMM", |on| {
            PACK_ONCE.with(|c| c.set(on))
        });
    }

    /// Leaving the rounding of GEMM operands (Q, K, V, P, dO, dS) to the bf16 GEMM's packing
    /// gives the bits of rounding them first, forward and backward.
    #[test]
    fn leaving_operand_rounding_to_the_bf16_gemm_changes_no_bit() {
        same_bits_either_way("operand rounding in the bf16 GEMM", |on| {
            super::super::ROUND_GEMM_OPERANDS.with(|c| c.set(on))
        });
    }
}
