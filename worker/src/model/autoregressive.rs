//! `autoregressive_transformer`: next-token prediction over the rank-ordered gene sequence.
//!
//! ```text
//! x    = gene_embedding[id] + position_embedding[t] (+ expression_projection(value))
//! h    = encoder.layers.*(dropout(x))                 pre-norm, causal + key padding mask
//! gene = gene_head(encoder.norm(h[t]))                → id of token t+1
//! bin  = expression_head(expression_norm(h[t]))       → expression bin (n_bins) of token t+1
//! loss = Σₜ gene_loss_weight·CE(gene) + expression_loss_weight·CE(bin)
//! ```
//! The model reads the unmasked cell (masking is a masked-modelling device; here the causal
//! mask hides the future). Expression bins are the tokenizer's bins for `binned_expression`,
//! otherwise the values binned per cell like the `uniform` tokenizer: bin 0 for zero, bins
//! 1..n_bins-1 in equal steps up to the cell's maximum.
//!
//! Cell embedding: under the causal mask only the *last* real token has attended to the whole
//! cell, so `pooling: cls` takes the last token's state (not position 0, which sees only
//! [CLS] itself); `pooling: mean` averages every real token's state.

use configs::scmodelforge::{ModelConfig, Pooling};
use data::masking::IGNORE_INDEX;
use data::Batch;
use kernels::ops;
use kernels::rng::RngKey;
use kernels::{ParamLayout, Precision};

use super::encoder::final_norm;
use super::parts::{self, clamp_positions, layer_key, NormHead, Padded, Stack, TokenEmbedding};
use super::{DataSpec, LossSum, ModelError, Result, ScModel};

pub struct AutoregressiveModel {
    layout: ParamLayout,
    embed: TokenEmbedding,
    stack: Stack,
    gene_head: NormHead,
    expr_head: NormHead,
    dropout: f64,
    pooling: Pooling,
    prec: Precision,
    vocab: usize,
    n_bins: usize,
    values_are_bins: bool,
    gene_w: f64,
    expr_w: f64,
}

/// The unmasked cell: labels restored into the ids, original values.
fn unmasked(batch: &Batch) -> (Vec<u32>, Vec<f32>) {
    let ids = batch
        .gene_ids
        .iter()
        .zip(&batch.labels)
        .map(|(&id, &l)| if l != IGNORE_INDEX { l as u32 } else { id })
        .collect();
    (ids, batch.target_values.clone())
}

impl AutoregressiveModel {
    pub fn new(cfg: &ModelConfig, spec: DataSpec, prec: Precision) -> Result<Self> {
        parts::check_dims(cfg)?;
        if cfg.n_bins < 2 {
            return Err(ModelError::Config(format!(
                "model.n_bins must be at least 2, got {}",
                cfg.n_bins
            )));
        }
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
            true,
            prec,
        )?;
        let gene_head = NormHead::new(&mut l, "encoder.norm", "gene_head", h, spec.vocab_size);
        let expr_head = NormHead::new(&mut l, "expression_norm", "expression_head", h, cfg.n_bins);
        Ok(Self {
            layout: l,
            embed,
            stack,
            gene_head,
            expr_head,
            dropout: cfg.dropout,
            pooling: cfg.pooling,
            prec,
            vocab: spec.vocab_size,
            n_bins: cfg.n_bins,
            values_are_bins: spec.values_are_bins,
            gene_w: cfg.gene_loss_weight,
            expr_w: cfg.expression_loss_weight,
        })
    }

    fn encode(
        &mut self,
        params: &Vec<f32>,
        batch: &Batch,
        key: Option<RngKey>,
    ) -> Result<(Padded, Vec<f32>)> {
        let (ids, values) = unmasked(batch);
        let mut p = Padded::new(
            batch.batch_size,
            batch.seq_len,
            &ids,
            &values,
            &batch.attention_mask,
        );
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

    /// Rows that predict a next token, with the next gene and its expression bin.
    fn targets(&self, batch: &Batch, p: &Padded) -> (Vec<usize>, Vec<i64>, Vec<i64>) {
        let (ids, values) = unmasked(batch);
        let (mut rows, mut genes, mut bins) = (Vec::new(), Vec::new(), Vec::new());
        let s = batch.seq_len;
        let top = (self.n_bins - 1) as f32;
        for r in 0..batch.batch_size {
            let len = batch.attention_mask[r * s..(r + 1) * s]
                .iter()
                .filter(|&&m| m != 0)
                .count();
            let vals = &values[r * s..r * s + len];
            let max = vals.iter().copied().fold(0.0f32, f32::max);
            for j in 0..len.saturating_sub(1) {
                rows.push(p.row(r, j));
                genes.push(ids[r * s + j + 1] as i64);
                let v = vals[j + 1];
                let bin = if self.values_are_bins {
                    v.round().clamp(0.0, top)
                } else if v > 0.0 && max > 0.0 {
                    1.0 + ((v / max) * top).floor().min(top - 1.0)
                } else {
                    0.0
                };
                bins.push(bin as i64);
            }
        }
        (rows, genes, bins)
    }

    /// Weighted loss sum; with `scale` Some, also the two heads' logit gradients.
    #[allow(clippy::type_complexity)]
    fn heads(
        &mut self,
        params: &[f32],
        hidden: &[f32],
        rows: &[usize],
        genes: &[i64],
        bins: &[i64],
        scale: f64,
    ) -> Result<(f64, Vec<f32>, Vec<f32>)> {
        let m = rows.len();
        self.gene_head.forward(self.prec, params, hidden, rows);
        self.expr_head.forward(self.prec, params, hidden, rows);
        let mut dg = vec![0.0f32; m * self.vocab];
        let mut de = vec![0.0f32; m * self.n_bins];
        let mg = ops::cross_entropy(
            &mut dg,
            &self.gene_head.y,
            genes,
            m,
            self.vocab,
            m as f64 * scale * self.gene_w,
        )?;
        let me = ops::cross_entropy(
            &mut de,
            &self.expr_head.y,
            bins,
            m,
            self.n_bins,
            m as f64 * scale * self.expr_w,
        )?;
        Ok(((self.gene_w * mg + self.expr_w * me) * m as f64, dg, de))
    }
}

impl ScModel for AutoregressiveModel {
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
        let (rows, genes, bins) = self.targets(batch, &p);
        let (sum, dg, de) = self.heads(params, &hidden, &rows, &genes, &bins, scale as f64)?;
        let mut dh = vec![0.0f32; hidden.len()];
        self.gene_head
            .backward(self.prec, params, grads, &dg, &rows, &mut dh);
        self.expr_head
            .backward(self.prec, params, grads, &de, &rows, &mut dh);
        let mut dx = self
            .stack
            .backward(params, grads, p.b, p.t, &dh, key, ready)
            .clone();
        ops::dropout_backward(&mut dx, self.dropout, layer_key(key, 0));
        self.embed.backward(grads, &p.ids, &p.pos, &p.values, &dx);
        Ok(LossSum {
            sum,
            count: rows.len() as f64,
        })
    }

    fn eval_batch(&mut self, params: &Vec<f32>, batch: &Batch) -> Result<LossSum> {
        if batch.batch_size == 0 {
            return Ok(LossSum::default());
        }
        let (p, hidden) = self.encode(params, batch, None)?;
        let (rows, genes, bins) = self.targets(batch, &p);
        let (sum, _, _) = self.heads(params, &hidden, &rows, &genes, &bins, 0.0)?;
        Ok(LossSum {
            sum,
            count: rows.len() as f64,
        })
    }

    fn cell_embeddings(&mut self, params: &Vec<f32>, batch: &Batch) -> Result<Vec<f32>> {
        let (p, hidden) = self.encode(params, batch, None)?;
        let d = self.embed.dim;
        let all: Vec<usize> = (0..p.b * p.t).collect();
        let normed = final_norm(&self.gene_head, params, &hidden, &all);
        let mut out = vec![0.0f32; p.b * d];
        for r in 0..p.b {
            let len = (0..p.t).filter(|&j| !p.pad[r * p.t + j]).count();
            let o = &mut out[r * d..(r + 1) * d];
            match self.pooling {
                Pooling::Cls => {
                    let j = len.saturating_sub(1);
                    o.copy_from_slice(&normed[(r * p.t + j) * d..(r * p.t + j + 1) * d]);
                }
                Pooling::Mean => {
                    for j in 0..len {
                        let row = &normed[(r * p.t + j) * d..(r * p.t + j + 1) * d];
                        o.iter_mut().zip(row).for_each(|(a, b)| *a += *b);
                    }
                    let inv = 1.0 / len.max(1) as f32;
                    o.iter_mut().for_each(|a| *a *= inv);
                }
            }
        }
        Ok(out)
    }

    fn embedding_dim(&self) -> usize {
        self.embed.dim
    }
}
