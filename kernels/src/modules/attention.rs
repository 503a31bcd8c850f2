//! nn.MultiheadAttention's parameters (the attention itself is a [`Device`](crate::Device)
//! op; [`super::TransformerEncoderLayer`] runs it).

use super::join;
use super::linear::Linear;
use crate::params::{Init, ParamLayout};
use crate::{KernelError, Result};

/// nn.MultiheadAttention (batch_first, packed in-projection): parameters `in_proj_weight`
/// [3E, E] (xavier-uniform), `in_proj_bias` [3E] (0), `out_proj.weight` [E, E], `out_proj.bias`
/// [E] (0).
#[derive(Clone, Debug)]
pub struct MultiheadAttention {
    pub in_proj: Linear,
    pub out_proj: Linear,
    pub heads: usize,
    pub embed: usize,
}

impl MultiheadAttention {
    pub fn new(l: &mut ParamLayout, prefix: &str, embed: usize, heads: usize) -> Result<Self> {
        if heads == 0 || !embed.is_multiple_of(heads) {
            return Err(KernelError::Shape {
                op: "MultiheadAttention",
                detail: format!("embed dim {embed} is not divisible by {heads} heads"),
            });
        }
        let xavier = (6.0 / (embed + 3 * embed) as f64).sqrt();
        let w = l.add(
            join(prefix, "in_proj_weight"),
            &[3 * embed, embed],
            Init::Uniform(xavier),
        );
        let b = l.add(join(prefix, "in_proj_bias"), &[3 * embed], Init::Zeros);
        let ow = l.add(
            join(prefix, "out_proj.weight"),
            &[embed, embed],
            Init::Uniform(1.0 / (embed as f64).sqrt()),
        );
        let ob = l.add(join(prefix, "out_proj.bias"), &[embed], Init::Zeros);
        Ok(Self {
            in_proj: Linear {
                weight: w,
                bias: Some(b),
                in_features: embed,
                out_features: 3 * embed,
            },
            out_proj: Linear {
                weight: ow,
                bias: Some(ob),
                in_features: embed,
                out_features: embed,
            },
            heads,
            embed,
        })
    }
}
