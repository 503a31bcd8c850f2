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
use data::Batch;
use kernels::modules::NormHead;
use kernels::{Cpu, Device, ParamLayout, Precision};
use run::telemetry::TRACE_TARGET;
use tracing::info_span;

use super::parts::{self, PoolRows, Tokens, Trunk};
use super::{bytes_of, Arch, DataSpec, LossSum, ModelError, Result, Train};

pub struct AutoregressiveModel<D: Device<f32> = Cpu> {
    dev: D,
    layout: ParamLayout,
    trunk: Trunk<D::Mem>,
    gene_head: NormHead<D::Mem>,
    expr_head: NormHead<D::Mem>,
    pooling: Pooling,
    prec: Precision,
    vocab: usize,
    n_bins: usize,
    values_are_bins: bool,
    gene_w: f64,
    expr_w: f64,
}

impl AutoregressiveModel {
    pub fn new(cfg: &ModelConfig, spec: DataSpec, prec: Precision) -> Result<Self> {
        Self::with_device(Cpu, cfg, spec, prec)
    }
}

impl<D: Device<f32>> AutoregressiveModel<D> {
    pub fn with_device(dev: D, cfg: &ModelConfig, spec: DataSpec, prec: Precision) -> Result<Self> {
        parts::check_dims(cfg)?;
        if cfg.n_bins < 2 {
            return Err(ModelError::Config(format!(
                "model.n_bins must be at least 2, got {}",
                cfg.n_bins
            )));
        }
        let h = cfg.hidden_dim;
        let mut l = ParamLayout::new();
        let trunk = Trunk::new(&mut l, cfg, spec.vocab_size, true, prec)?;
        let gene_head = NormHead::new(&mut l, "encoder.norm", "gene_head", h, spec.vocab_size);
        let expr_head = NormHead::new(&mut l, "expression_norm", "expression_head", h, cfg.n_bins);
        Ok(Self {
            dev,
            layout: l,
            trunk,
            gene_head,
            expr_head,
            pooling: cfg.pooling,
            prec,
            vocab: spec.vocab_size,
            n_bins: cfg.n_bins,
            values_are_bins: spec.values_are_bins,
            gene_w: cfg.gene_loss_weight,
            expr_w: cfg.expression_loss_weight,
        })
    }

    /// Rows that predict a next token, with the next gene and its expression bin.
    fn targets(&self, batch: &Batch, p: &Tokens) -> (Vec<usize>, Vec<i64>, Vec<i64>) {
        let (mut rows, mut genes, mut bins) = (Vec::new(), Vec::new(), Vec::new());
        let s = batch.seq_len;
        let top = (self.n_bins - 1) as f32;
        for r in 0..batch.batch_size {
            // The cell's real tokens in order (the next token of row k is row k + 1).
            let cell = p.cell(r);
            let len = cell.len();
            let cols: Vec<usize> = (0..s).filter(|&j| p.row(r, j).is_some()).collect();
            let vals: Vec<f32> = cols
                .iter()
                .map(|&j| batch.target_values[r * s + j])
                .collect();
            let max = vals.iter().copied().fold(0.0f32, f32::max);
            for j in 0..len.saturating_sub(1) {
                rows.push(cell.start + j);
                genes.push(p.ids[cell.start + j + 1] as i64);
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
}

impl<D: Device<f32>> Arch<D> for AutoregressiveModel<D> {
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn prefetch(&self, batch: &Batch) {
        if batch.batch_size == 0 {
            return;
        }
        let p = Tokens::unmasked(batch);
        let (_, genes, bins) = self.targets(batch, &p);
        self.dev.prefetch(&[
            bytes_of(&p.ids),
            bytes_of(&p.pos),
            bytes_of(&genes),
            bytes_of(&bins),
        ]);
    }

    fn run(
        &mut self,
        params: &D::Mem,
        batch: &Batch,
        train: Option<Train<'_, D::Mem>>,
    ) -> Result<LossSum> {
        if batch.batch_size == 0 {
            return Ok(LossSum::default());
        }
        let forward = info_span!(target: TRACE_TARGET, "forward").entered();
        let dev = &self.dev;
        let p = Tokens::unmasked(batch);
        let (rows, genes, bins) = self.targets(batch, &p);
        let hidden = self
            .trunk
            .encode(dev, params, &p, train.as_ref().map(|t| t.key))?;
        let m = rows.len();
        let scale = train.as_ref().map_or(0.0, |t| t.scale as f64);
        self.gene_head
            .forward(dev, self.prec, params, hidden, &rows);
        self.expr_head
            .forward(dev, self.prec, params, hidden, &rows);
        let mut dg = dev.zeros(m * self.vocab);
        let mut de = dev.zeros(m * self.n_bins);
        let mg = dev.cross_entropy(
            &mut dg,
            &self.gene_head.y,
            &genes,
            m,
            self.vocab,
            m as f64 * scale * self.gene_w,
        )?;
        let me = dev.cross_entropy(
            &mut de,
            &self.expr_head.y,
            &bins,
            m,
            self.n_bins,
            m as f64 * scale * self.expr_w,
        )?;
        drop(forward);
        if let Some(Train {
            grads, key, ready, ..
        }) = train
        {
            let _backward = info_span!(target: TRACE_TARGET, "backward").entered();
            let mut dh = dev.zeros(dev.len(hidden));
            let rs = &rows;
            self.gene_head
                .backward(dev, self.prec, params, grads, &dg, rs, &mut dh);
            self.expr_head
                .backward(dev, self.prec, params, grads, &de, rs, &mut dh);
            self.trunk
                .backward(dev, params, grads, &p, &dh, key, ready)?;
        }
        Ok(LossSum {
            sum: (self.gene_w * mg + self.expr_w * me) * m as f64,
            count: m as f64,
        })
    }

    fn cell_embeddings(&mut self, params: &D::Mem, batch: &Batch) -> Result<Vec<f32>> {
        let dev = &self.dev;
        let p = Tokens::unmasked(batch);
        let hidden = self.trunk.encode(dev, params, &p, None)?;
        let normed = self.gene_head.normalize(dev, params, hidden, p.n());
        // Under the causal mask only the last token has seen the whole cell: it is the `cls`.
        let how = match self.pooling {
            Pooling::Cls => PoolRows::Last,
            Pooling::Mean => PoolRows::All,
        };
        Ok(parts::pool(dev, &normed, &p, self.trunk.dim(), how))
    }

    fn embedding_dim(&self) -> usize {
        self.trunk.dim()
    }
}
