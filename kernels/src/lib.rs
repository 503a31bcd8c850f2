//! Compute: explicit forward/backward ops on a Device (CPU always; CUDA behind the `cuda` feature).
//!
//! llm.c-style: every op is a forward function and a backward function with the math in a
//! short comment, no autograd tape. Ops are generic over [`Float`] (f32 for training, f64 for
//! the finite-difference tests). Parameters live in one contiguous buffer and gradients in
//! another of the same layout ([`params::ParamLayout`]); modules hold (offset, shape) views.

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
