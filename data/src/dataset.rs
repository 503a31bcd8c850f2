//! Several AnnData files as one dataset of cells. Cells are numbered globally in the order of
//! the paths, then by row; each file's genes are mapped to vocabulary ids once.

use std::path::Path;

use crate::anndata::{self, AnnDataReader, CsrRows};
use crate::error::{DataError, Result};
use crate::vocab::{GeneVocab, UNK};

pub struct Dataset {
    files: Vec<Box<dyn AnnDataReader>>,
    /// `offsets[f]..offsets[f + 1]` are the global cell ids of file f.
    offsets: Vec<u64>,
    gene_maps: Vec<Vec<u32>>,
    unknown_genes: Vec<usize>,
    vocab: GeneVocab,
}

/// Cells read from the dataset, in the order requested, genes as vocabulary ids.
#[derive(Debug, Clone, Default)]
pub struct CellBlock {
    pub cells: Vec<u64>,
    pub indptr: Vec<usize>,
    pub genes: Vec<u32>,
    /// Raw values as stored in X.
    pub values: Vec<f32>,
}

impl CellBlock {
    pub fn len(&self) -> usize {
        self.cells.len()
    }
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
    pub fn cell(&self, i: usize) -> (u64, &[u32], &[f32]) {
        let (lo, hi) = (self.indptr[i], self.indptr[i + 1]);
        (self.cells[i], &self.genes[lo..hi], &self.values[lo..hi])
    }
}

/// Cells gathered by [`Dataset::gather_cells`]: the data of requested cell k is
/// `genes[spans[k].0..spans[k].1]` / `values[..]` (in file order, not request order).
/// Reusable from call to call.
#[derive(Debug, Default)]
pub struct Gathered {
    pub spans: Vec<(usize, usize)>,
    pub genes: Vec<u32>,
    pub values: Vec<f32>,
    order: Vec<usize>,
    rows: CsrRows,
}

impl Gathered {
    pub fn cell(&self, k: usize) -> (&[u32], &[f32]) {
        let (lo, hi) = self.spans[k];
        (&self.genes[lo..hi], &self.values[lo..hi])
    }
}

/// Open every path as an AnnData reader.
pub fn open_all<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Box<dyn AnnDataReader>>> {
    if paths.is_empty() {
        return Err(DataError::Config(
            "data.paths is empty: list at least one .h5ad file or .zarr store".into(),
        ));
    }
    paths.iter().map(anndata::open).collect()
}

/// The readers of a config's data: the shards of `data.shards.shard_dir` when
/// `data.shards.enabled`, else the files of `data.paths`. `vocab_file` is the vocabulary file the
/// config names, for a shard directory that does not carry its own.
pub fn open_data(
    d: &configs::scmodelforge::DataConfig,
    vocab_file: Option<&Path>,
) -> Result<Vec<Box<dyn AnnDataReader>>> {
    if d.shards.enabled {
        crate::shards::open_shard_dir(Path::new(&d.shards.shard_dir), vocab_file)
            .map_err(|e| DataError::Config(format!("data.shards.shard_dir: {e}")))
    } else {
        open_all(&d.paths)
    }
}

impl Dataset {
    /// Map the files' genes onto `vocab`. Genes missing from it become [`UNK`] and are counted
    /// (see [`Dataset::unknown_genes`]).
    pub fn new(files: Vec<Box<dyn AnnDataReader>>, vocab: GeneVocab) -> Self {
        let mut offsets = vec![0u64];
        let mut gene_maps = Vec::with_capacity(files.len());
        let mut unknown_genes = Vec::with_capacity(files.len());
        for f in &files {
            offsets.push(offsets.last().copied().unwrap_or(0) + f.n_obs() as u64);
            let map: Vec<u32> = f.var_names().iter().map(|g| vocab.id(g)).collect();
            let unk = map.iter().filter(|&&id| id == UNK).count();
            if unk > 0 {
                tracing::warn!(
                    "{}: {unk} of {} genes are not in the vocabulary and map to [UNK]",
                    f.path().display(),
                    f.n_vars()
                );
            }
            unknown_genes.push(unk);
            gene_maps.push(map);
        }
        Dataset {
            files,
            offsets,
            gene_maps,
            unknown_genes,
            vocab,
        }
    }

    /// Open the paths and resolve `gene_vocab` (a file, or a name meaning "union of genes").
    pub fn open<P: AsRef<Path>>(paths: &[P], gene_vocab: &str) -> Result<Self> {
        Self::from_readers(open_all(paths)?, gene_vocab)
    }

    /// As [`Dataset::open`], over readers already open.
    pub fn from_readers(files: Vec<Box<dyn AnnDataReader>>, gene_vocab: &str) -> Result<Self> {
        let names: Vec<&[String]> = files.iter().map(|f| f.var_names()).collect();
        let vocab = GeneVocab::resolve(gene_vocab, &names)?;
        Ok(Self::new(files, vocab))
    }

    pub fn vocab(&self) -> &GeneVocab {
        &self.vocab
    }
    pub fn files(&self) -> &[Box<dyn AnnDataReader>] {
        &self.files
    }
    pub fn n_cells(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }
    /// Per file: genes not found in the vocabulary.
    pub fn unknown_genes(&self) -> &[usize] {
        &self.unknown_genes
    }
    pub fn file_offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// (file, row) of a global cell id.
    pub fn locate(&self, cell: u64) -> (usize, usize) {
        let f = self.offsets.partition_point(|&o| o <= cell) - 1;
        (f, (cell - self.offsets[f]) as usize)
    }

    /// Stored entries of every cell, in global order.
    pub fn row_nnz(&self) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(self.n_cells() as usize);
        for f in &self.files {
            out.extend(f.row_nnz()?);
        }
        Ok(out)
    }

    /// Rows `start..end` of file `f`, genes mapped to the vocabulary.
    pub fn read_file_rows(&self, f: usize, start: usize, end: usize) -> Result<CellBlock> {
        let mut out = CellBlock::default();
        self.read_file_rows_into(f, start, end, &mut out, &mut CsrRows::default())?;
        Ok(out)
    }

    /// As [`Dataset::read_file_rows`], into `out`, reusing its buffers and those of `rows`
    /// (scratch for the raw read).
    pub fn read_file_rows_into(
        &self,
        f: usize,
        start: usize,
        end: usize,
        out: &mut CellBlock,
        rows: &mut CsrRows,
    ) -> Result<()> {
        self.files[f].read_rows_into(start, end, rows)?;
        let map = &self.gene_maps[f];
        out.cells.clear();
        out.cells
            .extend((start..end).map(|r| self.offsets[f] + r as u64));
        out.genes.clear();
        out.genes
            .extend(rows.indices.iter().map(|&c| map[c as usize]));
        std::mem::swap(&mut out.indptr, &mut rows.indptr);
        std::mem::swap(&mut out.values, &mut rows.data);
        Ok(())
    }

    /// Read arbitrary cells, returned in the order given. Cells close together in a file are
    /// read with one contiguous read (gaps of up to `max_gap` rows are read and dropped).
    pub fn read_cells(&self, cells: &[u64]) -> Result<CellBlock> {
        let mut g = Gathered::default();
        self.gather_cells(cells, &mut g)?;
        let mut out = CellBlock {
            cells: cells.to_vec(),
            indptr: Vec::with_capacity(cells.len() + 1),
            genes: Vec::with_capacity(g.genes.len()),
            values: Vec::with_capacity(g.values.len()),
        };
        out.indptr.push(0);
        for k in 0..cells.len() {
            let (genes, values) = g.cell(k);
            out.genes.extend_from_slice(genes);
            out.values.extend_from_slice(values);
            out.indptr.push(out.genes.len());
        }
        Ok(out)
    }

    /// Read arbitrary cells into `out` (see [`Gathered`]), reusing its buffers. Cells close
    /// together in a file are read with one contiguous read (gaps of up to 64 rows are read
    /// and dropped).
    pub fn gather_cells(&self, cells: &[u64], out: &mut Gathered) -> Result<()> {
        const MAX_GAP: u64 = 64;
        let order = &mut out.order;
        order.clear();
        order.extend(0..cells.len());
        order.sort_by_key(|&i| cells[i]);
        // Where each requested cell's data lands: (start, end) into the gathered arrays.
        out.spans.clear();
        out.spans.resize(cells.len(), (0, 0));
        out.genes.clear();
        out.values.clear();
        let mut i = 0;
        while i < order.len() {
            let first = cells[order[i]];
            if first >= self.n_cells() {
                return Err(DataError::Config(format!(
                    "cell {first} out of range (dataset has {} cells)",
                    self.n_cells()
                )));
            }
            let (f, _) = self.locate(first);
            let file_end = self.offsets[f + 1];
            let mut j = i + 1;
            while j < order.len() {
                let c = cells[order[j]];
                if c >= file_end || c - cells[order[j - 1]] > MAX_GAP {
                    break;
                }
                j += 1;
            }
            let last = cells[order[j - 1]];
            let start = (first - self.offsets[f]) as usize;
            let end = (last - self.offsets[f]) as usize + 1;
            let rows = &mut out.rows;
            self.files[f].read_rows_into(start, end, rows)?;
            let map = &self.gene_maps[f];
            for &k in &order[i..j] {
                let r = (cells[k] - self.offsets[f]) as usize - start;
                let (lo, hi) = (rows.indptr[r], rows.indptr[r + 1]);
                let at = out.genes.len();
                out.genes
                    .extend(rows.indices[lo..hi].iter().map(|&c| map[c as usize]));
                out.values.extend_from_slice(&rows.data[lo..hi]);
                out.spans[k] = (at, out.genes.len());
            }
            i = j;
        }
        Ok(())
    }
}
