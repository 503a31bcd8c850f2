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
    /// Open `data.paths`, resolve the vocabulary, and build preprocessing, tokenizer and masker
    /// from a scModelForge config.
    pub fn from_config(cfg: &ScModelForgeConfig) -> Result<Self> {
        if cfg.data.source != DataSource::Local {
            return Err(DataError::Config(
                "data.source cellxgene_census is not supported; download the cells to .h5ad and use data.source: local".into(),
            ));
        }
        let dataset = Dataset::open(&cfg.data.paths, &cfg.data.gene_vocab)?;
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
        ws.genes.clear();
        ws.values.clear();
        self.preprocessor
            .apply(genes, raw, &mut ws.genes, &mut ws.values);
        self.tokenizer
            .tokenize(&ws.genes, &ws.values, &mut ws.cell, &mut ws.scratch);
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
        let mut seqs: Vec<TokenizedCell> = Vec::with_capacity(cells.len());
        for i in 0..block.len() {
            let (_, g, v) = block.cell(i);
            self.tokenize_into(g, v, ws);
            seqs.push(ws.cell.clone());
        }
        let seq_len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
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
        for (i, s) in seqs.iter().enumerate() {
            let row = i * seq_len;
            let l = s.len();
            b.gene_ids[row..row + l].copy_from_slice(&s.genes);
            b.values[row..row + l].copy_from_slice(&s.values);
            b.target_values[row..row + l].copy_from_slice(&s.values);
            b.attention_mask[row..row + l]
                .iter_mut()
                .for_each(|m| *m = 1);
            if let (Some(m), Some(epoch)) = (&self.masker, mask_epoch) {
                m.apply(
                    epoch,
                    cells[i],
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
