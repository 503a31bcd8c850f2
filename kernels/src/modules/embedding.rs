//! nn.Embedding, and the token embedding of the single-cell models (gene + learned position +
//! expression-value projection).

use super::join;
use crate::backend::Device;
use crate::params::{Init, ParamLayout, ParamView};
use crate::{Float, Result};

/// Standard deviation of [`TokenEmbedding`]'s tables and value projection at init.
pub const EMB_STD: f64 = 0.02;

/// nn.Embedding: out[n] = W[idx[n]], init N(0, 1).
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: ParamView,
    pub vocab: usize,
    pub dim: usize,
}

impl Embedding {
    pub fn new(l: &mut ParamLayout, prefix: &str, vocab: usize, dim: usize) -> Self {
        Self {
            weight: l.add(join(prefix, "weight"), &[vocab, dim], Init::Normal(1.0)),
            vocab,
            dim,
        }
    }

    pub fn forward<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        params: &D::Mem,
        idx: &[u32],
        out: &mut D::Mem,
    ) -> Result<()> {
        dev.embedding_forward(out, idx, params, self.weight, self.dim)
    }

    pub fn backward<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        grads: &mut D::Mem,
        idx: &[u32],
        dout: &D::Mem,
    ) -> Result<()> {
        dev.embedding_backward(grads, self.weight, dout, idx, self.dim)
    }
}

/// Gene embedding + learned position embedding + (optionally) Linear(1, dim) of the token's
/// expression value: out[n] = G[ids[n]] + P[pos[n]] (+ w·values[n] + b).
#[derive(Clone, Debug)]
pub struct TokenEmbedding {
    pub gene: ParamView,
    pub pos: ParamView,
    /// (weight [dim, 1], bias [dim]) of the expression-value projection.
    pub value: Option<(ParamView, ParamView)>,
    pub vocab: usize,
    pub max_len: usize,
    pub dim: usize,
}

impl TokenEmbedding {
    /// Registers `{prefix}gene_embedding`, `{prefix}position_embedding` and (when
    /// `use_values`) `{prefix}expression_projection`.
    pub fn new(
        l: &mut ParamLayout,
        prefix: &str,
        vocab: usize,
        max_len: usize,
        dim: usize,
        use_values: bool,
    ) -> Self {
        // Small N(0, 0.02) tables (BERT/GPT-2 init): Adam moves every parameter by about lr
        // per step whatever its scale, so unit-scale tables barely change in a short run.
        let gene = l.add(
            format!("{prefix}gene_embedding.weight"),
            &[vocab, dim],
            Init::Normal(EMB_STD),
        );
        let pos = l.add(
            format!("{prefix}position_embedding.weight"),
            &[max_len, dim],
            Init::Normal(EMB_STD),
        );
        let value = use_values.then(|| {
            (
                l.add(
                    format!("{prefix}expression_projection.weight"),
                    &[dim, 1],
                    Init::Normal(EMB_STD),
                ),
                l.add(
                    format!("{prefix}expression_projection.bias"),
                    &[dim],
                    Init::Zeros,
                ),
            )
        });
        TokenEmbedding {
            gene,
            pos,
            value,
            vocab,
            max_len,
            dim,
        }
    }

    /// out [n, dim] for the n tokens of `ids`/`pos`; `values` [n] is read only with a value
    /// projection. Errors on an id or position outside the tables.
    pub fn forward<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        params: &D::Mem,
        ids: &[u32],
        pos: &[u32],
        values: &D::Mem,
        out: &mut D::Mem,
    ) -> Result<()> {
        let value = self.value.map(|(w, b)| (w, b, values));
        dev.token_embedding_forward(out, ids, pos, params, self.gene, self.pos, value, self.dim)
    }

    /// Scatter-adds `dout` [n, dim] into the tables' gradients; dw += Σ dout·v, db += Σ dout.
    pub fn backward<T: Float, D: Device<T>>(
        &self,
        dev: &D,
        grads: &mut D::Mem,
        ids: &[u32],
        pos: &[u32],
        values: &D::Mem,
        dout: &D::Mem,
    ) -> Result<()> {
        let value = self.value.map(|(w, b)| (w, b, values));
        dev.token_embedding_backward(grads, dout, ids, pos, self.gene, self.pos, value, self.dim)
    }
}
