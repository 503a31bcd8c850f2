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
use kernels::ops;
use kernels::rng::RngKey;
use kernels::{Init, ParamLayout, ParamView, Precision};

use super::encoder::pool;
use super::parts::{
    self, clamp_positions, layer_key, NormHead, Padded, RowNorm, SavedLinear, Stack, TokenEmbedding,
};
use super::{DataSpec, LossSum, ModelError, Result, ScModel};

/// The decoder's dropout keys differ from the encoder's.
fn decoder_key(key: RngKey) -> RngKey {
    RngKey::new(key.seed, key.step, key.layer.wrapping_add(1))
}

pub struct MaskedAutoencoder {
    layout: ParamLayout,
    embed: TokenEmbedding,
    encoder: Stack,
    enc_norm: RowNorm,
    decoder_embed: SavedLinear,
    mask_token: ParamView,
    dec_gene: ParamView,
    dec_pos: ParamView,
    decoder: Stack,
    head: NormHead,
    dropout: f64,
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
    /// For each visible row of `vis` (non-pad), its row in `full`.
    vis_rows: Vec<(usize, usize)>,
    /// Masked rows of `full` and their target values.
    masked_rows: Vec<usize>,
    targets: Vec<f32>,
}

impl MaskedAutoencoder {
    pub fn new(cfg: &ModelConfig, spec: DataSpec, prec: Precision) -> Result<Self> {
        parts::check_dims(cfg)?;
        let (h, dd, dh) = (cfg.hidden_dim, cfg.decoder_dim(), cfg.decoder_heads());
        if dd == 0 || dh == 0 || !dd.is_multiple_of(dh) {
            return Err(ModelError::Config(format!(
                "model.decoder_dim = {dd} must be a positive multiple of model.decoder_heads = {dh}"
            )));
        }
        let act = parts::activation(cfg.activation);
        let mut l = ParamLayout::new();
        let embed = TokenEmbedding::new(
            &mut l,
            "",
            spec.vocab_size,
            cfg.max_seq_len,
            h,
            cfg.use_expression_values,
        );
        let encoder = Stack::new(
            &mut l,
            "encoder.layers",
            cfg.num_layers,
            h,
            cfg.num_heads,
            cfg.ffn_dim(),
            cfg.dropout,
            act,
            false,
            prec,
        )?;
        let enc_norm = RowNorm::new(&mut l, "encoder.norm", h);
        let decoder_embed = SavedLinear::new(&mut l, "decoder_embed", h, dd);
        let mask_token = l.add("mask_token", &[dd], Init::Normal(0.02));
        let dec_gene = l.add(
            "decoder_gene_embedding.weight",
            &[spec.vocab_size, dd],
            Init::Normal(parts::EMB_STD),
        );
        let dec_pos = l.add(
            "decoder_position_embedding.weight",
            &[cfg.max_seq_len, dd],
            Init::Normal(parts::EMB_STD),
        );
        let decoder = Stack::new(
            &mut l,
            "decoder.layers",
            cfg.decoder_layers,
            dd,
            dh,
            4 * dd,
            cfg.dropout,
            act,
            false,
            prec,
        )?;
        let head = NormHead::new(&mut l, "decoder.norm", "expression_head", dd, 1);
        Ok(Self {
            layout: l,
            embed,
            encoder,
            enc_norm,
            decoder_embed,
            mask_token,
            dec_gene,
            dec_pos,
            decoder,
            head,
            dropout: cfg.dropout,
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
        let ids: Vec<u32> = batch
            .gene_ids
            .iter()
            .zip(&batch.labels)
            .map(|(&id, &l)| if l != IGNORE_INDEX { l as u32 } else { id })
            .collect();
        let mut full = Padded::new(b, s, &ids, &batch.target_values, &batch.attention_mask);
        clamp_positions(&mut full.pos, &full.pad, self.max_len);
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
                vids[r * tv + k] = ids[r * s + j];
                vvals[r * tv + k] = batch.values[r * s + j];
                vmask[r * tv + k] = 1;
            }
        }
        let mut vis = Padded::new(b, tv, &vids, &vvals, &vmask);
        let mut vis_rows = Vec::new();
        for (r, cell) in per_cell.iter().enumerate() {
            for (k, &j) in cell.iter().enumerate() {
                let row = vis.row(r, k);
                vis.pos[row] = j as u32;
                vis_rows.push((row, full.row(r, j)));
            }
        }
        clamp_positions(&mut vis.pos, &vis.pad, self.max_len);
        Plan {
            vis,
            full,
            vis_rows,
            masked_rows,
            targets,
        }
    }

    /// Forward; returns the loss sum and keeps activations for backward.
    fn forward(&mut self, params: &Vec<f32>, pl: &Plan, key: Option<RngKey>) -> Result<f64> {
        let (h, dd) = (self.hidden, self.ddim);
        let v = &pl.vis;
        let mut x = vec![0.0f32; v.b * v.t * h];
        self.embed
            .forward(params, &v.ids, &v.pos, &v.values, &mut x)?;
        if let Some(k) = key {
            ops::dropout_forward(&mut x, self.dropout, layer_key(k, 0));
        }
        let enc = self.encoder.forward(params, &x, v.b, v.t, &v.pad, key)?;
        // Only real visible rows continue to the decoder.
        let mut e = Vec::with_capacity(pl.vis_rows.len() * h);
        for &(row, _) in &pl.vis_rows {
            e.extend_from_slice(&enc[row * h..(row + 1) * h]);
        }
        self.enc_norm.forward(params, &e);
        self.decoder_embed
            .forward(self.prec, params, &self.enc_norm.y.clone());
        let f = &pl.full;
        let mut dx = vec![0.0f32; f.b * f.t * dd];
        let (pos_tab, gene_tab) = (
            &params[self.dec_pos.range()],
            &params[self.dec_gene.range()],
        );
        for (n, row) in dx.chunks_exact_mut(dd).enumerate() {
            let p = f.pos[n] as usize;
            row.copy_from_slice(&pos_tab[p * dd..(p + 1) * dd]);
        }
        for (k, &(_, frow)) in pl.vis_rows.iter().enumerate() {
            let src = &self.decoder_embed.y[k * dd..(k + 1) * dd];
            dx[frow * dd..(frow + 1) * dd]
                .iter_mut()
                .zip(src)
                .for_each(|(a, b)| *a += *b);
        }
        let mt = &params[self.mask_token.range()];
        for &frow in &pl.masked_rows {
            let g = f.ids[frow] as usize;
            if g >= self.vocab {
                return Err(ModelError::Batch(format!(
                    "token id {g} outside the model vocabulary of {}",
                    self.vocab
                )));
            }
            let gr = &gene_tab[g * dd..(g + 1) * dd];
            for (c, a) in dx[frow * dd..(frow + 1) * dd].iter_mut().enumerate() {
                *a += mt[c] + gr[c];
            }
        }
        let dkey = key.map(decoder_key);
        let dec = self
            .decoder
            .forward(params, &dx, f.b, f.t, &f.pad, dkey)?
            .clone();
        self.head.forward(self.prec, params, &dec, &pl.masked_rows);
        let m = pl.masked_rows.len();
        let sum: f64 = (0..m)
            .map(|i| {
                let e = (self.head.y[i] - pl.targets[i]) as f64;
                e * e
            })
            .sum();
        Ok(sum)
    }
}

impl ScModel for MaskedAutoencoder {
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
        let pl = self.plan(batch);
        let sum = self.forward(params, &pl, Some(key))?;
        let (h, dd) = (self.hidden, self.ddim);
        let m = pl.masked_rows.len();
        // d(scale·Σ(y−v)²)/dy = 2·scale·(y−v)
        let dy: Vec<f32> = (0..m)
            .map(|i| 2.0 * scale * (self.head.y[i] - pl.targets[i]))
            .collect();
        let f = &pl.full;
        let mut ddec = vec![0.0f32; f.b * f.t * dd];
        self.head
            .backward(self.prec, params, grads, &dy, &pl.masked_rows, &mut ddec);
        let dkey = decoder_key(key);
        let din = self
            .decoder
            .backward(params, grads, f.b, f.t, &ddec, dkey, ready)
            .clone();
        for (n, row) in din.chunks_exact(dd).enumerate() {
            if f.pad[n] {
                continue;
            }
            let off = self.dec_pos.offset + f.pos[n] as usize * dd;
            grads[off..off + dd]
                .iter_mut()
                .zip(row)
                .for_each(|(a, b)| *a += *b);
        }
        for &frow in &pl.masked_rows {
            let row = &din[frow * dd..(frow + 1) * dd];
            let g = f.ids[frow] as usize;
            let off = self.dec_gene.offset + g * dd;
            for c in 0..dd {
                grads[self.mask_token.offset + c] += row[c];
                grads[off + c] += row[c];
            }
        }
        let mut dproj = Vec::with_capacity(pl.vis_rows.len() * dd);
        for &(_, frow) in &pl.vis_rows {
            dproj.extend_from_slice(&din[frow * dd..(frow + 1) * dd]);
        }
        let dnorm = self
            .decoder_embed
            .backward(self.prec, params, grads, &dproj);
        let de = self.enc_norm.backward(params, grads, &dnorm);
        let v = &pl.vis;
        let mut denc = vec![0.0f32; v.b * v.t * h];
        for (k, &(row, _)) in pl.vis_rows.iter().enumerate() {
            denc[row * h..(row + 1) * h].copy_from_slice(&de[k * h..(k + 1) * h]);
        }
        let mut dx = self
            .encoder
            .backward(params, grads, v.b, v.t, &denc, key, ready)
            .clone();
        ops::dropout_backward(&mut dx, self.dropout, layer_key(key, 0));
        self.embed.backward(grads, &v.ids, &v.pos, &v.values, &dx);
        Ok(LossSum {
            sum,
            count: m as f64,
        })
    }

    fn eval_batch(&mut self, params: &Vec<f32>, batch: &Batch) -> Result<LossSum> {
        if batch.batch_size == 0 {
            return Ok(LossSum::default());
        }
        let pl = self.plan(batch);
        let sum = self.forward(params, &pl, None)?;
        Ok(LossSum {
            sum,
            count: pl.masked_rows.len() as f64,
        })
    }

    fn cell_embeddings(&mut self, params: &Vec<f32>, batch: &Batch) -> Result<Vec<f32>> {
        let ids: Vec<u32> = batch
            .gene_ids
            .iter()
            .zip(&batch.labels)
            .map(|(&id, &l)| if l != IGNORE_INDEX { l as u32 } else { id })
            .collect();
        let mut p = Padded::new(
            batch.batch_size,
            batch.seq_len,
            &ids,
            &batch.target_values,
            &batch.attention_mask,
        );
        clamp_positions(&mut p.pos, &p.pad, self.max_len);
        let h = self.hidden;
        let mut x = vec![0.0f32; p.b * p.t * h];
        self.embed
            .forward(params, &p.ids, &p.pos, &p.values, &mut x)?;
        let enc = self
            .encoder
            .forward(params, &x, p.b, p.t, &p.pad, None)?
            .clone();
        self.enc_norm.forward(params, &enc);
        Ok(pool(&self.enc_norm.y, &p, h, self.pooling))
    }

    fn embedding_dim(&self) -> usize {
        self.hidden
    }
}
