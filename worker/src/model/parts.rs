//! What the three architectures share beyond the kernels' modules: the config and batch glue
//! (activation from the config enum, size checks, the padded batch layout, pooling choices)
//! and [`Trunk`], the token embedding + dropout + encoder layers every model starts with.
//! Everything that computes goes through [`kernels::modules`] or the [`Device`] trait.

use configs::scmodelforge::{Activation as CfgActivation, ModelConfig, Pooling};
use data::masking::IGNORE_INDEX;
use data::Batch;
use kernels::modules::{layer_key, EncoderLayerConfig, Stack, TokenEmbedding, LN_EPS};
use kernels::rng::RngKey;
use kernels::{Activation, Device, ParamLayout, Precision};

use super::{GradsReady, ModelError, Result};

/// Padded sequence lengths are rounded up to a multiple of this, so batches of similar length
/// share one activation arena (padding rows are masked keys and carry no gradient).
pub const ROUND_SEQ: usize = 16;

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

/// A batch re-laid to [b, t] with t rounded up to [`ROUND_SEQ`].
pub struct Padded {
    pub b: usize,
    pub t: usize,
    pub ids: Vec<u32>,
    pub values: Vec<f32>,
    /// true = padding (PyTorch's key_padding_mask).
    pub pad: Vec<bool>,
    /// Position of each row-major token within its sequence.
    pub pos: Vec<u32>,
}

impl Padded {
    /// From per-token arrays of a [b, seq] batch.
    pub fn new(b: usize, seq: usize, ids: &[u32], values: &[f32], mask: &[u32]) -> Self {
        let t = seq.div_ceil(ROUND_SEQ).max(1) * ROUND_SEQ;
        let mut p = Padded {
            b,
            t,
            ids: vec![0; b * t],
            values: vec![0.0; b * t],
            pad: vec![true; b * t],
            pos: (0..b * t).map(|i| (i % t) as u32).collect(),
        };
        for r in 0..b {
            for j in 0..seq {
                let (src, dst) = (r * seq + j, r * t + j);
                p.ids[dst] = ids[src];
                p.values[dst] = values[src];
                p.pad[dst] = mask[src] == 0;
            }
        }
        p
    }

    /// The batch as the model reads it (masked ids and values), positions clamped to
    /// `max_len`.
    pub fn masked(batch: &Batch, max_len: usize) -> Self {
        let mut p = Self::new(
            batch.batch_size,
            batch.seq_len,
            &batch.gene_ids,
            &batch.values,
            &batch.attention_mask,
        );
        clamp_positions(&mut p.pos, &p.pad, max_len);
        p
    }

    /// The unmasked cell (labels restored into the ids, original values), positions clamped to
    /// `max_len`.
    pub fn unmasked(batch: &Batch, max_len: usize) -> Self {
        let ids: Vec<u32> = batch
            .gene_ids
            .iter()
            .zip(&batch.labels)
            .map(|(&id, &l)| if l != IGNORE_INDEX { l as u32 } else { id })
            .collect();
        let mut p = Self::new(
            batch.batch_size,
            batch.seq_len,
            &ids,
            &batch.target_values,
            &batch.attention_mask,
        );
        clamp_positions(&mut p.pos, &p.pad, max_len);
        p
    }

    /// Row index in the padded layout of token (r, j) of the original [b, seq] layout.
    pub fn row(&self, r: usize, j: usize) -> usize {
        r * self.t + j
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

/// Positions are clamped into the table for padding rows beyond `max_len` (never read).
pub fn clamp_positions(pos: &mut [u32], pad: &[bool], max_len: usize) {
    for (p, &is_pad) in pos.iter_mut().zip(pad) {
        if is_pad && *p as usize >= max_len {
            *p = (max_len - 1) as u32;
        }
    }
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

/// Cell embeddings [b, d] from a padded [b, t, d] tensor `h`: `Cls` takes row `cls_row(r)` of
/// sequence r, `Mean` averages its rows `rows(r)`.
pub fn pool<D: Device<f32>>(
    dev: &D,
    h: &D::Mem,
    b: usize,
    d: usize,
    pooling: Pooling,
    cls_row: impl Fn(usize) -> usize,
    rows: impl Fn(usize) -> Vec<usize>,
) -> Vec<f32> {
    let mut out = dev.zeros(b * d);
    match pooling {
        Pooling::Cls => {
            let picked: Vec<usize> = (0..b).map(cls_row).collect();
            dev.gather_rows(&mut out, h, &picked, d);
        }
        Pooling::Mean => {
            let (mut all, mut offsets) = (Vec::new(), vec![0]);
            for r in 0..b {
                all.extend(rows(r));
                offsets.push(all.len());
            }
            dev.mean_rows(&mut out, h, &all, &offsets, d);
        }
    }
    dev.download(&out)
}

/// [`pool`] as the encoders read a padded [b, t, d] tensor: `Cls` is each sequence's first row
/// ([CLS]), `Mean` averages its real (non-padding) rows.
pub fn pool_padded<D: Device<f32>>(
    dev: &D,
    h: &D::Mem,
    p: &Padded,
    d: usize,
    pooling: Pooling,
) -> Vec<f32> {
    let t = p.t;
    let real = |r: usize| (0..t).map(|j| r * t + j).filter(|&i| !p.pad[i]).collect();
    pool(dev, h, p.b, d, pooling, |r| r * t, real)
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

    /// Embeds the padded tokens, applies dropout (layer 0 of `key`; none when `key` is None,
    /// i.e. evaluation) and runs the encoder layers: hidden states [b, t, dim], valid until the
    /// next call.
    pub fn encode<D: Device<f32, Mem = M>>(
        &mut self,
        dev: &D,
        params: &M,
        p: &Padded,
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
        dev.resize(&mut self.x, p.b * p.t * e.dim);
        e.forward(dev, params, &p.ids, &p.pos, &self.values, &mut self.x)?;
        if let Some(k) = key {
            dev.dropout_forward(&mut self.x, self.dropout, layer_key(k, 0));
        }
        Ok(self
            .stack
            .forward(dev, params, &self.x, p.b, p.t, &p.pad, key)?)
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
        p: &Padded,
        dh: &M,
        key: RngKey,
        ready: &mut GradsReady,
    ) -> Result<()> {
        let dx = self
            .stack
            .backward(dev, params, grads, p.b, p.t, dh, key, ready);
        dev.dropout_backward(dx, self.dropout, layer_key(key, 0));
        let (ids, pos) = (&p.ids, &p.pos);
        Ok(self
            .embed
            .backward(dev, grads, ids, pos, &self.values, dx)?)
    }
}
