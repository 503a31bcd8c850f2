//! Modules built on the [`Device`](crate::Device) trait. A module holds [`ParamView`]s into the
//! flat parameter buffer and registers its parameters under PyTorch's names; it computes only
//! through `Device` methods on the device's buffers (`D::Mem`), so it runs on any backend.
//! Saved activations live either in an arena struct passed to forward/backward and resized to
//! each batch's rows ([`EncoderActs`], kept by [`Stack`]) or, for the other modules
//! ([`SavedLinear`], [`RowNorm`], [`NormHead`]), inside the module, resized per call.
//!
//! - [`linear`]: [`Linear`] (nn.Linear) and [`SavedLinear`] (one that keeps its input);
//! - [`lora`]: [`LoraAdapter`], a LoRA adapter on a frozen linear layer (peft's);
//! - [`norm`]: [`LayerNorm`] and [`RowNorm`] (one that keeps what backward needs);
//! - [`head`]: [`NormHead`], LayerNorm + Linear over selected rows;
//! - [`embedding`]: [`Embedding`] (nn.Embedding) and [`TokenEmbedding`] (gene + position +
//!   expression-value projection);
//! - [`attention`]: [`MultiheadAttention`]'s parameters;
//! - [`encoder`]: [`TransformerEncoderLayer`] (pre-norm) and its activation arena;
//! - [`stack`]: [`Stack`], encoder layers with their activation arena and per-layer gradient
//!   hooks.

pub mod attention;
pub mod embedding;
pub mod encoder;
pub mod head;
pub mod linear;
pub mod lora;
pub mod norm;
pub mod stack;

pub use crate::ops::Activation;
pub use attention::MultiheadAttention;
pub use embedding::{Embedding, TokenEmbedding, EMB_STD};
pub use encoder::{EncoderActs, EncoderLayerConfig, LayerLora, TransformerEncoderLayer};
pub use head::NormHead;
pub use linear::{Linear, SavedLinear};
pub use lora::LoraAdapter;
pub use norm::{LayerNorm, RowNorm, LN_EPS};
pub use stack::{layer_key, LoraSpec, Stack, LORA_MODULES};

/// PyTorch's dotted parameter name `prefix.name` (just `name` at the top level).
fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

#[cfg(test)]
mod tests;
