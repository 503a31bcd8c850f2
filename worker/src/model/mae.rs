//! `masked_autoencoder`: the encoder sees only the visible (unmasked) tokens; a lighter decoder
//! reconstructs the expression value at the masked positions.
//!
//! ```text
//! visible  = tokens whose label is ignored (not masked), original positions kept
//! e        = encoder.norm(encoder.layers.*(gene_embedding + position_embedding
//!                                          (+ expression_projection(value))))   [B, Tv, H]
//! decoder input [B, T, D] (D = decoder_dim):
//!   visible t: decoder_embed(e)                              + decoder_position_embedding[t]
//!   masked t:  mask_token + decoder_gene_embedding[gene at t] + decoder_position_embedding[t]
//! y        = expression_head(decoder.norm(decoder.layers.*(…)))[masked]       [M, 1]
//! loss     = Σ (y − value)²  over masked positions (MSE)
//! ```
//! The decoder is told *which* gene to reconstruct at a masked position (as scGPT's
//! expression decoder queries by gene), never its value; the encoder sees neither.
//! Cell embeddings run the encoder over every token and pool `encoder.norm` states.

use configs::scmodelforge::{ModelConfig, Pooling};
use data::masking::IGNORE_INDEX;
use data::Batch;
use kernels::modules::{NormHead, RowNorm, SavedLinear, Stack, EMB_STD};
use kernels::rng::RngKey;
use kernels::{Cpu, Device, Init, ParamLayout, ParamView, Precision};
use run::telemetry::TRACE_TARGET;
use tracing::info_span;

use super::parts::{self, layer_config, Tokens, Trunk};
use super::{Arch, DataSpec, LossSum, ModelError, Result, Train};

/// The decoder's dropout keys differ from the encoder's.
fn decoder_key(key: RngKey) -> RngKey {
    RngKey::new(key.seed, key.step, key.layer.wrapping_add(1))
}

pub struct MaskedAutoencoder<D: Device<f32> = Cpu> {
    dev: D,
    layout: ParamLayout,
    trunk: Trunk<D::Mem>,
    enc_norm: RowNorm<D::Mem>,
    decoder_embed: SavedLinear<D::Mem>,
    /// [dd], read as a one-row table (every masked row looks up row 0).
    mask_token: ParamView,
    dec_gene: ParamView,
    dec_pos: ParamView,
    decoder: Stack<D::Mem>,
    head: NormHead<D::Mem>,
    pooling: Pooling,
    prec: Precision,
    hidden: usize,
    ddim: usize,
    vocab: usize,
}

/// One batch split into the encoder's visible tokens and the decoder's full sequences (both
/// packed, no padding).
struct Plan {
    /// Visible tokens, their original positions kept.
    vis: Tokens,
    /// Full sequences; ids are the original genes.
    full: Tokens,
    /// The row in `full` of each row of `vis`.
    vis_full: Vec<usize>,
    /// Masked rows of `full`, their genes and their target values.
    masked_rows: Vec<usize>,
    masked_ids: Vec<u32>,
    targets: Vec<f32>,
}

impl MaskedAutoencoder {
    pub fn new(cfg: &ModelConfig, spec: DataSpec, prec: Precision) -> Result<Self> {
        Self::with_device(Cpu, cfg, spec, prec)
    }
}

impl<D: Device<f32>> MaskedAutoencoder<D> {
    pub fn with_device(dev: D, cfg: &ModelConfig, spec: DataSpec, prec: Precision) -> Result<Self> {
        parts::check_dims(cfg)?;
        let (h, dd, dh) = (cfg.hidden_dim, cfg.decoder_dim(), cfg.decoder_heads());
        if dd == 0 || dh == 0 || !dd.is_multiple_of(dh) {
            return Err(ModelError::Config(format!(
                "model.decoder_dim = {dd} must be a positive multiple of model.decoder_heads = {dh}"
            )));
        }
        let act = parts::activation(cfg.activation);
        let mut l = ParamLayout::new();
        let trunk = Trunk::new(&mut l, cfg, spec.vocab_size, false, prec)?;
        let enc_norm = RowNorm::new(&mut l, "encoder.norm", h);
        let decoder_embed = SavedLinear::new(&mut l, "decoder_embed", h, dd);
        let mask_token = l.add("mask_token", &[dd], Init::Normal(0.02));
        let dec_gene = l.add(
            "decoder_gene_embedding.weight",
            &[spec.vocab_size, dd],
            Init::Normal(EMB_STD),
        );
        let dec_pos = l.add(
            "decoder_position_embedding.weight",
            &[cfg.max_seq_len, dd],
            Init::Normal(EMB_STD),
        );
        let layers = layer_config(dd, dh, 4 * dd, cfg.dropout, act, false, prec);
        let decoder = Stack::new(&mut l, "decoder.layers", cfg.decoder_layers, layers)?;
        let head = NormHead::new(&mut l, "decoder.norm", "expression_head", dd, 1);
        Ok(Self {
            dev,
            layout: l,
            trunk,
            enc_norm,
            decoder_embed,
            mask_token,
            dec_gene,
            dec_pos,
            decoder,
            head,
            pooling: cfg.pooling,
            prec,
            hidden: h,
            ddim: dd,
            vocab: spec.vocab_size,
        })
    }

    fn plan(&self, batch: &Batch) -> Plan {
        let (b, s) = (batch.batch_size, batch.seq_len);
        let full = Tokens::unmasked(batch);
        // Visible tokens: real and not masked. Their masks select them from the batch's layout.
        let mut vmask = vec![0u32; b * s];
        let (mut masked_rows, mut targets, mut vis_full) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..b {
            for j in 0..s {
                let i = r * s + j;
                let Some(row) = full.row(r, j) else { continue };
                if batch.labels[i] == IGNORE_INDEX {
                    vmask[i] = 1;
                    vis_full.push(row);
                } else {
                    masked_rows.push(row);
                    targets.push(batch.target_values[i]);
                }
            }
        }
        let vis = Tokens::new(b, s, &batch.gene_ids, &batch.values, &vmask);
        let masked_ids = masked_rows.iter().map(|&r| full.ids[r]).collect();
        Plan {
            vis,
            full,
            vis_full,
            masked_rows,
            masked_ids,
            targets,
        }
    }
}

impl<D: Device<f32>> Arch<D> for MaskedAutoencoder<D> {
    fn layout(&self) -> &ParamLayout {
        &self.layout
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
        let pl = &self.plan(batch);
        let dev = &self.dev;
        let (dd, prec) = (self.ddim, self.prec);
        let key = train.as_ref().map(|t| t.key);
        let enc = self.trunk.encode(dev, params, &pl.vis, key)?;
        self.enc_norm.forward(dev, params, enc);
        self.decoder_embed
            .forward(dev, prec, params, &self.enc_norm.y);
        // Decoder input: position embedding everywhere, plus the projected encoder state on
        // visible rows, plus mask_token + decoder_gene_embedding[gene] on masked rows.
        let f = &pl.full;
        let mut dx = dev.zeros(f.n() * dd);
        dev.embedding_forward(&mut dx, &f.pos, params, self.dec_pos, dd)?;
        dev.scatter_rows(&mut dx, &self.decoder_embed.y, &pl.vis_full, dd, true);
        parts::check_ids(&pl.masked_ids, self.vocab)?;
        let m = pl.masked_rows.len();
        let token_idx = vec![0u32; m];
        let mut masked_in = dev.zeros(m * dd);
        dev.embedding_forward(&mut masked_in, &pl.masked_ids, params, self.dec_gene, dd)?;
        let mut tokens = dev.zeros(m * dd);
        dev.embedding_forward(&mut tokens, &token_idx, params, self.mask_token, dd)?;
        dev.add_inplace(&mut masked_in, &tokens);
        dev.scatter_rows(&mut dx, &masked_in, &pl.masked_rows, dd, true);
        let dec = self
            .decoder
            .forward(dev, params, &dx, &f.layout(), key.map(decoder_key))?;
        self.head.forward(dev, prec, params, dec, &pl.masked_rows);
        let targets = dev.upload(&pl.targets);
        let count = m as f64;
        let Some(Train {
            grads,
            key,
            scale,
            ready,
        }) = train
        else {
            let sum = dev.squared_error_sum(None, &self.head.y, &targets, 0.0)?;
            return Ok(LossSum { sum, count });
        };
        // d(scale·Σ(y−v)²)/dy = 2·scale·(y−v)
        let mut dy = dev.zeros(m);
        let sum = dev.squared_error_sum(Some(&mut dy), &self.head.y, &targets, scale as f64)?;
        drop(forward);
        let _backward = info_span!(target: TRACE_TARGET, "backward").entered();
        let mut ddec = dev.zeros(f.n() * dd);
        self.head
            .backward(dev, prec, params, grads, &dy, &pl.masked_rows, &mut ddec);
        let din = self
            .decoder
            .backward(dev, params, grads, &ddec, decoder_key(key), &mut *ready);
        let rows_of = |rows: &[usize]| {
            let mut out = dev.zeros(rows.len() * dd);
            dev.gather_rows(&mut out, din, rows, dd);
            out
        };
        dev.embedding_backward(grads, self.dec_pos, din, &f.pos, dd)?;
        let dmasked = rows_of(&pl.masked_rows);
        dev.embedding_backward(grads, self.mask_token, &dmasked, &token_idx, dd)?;
        dev.embedding_backward(grads, self.dec_gene, &dmasked, &pl.masked_ids, dd)?;
        let dproj = rows_of(&pl.vis_full);
        let dnorm = self
            .decoder_embed
            .backward(dev, prec, params, grads, &dproj);
        let denc = self.enc_norm.backward(dev, params, grads, &dnorm);
        self.trunk
            .backward(dev, params, grads, &pl.vis, &denc, key, ready)?;
        Ok(LossSum { sum, count })
    }

    fn cell_embeddings(&mut self, params: &D::Mem, batch: &Batch) -> Result<Vec<f32>> {
        let dev = &self.dev;
        let p = Tokens::unmasked(batch);
        let enc = self.trunk.encode(dev, params, &p, None)?;
        self.enc_norm.forward(dev, params, enc);
        let how = self.pooling.into();
        Ok(parts::pool(dev, &self.enc_norm.y, &p, self.hidden, how))
    }

    fn embedding_dim(&self) -> usize {
        self.hidden
    }
}
