//! Compute: explicit forward/backward ops behind the [`Device`] trait. [`Cpu`] is implemented
//! (rayon + faer); a CUDA backend (feature `cuda`, not written yet) implements the same trait.
//!
//! llm.c-style: every op is a forward function and a backward function with the math in a
//! short comment, no autograd tape. Ops are generic over [`Float`] (f32 for training, f64 for
//! the finite-difference tests). Parameters live in one contiguous buffer and gradients in
//! another of the same layout ([`params::ParamLayout`]); modules hold (offset, len) views and
//! register PyTorch names, so the layout's entries are the checkpoint index.
//!
//! Layout of the crate:
//! - [`ops`]: the CPU ops on slices (linear/GEMM, bias, layernorm, embedding, attention,
//!   GELU/ReLU, dropout, residual, cross-entropy, MSE, Adam/AdamW, clipping, loss scaling);
//! - [`device`]: the backend trait over device buffers and its CPU implementation;
//! - [`modules`]: Linear, LayerNorm, Embedding, MultiheadAttention, TransformerEncoderLayer;
//! - [`params`]: the flat parameter layout; [`precision`]: bf16/fp16 rounding;
//! - [`rng`]: counter-based randomness; [`fastmath`]: vectorized f32 exp/erf.

pub mod device;
pub mod fastmath;
pub mod float;
pub mod modules;
pub mod ops;
pub mod params;
pub mod precision;
pub mod rng;

pub use device::{Cpu, Device};
pub use float::Float;
pub use params::{Init, ParamEntry, ParamLayout, ParamView};
pub use precision::Precision;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("unknown parameter {0:?}")]
    UnknownParam(String),
    #[error("fixture/checkpoint format error: {0}")]
    Format(String),
}

pub type Result<T> = std::result::Result<T, KernelError>;

#[cfg(test)]
mod gradcheck_tests;
