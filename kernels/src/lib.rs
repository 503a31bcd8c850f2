//! Compute: explicit forward/backward ops behind the [`Device`] trait, the one door through
//! which modules, models and the trainer reach compute. [`Cpu`] is implemented (rayon + faer);
//! a CUDA backend is not written yet and will be one more file, `backend/cuda.rs`,
//! implementing the same trait.
//!
//! llm.c-style: every op is a forward function and a backward function with the math in a
//! short comment, no autograd tape. Ops are generic over [`Float`] (f32 for training, f64 for
//! the finite-difference tests). Parameters live in one contiguous buffer and gradients in
//! another of the same layout ([`params::ParamLayout`]); modules hold (offset, len) views and
//! register PyTorch names, so the layout's entries are the checkpoint index.
//!
//! Layout of the crate:
//! - [`backend`]: the [`Device`] trait over device buffers; [`backend::cpu`] implements it;
//! - [`ops`]: the CPU ops on slices that [`Cpu`] forwards to (linear/GEMM, bias, layernorm,
//!   embeddings, row gather/scatter/mean, attention, GELU/ReLU, dropout, residual,
//!   cross-entropy, squared error, Adam/AdamW, clipping, scaling) and, in [`ops::conv`], the
//!   image ops behind [`backend::ConvDevice`] (conv2d and its transpose, max-pooling,
//!   bilinear resizing, channel concat/split);
//! - [`modules`]: Linear, LayerNorm, Embedding, TokenEmbedding, MultiheadAttention,
//!   TransformerEncoderLayer, the encoder layer Stack and the norm + linear heads, all computing
//!   through [`Device`] only;
//! - [`optim`]: Adam hyper-parameters and dynamic loss scaling for the trainer;
//! - [`params`]: the flat parameter layout; [`precision`]: bf16/fp16 rounding; [`bf16gemm`]:
//!   the bf16 GEMM (AMX / AVX512_BF16) behind bf16-mixed matrix products on x86-64;
//! - [`rng`]: counter-based randomness; [`fastmath`]: vectorized f32 exp/erf.

pub mod backend;
pub mod bf16gemm;
pub mod fastmath;
pub mod float;
pub mod modules;
pub mod ops;
pub mod optim;
pub mod params;
pub mod precision;
pub mod rng;

pub use backend::{Cpu, Device};
pub use float::Float;
pub use modules::Activation;
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
mod conv_gradcheck_tests;
#[cfg(test)]
mod gradcheck_tests;
