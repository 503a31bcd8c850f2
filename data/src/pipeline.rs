//! The per-cell path from stored counts to a masked token sequence, and batch assembly.

use std::path::Path;

use configs::scmodelforge::{DataSource, ScModelForgeConfig};

use crate::dataset::{Dataset, Gathered};
use crate::error::{DataError, Result};
use crate::masking::{Masker, IGNORE_INDEX};
use crate::preprocess::Preprocessor;
use crate::rng::seed_from_config;
use crate::tokenize::{Scratch, TokenizedCell, Tokenizer};
use crate::vocab::{GeneVocab, PAD};

/// A padded batch, row-major [batch_size, seq_len] in every per-token field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub epoch: u64,
    pub step: u64,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Global cell ids, one per row.
    pub cells: Vec<u64>,
    /// Input token ids after masking; [PAD] = 0 past each sequence's end.
    pub gene_ids: Vec<u32>,
    /// Input values after masking (masked positions hold `MASK_VALUE`); 0 at padding. For
    /// `binned_expression` these are bin indices.
    pub values: Vec<f32>,
    /// Values before masking (for expression-reconstruction losses); 0 at padding.
    pub target_values: Vec<f32>,
    /// Original gene ids at masked positions, `IGNORE_INDEX` (-100) elsewhere.
    pub labels: Vec<i32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
}

impl Batch {
    pub fn shape(&self) -> [usize; 2] {
        [self.batch_size, self.seq_len]
    }
}

/// Everything needed to turn cell ids into batches. Shared (read-only) by loader threads.
pub struct Pipeline {
    pub dataset: Dataset,
    pub preprocessor: Preprocessor,
    pub tokenizer: Tokenizer,
    /// None: no masking (labels all ignored).
    pub masker: Option<Masker>,
}

/// Per-thread buffers.
#[derive(Default)]
pub struct Workspace {
    hist: Vec<u32>,
    buckets: Vec<u16>,
    lut: Vec<f32>,
    scratch_keys: Vec<u64>,
    flat_genes_tmp: Vec<u32>,
    flat_genes: Vec<u32>,
    flat_values: Vec<f32>,
    lens: Vec<usize>,
    genes: Vec<u32>,
    values: Vec<f32>,
    cell: TokenizedCell,
    scratch: Scratch,
    positions: Vec<u32>,
    gathered: Gathered,
}

impl Workspace {
    /// The cell most recently tokenized by [`Pipeline::tokenize_into`].
    pub fn cell(&self) -> &TokenizedCell {
        &self.cell
    }
}

impl Pipeline {
    /// Open `data.paths`, resolve the vocabulary (`data.gene_vocab`, or `tokenizer.gene_vocab`
    /// when only that one is a file), and build preprocessing, tokenizer and masker from a
    /// scModelForge config.
    pub fn from_config(cfg: &ScModelForgeConfig) -> Result<Self> {
        if cfg.data.source != DataSource::Local {
            return Err(DataError::Config(
                "data.source cellxgene_census is not supported; download the cells to .h5ad and use data.source: local".into(),
            ));
        }
        // Both sections name a vocabulary; a file in either wins, `data.gene_vocab` first.
        let vocab = [&cfg.data.gene_vocab, &cfg.tokenizer.gene_vocab]
            .into_iter()
            .find(|v| Path::new(v.as_str()).is_file())
            .unwrap_or(&cfg.data.gene_vocab);
        let vocab_file = Path::new(vocab.as_str());
        let files =
            crate::dataset::open_data(&cfg.data, vocab_file.is_file().then_some(vocab_file))?;
        let dataset = Dataset::from_readers(files, vocab)?;
        Self::with_dataset(cfg, dataset)
    }

    pub fn with_dataset(cfg: &ScModelForgeConfig, dataset: Dataset) -> Result<Self> {
        let preprocessor = Preprocessor::build(&cfg.data.preprocessing, &dataset)?;
        let tokenizer =
            Tokenizer::from_config(&cfg.tokenizer, cfg.data.max_genes, dataset.vocab())?;
        let masker = Masker::new(
            &cfg.tokenizer.masking,
            dataset.vocab().len(),
            seed_from_config(cfg.training.seed),
        )?;
        Ok(Pipeline {
            dataset,
            preprocessor,
            tokenizer,
            masker: Some(masker),
        })
    }

    pub fn vocab(&self) -> &GeneVocab {
        self.dataset.vocab()
    }

    /// Save the vocabulary as `dir/vocab.json`.
    pub fn save_vocab(&self, dir: &Path) -> Result<()> {
        self.vocab().save(&dir.join("vocab.json"))
    }

    /// Tokenize one cell's raw (vocabulary-mapped) entries into `ws.cell`.
    pub fn tokenize_into(&self, genes: &[u32], raw: &[f32], ws: &mut Workspace) {
        if !self.tokenize_counts(genes, raw, ws) {
            self.tokenize_general(genes, raw, ws);
        }
    }

    /// The reference path: preprocess every entry, then let the tokenizer sort.
    pub fn tokenize_general(&self, genes: &[u32], raw: &[f32], ws: &mut Workspace) {
        ws.genes.clear();
        ws.values.clear();
        self.preprocessor
            .apply(genes, raw, &mut ws.genes, &mut ws.values);
        self.tokenizer
            .tokenize(&ws.genes, &ws.values, &mut ws.cell, &mut ws.scratch);
    }

    /// Fast path for count data (every value a whole number up to 65536), the usual AnnData
    /// content. Normalization and log1p are strictly increasing within a cell, so ordering by
    /// the raw count gives the same order as ordering by the preprocessed value (ties, equal
    /// counts, stay in row order either way). A stable counting sort on the counts replaces
    /// the comparison sort, and log1p is computed once per distinct count. Output is identical
    /// to [`Pipeline::tokenize_general`]; returns false (doing nothing) for other data.
    fn tokenize_counts(&self, genes: &[u32], raw: &[f32], ws: &mut Workspace) -> bool {
        const MAX_COUNT: f32 = 65536.0;
        // Counts up to SMALL get a histogram bucket each; larger ones (rare: a cell's top
        // genes) share bucket BIG and are then ordered by comparison. Bucket 0 collects
        // entries that are dropped (zeros, genes outside `keep`).
        const SMALL: usize = 1024;
        let n = genes.len().min(raw.len());
        let (genes, raw) = (&genes[..n], &raw[..n]);
        // Branch-free over 8 lanes, so it vectorizes: whole numbers in range (adding and
        // subtracting 2^23 rounds an f32 below 2^23 to a whole number), their exact sum (f64
        // holds sums of whole numbers exactly) and maximum.
        const ROUND: f32 = 8_388_608.0;
        let (mut ok, mut sum, mut max) = ([true; 8], [0f64; 8], [0f32; 8]);
        let mut lane = |k: usize, v: f32| {
            ok[k] &= (0.0..=MAX_COUNT).contains(&v) & ((v + ROUND) - ROUND == v);
            sum[k] += f64::from(v);
            max[k] = if v > max[k] { v } else { max[k] };
        };
        let chunks = raw.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for (k, &v) in c.iter().enumerate() {
                lane(k, v);
            }
        }
        for &v in rest {
            lane(0, v);
        }
        if !ok.iter().all(|&x| x) {
            return false;
        }
        let int_total: f64 = sum.iter().sum();
        let max_count = max.iter().fold(0f32, |m, &x| m.max(x)) as u32;
        // The general path sums in f32, in row order. Partial sums of whole numbers up to 2^24
        // are exact in f32, so then the integer total is that same f32; beyond, redo it.
        let total = if int_total <= (1u32 << 24) as f64 {
            int_total as f32
        } else {
            let mut t = 0f32;
            for &v in raw {
                t += v;
            }
            t
        };
        let pre = &self.preprocessor;
        let scale = match pre.target_sum {
            Some(t) if total > 0.0 => t / total,
            Some(_) => 0.0,
            None => 1.0,
        };
        let value_of = |v: f32| {
            let x = v * scale;
            if pre.log1p {
                x.ln_1p()
            } else {
                x
            }
        };

        // Bucket of every entry: 0 for dropped entries (zeros, genes outside `keep`), the count
        // itself up to `top`, and `big` for counts above SMALL.
        let top = (max_count as usize).min(SMALL);
        let big = top + 1;
        let buckets = &mut ws.buckets;
        buckets.clear();
        let bucket = |v: f32| (v as u32 as usize).min(big) as u16;
        match &pre.keep {
            None => buckets.extend(raw.iter().map(|&v| bucket(v))),
            Some(keep) => buckets.extend(genes.iter().zip(raw).map(|(&g, &v)| {
                if keep.get(g as usize).copied().unwrap_or(false) {
                    bucket(v)
                } else {
                    0
                }
            })),
        }

        // The row is split into QUARTERS contiguous parts with a histogram each, visited
        // interleaved: consecutive increments then hit different counters, instead of waiting
        // on each other when neighbouring entries have the same count (the usual case). Part
        // q of a bucket is placed before part q + 1, so the scatter stays stable.
        const QUARTERS: usize = 4;
        let w = big + 1;
        let part = n / QUARTERS;
        // The few entries past QUARTERS * part belong to the last part (all of them, when
        // the row is shorter than QUARTERS).
        let hist = &mut ws.hist;
        hist.clear();
        hist.resize(QUARTERS * w, 0);
        {
            let (h0, rest) = hist.split_at_mut(w);
            let (h1, rest) = rest.split_at_mut(w);
            let (h2, h3) = rest.split_at_mut(w);
            let (b0, rest) = buckets.split_at(part);
            let (b1, rest) = rest.split_at(part);
            let (b2, rest) = rest.split_at(part);
            let (b3, tail) = rest.split_at(part);
            for j in 0..part {
                h0[b0[j] as usize] += 1;
                h1[b1[j] as usize] += 1;
                h2[b2[j] as usize] += 1;
                h3[b3[j] as usize] += 1;
            }
            for &b in tail {
                h3[b as usize] += 1;
            }
        }

        // Output offset of each (bucket, part): big counts first, then counts descending,
        // dropped entries last, past the end of the kept ones; and the value of each present
        // count.
        let tok = &self.tokenizer;
        let cls = usize::from(tok.prepend_cls);
        let lut = &mut ws.lut;
        lut.resize(w, 0.0);
        let mut acc = cls as u32;
        let mut n_big = 0u32;
        for q in 0..QUARTERS {
            let k = hist[q * w + big];
            hist[q * w + big] = acc;
            acc += k;
            n_big += k;
        }
        for c in (1..=top).rev() {
            let start = acc;
            for q in 0..QUARTERS {
                let k = hist[q * w + c];
                hist[q * w + c] = acc;
                acc += k;
            }
            if acc > start {
                lut[c] = value_of(c as f32);
            }
        }
        let kept_end = acc as usize;
        for q in 0..QUARTERS {
            let k = hist[q * w];
            hist[q * w] = acc;
            acc += k;
        }

        // Stable scatter of (gene, value) into place.
        let out = &mut ws.cell;
        out.genes.clear();
        out.values.clear();
        out.genes.resize(cls + n, 0);
        out.values.resize(cls + n, 0.0);
        if tok.prepend_cls {
            out.genes[0] = crate::vocab::CLS;
        }
        {
            let (genes_out, values_out) = (&mut out.genes[..], &mut out.values[..]);
            let lut = &lut[..w];
            let mut place = |counter: &mut u32, b: u16, g: u32, v: f32| {
                let b = b as usize;
                let slot = *counter as usize;
                *counter += 1;
                genes_out[slot] = g;
                // Big counts keep their raw value until they are sorted below.
                values_out[slot] = if b == big { v } else { lut[b] };
            };
            let (h0, rest) = hist.split_at_mut(w);
            let (h1, rest) = rest.split_at_mut(w);
            let (h2, h3) = rest.split_at_mut(w);
            let parts = |x: usize| x * part..(x + 1) * part;
            let (b0, b1, b2, b3) = (
                &buckets[parts(0)],
                &buckets[parts(1)],
                &buckets[parts(2)],
                &buckets[parts(3)],
            );
            let (g0, g1, g2, g3) = (
                &genes[parts(0)],
                &genes[parts(1)],
                &genes[parts(2)],
                &genes[parts(3)],
            );
            let (v0, v1, v2, v3) = (
                &raw[parts(0)],
                &raw[parts(1)],
                &raw[parts(2)],
                &raw[parts(3)],
            );
            for j in 0..part {
                place(&mut h0[b0[j] as usize], b0[j], g0[j], v0[j]);
                place(&mut h1[b1[j] as usize], b1[j], g1[j], v1[j]);
                place(&mut h2[b2[j] as usize], b2[j], g2[j], v2[j]);
                place(&mut h3[b3[j] as usize], b3[j], g3[j], v3[j]);
            }
            for i in QUARTERS * part..n {
                place(&mut h3[buckets[i] as usize], buckets[i], genes[i], raw[i]);
            }
        }
        let n_big = n_big as usize;
        if n_big > 0 {
            let region = cls..cls + n_big;
            let keys = &mut ws.scratch_keys;
            keys.clear();
            // Descending value, then row order (the region is in row order).
            keys.extend(
                out.values[region.clone()]
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| (((u32::MAX - v.to_bits()) as u64) << 32) | j as u64),
            );
            keys.sort_unstable();
            let old_genes = &mut ws.flat_genes_tmp;
            old_genes.clear();
            old_genes.extend_from_slice(&out.genes[region.clone()]);
            for (slot, &k) in region.zip(keys.iter()) {
                let j = (k & 0xffff_ffff) as usize;
                out.genes[slot] = old_genes[j];
                out.values[slot] = value_of(f32::from_bits(u32::MAX - (k >> 32) as u32));
            }
        }
        let len = kept_end.min(cls + tok.room());
        out.genes.truncate(len);
        out.values.truncate(len);
        tok.finish(out, &mut ws.scratch);
        true
    }

    /// Read, preprocess, tokenize, mask and pad these cells. `mask_epoch` keys the masking
    /// (None: no masking).
    pub fn batch(
        &self,
        cells: &[u64],
        mask_epoch: Option<u64>,
        ws: &mut Workspace,
    ) -> Result<Batch> {
        let mut gathered = std::mem::take(&mut ws.gathered);
        self.dataset.gather_cells(cells, &mut gathered)?;
        ws.flat_genes.clear();
        ws.flat_values.clear();
        ws.lens.clear();
        for i in 0..cells.len() {
            let (g, v) = gathered.cell(i);
            self.tokenize_into(g, v, ws);
            ws.flat_genes.extend_from_slice(&ws.cell.genes);
            ws.flat_values.extend_from_slice(&ws.cell.values);
            ws.lens.push(ws.cell.len());
        }
        ws.gathered = gathered;
        let seq_len = ws.lens.iter().copied().max().unwrap_or(0);
        let n = cells.len() * seq_len;
        // Rows are appended (cell, then padding) so every element is written once, rather
        // than filled with padding and then overwritten.
        let mut b = Batch {
            batch_size: cells.len(),
            seq_len,
            cells: cells.to_vec(),
            gene_ids: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
            target_values: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
            attention_mask: Vec::with_capacity(n),
            ..Default::default()
        };
        let mut at = 0;
        for (i, (&l, &cell)) in ws.lens.iter().zip(cells).enumerate() {
            let row = i * seq_len;
            let end = row + seq_len;
            b.gene_ids.extend_from_slice(&ws.flat_genes[at..at + l]);
            b.gene_ids.resize(end, PAD);
            b.values.extend_from_slice(&ws.flat_values[at..at + l]);
            b.values.resize(end, 0.0);
            b.target_values
                .extend_from_slice(&ws.flat_values[at..at + l]);
            b.target_values.resize(end, 0.0);
            b.labels.resize(end, IGNORE_INDEX);
            b.attention_mask.resize(row + l, 1);
            b.attention_mask.resize(end, 0);
            at += l;
            if let (Some(m), Some(epoch)) = (&self.masker, mask_epoch) {
                m.apply(
                    epoch,
                    cell,
                    &mut b.gene_ids[row..row + l],
                    &mut b.values[row..row + l],
                    &mut b.labels[row..row + l],
                    &mut ws.positions,
                );
            }
        }
        Ok(b)
    }
}
