//! `transformer_encoder`: BERT/Geneformer-style masked gene prediction.
//!
//! ```text
//! x   = gene_embedding[id] + position_embedding[t] (+ expression_projection(value))
//! x   = dropout(x)
//! h   = encoder.layers.0 … encoder.layers.{L-1}(x)      pre-norm, over the real tokens only
//! z   = encoder.norm(h[masked rows]) · gene_embeddingᵀ + gene_head.bias   [masked, vocab]
//! loss = Σ cross_entropy(z, original gene)                over masked positions
//! ```
//! The head runs only on the masked rows (the loss is the same as on all rows with ignore
//! index −100, at a fraction of the cost). Cell embeddings are `encoder.norm(h)` pooled at
//! [CLS] (position 0) or averaged over the real tokens.

use configs::scmodelforge::{ModelConfig, Pooling};
use data::masking::IGNORE_INDEX;
use data::Batch;
use kernels::modules::{LoraSpec, NormHead};
use kernels::{Cpu, Device, ParamLayout, Precision};
use run::telemetry::TRACE_TARGET;
use tracing::info_span;

use super::parts::{self, PoolRows, Tokens, Trunk};
use super::{bytes_of, Arch, DataSpec, GradsReady, LossSum, ModelError, Result, Train};
use kernels::rng::RngKey;

pub struct TransformerEncoderModel<D: Device<f32> = Cpu> {
    dev: D,
    layout: ParamLayout,
    pub trunk: Trunk<D::Mem>,
    pub head: NormHead<D::Mem>,
    pooling: Pooling,
    prec: Precision,
    vocab: usize,
    /// What the last training `pooled_forward` keeps for `pooled_backward`.
    pooled: Option<PooledActs<D::Mem>>,
}

/// A training pooled forward's activations: the packed batch, the pooled rows (grouped per
/// cell by `offsets`), those rows of the hidden state and their norm statistics.
pub struct PooledActs<M> {
    p: Tokens,
    rows: Vec<usize>,
    offsets: Vec<usize>,
    x: M,
    mean: M,
    rstd: M,
}

impl TransformerEncoderModel {
    pub fn new(cfg: &ModelConfig, spec: DataSpec, prec: Precision) -> Result<Self> {
        Self::with_device(Cpu, cfg, spec, prec)
    }
}

impl<D: Device<f32>> TransformerEncoderModel<D> {
    pub fn with_device(dev: D, cfg: &ModelConfig, spec: DataSpec, prec: Precision) -> Result<Self> {
        parts::check_dims(cfg)?;
        let h = cfg.hidden_dim;
        let mut l = ParamLayout::new();
        let trunk = Trunk::new(&mut l, cfg, spec.vocab_size, false, prec)?;
        // The output projection is the gene embedding table (tied, as BERT's MLM decoder):
        // predicting a gene and reading it share one geometry, which is what lets the model
        // learn quickly that a masked gene is none of the genes it sees.
        let gene = trunk.embed.gene;
        let head = NormHead::tied(
            &mut l,
            "encoder.norm",
            "gene_head",
            gene,
            h,
            spec.vocab_size,
        );
        Ok(Self {
            dev,
            layout: l,
            trunk,
            head,
            pooling: cfg.pooling,
            prec,
            vocab: spec.vocab_size,
            pooled: None,
        })
    }

    /// The masked rows and their original genes. A label on a padding token is a batch error.
    fn targets(batch: &Batch, p: &Tokens) -> Result<(Vec<usize>, Vec<i64>)> {
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for r in 0..batch.batch_size {
            for j in 0..batch.seq_len {
                let l = batch.labels[r * batch.seq_len + j];
                if l != IGNORE_INDEX {
                    let row = p.row(r, j).ok_or_else(|| {
                        ModelError::Batch(format!(
                            "cell {r} has a masked-gene label on padding (position {j})"
                        ))
                    })?;
                    rows.push(row);
                    targets.push(l as i64);
                }
            }
        }
        Ok((rows, targets))
    }
}

impl<D: Device<f32>> Arch<D> for TransformerEncoderModel<D> {
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn prefetch(&self, batch: &Batch) {
        if batch.batch_size == 0 {
            return;
        }
        let p = Tokens::masked(batch);
        // A bad batch is reported by `run`; there is nothing to copy ahead for it.
        if let Ok((_, targets)) = Self::targets(batch, &p) {
            self.dev
                .prefetch(&[bytes_of(&p.ids), bytes_of(&p.pos), bytes_of(&targets)]);
        }
    }

    fn attach_lora(&mut self, spec: &LoraSpec) -> Result<Vec<String>> {
        self.trunk
            .stack
            .attach_lora(&mut self.layout, spec)
            .map_err(|e| ModelError::Config(format!("finetune.lora.target_modules: {e}")))
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
        let p = Tokens::masked(batch);
        let (rows, targets) = Self::targets(batch, &p)?;
        let hidden = self
            .trunk
            .encode(dev, params, &p, train.as_ref().map(|t| t.key))?;
        let m = rows.len();
        self.head.forward(dev, self.prec, params, hidden, &rows);
        // cross_entropy scales its gradient by dloss / m: dloss = m·scale gives scale·∂Σ.
        let dloss = train.as_ref().map_or(0.0, |t| m as f64 * t.scale as f64);
        let mut dlogits = dev.zeros(m * self.vocab);
        let mean = dev.cross_entropy(&mut dlogits, &self.head.y, &targets, m, self.vocab, dloss)?;
        drop(forward);
        if let Some(Train {
            grads, key, ready, ..
        }) = train
        {
            let _backward = info_span!(target: TRACE_TARGET, "backward").entered();
            let mut dh = dev.zeros(dev.len(hidden));
            self.head
                .backward(dev, self.prec, params, grads, &dlogits, &rows, &mut dh);
            self.trunk
                .backward(dev, params, grads, &p, &dh, key, ready)?;
        }
        Ok(LossSum {
            sum: mean * m as f64,
            count: m as f64,
        })
    }

    fn cell_embeddings(&mut self, params: &D::Mem, batch: &Batch) -> Result<Vec<f32>> {
        let dev = &self.dev;
        let p = Tokens::masked(batch);
        let hidden = self.trunk.encode(dev, params, &p, None)?;
        let normed = self.head.normalize(dev, params, hidden, p.n());
        let d = self.trunk.dim();
        Ok(parts::pool(dev, &normed, &p, d, self.pooling.into()))
    }

    fn embedding_dim(&self) -> usize {
        self.trunk.dim()
    }

    /// `encoder.norm` over the pooled rows only (each sequence's [CLS] row, or its real rows for
    /// `mean`), then the pooling: the same embedding as `cell_embeddings`, whose backward is
    /// the norm's over those rows scattered into the hidden state's gradient.
    fn pooled_forward(
        &mut self,
        params: &D::Mem,
        batch: &Batch,
        key: Option<RngKey>,
    ) -> Result<Vec<f32>> {
        let Some(key) = key else {
            self.pooled = None;
            return self.cell_embeddings(params, batch);
        };
        let dev = &self.dev;
        let d = self.trunk.dim();
        let p = Tokens::masked(batch);
        let (rows, offsets) = parts::pooled_rows(&p, PoolRows::from(self.pooling));
        let m = rows.len();
        let hidden = self.trunk.encode(dev, params, &p, Some(key))?;
        let mut x = dev.zeros(m * d);
        dev.gather_rows(&mut x, hidden, &rows, d);
        let (mut y, mut mean, mut rstd) = (dev.zeros(m * d), dev.zeros(m), dev.zeros(m));
        if m > 0 {
            self.head
                .norm
                .forward(dev, params, &x, &mut y, &mut mean, &mut rstd, m);
        }
        let mut out = dev.zeros(p.b * d);
        let all: Vec<usize> = (0..m).collect();
        dev.mean_rows(&mut out, &y, &all, &offsets, d);
        self.pooled = Some(PooledActs {
            p,
            rows,
            offsets,
            x,
            mean,
            rstd,
        });
        Ok(dev.download(&out))
    }

    fn pooled_backward(
        &mut self,
        params: &D::Mem,
        grads: &mut D::Mem,
        dpooled: &[f32],
        key: RngKey,
        ready: &mut GradsReady,
    ) -> Result<()> {
        let Some(a) = self.pooled.take() else {
            return Err(ModelError::Batch(
                "pooled_backward without a training pooled_forward".into(),
            ));
        };
        let dev = &self.dev;
        let d = self.trunk.dim();
        let m = a.rows.len();
        if dpooled.len() != a.p.b * d {
            return Err(ModelError::Batch(format!(
                "pooled gradient of {} values for {} cells of width {d}",
                dpooled.len(),
                a.p.b
            )));
        }
        // d(row k of cell g) = d(pooled g) / (rows of g): the mean's backward (1 row for CLS).
        let mut dy_host = vec![0.0f32; m * d];
        for g in 0..a.p.b {
            let (lo, hi) = (a.offsets[g], a.offsets[g + 1]);
            let inv = 1.0 / (hi - lo).max(1) as f32;
            for k in lo..hi {
                for c in 0..d {
                    dy_host[k * d + c] = dpooled[g * d + c] * inv;
                }
            }
        }
        let dy = dev.upload(&dy_host);
        let mut dx = dev.zeros(m * d);
        if m > 0 {
            self.head.norm.backward(
                dev, params, grads, &a.x, &a.mean, &a.rstd, &dy, &mut dx, false, m,
            );
        }
        let mut dh = dev.zeros(a.p.n() * d);
        dev.scatter_rows(&mut dh, &dx, &a.rows, d, false);
        self.trunk
            .backward(dev, params, grads, &a.p, &dh, key, ready)
    }
}
