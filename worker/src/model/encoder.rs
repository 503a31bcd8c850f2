//! `transformer_encoder`: BERT/Geneformer-style masked gene prediction.
//!
//! ```text
//! x   = gene_embedding[id] + position_embedding[t] (+ expression_projection(value))
//! x   = dropout(x)
//! h   = encoder.layers.0 … encoder.layers.{L-1}(x)      pre-norm, key padding mask
//! z   = encoder.norm(h[masked rows]) · gene_embeddingᵀ + gene_head.bias   [masked, vocab]
//! loss = Σ cross_entropy(z, original gene)                over masked positions
//! ```
//! The head runs only on the masked rows (the loss is the same as on all rows with ignore
//! index −100, at a fraction of the cost). Cell embeddings are `encoder.norm(h)` pooled at
//! [CLS] (position 0) or averaged over the real tokens.

use configs::scmodelforge::{ModelConfig, Pooling};
use data::masking::IGNORE_INDEX;
use data::Batch;
use kernels::ops;
use kernels::rng::RngKey;
use kernels::{ParamLayout, Precision};

use super::parts::{self, clamp_positions, layer_key, NormHead, Padded, Stack, TokenEmbedding};
use super::{DataSpec, LossSum, Result, ScModel};

pub struct TransformerEncoderModel {
    layout: ParamLayout,
    pub embed: TokenEmbedding,
    pub stack: Stack,
    pub head: NormHead,
    dropout: f64,
    pooling: Pooling,
    prec: Precision,
    vocab: usize,
}

impl TransformerEncoderModel {
    pub fn new(cfg: &ModelConfig, spec: DataSpec, prec: Precision) -> Result<Self> {
        parts::check_dims(cfg)?;
        let h = cfg.hidden_dim;
        let mut l = ParamLayout::new();
        let embed = TokenEmbedding::new(
            &mut l,
            "",
            spec.vocab_size,
            cfg.max_seq_len,
            h,
            cfg.use_expression_values,
        );
        let stack = Stack::new(
            &mut l,
            "encoder.layers",
            cfg.num_layers,
            h,
            cfg.num_heads,
            cfg.ffn_dim(),
            cfg.dropout,
            parts::activation(cfg.activation),
            false,
            prec,
        )?;
        // The output projection is the gene embedding table (tied, as BERT's MLM decoder):
        // predicting a gene and reading it share one geometry, which is what lets the model
        // learn quickly that a masked gene is none of the genes it sees.
        let head = NormHead::tied(
            &mut l,
            "encoder.norm",
            "gene_head",
            embed.gene,
            h,
            spec.vocab_size,
        );
        Ok(Self {
            layout: l,
            embed,
            stack,
            head,
            dropout: cfg.dropout,
            pooling: cfg.pooling,
            prec,
            vocab: spec.vocab_size,
        })
    }

    /// Embeds the padded batch and runs the encoder; returns (padded layout, hidden states).
    fn encode(
        &mut self,
        params: &Vec<f32>,
        batch: &Batch,
        key: Option<RngKey>,
    ) -> Result<(Padded, Vec<f32>)> {
        let mut p = Padded::from_batch(batch);
        clamp_positions(&mut p.pos, &p.pad, self.embed.max_len);
        let mut x = vec![0.0f32; p.b * p.t * self.embed.dim];
        self.embed
            .forward(params, &p.ids, &p.pos, &p.values, &mut x)?;
        if let Some(k) = key {
            ops::dropout_forward(&mut x, self.dropout, layer_key(k, 0));
        }
        let h = self
            .stack
            .forward(params, &x, p.b, p.t, &p.pad, key)?
            .clone();
        Ok((p, h))
    }

    fn targets(batch: &Batch, p: &Padded) -> (Vec<usize>, Vec<i64>) {
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for r in 0..batch.batch_size {
            for j in 0..batch.seq_len {
                let l = batch.labels[r * batch.seq_len + j];
                if l != IGNORE_INDEX {
                    rows.push(p.row(r, j));
                    targets.push(l as i64);
                }
            }
        }
        (rows, targets)
    }

    fn loss(
        &mut self,
        params: &[f32],
        hidden: &[f32],
        rows: &[usize],
        targets: &[i64],
        dloss: f64,
    ) -> Result<(f64, Vec<f32>)> {
        self.head.forward(self.prec, params, hidden, rows);
        let m = rows.len();
        let mut dlogits = vec![0.0f32; m * self.vocab];
        let mean = ops::cross_entropy(&mut dlogits, &self.head.y, targets, m, self.vocab, dloss)?;
        Ok((mean * m as f64, dlogits))
    }
}

impl ScModel for TransformerEncoderModel {
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn train_batch(
        &mut self,
        params: &Vec<f32>,
        grads: &mut Vec<f32>,
        batch: &Batch,
        key: RngKey,
        scale: f32,
        ready: &mut super::GradsReady,
    ) -> Result<LossSum> {
        if batch.batch_size == 0 {
            return Ok(LossSum::default());
        }
        let (p, hidden) = self.encode(params, batch, Some(key))?;
        let (rows, targets) = Self::targets(batch, &p);
        let m = rows.len();
        // cross_entropy scales its gradient by dloss / m: dloss = m·scale gives scale·∂Σ.
        let (sum, dlogits) =
            self.loss(params, &hidden, &rows, &targets, m as f64 * scale as f64)?;
        let mut dh = vec![0.0f32; hidden.len()];
        self.head
            .backward(self.prec, params, grads, &dlogits, &rows, &mut dh);
        let dx = self
            .stack
            .backward(params, grads, p.b, p.t, &dh, key, ready);
        let mut dx = dx.clone();
        ops::dropout_backward(&mut dx, self.dropout, layer_key(key, 0));
        self.embed.backward(grads, &p.ids, &p.pos, &p.values, &dx);
        Ok(LossSum {
            sum,
            count: m as f64,
        })
    }

    fn eval_batch(&mut self, params: &Vec<f32>, batch: &Batch) -> Result<LossSum> {
        if batch.batch_size == 0 {
            return Ok(LossSum::default());
        }
        let (p, hidden) = self.encode(params, batch, None)?;
        let (rows, targets) = Self::targets(batch, &p);
        let (sum, _) = self.loss(params, &hidden, &rows, &targets, 0.0)?;
        Ok(LossSum {
            sum,
            count: rows.len() as f64,
        })
    }

    fn cell_embeddings(&mut self, params: &Vec<f32>, batch: &Batch) -> Result<Vec<f32>> {
        let (p, hidden) = self.encode(params, batch, None)?;
        let d = self.embed.dim;
        let all: Vec<usize> = (0..p.b * p.t).collect();
        let normed = final_norm(&self.head, params, &hidden, &all);
        Ok(pool(&normed, &p, d, self.pooling))
    }

    fn embedding_dim(&self) -> usize {
        self.embed.dim
    }
}

/// `norm` of `rows` of `hidden` (no head).
pub(crate) fn final_norm(
    head: &NormHead,
    params: &[f32],
    hidden: &[f32],
    rows: &[usize],
) -> Vec<f32> {
    let d = head.dim;
    let m = rows.len();
    let mut x = Vec::with_capacity(m * d);
    for &r in rows {
        x.extend_from_slice(&hidden[r * d..(r + 1) * d]);
    }
    let mut y = vec![0.0f32; m * d];
    let (mut mean, mut rstd) = (vec![0.0f32; m], vec![0.0f32; m]);
    if m > 0 {
        ops::layernorm_forward(
            &mut y,
            &mut mean,
            &mut rstd,
            &x,
            &params[head.norm.weight.range()],
            &params[head.norm.bias.range()],
            m,
            d,
            head.norm.eps,
        );
    }
    y
}

/// [CLS] (first token) or mean over real tokens, per sequence of a padded [b, t, d] tensor.
pub(crate) fn pool(h: &[f32], p: &Padded, d: usize, pooling: Pooling) -> Vec<f32> {
    let mut out = vec![0.0f32; p.b * d];
    for r in 0..p.b {
        let o = &mut out[r * d..(r + 1) * d];
        match pooling {
            Pooling::Cls => o.copy_from_slice(&h[r * p.t * d..(r * p.t + 1) * d]),
            Pooling::Mean => {
                let mut n = 0usize;
                for j in 0..p.t {
                    if !p.pad[r * p.t + j] {
                        n += 1;
                        let row = &h[(r * p.t + j) * d..(r * p.t + j + 1) * d];
                        o.iter_mut().zip(row).for_each(|(a, b)| *a += *b);
                    }
                }
                let inv = 1.0 / n.max(1) as f32;
                o.iter_mut().for_each(|a| *a *= inv);
            }
        }
    }
    out
}
