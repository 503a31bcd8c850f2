//! Backends: the [`Device`] trait is the one door through which modules, models and the trainer
//! reach compute. Each backend is one file here implementing it:
//!
//! - [`cpu`]: [`Cpu`], the reference implementation (rayon threads, faer GEMM), forwarding to
//!   the slice ops in [`crate::ops`];
//! - [`cuda`] (feature `cuda`): [`cuda::Cuda`], the same trait over device allocations, with
//!   NVRTC-compiled kernels and cuBLASLt.
//!
//! # The contract
//!
//! Buffers are the backend's own type, [`Device::Mem`]: a host `Vec<T>` on the CPU, a device
//! allocation on CUDA. Code above this trait never indexes a buffer; it allocates with
//! [`zeros`](Device::zeros) / [`resize`](Device::resize), moves data across with
//! [`upload`](Device::upload) / [`download`](Device::download) / [`read`](Device::read), and
//! computes only through the methods below.
//!
//! Parameters are addressed as (flat buffer, [`ParamView`]): all weights of a model are one
//! allocation and all gradients another, so a backend never needs more than one allocation for
//! each; a method that takes several views of the gradient buffer gets disjoint ones.
//! Host-side metadata (token ids, positions, row lists, class targets, padding masks, dropout
//! keys) is passed as plain slices and values; a device backend copies what it needs per call.
//!
//! Semantics follow the ops in [`crate::ops`] (each documented there with its formula):
//! parameter gradients *accumulate* (`+=`), activation gradients are overwritten unless an
//! `accumulate` flag says otherwise, and a backend must keep the arithmetic of an op (what is
//! rounded to T, and in what order sums run where the op says so) for results to match the CPU
//! reference. The CPU backend is deterministic for a given rayon thread count.

pub mod conv;
pub mod cpu;
mod cpu_conv;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod packed_attention;

use std::borrow::Cow;
use std::ops::Range;

use crate::ops::attention::AttnOpts;
use crate::ops::{Activation, AdamConfig, AttnShape};
use crate::params::ParamView;
use crate::rng::RngKey;
use crate::{Float, Precision, Result};

pub use conv::{Conv2dShape, ConvDevice, ConvTranspose2dShape, Pool2dShape};
pub use cpu::Cpu;

/// A value projection's parameters and the per-token values it projects:
/// (weight [dim] (nn.Linear(1, dim)'s [dim, 1]), bias [dim], values [n]).
pub type ValueProjection<'a, M> = (ParamView, ParamView, &'a M);

pub trait Device<T: Float>: Send + Sync {
    /// A buffer of T on this device. `Default` is the empty buffer.
    type Mem: Default + Send + Sync;

    // ---- buffers ----------------------------------------------------------------------------

    /// A buffer of `len` zeros.
    fn zeros(&self, len: usize) -> Self::Mem;
    /// Sets the length to `len`; the first min(old, new) elements keep their values, new ones
    /// are 0. (Reuses the allocation where it can.)
    fn resize(&self, m: &mut Self::Mem, len: usize);
    fn upload(&self, host: &[T]) -> Self::Mem;
    fn download(&self, m: &Self::Mem) -> Vec<T>;
    /// m[offset..offset + len(host)] = host.
    fn write(&self, m: &mut Self::Mem, offset: usize, host: &[T]);
    /// A host view of `m[range]`: borrowed where the buffer is host memory, a download
    /// otherwise.
    fn read<'a>(&self, m: &'a Self::Mem, range: Range<usize>) -> Cow<'a, [T]>;
    /// Whether buffers are host memory, so [`read`](Device::read) is a free borrow; on a GPU it
    /// is a download that waits for the device, which hooks that only sometimes want the
    /// contents (the encoder stack's `ready`) must not pay on every call.
    fn host_visible(&self) -> bool;
    /// The whole buffer as a mutable host slice where buffers are host memory (the CPU), so a
    /// host-side pass (the gradient all-reduce) can work in place; None on a GPU.
    fn host_mut<'a>(&self, _m: &'a mut Self::Mem) -> Option<&'a mut [T]> {
        None
    }
    /// A hint that ops will soon be passed host arrays with exactly these bytes (the next
    /// batch's token ids, positions, targets). A device with memory of its own may start
    /// copying them now, overlapping the work in flight; ops given the same bytes then use the
    /// copies. Never changes a result. The CPU has nothing to copy.
    fn prefetch(&self, _arrays: &[&[u8]]) {}
    fn len(&self, m: &Self::Mem) -> usize;
    fn fill_zero(&self, m: &mut Self::Mem);
    /// m[range] = 0 (by default through a host buffer of zeros).
    fn fill_zero_range(&self, m: &mut Self::Mem, range: Range<usize>) {
        let zeros = vec![T::ZERO; range.len()];
        self.write(m, range.start, &zeros);
    }
    /// dst[..len(src)] = src.
    fn copy(&self, dst: &mut Self::Mem, src: &Self::Mem);

    // ---- linear algebra ---------------------------------------------------------------------

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
    /// y[n,o] = x[n,i]·Wᵀ + b ([`crate::ops::linear_forward`]).
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
    /// dx = dy·W (written, or added with `accumulate_dx`); dW += dyᵀ·x; db += Σ dy.
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

    /// [`linear_backward`](Device::linear_backward) for a frozen weight (LoRA's base layers):
    /// dx and db as there, dW not needed. A backend may skip dW's product (the CPU does); this
    /// default computes the full backward, and the caller drops the frozen gradients anyway.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward_frozen_weight(
        &self,
        prec: Precision,
        dx: &mut Self::Mem,
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
    ) {
        self.linear_backward(
            prec,
            Some(dx),
            accumulate_dx,
            grads,
            dy,
            x,
            params,
            w,
            b,
            n,
            i,
            o,
        )
    }

    // ---- normalization ----------------------------------------------------------------------

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

    // ---- embeddings -------------------------------------------------------------------------

    /// out[n] = W[idx[n]], W = `params[w]` viewed as [len/dim, dim].
    fn embedding_forward(
        &self,
        out: &mut Self::Mem,
        idx: &[u32],
        params: &Self::Mem,
        w: ParamView,
        dim: usize,
    ) -> Result<()>;
    /// dW[idx[n]] += dout[n].
    fn embedding_backward(
        &self,
        grads: &mut Self::Mem,
        w: ParamView,
        dout: &Self::Mem,
        idx: &[u32],
        dim: usize,
    ) -> Result<()>;
    /// out[n] = G[ids[n]] + P[pos[n]] (+ w·values[n] + b)
    /// ([`crate::ops::token_embedding_forward`]).
    #[allow(clippy::too_many_arguments)]
    fn token_embedding_forward(
        &self,
        out: &mut Self::Mem,
        ids: &[u32],
        pos: &[u32],
        params: &Self::Mem,
        gene: ParamView,
        position: ParamView,
        value: Option<ValueProjection<'_, Self::Mem>>,
        dim: usize,
    ) -> Result<()>;
    /// Scatter-adds dout into G and P; dw += Σ dout·values, db += Σ dout.
    #[allow(clippy::too_many_arguments)]
    fn token_embedding_backward(
        &self,
        grads: &mut Self::Mem,
        dout: &Self::Mem,
        ids: &[u32],
        pos: &[u32],
        gene: ParamView,
        position: ParamView,
        value: Option<ValueProjection<'_, Self::Mem>>,
        dim: usize,
    ) -> Result<()>;

    // ---- rows -------------------------------------------------------------------------------

    /// out[k] = x[rows[k]] (rows of width `dim`).
    fn gather_rows(&self, out: &mut Self::Mem, x: &Self::Mem, rows: &[usize], dim: usize);
    /// dst[rows[k]] = src[k], or += with `accumulate` (in order of k).
    fn scatter_rows(
        &self,
        dst: &mut Self::Mem,
        src: &Self::Mem,
        rows: &[usize],
        dim: usize,
        accumulate: bool,
    );
    /// out[g] = mean of x[rows[k]] over k in offsets[g]..offsets[g+1] ([`crate::ops::mean_rows`]).
    fn mean_rows(
        &self,
        out: &mut Self::Mem,
        x: &Self::Mem,
        rows: &[usize],
        offsets: &[usize],
        dim: usize,
    );

    // ---- attention, activations, dropout, residuals -----------------------------------------

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
    /// acc += g.
    fn add_inplace(&self, acc: &mut Self::Mem, g: &Self::Mem);

    // ---- losses -----------------------------------------------------------------------------

    /// Mean softmax cross-entropy over rows whose target is not −100; writes dlogits scaled by
    /// `dloss`.
    fn cross_entropy(
        &self,
        dlogits: &mut Self::Mem,
        logits: &Self::Mem,
        targets: &[i64],
        n: usize,
        v: usize,
        dloss: f64,
    ) -> Result<f64>;
    /// Σ (y − target)² in f64; with `dy`, dy = 2·dscale·(y − target)
    /// ([`crate::ops::squared_error_sum`]).
    fn squared_error_sum(
        &self,
        dy: Option<&mut Self::Mem>,
        y: &Self::Mem,
        target: &Self::Mem,
        dscale: f64,
    ) -> Result<f64>;

    // ---- optimizer step ---------------------------------------------------------------------

    /// One Adam(W) step; the parameters in `decay_free` (sorted ranges) take no weight decay.
    #[allow(clippy::too_many_arguments)]
    fn adam_step(
        &self,
        cfg: &AdamConfig,
        t: u64,
        params: &mut Self::Mem,
        grads: &Self::Mem,
        m: &mut Self::Mem,
        v: &mut Self::Mem,
        decay_free: &[std::ops::Range<usize>],
    );
    /// [`adam_step`](Device::adam_step) over `range` of the parameters only (one parameter
    /// group; the rest is left untouched), its moments starting at `moments_at` of `m` and `v`
    /// ([`crate::ops::adam_step_in`]), with `decay_free` clipped to it.
    #[allow(clippy::too_many_arguments)]
    fn adam_step_in(
        &self,
        cfg: &AdamConfig,
        t: u64,
        range: std::ops::Range<usize>,
        params: &mut Self::Mem,
        grads: &Self::Mem,
        m: &mut Self::Mem,
        v: &mut Self::Mem,
        moments_at: usize,
        decay_free: &[std::ops::Range<usize>],
    );
    /// ‖x‖₂, accumulated in f64.
    fn global_norm(&self, x: &Self::Mem) -> f64;
    /// Scales to ‖g‖₂ ≤ max_norm (torch's clip_grad_norm_); returns the norm before.
    fn clip_grad_norm(&self, grads: &mut Self::Mem, max_norm: f64) -> f64;
    /// Whether no element is inf or NaN.
    fn all_finite(&self, x: &Self::Mem) -> bool;
    /// x ← x·T::from_f64(factor) (the factor rounded to T once).
    fn scale(&self, x: &mut Self::Mem, factor: f64);
    /// Rounds every element to `prec`'s storage type (bf16/fp16), kept in T.
    fn round(&self, prec: Precision, x: &mut Self::Mem);
}
