//! The per-cell path from stored counts to a masked token sequence, and batch assembly.

use std::path::Path;

use configs::scmodelforge::{DataSource, ScModelForgeConfig};

use crate::dataset::Dataset;
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
    scratch_keys: Vec<u64>,
    order: Vec<u32>,
    flat_genes: Vec<u32>,
    flat_values: Vec<f32>,
    lens: Vec<usize>,
    genes: Vec<u32>,
    values: Vec<f32>,
    cell: TokenizedCell,
    scratch: Scratch,
    positions: Vec<u32>,
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
        let dataset = Dataset::open(&cfg.data.paths, vocab)?;
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
        // Counts above this are rare (a cell's top genes): they are sorted by comparison,
        // the rest by a histogram of at most SMALL + 1 buckets.
        const SMALL: usize = 1024;
        let mut total = 0f32;
        let mut integral = true;
        for &v in raw {
            integral &= (0.0..=MAX_COUNT).contains(&v) && v == (v as u32) as f32;
            total += v;
        }
        if !integral {
            return false;
        }
        let pre = &self.preprocessor;
        let scale = match pre.target_sum {
            Some(t) if total > 0.0 => t / total,
            Some(_) => 0.0,
            None => 1.0,
        };
        let kept = |g: u32| match &pre.keep {
            Some(keep) => keep.get(g as usize).copied().unwrap_or(false),
            None => true,
        };
        let hist = &mut ws.hist;
        hist.clear();
        hist.resize(SMALL + 1, 0);
        let big = &mut ws.scratch_keys;
        big.clear();
        for (i, (&g, &v)) in genes.iter().zip(raw).enumerate() {
            if v > 0.0 && kept(g) {
                let c = v as usize;
                if c <= SMALL {
                    hist[c] += 1;
                } else {
                    big.push((((u32::MAX - v.to_bits()) as u64) << 32) | i as u64);
                }
            }
        }
        big.sort_unstable();
        // Output offset of each small count, largest first, after the big ones.
        let mut acc = big.len() as u32;
        for c in (1..=SMALL).rev() {
            let n = hist[c];
            hist[c] = acc;
            acc += n;
        }
        let order = &mut ws.order;
        order.clear();
        order.resize(acc as usize, 0);
        for (slot, &k) in order.iter_mut().zip(big.iter()) {
            *slot = (k & 0xffff_ffff) as u32;
        }
        for (i, (&g, &v)) in genes.iter().zip(raw).enumerate() {
            let c = v as usize;
            if v > 0.0 && c <= SMALL && kept(g) {
                let slot = &mut hist[c];
                order[*slot as usize] = i as u32;
                *slot += 1;
            }
        }
        let tok = &self.tokenizer;
        let out = &mut ws.cell;
        out.genes.clear();
        out.values.clear();
        if tok.prepend_cls {
            out.genes.push(crate::vocab::CLS);
            out.values.push(0.0);
        }
        let n = order.len().min(tok.room());
        let (mut last_raw, mut last_val) = (-1f32, 0f32);
        for &i in &order[..n] {
            let v = raw[i as usize];
            if v != last_raw {
                let x = v * scale;
                last_val = if pre.log1p { x.ln_1p() } else { x };
                last_raw = v;
            }
            out.genes.push(genes[i as usize]);
            out.values.push(last_val);
        }
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
        let block = self.dataset.read_cells(cells)?;
        ws.flat_genes.clear();
        ws.flat_values.clear();
        ws.lens.clear();
        for i in 0..block.len() {
            let (_, g, v) = block.cell(i);
            self.tokenize_into(g, v, ws);
            ws.flat_genes.extend_from_slice(&ws.cell.genes);
            ws.flat_values.extend_from_slice(&ws.cell.values);
            ws.lens.push(ws.cell.len());
        }
        let seq_len = ws.lens.iter().copied().max().unwrap_or(0);
        let n = cells.len() * seq_len;
        let mut b = Batch {
            batch_size: cells.len(),
            seq_len,
            cells: cells.to_vec(),
            gene_ids: vec![PAD; n],
            values: vec![0.0; n],
            target_values: vec![0.0; n],
            labels: vec![IGNORE_INDEX; n],
            attention_mask: vec![0; n],
            ..Default::default()
        };
        let mut at = 0;
        for (i, (&l, &cell)) in ws.lens.iter().zip(cells).enumerate() {
            let row = i * seq_len;
            b.gene_ids[row..row + l].copy_from_slice(&ws.flat_genes[at..at + l]);
            b.values[row..row + l].copy_from_slice(&ws.flat_values[at..at + l]);
            b.target_values[row..row + l].copy_from_slice(&ws.flat_values[at..at + l]);
            at += l;
            b.attention_mask[row..row + l]
                .iter_mut()
                .for_each(|m| *m = 1);
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
