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

use super::parts::{self, layer_config, Padded, Trunk};
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
    max_len: usize,
    vocab: usize,
}

/// One batch split into the encoder's visible tokens and the decoder's full layout.
struct Plan {
    /// Visible tokens, [b, tv] padded.
    vis: Padded,
    /// Full sequences, [b, t] padded; ids are the original genes.
    full: Padded,
    /// The real visible rows of `vis`, and the row of each in `full`.
    vis_rows: Vec<usize>,
    vis_full: Vec<usize>,
    /// Masked rows of `full`, their genes and their target values.
    masked_rows: Vec<usize>,
    masked_ids: Vec<u32>,
    targets: Vec<f32>,
    /// The real (non-padding) rows of `full` and their positions.
    real_rows: Vec<usize>,
    real_pos: Vec<u32>,
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
            max_len: cfg.max_seq_len,
            vocab: spec.vocab_size,
        })
    }

    fn plan(&self, batch: &Batch) -> Plan {
        let (b, s) = (batch.batch_size, batch.seq_len);
        let full = Padded::unmasked(batch, self.max_len);
        // Visible tokens per cell, compacted.
        let mut per_cell: Vec<Vec<usize>> = vec![Vec::new(); b];
        let (mut masked_rows, mut targets) = (Vec::new(), Vec::new());
        for (r, cell) in per_cell.iter_mut().enumerate() {
            for j in 0..s {
                let i = r * s + j;
                if batch.attention_mask[i] == 0 {
                    continue;
                }
                if batch.labels[i] == IGNORE_INDEX {
                    cell.push(j);
                } else {
                    masked_rows.push(full.row(r, j));
                    targets.push(batch.target_values[i]);
                }
            }
        }
        let tv = per_cell.iter().map(|c| c.len()).max().unwrap_or(0);
        let (mut vids, mut vvals, mut vmask) =
            (vec![0u32; b * tv], vec![0f32; b * tv], vec![0u32; b * tv]);
        for (r, cell) in per_cell.iter().enumerate() {
            for (k, &j) in cell.iter().enumerate() {
                vids[r * tv + k] = full.ids[full.row(r, j)];
                vvals[r * tv + k] = batch.values[r * s + j];
                vmask[r * tv + k] = 1;
            }
        }
        let mut vis = Padded::new(b, tv, &vids, &vvals, &vmask);
        let (mut vis_rows, mut vis_full) = (Vec::new(), Vec::new());
        for (r, cell) in per_cell.iter().enumerate() {
            for (k, &j) in cell.iter().enumerate() {
                let row = vis.row(r, k);
                vis.pos[row] = j as u32;
                vis_rows.push(row);
                vis_full.push(full.row(r, j));
            }
        }
        parts::clamp_positions(&mut vis.pos, &vis.pad, self.max_len);
        let masked_ids = masked_rows.iter().map(|&r| full.ids[r]).collect();
        let real_rows: Vec<usize> = (0..full.pad.len()).filter(|&n| !full.pad[n]).collect();
        let real_pos = real_rows.iter().map(|&n| full.pos[n]).collect();
        Plan {
            vis,
            full,
            vis_rows,
            vis_full,
            masked_rows,
            masked_ids,
            targets,
            real_rows,
            real_pos,
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
        let (h, dd, prec) = (self.hidden, self.ddim, self.prec);
        let key = train.as_ref().map(|t| t.key);
        let enc = self.trunk.encode(dev, params, &pl.vis, key)?;
        // Only real visible rows continue to the decoder.
        let mut e = dev.zeros(pl.vis_rows.len() * h);
        dev.gather_rows(&mut e, enc, &pl.vis_rows, h);
        self.enc_norm.forward(dev, params, &e);
        self.decoder_embed
            .forward(dev, prec, params, &self.enc_norm.y);
        // Decoder input: position embedding everywhere, plus the projected encoder state on
        // visible rows, plus mask_token + decoder_gene_embedding[gene] on masked rows.
        let f = &pl.full;
        let mut dx = dev.zeros(f.b * f.t * dd);
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
            .forward(dev, params, &dx, f.b, f.t, &f.pad, key.map(decoder_key))?;
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
        let mut ddec = dev.zeros(f.b * f.t * dd);
        self.head
            .backward(dev, prec, params, grads, &dy, &pl.masked_rows, &mut ddec);
        let din = self.decoder.backward(
            dev,
            params,
            grads,
            f.b,
            f.t,
            &ddec,
            decoder_key(key),
            &mut *ready,
        );
        let rows_of = |rows: &[usize]| {
            let mut out = dev.zeros(rows.len() * dd);
            dev.gather_rows(&mut out, din, rows, dd);
            out
        };
        let dpos = rows_of(&pl.real_rows);
        dev.embedding_backward(grads, self.dec_pos, &dpos, &pl.real_pos, dd)?;
        let dmasked = rows_of(&pl.masked_rows);
        dev.embedding_backward(grads, self.mask_token, &dmasked, &token_idx, dd)?;
        dev.embedding_backward(grads, self.dec_gene, &dmasked, &pl.masked_ids, dd)?;
        let dproj = rows_of(&pl.vis_full);
        let dnorm = self
            .decoder_embed
            .backward(dev, prec, params, grads, &dproj);
        let de = self.enc_norm.backward(dev, params, grads, &dnorm);
        let v = &pl.vis;
        let mut denc = dev.zeros(v.b * v.t * h);
        dev.scatter_rows(&mut denc, &de, &pl.vis_rows, h, false);
        self.trunk
            .backward(dev, params, grads, v, &denc, key, ready)?;
        Ok(LossSum { sum, count })
    }

    fn cell_embeddings(&mut self, params: &D::Mem, batch: &Batch) -> Result<Vec<f32>> {
        let dev = &self.dev;
        let p = Padded::unmasked(batch, self.max_len);
        let enc = self.trunk.encode(dev, params, &p, None)?;
        self.enc_norm.forward(dev, params, enc);
        Ok(parts::pool_padded(
            dev,
            &self.enc_norm.y,
            &p,
            self.hidden,
            self.pooling,
        ))
    }

    fn embedding_dim(&self) -> usize {
        self.hidden
    }
}
