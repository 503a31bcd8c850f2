//! CPU ops, each a forward/backward pair on row-major slices. Ops that produce parameter
//! gradients *accumulate* into them (`+=`), so gradient accumulation across micro-batches and
//! parameters shared by several uses work without extra passes; activation gradients are
//! overwritten unless the name says `accumulate`.

pub mod attention;
pub mod conv;
pub mod optim;

use rayon::prelude::*;

use crate::precision::{rounded, Precision};
use crate::rng::{keep_threshold, RngKey};
use crate::{Float, KernelError, Result};

pub use attention::{attention_backward, attention_forward, AttnShape, SeqLayout};
pub use optim::{
    adam_step, adam_step_in, all_finite, clip_grad_norm, global_norm, scale, AdamConfig,
};

/// Below this many elements an elementwise op runs on the calling thread.
const PAR_MIN: usize = 1 << 15;
const PAR_CHUNK: usize = 1 << 14;

/// The results of a parallel map, in index order. Partial sums are then combined sequentially,
/// so a reduction's result does not depend on how rayon scheduled the pieces (its own
/// `reduce`/`sum` combine in a scheduling-dependent order): same inputs, same bits.
pub(crate) fn in_order<I: IndexedParallelIterator>(it: I) -> std::vec::IntoIter<I::Item> {
    it.collect::<Vec<_>>().into_iter()
}

fn check(op: &'static str, ok: bool, detail: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(KernelError::Shape {
            op,
            detail: detail(),
        })
    }
}

/// Applies `f(chunk_of_out, start_index)` over `out`, in parallel for large buffers.
fn for_chunks<T: Float>(out: &mut [T], f: impl Fn(&mut [T], usize) + Sync + Send) {
    if out.len() < PAR_MIN {
        f(out, 0);
    } else {
        out.par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .for_each(|(c, ch)| f(ch, c * PAR_CHUNK));
    }
}

// ---------------------------------------------------------------------------------------------
// Matrix products

/// `c[m,n] (+)= op(a) · op(b)`, row-major, with matrix-product operands rounded per `prec`
/// (bf16/fp16) and accumulation in T. `parallel` lets faer split the product over rayon.
///
/// bf16-mixed in f32 runs the bf16 GEMM ([`crate::bf16gemm`], AMX or AVX512_BF16) where the
/// CPU has one; elsewhere, and for fp16 and f64, the operands are rounded to the precision's
/// values stored in T and multiplied by faer (emulation: same values, T arithmetic).
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Float>(
    prec: Precision,
    c: &mut [T],
    a: &[T],
    ta: bool,
    b: &[T],
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    if let Some(path) = bf16_path::<T>(prec) {
        let (c, a, b) = (f32s_mut(c), f32s(a), f32s(b));
        let lda = if ta { m } else { k };
        let ldb = if tb { k } else { n };
        let parallel = m * n * k >= 1 << 18 && rayon::current_num_threads() > 1;
        crate::bf16gemm::gemm(
            path,
            &mut c[..m * n],
            n,
            a,
            lda,
            ta,
            b,
            ldb,
            tb,
            m,
            n,
            k,
            accumulate,
            parallel,
        );
        return;
    }
    let a = rounded(prec, a);
    let b = rounded(prec, b);
    let lda = if ta { m } else { k };
    let ldb = if tb { k } else { n };
    let c = &mut c[..m * n];
    let threads = rayon::current_num_threads();
    if m * n * k < 1 << 18 || threads == 1 {
        T::gemm(c, n, &a, lda, ta, &b, ldb, tb, m, n, k, accumulate, false);
    } else if !ta && m >= 64 * threads {
        // Rows of C are independent: one sequential GEMM per row block, no barriers inside.
        let rows = m.div_ceil(threads);
        c.par_chunks_mut(rows * n).enumerate().for_each(|(ci, cc)| {
            let (r0, mr) = (ci * rows, cc.len() / n);
            T::gemm(
                cc,
                n,
                &a[r0 * lda..],
                lda,
                false,
                &b,
                ldb,
                tb,
                mr,
                n,
                k,
                accumulate,
                false,
            );
        });
    } else if ta && k >= 256 * threads {
        // Weight gradients (long reduction over tokens): split k, sum the partial products.
        let kp = k.div_ceil(threads);
        let partials: Vec<Vec<T>> = (0..threads)
            .into_par_iter()
            .filter(|p| p * kp < k)
            .map(|p| {
                let (k0, kk) = (p * kp, kp.min(k - p * kp));
                let bo = if tb { k0 } else { k0 * ldb };
                let mut buf = vec![T::ZERO; m * n];
                T::gemm(
                    &mut buf,
                    n,
                    &a[k0 * lda..],
                    lda,
                    true,
                    &b[bo..],
                    ldb,
                    tb,
                    m,
                    n,
                    kk,
                    false,
                    false,
                );
                buf
            })
            .collect();
        for (pi, part) in partials.iter().enumerate() {
            let add = accumulate || pi > 0;
            for (x, &y) in c.iter_mut().zip(part) {
                *x = if add { *x + y } else { y };
            }
        }
    } else {
        T::gemm(c, n, &a, lda, ta, &b, ldb, tb, m, n, k, accumulate, true);
    }
}

/// The bf16 GEMM path that products in `prec` on elements `T` take: Some only for bf16-mixed
/// f32 on a CPU with AVX512_BF16 or AMX (else the f32 GEMM on rounded operands).
fn bf16_path<T: Float>(prec: Precision) -> Option<crate::bf16gemm::Bf16Path> {
    (prec == Precision::Bf16Mixed && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(crate::bf16gemm::path)
        .flatten()
}

#[cfg(test)]
thread_local! {
    /// Tests round GEMM operands before the bf16 GEMM too, to show that skipping it changes no bit.
    pub(crate) static ROUND_GEMM_OPERANDS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the GEMM that [`gemm_rounded`] / [`gemm_rhs`] runs for `prec` rounds its operands
/// itself: the bf16 GEMM converts them to bf16 as it packs them (round to nearest even, as
/// `round_slice`), so rounding them first is a pass over the operand for nothing.
pub(crate) fn gemm_rounds_operands<T: Float>(prec: Precision) -> bool {
    #[cfg(test)]
    if ROUND_GEMM_OPERANDS.with(|c| c.get()) {
        return false;
    }
    bf16_path::<T>(prec).is_some()
}

/// Rounds `xs` per `prec` when it is only an operand of [`gemm_rounded`] / [`gemm_rhs`] and
/// that GEMM does not round it itself (fp32 fallback, fp16).
pub(crate) fn round_gemm_operand<T: Float>(prec: Precision, xs: &mut [T]) {
    if !gemm_rounds_operands::<T>(prec) {
        crate::precision::round_slice(prec, xs);
    }
}

/// `x` as the f32 slice it is (T is f32; panics otherwise).
fn f32s<T: Float>(x: &[T]) -> &[f32] {
    assert!(std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>());
    // SAFETY: T is f32 (checked just above).
    unsafe { &*(x as *const [T] as *const [f32]) }
}

/// `x` as the mutable f32 slice it is (T is f32; panics otherwise).
fn f32s_mut<T: Float>(x: &mut [T]) -> &mut [f32] {
    assert!(std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>());
    // SAFETY: T is f32 (checked just above).
    unsafe { &mut *(x as *mut [T] as *mut [f32]) }
}

/// `T::gemm` on operands that are already rounded per `prec` (attention's products): for
/// bf16-mixed in f32 the bf16 GEMM where the CPU has one (the same bf16 values, f32
/// accumulation in another order), otherwise `T::gemm`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rounded<T: Float>(
    prec: Precision,
    c: &mut [T],
    ldc: usize,
    a: &[T],
    lda: usize,
    ta: bool,
    b: &[T],
    ldb: usize,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    parallel: bool,
) {
    if let Some(path) = bf16_path::<T>(prec) {
        let (c, a, b) = (f32s_mut(c), f32s(a), f32s(b));
        crate::bf16gemm::gemm(
            path, c, ldc, a, lda, ta, b, ldb, tb, m, n, k, accumulate, parallel,
        );
        return;
    }
    T::gemm(
        c, ldc, a, lda, ta, b, ldb, tb, m, n, k, accumulate, parallel,
    );
}

/// The B operand of several products in one task (attention's K and V, one product per block
/// of queries): packed once for the bf16 GEMM where [`gemm_rounded`] would take it (bf16-mixed
/// f32 on a CPU with a bf16 path), else the plain matrix. Products with it ([`gemm_rhs`]) give
/// the same bits as [`gemm_rounded`] with the plain matrix.
pub(crate) struct Rhs<'a, T> {
    b: &'a [T],
    ldb: usize,
    tb: bool,
    packed: Option<(crate::bf16gemm::Bf16Path, crate::bf16gemm::PackedB)>,
}

impl<'a, T: Float> Rhs<'a, T> {
    /// op(b) `[k, n]` (`b` stored `[n, k]` when `tb`), row stride `ldb`; packed only when
    /// `reused` (packing for one product would cost what the product itself packs).
    pub(crate) fn new(
        prec: Precision,
        b: &'a [T],
        ldb: usize,
        tb: bool,
        n: usize,
        k: usize,
        reused: bool,
    ) -> Self {
        let packed = bf16_path::<T>(prec).filter(|_| reused).map(|path| {
            (
                path,
                crate::bf16gemm::PackedB::new(f32s(b), ldb, tb, n, k, false),
            )
        });
        Rhs { b, ldb, tb, packed }
    }
}

/// `c[m,n] (+)= op(a)[m,k] · rhs[..k, ..n]` as [`gemm_rounded`] computes it (sequentially):
/// from the packed operand when `n` and `k` are those it was made with, else (a causal block's
/// prefix of the keys) from the plain matrix.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rhs<T: Float>(
    prec: Precision,
    c: &mut [T],
    ldc: usize,
    a: &[T],
    lda: usize,
    ta: bool,
    rhs: &Rhs<T>,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    match &rhs.packed {
        Some((path, pb)) if pb.n() == n && pb.k() == k => {
            // `packed` is only built when T is f32.
            crate::bf16gemm::gemm_packed(
                *path,
                f32s_mut(c),
                ldc,
                f32s(a),
                lda,
                ta,
                pb,
                m,
                accumulate,
                false,
            );
        }
        _ => gemm_rounded(
            prec, c, ldc, a, lda, ta, rhs.b, rhs.ldb, rhs.tb, m, n, k, accumulate, false,
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Linear and bias

/// Linear: y[N,O] = x[N,I] · W[O,I]ᵀ + b[O]   (W stored as PyTorch's [out, in]).
#[allow(clippy::too_many_arguments)]
pub fn linear_forward<T: Float>(
    prec: Precision,
    y: &mut [T],
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    n: usize,
    i: usize,
    o: usize,
) {
    debug_assert!(y.len() >= n * o && x.len() >= n * i && w.len() >= o * i);
    let y = &mut y[..n * o];
    match b {
        Some(b) => {
            add_bias_fill(y, b, o);
            matmul(
                prec,
                y,
                &x[..n * i],
                false,
                &w[..o * i],
                true,
                n,
                o,
                i,
                true,
            );
        }
        None => matmul(
            prec,
            y,
            &x[..n * i],
            false,
            &w[..o * i],
            true,
            n,
            o,
            i,
            false,
        ),
    }
}

/// Linear backward: dx[N,I] = dy · W  (or += when `accumulate_dx`);  dW[O,I] += dyᵀ · x;
/// db[O] += Σₙ dy[n,:].
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Float>(
    prec: Precision,
    dx: Option<&mut [T]>,
    accumulate_dx: bool,
    dw: &mut [T],
    db: Option<&mut [T]>,
    dy: &[T],
    x: &[T],
    w: &[T],
    n: usize,
    i: usize,
    o: usize,
) {
    let dy = &dy[..n * o];
    if let Some(dx) = dx {
        linear_backward_input(prec, dx, accumulate_dx, None, dy, w, n, i, o);
    }
    matmul(
        prec,
        &mut dw[..o * i],
        dy,
        true,
        &x[..n * i],
        false,
        o,
        i,
        n,
        true,
    );
    if let Some(db) = db {
        bias_backward(db, dy, n, o);
    }
}

/// The backward of a linear layer whose weight is frozen: dx = dy·W (written, or added with
/// `accumulate_dx`) and db += Σ dy; no dW.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_input<T: Float>(
    prec: Precision,
    dx: &mut [T],
    accumulate_dx: bool,
    db: Option<&mut [T]>,
    dy: &[T],
    w: &[T],
    n: usize,
    i: usize,
    o: usize,
) {
    let dy = &dy[..n * o];
    matmul(
        prec,
        &mut dx[..n * i],
        dy,
        false,
        &w[..o * i],
        false,
        n,
        i,
        o,
        accumulate_dx,
    );
    if let Some(db) = db {
        bias_backward(db, dy, n, o);
    }
}

/// Writes the bias into every row: y[n,:] = b  (the GEMM then accumulates on top).
pub fn add_bias_fill<T: Float>(y: &mut [T], b: &[T], o: usize) {
    let rows_per = (PAR_CHUNK / o.max(1)).max(1) * o;
    let f = |ch: &mut [T]| {
        for row in ch.chunks_exact_mut(o) {
            row.copy_from_slice(&b[..o]);
        }
    };
    if y.len() < PAR_MIN {
        f(y)
    } else {
        y.par_chunks_mut(rows_per).for_each(f)
    }
}

/// Bias: y[n,:] += b.
pub fn add_bias<T: Float>(y: &mut [T], b: &[T], o: usize) {
    for row in y.chunks_exact_mut(o) {
        for (v, bb) in row.iter_mut().zip(b) {
            *v += *bb;
        }
    }
}

/// Bias backward: db[O] += Σₙ dy[n,:]  (column sums, per-thread partials then reduced).
pub fn bias_backward<T: Float>(db: &mut [T], dy: &[T], n: usize, o: usize) {
    let dy = &dy[..n * o];
    let rows_per = 256usize;
    let partial = |ch: &[T]| {
        let mut acc = vec![T::ZERO; o];
        for row in ch.chunks_exact(o) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += *v;
            }
        }
        acc
    };
    let sum = if n * o < PAR_MIN {
        partial(dy)
    } else {
        in_order(dy.par_chunks(rows_per * o).map(partial)).fold(vec![T::ZERO; o], |mut a, b| {
            for (x, y) in a.iter_mut().zip(&b) {
                *x += *y;
            }
            a
        })
    };
    for (d, s) in db[..o].iter_mut().zip(&sum) {
        *d += *s;
    }
}

// ---------------------------------------------------------------------------------------------
// Embedding

/// Embedding: out[n,:] = W[idx[n],:]   (W is [vocab, dim]). Errors on an index out of range.
pub fn embedding_forward<T: Float>(
    out: &mut [T],
    idx: &[u32],
    w: &[T],
    vocab: usize,
    dim: usize,
) -> Result<()> {
    check("embedding", dim > 0, || "embedding dim is 0".to_string())?;
    check("embedding", out.len() >= idx.len() * dim, || {
        format!("out has {} < {}x{}", out.len(), idx.len(), dim)
    })?;
    check("embedding", w.len() >= vocab * dim, || {
        format!("weight has {} < {vocab}x{dim}", w.len())
    })?;
    for (row, &t) in out.chunks_exact_mut(dim).zip(idx) {
        let t = t as usize;
        check("embedding", t < vocab, || {
            format!("index {t} out of range for vocabulary {vocab}")
        })?;
        row.copy_from_slice(&w[t * dim..(t + 1) * dim]);
    }
    Ok(())
}

/// Embedding backward (scatter-add): dW[idx[n],:] += dout[n,:].
pub fn embedding_backward<T: Float>(
    dw: &mut [T],
    dout: &[T],
    idx: &[u32],
    vocab: usize,
    dim: usize,
) -> Result<()> {
    check("embedding_backward", dim > 0, || {
        "embedding dim is 0".to_string()
    })?;
    for (row, &t) in dout.chunks_exact(dim).zip(idx) {
        let t = t as usize;
        check("embedding_backward", t < vocab, || {
            format!("index {t} out of range for vocabulary {vocab}")
        })?;
        for (d, g) in dw[t * dim..(t + 1) * dim].iter_mut().zip(row) {
            *d += *g;
        }
    }
    Ok(())
}

/// Token embedding: out[n,:] = G[ids[n],:] + P[pos[n],:], and with a value projection
/// `value` = (w [dim], b [dim], values [n]) also + (w·values[n] + b)  (nn.Linear(1, dim) of the
/// value). G is [vocab, dim], P is [max_len, dim]. Errors on an id or position out of range.
#[allow(clippy::type_complexity)]
pub fn token_embedding_forward<T: Float>(
    out: &mut [T],
    ids: &[u32],
    pos: &[u32],
    gene: &[T],
    position: &[T],
    value: Option<(&[T], &[T], &[T])>,
    dim: usize,
) -> Result<()> {
    check_tokens(ids, pos, gene.len(), position.len(), dim)?;
    check("token_embedding", out.len() >= ids.len() * dim, || {
        format!("out has {} < {}x{dim}", out.len(), ids.len())
    })?;
    if let Some((w, b, values)) = value {
        check(
            "token_embedding",
            w.len() >= dim && b.len() >= dim && values.len() >= ids.len(),
            || {
                format!(
                    "value projection {}/{} for {dim}, {} values",
                    w.len(),
                    b.len(),
                    values.len()
                )
            },
        )?;
    }
    let d = dim;
    for (n, row) in out.chunks_exact_mut(d).take(ids.len()).enumerate() {
        let (id, t) = (ids[n] as usize, pos[n] as usize);
        let (gr, pr) = (&gene[id * d..(id + 1) * d], &position[t * d..(t + 1) * d]);
        for k in 0..d {
            row[k] = gr[k] + pr[k];
        }
        if let Some((w, b, values)) = value {
            let v = values[n];
            for k in 0..d {
                row[k] += w[k] * v + b[k];
            }
        }
    }
    Ok(())
}

/// Token embedding backward (scatter-add): dG[ids[n],:] += dout[n,:], dP[pos[n],:] += dout[n,:];
/// with `dvalue` = (dw, db, values): dw += Σₙ dout[n,:]·values[n], db += Σₙ dout[n,:] (summed
/// over n first, then added).
#[allow(clippy::type_complexity)]
pub fn token_embedding_backward<T: Float>(
    dgene: &mut [T],
    dposition: &mut [T],
    dvalue: Option<(&mut [T], &mut [T], &[T])>,
    dout: &[T],
    ids: &[u32],
    pos: &[u32],
    dim: usize,
) -> Result<()> {
    check_tokens(ids, pos, dgene.len(), dposition.len(), dim)?;
    let d = dim;
    for (n, dr) in dout.chunks_exact(d).take(ids.len()).enumerate() {
        let (id, t) = (ids[n] as usize, pos[n] as usize);
        for (g, &v) in dgene[id * d..(id + 1) * d].iter_mut().zip(dr) {
            *g += v;
        }
        for (g, &v) in dposition[t * d..(t + 1) * d].iter_mut().zip(dr) {
            *g += v;
        }
    }
    if let Some((gw, gb, values)) = dvalue {
        let mut dw = vec![T::ZERO; d];
        let mut db = vec![T::ZERO; d];
        for (n, dr) in dout.chunks_exact(d).take(ids.len()).enumerate() {
            let v = values[n];
            for k in 0..d {
                dw[k] += dr[k] * v;
                db[k] += dr[k];
            }
        }
        for k in 0..d {
            gw[k] += dw[k];
            gb[k] += db[k];
        }
    }
    Ok(())
}

/// Ids within the gene table and positions within the position table (both `dim` wide).
fn check_tokens(ids: &[u32], pos: &[u32], gene: usize, position: usize, dim: usize) -> Result<()> {
    check("token_embedding", dim > 0, || {
        "embedding dim is 0".to_string()
    })?;
    check("token_embedding", ids.len() == pos.len(), || {
        format!("{} ids but {} positions", ids.len(), pos.len())
    })?;
    let (vocab, max_len) = (gene / dim, position / dim);
    for (&id, &t) in ids.iter().zip(pos) {
        check("token_embedding", (id as usize) < vocab, || {
            format!("token id {id} outside the vocabulary of {vocab}")
        })?;
        check("token_embedding", (t as usize) < max_len, || {
            format!("position {t} beyond the {max_len} positions")
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rows: gather, scatter, mean

/// Gather: out[k,:] = x[rows[k],:]  (its backward is [`scatter_rows`] with `accumulate`).
pub fn gather_rows<T: Float>(out: &mut [T], x: &[T], rows: &[usize], dim: usize) {
    if dim == 0 {
        return;
    }
    for (o, &r) in out.chunks_exact_mut(dim).zip(rows) {
        o.copy_from_slice(&x[r * dim..(r + 1) * dim]);
    }
}

/// Scatter: dst[rows[k],:] = src[k,:], or += when `accumulate` (in order of k, so a row listed
/// twice adds up).
pub fn scatter_rows<T: Float>(
    dst: &mut [T],
    src: &[T],
    rows: &[usize],
    dim: usize,
    accumulate: bool,
) {
    if dim == 0 {
        return;
    }
    for (s, &r) in src.chunks_exact(dim).zip(rows) {
        let d = &mut dst[r * dim..(r + 1) * dim];
        if accumulate {
            d.iter_mut().zip(s).for_each(|(a, b)| *a += *b);
        } else {
            d.copy_from_slice(s);
        }
    }
}

/// Mean of groups of rows: for group g (rows[offsets[g]..offsets[g+1]]),
/// out[g,:] = (Σₖ x[rows[k],:]) · (1/max(count, 1)), summed in order from 0. An empty group
/// gives 0.
pub fn mean_rows<T: Float>(out: &mut [T], x: &[T], rows: &[usize], offsets: &[usize], dim: usize) {
    if dim == 0 {
        return;
    }
    for (o, w) in out.chunks_exact_mut(dim).zip(offsets.windows(2)) {
        o.fill(T::ZERO);
        let group = &rows[w[0]..w[1]];
        for &r in group {
            let row = &x[r * dim..(r + 1) * dim];
            o.iter_mut().zip(row).for_each(|(a, b)| *a += *b);
        }
        let inv = T::ONE / T::from_f64(group.len().max(1) as f64);
        o.iter_mut().for_each(|a| *a *= inv);
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/// LayerNorm over the last dim C: μ = mean(x), σ⁻¹ = 1/√(var(x)+ε) (biased var),
/// y = (x-μ)·σ⁻¹·γ + β. Saves μ and σ⁻¹ per row for backward.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<T: Float>(
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    x: &[T],
    gamma: &[T],
    beta: &[T],
    n: usize,
    c: usize,
    eps: f64,
) {
    let eps = T::from_f64(eps);
    let inv_c = T::from_f64(1.0 / c as f64);
    type Row<'a, T> = (&'a mut [T], (&'a mut T, (&'a mut T, &'a [T])));
    let row = |(yr, (m, (r, xr))): Row<T>| {
        let mu = xr.iter().copied().sum::<T>() * inv_c;
        let var = xr.iter().map(|&v| (v - mu) * (v - mu)).sum::<T>() * inv_c;
        let rs = T::ONE / (var + eps).sqrt();
        for ((o, &v), (&g, &b)) in yr.iter_mut().zip(xr).zip(gamma.iter().zip(beta)) {
            *o = (v - mu) * rs * g + b;
        }
        *m = mu;
        *r = rs;
    };
    let (y, mean, rstd, x) = (&mut y[..n * c], &mut mean[..n], &mut rstd[..n], &x[..n * c]);
    if n * c < PAR_MIN {
        y.chunks_exact_mut(c)
            .zip(mean.iter_mut().zip(rstd.iter_mut().zip(x.chunks_exact(c))))
            .for_each(row);
    } else {
        y.par_chunks_exact_mut(c)
            .zip(
                mean.par_iter_mut()
                    .zip(rstd.par_iter_mut().zip(x.par_chunks_exact(c))),
            )
            .for_each(row);
    }
}

/// LayerNorm backward with x̂ = (x-μ)σ⁻¹ and g = dy·γ:
/// dx = σ⁻¹·(g − mean(g) − x̂·mean(g·x̂))  (written, or added when `accumulate_dx`);
/// dγ += Σₙ dy·x̂;  dβ += Σₙ dy.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: Float>(
    dx: &mut [T],
    accumulate_dx: bool,
    dgamma: &mut [T],
    dbeta: &mut [T],
    dy: &[T],
    x: &[T],
    mean: &[T],
    rstd: &[T],
    gamma: &[T],
    n: usize,
    c: usize,
) {
    let inv_c = T::from_f64(1.0 / c as f64);
    let rows_per = 64usize;
    // Each chunk of rows writes its dx rows and returns partial (dγ, dβ) sums.
    let work = |(ci, dxc): (usize, &mut [T])| {
        let mut dg = vec![T::ZERO; c];
        let mut dbt = vec![T::ZERO; c];
        let r0 = ci * rows_per;
        for (k, dxr) in dxc.chunks_exact_mut(c).enumerate() {
            let r = r0 + k;
            let (xr, dyr) = (&x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c]);
            let (mu, rs) = (mean[r], rstd[r]);
            let mut sum_g = T::ZERO;
            let mut sum_gx = T::ZERO;
            for j in 0..c {
                let xh = (xr[j] - mu) * rs;
                let g = dyr[j] * gamma[j];
                sum_g += g;
                sum_gx += g * xh;
                dg[j] += dyr[j] * xh;
                dbt[j] += dyr[j];
            }
            let (mg, mgx) = (sum_g * inv_c, sum_gx * inv_c);
            for j in 0..c {
                let xh = (xr[j] - mu) * rs;
                let v = rs * (dyr[j] * gamma[j] - mg - xh * mgx);
                if accumulate_dx {
                    dxr[j] += v;
                } else {
                    dxr[j] = v;
                }
            }
        }
        (dg, dbt)
    };
    let dx = &mut dx[..n * c];
    let (dg, dbt) = if n * c < PAR_MIN {
        dx.chunks_mut(rows_per * c)
            .enumerate()
            .map(work)
            .fold((vec![T::ZERO; c], vec![T::ZERO; c]), |a, b| sum_pairs(a, b))
    } else {
        in_order(dx.par_chunks_mut(rows_per * c).enumerate().map(work))
            .fold((vec![T::ZERO; c], vec![T::ZERO; c]), sum_pairs)
    };
    for j in 0..c {
        dgamma[j] += dg[j];
        dbeta[j] += dbt[j];
    }
}

fn sum_pairs<T: Float>(mut a: (Vec<T>, Vec<T>), b: (Vec<T>, Vec<T>)) -> (Vec<T>, Vec<T>) {
    for (x, y) in a.0.iter_mut().zip(&b.0) {
        *x += *y;
    }
    for (x, y) in a.1.iter_mut().zip(&b.1) {
        *x += *y;
    }
    a
}

// ---------------------------------------------------------------------------------------------
// Activations

/// GELU, exact erf form (PyTorch's nn.GELU() default, approximate='none'):
/// y = ½·x·(1 + erf(x/√2)).
pub fn gelu_forward<T: Float>(y: &mut [T], x: &[T]) {
    for_chunks(&mut y[..x.len()], |ch, off| {
        T::gelu_slice(ch, &x[off..off + ch.len()])
    });
}

/// GELU backward: dx = dy·(½(1 + erf(x/√2)) + x·φ(x)),  φ(x) = e^{−x²/2}/√(2π).
pub fn gelu_backward<T: Float>(dx: &mut [T], dy: &[T], x: &[T]) {
    for_chunks(&mut dx[..x.len()], |ch, off| {
        let r = off..off + ch.len();
        T::gelu_backward_slice(ch, &dy[r.clone()], &x[r])
    });
}

/// ReLU: y = max(0, x).
pub fn relu_forward<T: Float>(y: &mut [T], x: &[T]) {
    for_chunks(&mut y[..x.len()], |ch, off| {
        for (o, &v) in ch.iter_mut().zip(&x[off..]) {
            *o = if v > T::ZERO { v } else { T::ZERO };
        }
    });
}

/// ReLU backward: dx = dy·[x > 0].
pub fn relu_backward<T: Float>(dx: &mut [T], dy: &[T], x: &[T]) {
    for_chunks(&mut dx[..x.len()], |ch, off| {
        for ((o, &v), &g) in ch.iter_mut().zip(&x[off..]).zip(&dy[off..]) {
            *o = if v > T::ZERO { g } else { T::ZERO };
        }
    });
}

/// Activation choice of a feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Gelu,
}

pub fn activation_forward<T: Float>(act: Activation, y: &mut [T], x: &[T]) {
    match act {
        Activation::Relu => relu_forward(y, x),
        Activation::Gelu => gelu_forward(y, x),
    }
}

pub fn activation_backward<T: Float>(act: Activation, dx: &mut [T], dy: &[T], x: &[T]) {
    match act {
        Activation::Relu => relu_backward(dx, dy, x),
        Activation::Gelu => gelu_backward(dx, dy, x),
    }
}

// ---------------------------------------------------------------------------------------------
// Dropout

/// Dropout (in place): x[i] ← x[i]·keep(i)/(1−p), keep(i) = bits(seed, step, layer, i) ≥ p·2³².
/// The mask is recomputed from the key in backward, never stored.
pub fn dropout_forward<T: Float>(x: &mut [T], p: f64, key: RngKey) {
    if p <= 0.0 {
        return;
    }
    let scale = if p >= 1.0 {
        T::ZERO
    } else {
        T::from_f64(1.0 / (1.0 - p))
    };
    let (thr, st) = (keep_threshold(p), key.stream_state());
    for_chunks(x, |ch, off| {
        T::dropout_apply(ch, st, off as u64, thr, scale)
    });
}

/// Dropout backward (in place): dx[i] = dy[i]·keep(i)/(1−p) with the same key as forward.
pub fn dropout_backward<T: Float>(dy: &mut [T], p: f64, key: RngKey) {
    dropout_forward(dy, p, key)
}

// ---------------------------------------------------------------------------------------------
// Residual

/// Residual: out = a + b. (Backward: the incoming gradient flows unchanged to both inputs.)
pub fn residual_forward<T: Float>(out: &mut [T], a: &[T], b: &[T]) {
    for_chunks(&mut out[..a.len()], |ch, off| {
        for ((o, &x), &y) in ch.iter_mut().zip(&a[off..]).zip(&b[off..]) {
            *o = x + y;
        }
    });
}

/// acc += g (the gradient of a residual branch joining the trunk).
pub fn add_inplace<T: Float>(acc: &mut [T], g: &[T]) {
    for_chunks(&mut acc[..g.len()], |ch, off| {
        for (o, &v) in ch.iter_mut().zip(&g[off..]) {
            *o += v;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Losses

pub const IGNORE_INDEX: i64 = -100;

/// Softmax cross-entropy, mean over rows whose target ≠ −100:
/// loss = (1/M) Σₙ [logsumexp(zₙ) − zₙ[tₙ]];  dz = (softmax(z) − onehot(t))/M, 0 on ignored rows.
/// Returns the loss and writes dlogits (scaled by `dloss`). With every row ignored the loss is
/// 0 and the gradient 0 (PyTorch returns NaN there).
pub fn cross_entropy<T: Float>(
    dlogits: &mut [T],
    logits: &[T],
    targets: &[i64],
    n: usize,
    v: usize,
    dloss: f64,
) -> Result<f64> {
    check(
        "cross_entropy",
        logits.len() >= n * v && dlogits.len() >= n * v,
        || {
            format!(
                "logits {} / dlogits {} < {n}x{v}",
                logits.len(),
                dlogits.len()
            )
        },
    )?;
    check("cross_entropy", v > 0 || n == 0, || "0 classes".to_string())?;
    check("cross_entropy", targets.len() == n, || {
        format!("{} targets for {n} rows", targets.len())
    })?;
    let mut count = 0usize;
    for &t in targets {
        if t != IGNORE_INDEX {
            check("cross_entropy", t >= 0 && (t as usize) < v, || {
                format!("target {t} outside [0, {v}) and not the ignore index -100")
            })?;
            count += 1;
        }
    }
    let scale = if count == 0 {
        0.0
    } else {
        dloss / count as f64
    };
    let total: f64 = in_order(
        dlogits[..n * v]
            .par_chunks_mut(v)
            .zip(logits[..n * v].par_chunks(v))
            .zip(targets.par_iter())
            .map(|((dz, z), &t)| {
                if t == IGNORE_INDEX {
                    dz.fill(T::ZERO);
                    return 0.0;
                }
                // One (vectorized for f32) exp per logit: dz = e^{z−m}, then softmax = dz / Σ.
                let m = T::slice_max(z);
                dz.copy_from_slice(z);
                let sum = T::exp_scaled_sum(dz, T::ONE, m);
                let lse = m + sum.ln();
                let s = T::from_f64(scale);
                let f = s / sum;
                for d in dz.iter_mut() {
                    *d *= f;
                }
                dz[t as usize] -= s;
                (lse - z[t as usize]).to_f64()
            }),
    )
    .sum();
    Ok(if count == 0 {
        0.0
    } else {
        total / count as f64
    })
}

/// Sum of squared errors: returns Σₙ (y[n] − t[n])², each difference taken in T and squared
/// and summed (in order) in f64; with `dy`, writes dy[n] = (2·dscale)·(y[n] − t[n])  (the
/// gradient of dscale·Σ(y − t)²).
pub fn squared_error_sum<T: Float>(
    dy: Option<&mut [T]>,
    y: &[T],
    target: &[T],
    dscale: f64,
) -> Result<f64> {
    check("squared_error_sum", y.len() == target.len(), || {
        format!("y {} target {}", y.len(), target.len())
    })?;
    if let Some(dy) = dy {
        check("squared_error_sum", dy.len() >= y.len(), || {
            format!("dy {} < y {}", dy.len(), y.len())
        })?;
        let s = T::from_f64(2.0 * dscale);
        for ((d, &a), &b) in dy.iter_mut().zip(y).zip(target) {
            *d = s * (a - b);
        }
    }
    Ok(y.iter()
        .zip(target)
        .map(|(&a, &b)| {
            let e = (a - b).to_f64();
            e * e
        })
        .sum())
}

/// Mean squared error: loss = (1/n) Σ (x − y)²;  dx = 2(x − y)/n · dloss.
pub fn mse<T: Float>(dx: &mut [T], x: &[T], y: &[T], dloss: f64) -> Result<f64> {
    check("mse", x.len() == y.len() && dx.len() >= x.len(), || {
        format!("x {} y {} dx {}", x.len(), y.len(), dx.len())
    })?;
    let n = x.len().max(1) as f64;
    let s = T::from_f64(2.0 * dloss / n);
    let mut sum = 0.0f64;
    for ((d, &a), &b) in dx.iter_mut().zip(x).zip(y) {
        let e = a - b;
        sum += (e * e).to_f64();
        *d = e * s;
    }
    Ok(sum / n)
}

#[cfg(test)]
mod determinism_tests {
    use super::*;

    /// Runs `f` on a rayon pool of `threads` threads.
    fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
            .install(f)
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = crate::rng::lowbias32(i as u32 ^ seed.wrapping_mul(0x9E37_79B9));
                (h as f32 / u32::MAX as f32 - 0.5) * 3.0
            })
            .collect()
    }

    /// Every reduction across rows gives the same bits whatever the number of threads and
    /// however rayon schedules the pieces (it combines its own `sum`/`reduce` in a
    /// scheduling-dependent order, which made same-seed runs differ in the last digits).
    #[test]
    fn reductions_do_not_depend_on_threads_or_scheduling() {
        let (n, c, v) = (4096, 96, 200);
        let dy = values(n * c, 1);
        let x = values(n * c, 2);
        let gamma = values(c, 3);
        let logits = values(n * v, 4);
        let targets: Vec<i64> = (0..n as i64).map(|i| (i * 7) % v as i64).collect();
        let run = || {
            let mut db = vec![0.0f32; c];
            bias_backward(&mut db, &dy, n, c);
            let (mut mean, mut rstd, mut y) = (vec![0.0; n], vec![0.0; n], vec![0.0; n * c]);
            layernorm_forward(&mut y, &mut mean, &mut rstd, &x, &gamma, &gamma, n, c, 1e-5);
            let (mut dx, mut dg, mut dbt) = (vec![0.0f32; n * c], vec![0.0; c], vec![0.0; c]);
            layernorm_backward(
                &mut dx, false, &mut dg, &mut dbt, &dy, &x, &mean, &rstd, &gamma, n, c,
            );
            let mut dl = vec![0.0f32; n * v];
            let loss = cross_entropy(&mut dl, &logits, &targets, n, v, 1.0).expect("ce");
            let norm = optim::global_norm(&dy);
            let bits = |xs: &[f32]| xs.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            (
                bits(&db),
                bits(&dg),
                bits(&dbt),
                loss.to_bits(),
                norm.to_bits(),
            )
        };
        let one = on_threads(1, run);
        for threads in [2, 3, 4] {
            for _ in 0..3 {
                assert!(on_threads(threads, run) == one, "{threads} threads");
            }
        }
    }
}

#[cfg(test)]
mod empty_sum_tests {
    use super::*;

    /// k = 0: the product is an empty sum, so C is zeroed when written and unchanged when
    /// accumulated (the CUDA backend mirrors this; cuBLASLt itself takes no k = 0).
    #[test]
    fn matmul_with_k_zero_is_an_empty_sum() {
        let mut c = vec![1.5f32; 6];
        matmul(
            Precision::F32,
            &mut c,
            &[],
            false,
            &[],
            false,
            2,
            3,
            0,
            true,
        );
        assert_eq!(c, vec![1.5; 6]);
        matmul(
            Precision::Bf16Mixed,
            &mut c,
            &[],
            false,
            &[],
            true,
            2,
            3,
            0,
            false,
        );
        assert_eq!(c, vec![0.0; 6]);
    }
}
