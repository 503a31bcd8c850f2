//! Image ops on NCHW slices: 2-D convolution and its transpose (im2col + GEMM), max-pooling,
//! bilinear resizing and channel concatenation, with PyTorch's weight layouts and semantics.
//!
//! Convolutions run per image, over blocks of output pixels: the block's receptive fields are
//! unfolded into a per-task scratch `col[c·k·k, P]` (im2col) and multiplied by the weight as
//! one GEMM through [`gemm_rounded`], so bf16-mixed rounds both operands exactly as
//! [`crate::ops::matmul`] does. Images run in parallel when there are at least as many as
//! rayon threads (sequential GEMMs inside), otherwise one at a time with parallel GEMMs.
//! Weight gradients are summed per image and the partial sums added in image order, so results
//! do not depend on scheduling.

use std::any::Any;
use std::cell::RefCell;

use rayon::prelude::*;

use super::{gemm_rounded, in_order};
use crate::backend::conv::{Conv2dShape, ConvTranspose2dShape, Pool2dShape};
use crate::precision::{round_slice, rounded, Precision};
use crate::Float;

/// Target size of one im2col block (elements): large enough for an efficient GEMM, small
/// enough to stay in cache next to the weight.
const COL_BLOCK: usize = 1 << 18;

/// Where the pixels of a `[c, h, w]` image land in the `[c·k·k, ho·wo]` column matrix:
/// `col[(c·k + ky)·k + kx, oy·wo + ox] = img[c, oy·s + ky − pt, ox·s + kx − pl]` (0 outside).
/// Shared with the CUDA backend, which composes the same three primitives on the device.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) ho: usize,
    pub(crate) wo: usize,
    pub(crate) k: usize,
    pub(crate) s: usize,
    pub(crate) pt: usize,
    pub(crate) pl: usize,
}

impl Geom {
    pub(crate) fn rows(&self) -> usize {
        self.c * self.k * self.k
    }
    pub(crate) fn pixels(&self) -> usize {
        self.ho * self.wo
    }
    /// Output pixels per im2col block (at least one output row, so rows are never split
    /// unevenly into tiny GEMMs).
    fn block(&self) -> usize {
        let p = (COL_BLOCK / self.rows().max(1)).max(self.wo).max(1);
        p.min(self.pixels().max(1))
    }
    /// For output row `oy` and kernel row `ky`, the input row (None when in padding).
    #[inline(always)]
    fn iy(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.s + ky)
            .checked_sub(self.pt)
            .filter(|&i| i < self.h)
    }
    /// The range of ox whose input column `ox·s + kx − pl` lies inside [0, w).
    fn ox_valid(&self, kx: usize) -> (usize, usize) {
        // ox·s + kx ≥ pl  ⇔  ox ≥ ceil((pl − kx)/s)
        let lo = self.pl.saturating_sub(kx).div_ceil(self.s);
        // ox·s + kx − pl ≤ w − 1  ⇔  ox ≤ (w − 1 + pl − kx)/s
        let hi = match (self.w + self.pl).checked_sub(kx + 1) {
            Some(v) => (v / self.s + 1).min(self.wo),
            None => 0,
        };
        (lo.min(hi), hi)
    }
}

/// Unfolds output pixels `p0..p0+np` of `img` into `col[rows, np]` (row stride `np`).
fn im2col<T: Float>(g: &Geom, img: &[T], p0: usize, np: usize, col: &mut [T]) {
    let k = g.k;
    for c in 0..g.c {
        let plane = &img[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let r = (c * k + ky) * k + kx;
                let dst = &mut col[r * np..(r + 1) * np];
                let (lo, hi) = g.ox_valid(kx);
                let mut j = 0;
                while j < np {
                    let p = p0 + j;
                    let (oy, ox0) = (p / g.wo, p % g.wo);
                    let run = (g.wo - ox0).min(np - j);
                    let seg = &mut dst[j..j + run];
                    match g.iy(oy, ky) {
                        None => seg.fill(T::ZERO),
                        Some(iy) => {
                            let row = &plane[iy * g.w..(iy + 1) * g.w];
                            let end = ox0 + run;
                            let a = lo.clamp(ox0, end);
                            let b = hi.clamp(a, end);
                            seg[..a - ox0].fill(T::ZERO);
                            seg[b - ox0..].fill(T::ZERO);
                            if g.s == 1 {
                                let i0 = a + kx - g.pl;
                                seg[a - ox0..b - ox0].copy_from_slice(&row[i0..i0 + (b - a)]);
                            } else {
                                for ox in a..b {
                                    seg[ox - ox0] = row[ox * g.s + kx - g.pl];
                                }
                            }
                        }
                    }
                    j += run;
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: img[c, iy, ix] += every col entry that was read from it.
fn col2im_add<T: Float>(g: &Geom, col: &[T], p0: usize, np: usize, img: &mut [T]) {
    let k = g.k;
    for c in 0..g.c {
        let plane = &mut img[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            for kx in 0..k {
                let r = (c * k + ky) * k + kx;
                let src = &col[r * np..(r + 1) * np];
                let (lo, hi) = g.ox_valid(kx);
                let mut j = 0;
                while j < np {
                    let p = p0 + j;
                    let (oy, ox0) = (p / g.wo, p % g.wo);
                    let run = (g.wo - ox0).min(np - j);
                    if let Some(iy) = g.iy(oy, ky) {
                        let row = &mut plane[iy * g.w..(iy + 1) * g.w];
                        let (a, b) = (lo.max(ox0), hi.min(ox0 + run));
                        for ox in a..b {
                            row[ox * g.s + kx - g.pl] += src[j + ox - ox0];
                        }
                    }
                    j += run;
                }
            }
        }
    }
}

/// Stride-1 convolutions unfold only along the kernel's columns: `rowcol[(c·k + kx), r·wo +
/// ox] = img[c, oy0 + r − pt, ox + kx − pl]` for the padded rows r of an output row block
/// (0 outside the image), and the k kernel rows become k GEMMs over the same buffer, each
/// reading it from row offset ky (row stride (rows_out + k − 1)·wo). A third of the unfolding
/// work and memory of [`im2col`] for k = 3, which dominates on the UNet's larger layers.
fn use_rows(g: &Geom) -> bool {
    g.s == 1 && g.k > 1 && g.c * g.k >= ROWS_MIN_INNER && g.ho * g.wo >= ROWS_MIN_PIXELS
}

/// The shortest GEMM inner dimension (c·k) for which [`use_rows`] pays: below it (the UNet's
/// first layer, c = 1) the k thin GEMMs cost more than the full unfolding saves.
const ROWS_MIN_INNER: usize = 24;

/// The fewest output pixels for which [`use_rows`] pays: on the UNet's 8x8 middle block the
/// unfolding is small and k GEMMs of 64 columns, each reading and writing the output, cost more
/// than one GEMM over the full unfolding (fwd + bwd 7.5 → 5.1 ms at 256 → 256 channels, batch
/// 4, 2 threads; at 16x16 the row shift is still ahead, BENCHMARKS.md).
const ROWS_MIN_PIXELS: usize = 65;

impl Geom {
    /// Output rows per row block of the row-shift path: its buffer (c·k rows of
    /// (rows + k − 1)·wo) near [`COL_BLOCK`], at least one row.
    fn row_block(&self) -> usize {
        let per_row = (self.c * self.k * self.wo).max(1);
        (COL_BLOCK / per_row)
            .saturating_sub(self.k - 1)
            .clamp(1, self.ho.max(1))
    }
    /// Length of the row-shift buffer for `rows` output rows.
    fn rows_len(&self, rows: usize) -> usize {
        self.c * self.k * (rows + self.k - 1) * self.wo
    }
}

/// Fills `buf` with the row-shift unfolding of output rows `oy0..oy0 + rows` (see
/// [`use_rows`]); stride 1 only.
fn im2row<T: Float>(g: &Geom, img: &[T], oy0: usize, rows: usize, buf: &mut [T]) {
    let (k, wo) = (g.k, g.wo);
    let ld = (rows + k - 1) * wo;
    for c in 0..g.c {
        let plane = &img[c * g.h * g.w..(c + 1) * g.h * g.w];
        for kx in 0..k {
            let dst = &mut buf[(c * k + kx) * ld..(c * k + kx + 1) * ld];
            let (lo, hi) = g.ox_valid(kx);
            for (r, seg) in dst.chunks_exact_mut(wo).enumerate() {
                match (oy0 + r).checked_sub(g.pt).filter(|&iy| iy < g.h) {
                    None => seg.fill(T::ZERO),
                    Some(iy) => {
                        let row = &plane[iy * g.w..(iy + 1) * g.w];
                        seg[..lo].fill(T::ZERO);
                        seg[hi..].fill(T::ZERO);
                        let i0 = lo + kx - g.pl;
                        seg[lo..hi].copy_from_slice(&row[i0..i0 + (hi - lo)]);
                    }
                }
            }
        }
    }
}

/// wm `[m, c, k, k]` regrouped per kernel row: `[k][m, c·k]`, the A operands of the row-shift
/// GEMMs.
fn weight_by_row<T: Float>(wm: &[T], m: usize, g: &Geom) -> Vec<T> {
    let (c, k) = (g.c, g.k);
    let mut out = vec![T::ZERO; k * m * c * k];
    for o in 0..m {
        for ci in 0..c {
            for ky in 0..k {
                for kx in 0..k {
                    out[(ky * m + o) * c * k + ci * k + kx] = wm[((o * c + ci) * k + ky) * k + kx];
                }
            }
        }
    }
    out
}

thread_local! {
    /// Unfolding buffers kept by each thread between calls (one per element type in use), so a
    /// training step neither allocates nor zeroes them again.
    static SCRATCH: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// A thread's reusable buffer of at least the requested length, with unspecified contents
/// (every user writes before it reads); returned to that thread's pool when dropped.
struct Scratch<T: Float> {
    buf: Vec<T>,
}

impl<T: Float> Scratch<T> {
    fn take(len: usize) -> Scratch<T> {
        let mut buf = SCRATCH
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                let at = pool.iter().position(|b| b.is::<Vec<T>>())?;
                pool.swap_remove(at).downcast::<Vec<T>>().ok().map(|b| *b)
            })
            .ok()
            .flatten()
            .unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, T::ZERO);
        }
        Scratch { buf }
    }
}

impl<T: Float> Drop for Scratch<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // During thread teardown the pool may be gone; the buffer is then just freed.
        let _ = SCRATCH.try_with(|pool| pool.borrow_mut().push(Box::new(buf)));
    }
}

impl<T: Float> std::ops::Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf
    }
}

impl<T: Float> std::ops::DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf
    }
}

/// Runs `f(scratch, image index, that image's chunk of the output if any)` over the images and
/// returns the results in image order: in parallel when `parallel`, else one after another.
/// `scratch` (the im2col buffer) is made by `init` once per rayon job, not once per image.
fn per_image<'a, T: Float, S, R: Send>(
    parallel: bool,
    chunks: Vec<Option<&'a mut [T]>>,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, Option<&'a mut [T]>) -> R + Sync + Send,
) -> Vec<R> {
    if parallel {
        let it = chunks.into_par_iter().enumerate();
        in_order(it.map_init(&init, |s, (i, c)| f(s, i, c))).collect()
    } else {
        let mut s = init();
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| f(&mut s, i, c))
            .collect()
    }
}

fn image_chunks<T>(buf: Option<&mut [T]>, n: usize, len: usize) -> Vec<Option<&mut [T]>> {
    match buf {
        Some(b) => b[..n * len].chunks_mut(len.max(1)).map(Some).collect(),
        None => (0..n).map(|_| None).collect(),
    }
}

/// The precision to hand [`gemm_rounded`] for operands already rounded per `prec`: the bf16
/// kernel packs its operands on every call, which costs more than it saves when a dimension is
/// small (the first layer's c_in·k·k = 9); the f32 GEMM multiplies the same bf16 values.
fn gemm_prec(prec: Precision, m: usize, n: usize, k: usize) -> Precision {
    if m.min(n).min(k) < 32 {
        Precision::F32
    } else {
        prec
    }
}

/// Whether to run images in parallel (sequential GEMMs) rather than GEMMs in parallel.
fn images_in_parallel(n: usize) -> bool {
    let t = rayon::current_num_threads();
    t > 1 && n >= t
}

fn add_into<T: Float>(acc: &mut [T], parts: Vec<Vec<T>>) {
    for part in parts {
        for (a, p) in acc.iter_mut().zip(&part) {
            *a += *p;
        }
    }
}

/// out[n, m, p] = (b[m] +) Σ_r wm[m, r] · col(src[n])[r, p]: the shared forward of conv2d (src =
/// x) and the input gradient of conv_transpose2d (src = dy).
#[allow(clippy::too_many_arguments)]
fn unfold_gemm<T: Float>(
    prec: Precision,
    out: &mut [T],
    src: &[T],
    wm: &[T],
    bias: Option<&[T]>,
    m: usize,
    n: usize,
    g: Geom,
) {
    let (rows, px) = (g.rows(), g.pixels());
    let src_len = g.c * g.h * g.w;
    let wm = rounded(prec, &wm[..m * rows]);
    let par_img = images_in_parallel(n);
    let by_rows = use_rows(&g);
    let (blk, rblk) = (g.block(), g.row_block());
    let wk = if by_rows {
        weight_by_row(&wm, m, &g)
    } else {
        Vec::new()
    };
    let scratch = || {
        let len = if by_rows {
            g.rows_len(rblk)
        } else {
            rows * blk
        };
        Scratch::<T>::take(len)
    };
    per_image(
        par_img,
        image_chunks(Some(out), n, m * px),
        scratch,
        |col, i, o| {
            let o = o.expect("output chunk");
            let img = &src[i * src_len..(i + 1) * src_len];
            match bias {
                Some(b) => {
                    for (row, &bv) in o.chunks_exact_mut(px).zip(b) {
                        row.fill(bv);
                    }
                }
                None => o.fill(T::ZERO),
            }
            if by_rows {
                let ck = g.c * g.k;
                let mut oy0 = 0;
                while oy0 < g.ho {
                    let nr = rblk.min(g.ho - oy0);
                    let buf = &mut col[..g.rows_len(nr)];
                    im2row(&g, img, oy0, nr, buf);
                    round_slice(prec, buf);
                    let ld = (nr + g.k - 1) * g.wo;
                    for ky in 0..g.k {
                        gemm_rounded(
                            gemm_prec(prec, m, nr * g.wo, ck),
                            &mut o[oy0 * g.wo..],
                            px,
                            &wk[ky * m * ck..(ky + 1) * m * ck],
                            ck,
                            false,
                            &buf[ky * g.wo..],
                            ld,
                            false,
                            m,
                            nr * g.wo,
                            ck,
                            true,
                            !par_img,
                        );
                    }
                    oy0 += nr;
                }
                return;
            }
            let mut p0 = 0;
            while p0 < px {
                let np = blk.min(px - p0);
                let col = &mut col[..rows * np];
                im2col(&g, img, p0, np, col);
                round_slice(prec, col);
                gemm_rounded(
                    gemm_prec(prec, m, np, rows),
                    &mut o[p0..],
                    px,
                    &wm,
                    rows,
                    false,
                    col,
                    np,
                    false,
                    m,
                    np,
                    rows,
                    true,
                    !par_img,
                );
                p0 += np;
            }
        },
    );
}

/// dst[n] = col2im(wmᵀ · a[n]) with wm `[m, rows]` and a[n] `[m, pixels]`: the input gradient
/// of conv2d (a = dy) and the forward of conv_transpose2d (a = x). `dst` is overwritten.
#[allow(clippy::too_many_arguments)]
fn gemm_fold<T: Float>(
    prec: Precision,
    dst: &mut [T],
    a: &[T],
    wm: &[T],
    m: usize,
    n: usize,
    g: Geom,
    bias: Option<&[T]>,
) {
    let (rows, px) = (g.rows(), g.pixels());
    let dst_len = g.c * g.h * g.w;
    let wm = rounded(prec, &wm[..m * rows]);
    let par_img = images_in_parallel(n);
    let blk = g.block();
    let scratch = || Scratch::<T>::take(rows * blk);
    per_image(
        par_img,
        image_chunks(Some(dst), n, dst_len),
        scratch,
        |col, i, d| {
            let d = d.expect("destination chunk");
            match bias {
                Some(b) => {
                    for (plane, &bv) in d.chunks_exact_mut(g.h * g.w).zip(b) {
                        plane.fill(bv);
                    }
                }
                None => d.fill(T::ZERO),
            }
            let a_img = rounded(prec, &a[i * m * px..(i + 1) * m * px]);
            let mut p0 = 0;
            while p0 < px {
                let np = blk.min(px - p0);
                let col = &mut col[..rows * np];
                gemm_rounded(
                    gemm_prec(prec, rows, np, m),
                    col,
                    np,
                    &wm,
                    rows,
                    true,
                    &a_img[p0..],
                    px,
                    false,
                    rows,
                    np,
                    m,
                    false,
                    !par_img,
                );
                col2im_add(&g, col, p0, np, d);
                p0 += np;
            }
        },
    );
}

/// dwm[m, rows] += Σ_n a[n] · col(src[n])ᵀ, with a[n] `[m, pixels]`: the weight gradient of
/// conv2d (a = dy, src = x) and of conv_transpose2d (a = x, src = dy).
#[allow(clippy::too_many_arguments)]
fn weight_grad<T: Float>(
    prec: Precision,
    dwm: &mut [T],
    a: &[T],
    src: &[T],
    m: usize,
    n: usize,
    g: Geom,
) {
    let (rows, px) = (g.rows(), g.pixels());
    let src_len = g.c * g.h * g.w;
    let par_img = images_in_parallel(n);
    if use_rows(&g) {
        let rblk = g.row_block();
        let by_ky_len = g.k * m * g.c * g.k;
        if !par_img {
            // Fewer images than threads: one accumulator for all images, parallel GEMMs.
            // (With images to spare, one buffer per image and images in parallel is faster at
            // every size of the UNet, the small ones too: 32x32 64 → 64 channels fwd + bwd
            // 6.4 → 3.9 ms at batch 4 on 2 threads, BENCHMARKS.md.)
            let mut by_ky = vec![T::ZERO; by_ky_len];
            let mut col = Scratch::<T>::take(g.rows_len(rblk));
            let parallel = rayon::current_num_threads() > 1;
            for i in 0..n {
                let img = &src[i * src_len..(i + 1) * src_len];
                let a_img = rounded(prec, &a[i * m * px..(i + 1) * m * px]);
                rows_weight_grad(
                    prec, &mut by_ky, &a_img, img, &g, m, rblk, &mut col, parallel,
                );
            }
            add_by_row(dwm, &by_ky, m, &g);
        } else {
            let parts = per_image(
                true,
                image_chunks::<T>(None, n, 0),
                || Scratch::<T>::take(g.rows_len(rblk)),
                |col, i, _| {
                    let img = &src[i * src_len..(i + 1) * src_len];
                    let a_img = rounded(prec, &a[i * m * px..(i + 1) * m * px]);
                    let mut by_ky = vec![T::ZERO; by_ky_len];
                    rows_weight_grad(prec, &mut by_ky, &a_img, img, &g, m, rblk, col, false);
                    by_ky
                },
            );
            for by_ky in parts {
                add_by_row(dwm, &by_ky, m, &g);
            }
        }
        return;
    }
    let blk = g.block();
    let parts = per_image(
        par_img,
        image_chunks::<T>(None, n, 0),
        || Scratch::<T>::take(rows * blk),
        |col, i, _| {
            let img = &src[i * src_len..(i + 1) * src_len];
            let a_img = rounded(prec, &a[i * m * px..(i + 1) * m * px]);
            let mut part = vec![T::ZERO; m * rows];
            let mut p0 = 0;
            while p0 < px {
                let np = blk.min(px - p0);
                let col = &mut col[..rows * np];
                im2col(&g, img, p0, np, col);
                round_slice(prec, col);
                gemm_rounded(
                    gemm_prec(prec, m, rows, np),
                    &mut part,
                    rows,
                    &a_img[p0..],
                    px,
                    false,
                    col,
                    np,
                    true,
                    m,
                    rows,
                    np,
                    true,
                    !par_img,
                );
                p0 += np;
            }
            part
        },
    );
    add_into(&mut dwm[..m * rows], parts);
}

/// by_ky[ky][m, c·k] += a_img[m, pixels] · rowcol(img, ky)ᵀ over all row blocks of one image:
/// the row-shift path's weight gradient, per kernel row.
#[allow(clippy::too_many_arguments)]
fn rows_weight_grad<T: Float>(
    prec: Precision,
    by_ky: &mut [T],
    a_img: &[T],
    img: &[T],
    g: &Geom,
    m: usize,
    rblk: usize,
    col: &mut [T],
    parallel: bool,
) {
    let (ck, px) = (g.c * g.k, g.pixels());
    let mut oy0 = 0;
    while oy0 < g.ho {
        let nr = rblk.min(g.ho - oy0);
        let buf = &mut col[..g.rows_len(nr)];
        im2row(g, img, oy0, nr, buf);
        round_slice(prec, buf);
        let ld = (nr + g.k - 1) * g.wo;
        for ky in 0..g.k {
            gemm_rounded(
                gemm_prec(prec, m, ck, nr * g.wo),
                &mut by_ky[ky * m * ck..(ky + 1) * m * ck],
                ck,
                &a_img[oy0 * g.wo..],
                px,
                false,
                &buf[ky * g.wo..],
                ld,
                true,
                m,
                ck,
                nr * g.wo,
                true,
                parallel,
            );
        }
        oy0 += nr;
    }
}

/// dwm[m, c, k, k] += by_ky[k][m, c·k] (the row-shift layout back to PyTorch's).
fn add_by_row<T: Float>(dwm: &mut [T], by_ky: &[T], m: usize, g: &Geom) {
    let (c, k) = (g.c, g.k);
    for o in 0..m {
        for ci in 0..c {
            for ky in 0..k {
                let src = &by_ky[(ky * m + o) * c * k + ci * k..][..k];
                let dst = &mut dwm[((o * c + ci) * k + ky) * k..][..k];
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d += v;
                }
            }
        }
    }
}

/// db[o] += Σ_{n,p} dy[n, o, p].
fn bias_grad<T: Float>(db: &mut [T], dy: &[T], n: usize, c: usize, px: usize) {
    let parts: Vec<Vec<T>> = in_order(dy[..n * c * px].par_chunks(c * px).map(|img| {
        img.chunks_exact(px)
            .map(|plane| plane.iter().copied().sum::<T>())
            .collect::<Vec<T>>()
    }))
    .collect();
    add_into(&mut db[..c], parts);
}

/// Panics naming the op and buffer when a buffer is shorter than its shape says (a caller bug;
/// without this the failure would be an index deep inside im2col).
#[track_caller]
fn need(op: &str, what: &str, len: usize, want: usize) {
    assert!(
        len >= want,
        "{op}: {what} has {len} values, the shape needs {want}"
    );
}

pub(crate) fn conv_geom(s: &Conv2dShape) -> Geom {
    Geom {
        c: s.c_in,
        h: s.h,
        w: s.w,
        ho: s.h_out(),
        wo: s.w_out(),
        k: s.k,
        s: s.stride,
        pt: s.pad[0],
        pl: s.pad[2],
    }
}

/// The conv2d whose input gradient is this transposed convolution: it maps y `[c_out, h_out,
/// w_out]` to x's grid `[c_in, h, w]` with weight `[c_in, c_out·k·k]`, stride s and pad p.
pub(crate) fn transpose_geom(s: &ConvTranspose2dShape) -> Geom {
    Geom {
        c: s.c_out,
        h: s.h_out(),
        w: s.w_out(),
        ho: s.h,
        wo: s.w,
        k: s.k,
        s: s.stride,
        pt: s.pad,
        pl: s.pad,
    }
}

/// Conv2d forward (`nn.Conv2d`, weight `[c_out, c_in, k, k]`):
/// y[n,o,y,x] = b[o] + Σ_{i,ky,kx} W[o,i,ky,kx]·x[n,i,y·s+ky−pt, x·s+kx−pl]  (0 outside),
/// computed as y[n] = W[c_out, c_in·k·k] · im2col(x[n]).
pub fn conv2d_forward<T: Float>(
    prec: Precision,
    y: &mut [T],
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    s: Conv2dShape,
) {
    let op = "conv2d_forward";
    need(op, "x", x.len(), s.n * s.c_in * s.h * s.w);
    need(op, "y", y.len(), s.n * s.c_out * s.h_out() * s.w_out());
    need(op, "weight", w.len(), s.c_out * s.c_in * s.k * s.k);
    need(op, "bias", b.map_or(s.c_out, |b| b.len()), s.c_out);
    unfold_gemm(prec, y, x, w, b, s.c_out, s.n, conv_geom(&s));
}

/// Conv2d backward: dx[n] = col2im(Wᵀ · dy[n]) (written, when given; for stride 1 computed as
/// the equivalent correlation with the flipped weight);
/// dW += Σ_n dy[n] · im2col(x[n])ᵀ; db[o] += Σ_{n,y,x} dy[n,o,y,x].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Float>(
    prec: Precision,
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    dy: &[T],
    x: &[T],
    w: &[T],
    s: Conv2dShape,
) {
    let op = "conv2d_backward";
    let xl = s.n * s.c_in * s.h * s.w;
    need(op, "x", x.len(), xl);
    need(op, "dx", dx.as_ref().map_or(xl, |d| d.len()), xl);
    need(op, "dy", dy.len(), s.n * s.c_out * s.h_out() * s.w_out());
    need(op, "weight", w.len(), s.c_out * s.c_in * s.k * s.k);
    need(op, "dweight", dw.len(), s.c_out * s.c_in * s.k * s.k);
    need(
        op,
        "dbias",
        db.as_ref().map_or(s.c_out, |d| d.len()),
        s.c_out,
    );
    let g = conv_geom(&s);
    if let Some(dx) = dx {
        let (k, [pt, _, pl, _]) = (s.k, s.pad);
        let gt = Geom {
            c: s.c_out,
            h: g.ho,
            w: g.wo,
            ho: s.h,
            wo: s.w,
            k,
            s: 1,
            pt: k.saturating_sub(1 + pt),
            pl: k.saturating_sub(1 + pl),
        };
        if s.stride == 1 && pt < k && pl < k && (s.c_in >= 32 || (s.c_in >= 8 && use_rows(&gt))) {
            // Stride 1: dx is the correlation of dy with the flipped, transposed weight,
            // dx[n,i,y,x] = Σ_{o,ky,kx} W[o,i,k−1−ky,k−1−kx]·dy[n,o,y+ky−(k−1−pt), x+kx−(k−1−pl)],
            // one GEMM with a long inner dimension (c_out·k·k) instead of a short one (c_out)
            // followed by a scatter: ~20% faster on the UNet's 32/64-channel layers, and with
            // the row-shift unfolding ~25% faster from 16 input channels too (single thread,
            // 16 -> 16 at 128x128), but slower when c_in (that GEMM's row count) is tiny.
            let mut wt = vec![T::ZERO; w.len().min(s.c_out * s.c_in * k * k)];
            for o in 0..s.c_out {
                for i in 0..s.c_in {
                    for t in 0..k * k {
                        wt[(i * s.c_out + o) * k * k + (k * k - 1 - t)] =
                            w[(o * s.c_in + i) * k * k + t];
                    }
                }
            }
            unfold_gemm(prec, dx, dy, &wt, None, s.c_in, s.n, gt);
        } else {
            gemm_fold(prec, dx, dy, w, s.c_out, s.n, g, None);
        }
    }
    weight_grad(prec, dw, dy, x, s.c_out, s.n, g);
    if let Some(db) = db {
        bias_grad(db, dy, s.n, s.c_out, g.pixels());
    }
}

/// ConvTranspose2d forward (`nn.ConvTranspose2d`, weight `[c_in, c_out, k, k]`):
/// y[n,o,iy·s+ky−p, ix·s+kx−p] += W[i,o,ky,kx]·x[n,i,iy,ix] over all i, iy, ix, ky, kx that land
/// inside the output, plus b[o]; i.e. the input gradient of the conv2d with the same weight,
/// y[n] = col2im(W[c_in, c_out·k·k]ᵀ · x[n]).
pub fn conv_transpose2d_forward<T: Float>(
    prec: Precision,
    y: &mut [T],
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    s: ConvTranspose2dShape,
) {
    let op = "conv_transpose2d_forward";
    need(op, "x", x.len(), s.n * s.c_in * s.h * s.w);
    need(op, "y", y.len(), s.n * s.c_out * s.h_out() * s.w_out());
    need(op, "weight", w.len(), s.c_in * s.c_out * s.k * s.k);
    need(op, "bias", b.map_or(s.c_out, |b| b.len()), s.c_out);
    gemm_fold(prec, y, x, w, s.c_in, s.n, transpose_geom(&s), b);
}

/// ConvTranspose2d backward: dx[n] = W · im2col(dy[n]) (written, when given);
/// dW += Σ_n x[n] · im2col(dy[n])ᵀ; db[o] += Σ dy[n,o,·,·].
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_backward<T: Float>(
    prec: Precision,
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: Option<&mut [T]>,
    dy: &[T],
    x: &[T],
    w: &[T],
    s: ConvTranspose2dShape,
) {
    let op = "conv_transpose2d_backward";
    let xl = s.n * s.c_in * s.h * s.w;
    need(op, "x", x.len(), xl);
    need(op, "dx", dx.as_ref().map_or(xl, |d| d.len()), xl);
    need(op, "dy", dy.len(), s.n * s.c_out * s.h_out() * s.w_out());
    need(op, "weight", w.len(), s.c_in * s.c_out * s.k * s.k);
    need(op, "dweight", dw.len(), s.c_in * s.c_out * s.k * s.k);
    need(
        op,
        "dbias",
        db.as_ref().map_or(s.c_out, |d| d.len()),
        s.c_out,
    );
    let g = transpose_geom(&s);
    if let Some(dx) = dx {
        unfold_gemm(prec, dx, dy, w, None, s.c_in, s.n, g);
    }
    weight_grad(prec, dw, x, dy, s.c_in, s.n, g);
    if let Some(db) = db {
        bias_grad(db, dy, s.n, s.c_out, g.h * g.w);
    }
}

// ---------------------------------------------------------------------------------------------
// Max-pooling

/// For output (oy, ox) of one plane: the flat index of the first maximum of its window in
/// row-major scan order, None when a padded position wins (padding holds 0 with
/// `s.zero_pad`, else −∞ and never wins). NaN wins, as in PyTorch.
#[inline]
fn pool_argmax<T: Float>(plane: &[T], s: &Pool2dShape, oy: usize, ox: usize) -> Option<usize> {
    let mut best: Option<(T, Option<usize>)> = None;
    for ky in 0..s.k {
        let iy = (oy * s.stride + ky)
            .checked_sub(s.pad[0])
            .filter(|&v| v < s.h);
        for kx in 0..s.k {
            let ix = (ox * s.stride + kx)
                .checked_sub(s.pad[2])
                .filter(|&v| v < s.w);
            let (v, at) = match (iy, ix) {
                (Some(iy), Some(ix)) => (plane[iy * s.w + ix], Some(iy * s.w + ix)),
                _ if s.zero_pad => (T::ZERO, None),
                _ => continue,
            };
            #[allow(clippy::eq_op)]
            let is_nan = v != v;
            match best {
                Some((b, _)) if !(v > b || is_nan) => {}
                _ => best = Some((v, at)),
            }
        }
    }
    best.and_then(|(_, at)| at)
}

/// The UNet's pooling: 2x2 windows, stride 2, no padding, even sizes (sleap-nn pads frames to
/// the max stride), where every window lies inside the plane.
fn is_plain_2x2(s: &Pool2dShape) -> bool {
    s.k == 2
        && s.stride == 2
        && s.pad == [0; 4]
        && s.h >= 2
        && s.w >= 2
        && s.h.is_multiple_of(2)
        && s.w.is_multiple_of(2)
}

/// (max, which of the four) of the 2x2 window at columns x0, x0 + 1 of rows r0, r1, scanned in
/// [`pool_argmax`]'s order with its rule (a later value wins when greater or NaN).
#[inline(always)]
fn window_max<T: Float>(r0: &[T], r1: &[T], x0: usize) -> (T, usize) {
    let mut best = (r0[x0], 0);
    for (i, v) in [(1, r0[x0 + 1]), (2, r1[x0]), (3, r1[x0 + 1])] {
        #[allow(clippy::eq_op)]
        let is_nan = v != v;
        if v > best.0 || is_nan {
            best = (v, i);
        }
    }
    best
}

/// Max-pool forward: y[n,c,oy,ox] = max over the window at (oy·s − pt, ox·s − pl) of x, where
/// padded positions hold 0 (`zero_pad`, sleap-nn's `MaxPool2dWithSamePadding`, which pads with
/// `F.pad` zeros before an unpadded max-pool) or are skipped (PyTorch's own padding).
pub fn maxpool2d_forward<T: Float>(y: &mut [T], x: &[T], s: Pool2dShape) {
    let (ho, wo) = (s.h_out(), s.w_out());
    let planes = s.n * s.c;
    if is_plain_2x2(&s) {
        y[..planes * ho * wo]
            .par_chunks_mut((ho * wo).max(1))
            .zip(x[..planes * s.h * s.w].par_chunks((s.h * s.w).max(1)))
            .for_each(|(yp, xp)| {
                for (oy, yr) in yp.chunks_exact_mut(wo).enumerate() {
                    let r0 = &xp[2 * oy * s.w..(2 * oy + 1) * s.w];
                    let r1 = &xp[(2 * oy + 1) * s.w..(2 * oy + 2) * s.w];
                    for (ox, o) in yr.iter_mut().enumerate() {
                        *o = window_max(r0, r1, 2 * ox).0;
                    }
                }
            });
        return;
    }
    y[..planes * ho * wo]
        .par_chunks_mut((ho * wo).max(1))
        .zip(x[..planes * s.h * s.w].par_chunks((s.h * s.w).max(1)))
        .for_each(|(yp, xp)| {
            for oy in 0..ho {
                for ox in 0..wo {
                    yp[oy * wo + ox] = match pool_argmax(xp, &s, oy, ox) {
                        Some(i) => xp[i],
                        None if s.zero_pad => T::ZERO,
                        None => T::NEG_INFINITY,
                    };
                }
            }
        });
}

/// Max-pool backward: dx (written) = 0, then dx[argmax of each window] += dy; a window won by
/// a padded zero passes no gradient.
pub fn maxpool2d_backward<T: Float>(dx: &mut [T], dy: &[T], x: &[T], s: Pool2dShape) {
    let (ho, wo) = (s.h_out(), s.w_out());
    let planes = s.n * s.c;
    let hw = (s.h * s.w).max(1);
    if is_plain_2x2(&s) {
        // Every input position is in exactly one window: each window's four values are
        // written (dy at the winner, 0 elsewhere), so no zeroing pass.
        dx[..planes * s.h * s.w]
            .par_chunks_mut(hw)
            .zip(x[..planes * s.h * s.w].par_chunks(hw))
            .zip(dy[..planes * ho * wo].par_chunks((ho * wo).max(1)))
            .for_each(|((dxp, xp), dyp)| {
                for (oy, g) in dyp.chunks_exact(wo).enumerate() {
                    let r0 = &xp[2 * oy * s.w..(2 * oy + 1) * s.w];
                    let r1 = &xp[(2 * oy + 1) * s.w..(2 * oy + 2) * s.w];
                    let (d0, d1) = dxp[2 * oy * s.w..(2 * oy + 2) * s.w].split_at_mut(s.w);
                    for (ox, &g) in g.iter().enumerate() {
                        let win = window_max(r0, r1, 2 * ox).1;
                        let at = |i: usize| if i == win { g } else { T::ZERO };
                        d0[2 * ox] = at(0);
                        d0[2 * ox + 1] = at(1);
                        d1[2 * ox] = at(2);
                        d1[2 * ox + 1] = at(3);
                    }
                }
            });
        return;
    }
    dx[..planes * s.h * s.w]
        .par_chunks_mut(hw)
        .zip(x[..planes * s.h * s.w].par_chunks(hw))
        .zip(dy[..planes * ho * wo].par_chunks((ho * wo).max(1)))
        .for_each(|((dxp, xp), dyp)| {
            dxp.fill(T::ZERO);
            for oy in 0..ho {
                for ox in 0..wo {
                    if let Some(i) = pool_argmax(xp, &s, oy, ox) {
                        dxp[i] += dyp[oy * wo + ox];
                    }
                }
            }
        });
}

// ---------------------------------------------------------------------------------------------
// Bilinear resize

/// PyTorch's linear source index for `align_corners=False`: src = (dst + 0.5)·(in/out) − 0.5,
/// clamped at 0; returns (i0, i1, λ0, λ1) with i1 = min(i0 + 1, in − 1) and λ1 = src − i0.
fn linear_taps<T: Float>(n_in: usize, n_out: usize) -> Vec<(usize, usize, T, T)> {
    let scale = T::from_f64(n_in as f64) / T::from_f64(n_out as f64);
    let half = T::from_f64(0.5);
    (0..n_out)
        .map(|d| {
            let mut src = (T::from_f64(d as f64) + half) * scale - half;
            if src < T::ZERO {
                src = T::ZERO;
            }
            let i0 = (src.to_f64() as usize).min(n_in - 1);
            let i1 = if i0 + 1 < n_in { i0 + 1 } else { i0 };
            let l1 = src - T::from_f64(i0 as f64);
            (i0, i1, T::ONE - l1, l1)
        })
        .collect()
}

/// Bilinear resize forward (`align_corners=False`), per plane of `nc`:
/// y[oy, ox] = λ0y·(λ0x·x[y0,x0] + λ1x·x[y0,x1]) + λ1y·(λ0x·x[y1,x0] + λ1x·x[y1,x1]), taps from
/// [`linear_taps`]. Same as `nn.Upsample(scale_factor=2, mode="bilinear")` when out = 2·in.
pub fn upsample_bilinear2d_forward<T: Float>(
    y: &mut [T],
    x: &[T],
    nc: usize,
    h: usize,
    w: usize,
    h_out: usize,
    w_out: usize,
) {
    if h > 0 && w > 0 && h_out == 2 * h && w_out == 2 * w {
        return upsample2x_forward(y, x, nc, h, w);
    }
    let (ty, tx) = (linear_taps::<T>(h, h_out), linear_taps::<T>(w, w_out));
    y[..nc * h_out * w_out]
        .par_chunks_mut((h_out * w_out).max(1))
        .zip(x[..nc * h * w].par_chunks((h * w).max(1)))
        .for_each(|(yp, xp)| {
            for (oy, &(y0, y1, a0, a1)) in ty.iter().enumerate() {
                let (r0, r1) = (&xp[y0 * w..(y0 + 1) * w], &xp[y1 * w..(y1 + 1) * w]);
                let out = &mut yp[oy * w_out..(oy + 1) * w_out];
                for (o, &(x0, x1, b0, b1)) in out.iter_mut().zip(&tx) {
                    *o = a0 * (b0 * r0[x0] + b1 * r0[x1]) + a1 * (b0 * r1[x0] + b1 * r1[x1]);
                }
            }
        });
}

/// Bilinear resize backward: dx (written) = 0, then each dy[oy, ox] is added to its four taps
/// with the forward's weights.
pub fn upsample_bilinear2d_backward<T: Float>(
    dx: &mut [T],
    dy: &[T],
    nc: usize,
    h: usize,
    w: usize,
    h_out: usize,
    w_out: usize,
) {
    if h > 0 && w > 0 && h_out == 2 * h && w_out == 2 * w {
        return upsample2x_backward(dx, dy, nc, h, w);
    }
    let (ty, tx) = (linear_taps::<T>(h, h_out), linear_taps::<T>(w, w_out));
    dx[..nc * h * w]
        .par_chunks_mut((h * w).max(1))
        .zip(dy[..nc * h_out * w_out].par_chunks((h_out * w_out).max(1)))
        .for_each(|(dxp, dyp)| {
            dxp.fill(T::ZERO);
            for (oy, &(y0, y1, a0, a1)) in ty.iter().enumerate() {
                let g = &dyp[oy * w_out..(oy + 1) * w_out];
                for (&d, &(x0, x1, b0, b1)) in g.iter().zip(&tx) {
                    dxp[y0 * w + x0] += a0 * b0 * d;
                    dxp[y0 * w + x1] += a0 * b1 * d;
                    dxp[y1 * w + x0] += a1 * b0 * d;
                    dxp[y1 * w + x1] += a1 * b1 * d;
                }
            }
        });
}

/// Exactly 2x (the UNet's decoder): [`linear_taps`] are then fixed. Output 2i reads inputs
/// i − 1 and i with weights ¼, ¾, output 2i + 1 reads i and i + 1 with ¾, ¼, an index past an
/// edge clamped to it (where [`linear_taps`] gives weight 1 to the edge: ¼ + ¾ of one value).
/// One row of the plane along x, `out` twice as long as `row`.
#[inline(always)]
fn upsample2x_row<T: Float>(out: &mut [T], row: &[T]) {
    let (q, t) = (T::from_f64(0.25), T::from_f64(0.75));
    let last = row.len() - 1;
    for (i, pair) in out.chunks_exact_mut(2).enumerate() {
        let (l, c, r) = (row[i.saturating_sub(1)], row[i], row[(i + 1).min(last)]);
        pair[0] = q * l + t * c;
        pair[1] = t * c + q * r;
    }
}

/// The adjoint of [`upsample2x_row`]: input i collects ¼·g[2i − 1] + ¾·g[2i] + ¾·g[2i + 1] +
/// ¼·g[2i + 2], an index past an edge clamped to it.
#[inline(always)]
fn upsample2x_row_adjoint<T: Float>(out: &mut [T], g: &[T]) {
    let (q, t) = (T::from_f64(0.25), T::from_f64(0.75));
    let last = g.len() - 1;
    for (i, o) in out.iter_mut().enumerate() {
        let (a, d) = (g[(2 * i).saturating_sub(1)], g[(2 * i + 2).min(last)]);
        *o = q * a + t * g[2 * i] + t * g[2 * i + 1] + q * d;
    }
}

/// [`upsample_bilinear2d_forward`] at exactly 2x: rows along x first, then pairs of them
/// along y with the same weights.
fn upsample2x_forward<T: Float>(y: &mut [T], x: &[T], nc: usize, h: usize, w: usize) {
    let (ho, wo) = (2 * h, 2 * w);
    y[..nc * ho * wo]
        .par_chunks_mut((ho * wo).max(1))
        .zip(x[..nc * h * w].par_chunks((h * w).max(1)))
        .for_each_init(Vec::new, |rows, (yp, xp)| {
            // One buffer per rayon job, reused across its planes.
            rows.resize(h * wo, T::ZERO);
            for (r, xr) in rows.chunks_exact_mut(wo).zip(xp.chunks_exact(w)) {
                upsample2x_row(r, xr);
            }
            let (q, t) = (T::from_f64(0.25), T::from_f64(0.75));
            for (i, pair) in yp.chunks_exact_mut(2 * wo).enumerate() {
                let row = |j: usize| &rows[j * wo..(j + 1) * wo];
                let (l, c, r) = (row(i.saturating_sub(1)), row(i), row((i + 1).min(h - 1)));
                let (even, odd) = pair.split_at_mut(wo);
                for k in 0..wo {
                    even[k] = q * l[k] + t * c[k];
                    odd[k] = t * c[k] + q * r[k];
                }
            }
        });
}

/// [`upsample_bilinear2d_backward`] at exactly 2x: the adjoint of [`upsample2x_forward`],
/// written as a gather (each dx from its four rows and columns), so no zeroing or scatter.
fn upsample2x_backward<T: Float>(dx: &mut [T], dy: &[T], nc: usize, h: usize, w: usize) {
    let (ho, wo) = (2 * h, 2 * w);
    dx[..nc * h * w]
        .par_chunks_mut((h * w).max(1))
        .zip(dy[..nc * ho * wo].par_chunks((ho * wo).max(1)))
        .for_each_init(Vec::new, |cols, (dxp, dyp)| {
            cols.resize(ho * w, T::ZERO);
            for (c, g) in cols.chunks_exact_mut(w).zip(dyp.chunks_exact(wo)) {
                upsample2x_row_adjoint(c, g);
            }
            let (q, t) = (T::from_f64(0.25), T::from_f64(0.75));
            let row = |j: usize| &cols[j * w..(j + 1) * w];
            for (i, o) in dxp.chunks_exact_mut(w).enumerate() {
                let (a, b, c, d) = (
                    row((2 * i).saturating_sub(1)),
                    row(2 * i),
                    row(2 * i + 1),
                    row((2 * i + 2).min(ho - 1)),
                );
                for k in 0..w {
                    o[k] = q * a[k] + t * b[k] + t * c[k] + q * d[k];
                }
            }
        });
}

// ---------------------------------------------------------------------------------------------
// Channel concatenation

/// out[n] = [a[n] (ca·hw values); b[n] (cb·hw values)]  (`torch.cat((a, b), dim=1)`).
#[allow(clippy::too_many_arguments)]
pub fn concat_channels<T: Float>(
    out: &mut [T],
    a: &[T],
    ca: usize,
    b: &[T],
    cb: usize,
    n: usize,
    hw: usize,
) {
    let (la, lb) = (ca * hw, cb * hw);
    out[..n * (la + lb)]
        .par_chunks_mut((la + lb).max(1))
        .enumerate()
        .for_each(|(i, o)| {
            o[..la].copy_from_slice(&a[i * la..(i + 1) * la]);
            o[la..].copy_from_slice(&b[i * lb..(i + 1) * lb]);
        });
}

/// The backward of [`concat_channels`]: da[n] (=|+=) dout[n][..ca·hw], db[n] (=|+=) the rest.
#[allow(clippy::too_many_arguments)]
pub fn split_channels<T: Float>(
    da: &mut [T],
    accumulate_a: bool,
    db: &mut [T],
    accumulate_b: bool,
    dout: &[T],
    ca: usize,
    cb: usize,
    n: usize,
    hw: usize,
) {
    let (la, lb) = (ca * hw, cb * hw);
    let put = |dst: &mut [T], src: &[T], acc: bool| {
        if acc {
            for (d, s) in dst.iter_mut().zip(src) {
                *d += *s;
            }
        } else {
            dst.copy_from_slice(src);
        }
    };
    let src = &dout[..n * (la + lb)];
    if la > 0 {
        da[..n * la]
            .par_chunks_mut(la)
            .enumerate()
            .for_each(|(i, d)| put(d, &src[i * (la + lb)..i * (la + lb) + la], accumulate_a));
    }
    if lb > 0 {
        db[..n * lb]
            .par_chunks_mut(lb)
            .enumerate()
            .for_each(|(i, d)| {
                put(
                    d,
                    &src[i * (la + lb) + la..(i + 1) * (la + lb)],
                    accumulate_b,
                )
            });
    }
}
