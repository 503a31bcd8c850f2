//! What the three architectures share beyond the kernels' modules: the config and batch glue
//! (activation from the config enum, size checks, the packed batch layout, pooling choices)
//! and [`Trunk`], the token embedding + dropout + encoder layers every model starts with.
//! Everything that computes goes through [`kernels::modules`] or the [`Device`] trait.

use configs::scmodelforge::{Activation as CfgActivation, ModelConfig, Pooling};
use data::masking::IGNORE_INDEX;
use data::Batch;
use kernels::modules::{layer_key, EncoderLayerConfig, Stack, TokenEmbedding, LN_EPS};
use kernels::ops::SeqLayout;
use kernels::rng::RngKey;
use kernels::{Activation, Device, ParamLayout, Precision};

use super::{GradsReady, ModelError, Result};

pub fn activation(a: CfgActivation) -> Activation {
    match a {
        CfgActivation::Gelu => Activation::Gelu,
        CfgActivation::Relu => Activation::Relu,
    }
}

/// Pre-norm encoder layers of width `dim` (PyTorch's layer norm ε).
#[allow(clippy::too_many_arguments)]
pub fn layer_config(
    dim: usize,
    heads: usize,
    ffn: usize,
    dropout: f64,
    act: Activation,
    causal: bool,
    precision: Precision,
) -> EncoderLayerConfig {
    EncoderLayerConfig {
        d_model: dim,
        nhead: heads,
        dim_feedforward: ffn,
        dropout,
        activation: act,
        layer_norm_eps: LN_EPS,
        causal,
        precision,
    }
}

/// A batch's real tokens packed row after row (padding dropped): cell r is rows
/// `starts[r]..starts[r + 1]`, so the encoder does no work on padding.
pub struct Tokens {
    /// Number of cells.
    pub b: usize,
    /// Row offsets of the cells (b + 1).
    pub starts: Vec<usize>,
    pub ids: Vec<u32>,
    pub values: Vec<f32>,
    /// Position of each row within its cell (its column in the batch).
    pub pos: Vec<u32>,
    /// Row of token (r, j) of the batch's [b, seq] layout; `usize::MAX` for padding.
    row_of: Vec<usize>,
    seq: usize,
}

impl Tokens {
    /// From per-token arrays of a [b, seq] batch: the tokens whose `mask` is non-zero.
    pub fn new(b: usize, seq: usize, ids: &[u32], values: &[f32], mask: &[u32]) -> Self {
        let real = mask[..b * seq].iter().filter(|&&m| m != 0).count();
        let mut p = Tokens {
            b,
            starts: Vec::with_capacity(b + 1),
            ids: Vec::with_capacity(real),
            values: Vec::with_capacity(real),
            pos: Vec::with_capacity(real),
            row_of: vec![usize::MAX; b * seq],
            seq,
        };
        p.starts.push(0);
        for r in 0..b {
            for j in 0..seq {
                let src = r * seq + j;
                if mask[src] != 0 {
                    p.row_of[src] = p.ids.len();
                    p.ids.push(ids[src]);
                    p.values.push(values[src]);
                    p.pos.push(j as u32);
                }
            }
            p.starts.push(p.ids.len());
        }
        p
    }

    /// The batch as the model reads it (masked ids and values).
    pub fn masked(batch: &Batch) -> Self {
        Self::new(
            batch.batch_size,
            batch.seq_len,
            &batch.gene_ids,
            &batch.values,
            &batch.attention_mask,
        )
    }

    /// The unmasked cell (labels restored into the ids, original values).
    pub fn unmasked(batch: &Batch) -> Self {
        let ids: Vec<u32> = batch
            .gene_ids
            .iter()
            .zip(&batch.labels)
            .map(|(&id, &l)| if l != IGNORE_INDEX { l as u32 } else { id })
            .collect();
        Self::new(
            batch.batch_size,
            batch.seq_len,
            &ids,
            &batch.target_values,
            &batch.attention_mask,
        )
    }

    /// Total rows (real tokens).
    pub fn n(&self) -> usize {
        self.ids.len()
    }

    /// Rows of cell r.
    pub fn cell(&self, r: usize) -> std::ops::Range<usize> {
        self.starts[r]..self.starts[r + 1]
    }

    /// Row of token (r, j) of the batch's [b, seq] layout, None for padding.
    pub fn row(&self, r: usize, j: usize) -> Option<usize> {
        Some(self.row_of[r * self.seq + j]).filter(|&i| i != usize::MAX)
    }

    /// The encoder layers' view of the rows.
    pub fn layout(&self) -> SeqLayout {
        SeqLayout::from_starts(self.starts.clone())
    }
}

/// Checks shared model sizes.
pub fn check_dims(cfg: &ModelConfig) -> Result<()> {
    if cfg.num_heads == 0 || !cfg.hidden_dim.is_multiple_of(cfg.num_heads) {
        return Err(ModelError::Config(format!(
            "model.hidden_dim = {} must be a multiple of model.num_heads = {}",
            cfg.hidden_dim, cfg.num_heads
        )));
    }
    if cfg.max_seq_len == 0 {
        return Err(ModelError::Config(
            "model.max_seq_len must be positive".into(),
        ));
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        return Err(ModelError::Config(format!(
            "model.dropout must be in [0, 1), got {}",
            cfg.dropout
        )));
    }
    Ok(())
}

/// Token ids within the model vocabulary.
pub fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(id) => Err(ModelError::Batch(format!(
            "token id {id} outside the model vocabulary of {vocab}"
        ))),
        None => Ok(()),
    }
}

/// Cell embeddings [b, d] from the hidden states `h` [rows, d] of `p`: `Cls` takes each cell's
/// first row ([CLS]), `Mean` averages its rows, `Last` (the autoregressive model's `Cls`) its
/// last row. A cell without tokens gets zeros.
pub fn pool<D: Device<f32>>(dev: &D, h: &D::Mem, p: &Tokens, d: usize, how: PoolRows) -> Vec<f32> {
    let (rows, offsets) = pooled_rows(p, how);
    let mut out = dev.zeros(p.b * d);
    dev.mean_rows(&mut out, h, &rows, &offsets, d);
    dev.download(&out)
}

/// Which rows of each cell a pooling reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolRows {
    First,
    Last,
    All,
}

impl From<Pooling> for PoolRows {
    fn from(p: Pooling) -> Self {
        match p {
            Pooling::Cls => PoolRows::First,
            Pooling::Mean => PoolRows::All,
        }
    }
}

/// The rows each cell pools, grouped per cell by the offsets (b + 1).
pub fn pooled_rows(p: &Tokens, how: PoolRows) -> (Vec<usize>, Vec<usize>) {
    let (mut rows, mut offsets) = (Vec::new(), vec![0]);
    for r in 0..p.b {
        let cell = p.cell(r);
        if !cell.is_empty() {
            match how {
                PoolRows::First => rows.push(cell.start),
                PoolRows::Last => rows.push(cell.end - 1),
                PoolRows::All => rows.extend(cell),
            }
        }
        offsets.push(rows.len());
    }
    (rows, offsets)
}

/// The token embedding (registered at the top level), a dropout on it, and the encoder layers
/// `encoder.layers.*`: how every architecture turns tokens into hidden states.
pub struct Trunk<M> {
    pub embed: TokenEmbedding,
    pub stack: Stack<M>,
    dropout: f64,
    /// The last encode's embeddings and values (the values are read again by backward).
    x: M,
    values: M,
}

impl<M: Default> Trunk<M> {
    /// Registers the embedding and `cfg.num_layers` layers (causal self-attention if `causal`).
    pub fn new(
        l: &mut ParamLayout,
        cfg: &ModelConfig,
        vocab: usize,
        causal: bool,
        prec: Precision,
    ) -> Result<Self> {
        let h = cfg.hidden_dim;
        let embed =
            TokenEmbedding::new(l, "", vocab, cfg.max_seq_len, h, cfg.use_expression_values);
        let act = activation(cfg.activation);
        let layers = layer_config(
            h,
            cfg.num_heads,
            cfg.ffn_dim(),
            cfg.dropout,
            act,
            causal,
            prec,
        );
        let stack = Stack::new(l, "encoder.layers", cfg.num_layers, layers)?;
        Ok(Trunk {
            embed,
            stack,
            dropout: cfg.dropout,
            x: M::default(),
            values: M::default(),
        })
    }
}

impl<M> Trunk<M> {
    pub fn dim(&self) -> usize {
        self.embed.dim
    }

    /// Embeds the tokens, applies dropout (layer 0 of `key`; none when `key` is None, i.e.
    /// evaluation) and runs the encoder layers: hidden states [rows, dim], valid until the next
    /// call.
    pub fn encode<D: Device<f32, Mem = M>>(
        &mut self,
        dev: &D,
        params: &M,
        p: &Tokens,
        key: Option<RngKey>,
    ) -> Result<&M> {
        let e = &self.embed;
        // Checked here, once, to name the config key; the kernel checks bounds again.
        check_ids(&p.ids, e.vocab)?;
        if let Some(t) = p.pos.iter().find(|&&t| t as usize >= e.max_len) {
            return Err(ModelError::Batch(format!(
                "position {t} beyond model.max_seq_len = {}",
                e.max_len
            )));
        }
        self.values = dev.upload(&p.values);
        dev.resize(&mut self.x, p.n() * e.dim);
        e.forward(dev, params, &p.ids, &p.pos, &self.values, &mut self.x)?;
        if let Some(k) = key {
            dev.dropout_forward(&mut self.x, self.dropout, layer_key(k, 0));
        }
        Ok(self.stack.forward(dev, params, &self.x, &p.layout(), key)?)
    }

    /// Backward of the last training [`encode`](Self::encode) of `p` from the hidden states'
    /// gradient `dh`: accumulates every gradient of the embedding and the layers; `ready`
    /// hears of each layer as soon as it is done.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<D: Device<f32, Mem = M>>(
        &mut self,
        dev: &D,
        params: &M,
        grads: &mut M,
        p: &Tokens,
        dh: &M,
        key: RngKey,
        ready: &mut GradsReady,
    ) -> Result<()> {
        let dx = self.stack.backward(dev, params, grads, dh, key, ready);
        dev.dropout_backward(dx, self.dropout, layer_key(key, 0));
        let (ids, pos) = (&p.ids, &p.pos);
        Ok(self
            .embed
            .backward(dev, grads, ids, pos, &self.values, dx)?)
    }
}
