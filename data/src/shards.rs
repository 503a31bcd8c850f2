//! Memory-mapped shard directories in scModelForge's layout (`scmodelforge shard`, and
//! `coordinator shard`): genes aligned to a vocabulary once, at conversion time, so that reading
//! needs no per-file gene mapping.
//!
//! ```text
//! DIR/manifest.json          {"n_shards", "total_cells", "shard_sizes", "vocab_hash"}
//! DIR/gene_vocab.json        {gene: vocabulary index}   (anvil writes it; see below)
//! DIR/shard_000/X.npy            float32 [cells, max_genes]  a cell's non-zero raw values
//! DIR/shard_000/gene_indices.npy int64   [cells, max_genes]  their vocabulary indices
//! DIR/shard_000/n_genes.npy      int64   [cells]             how many of the row are used
//! DIR/shard_000/metadata.json    {"n_cells", "max_genes"}
//! ```
//!
//! Rows are padded to the shard's longest cell. `vocab_hash` is the MD5 of the vocabulary as
//! Python's `json.dumps(gene_to_idx, sort_keys=True)` prints it, so a vocabulary file can be
//! checked against the shards it is meant for. scModelForge's `shard` does not store the
//! vocabulary itself; anvil writes it as `gene_vocab.json` (scModelForge's `GeneVocab.save`
//! format), and reads a directory without one with the vocabulary file `data.gene_vocab` names.
//! scModelForge also writes an `obs.parquet` per shard, empty from its command line; anvil
//! neither writes nor reads obs (cells in shards have no labels).
//!
//! Each `shard_NNN` is read as one [`AnnDataReader`] whose genes are the vocabulary's, so shards
//! train like files: the plan spreads them over the workers.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::anndata::{validate_rows, AnnDataReader, CsrRows, ObsColumn, ObsKind, XEncoding, XInfo};
use crate::error::{DataError, Result};
use crate::vocab::GeneVocab;

/// Rows per read while converting.
const BLOCK: usize = 1024;

/// `manifest.json` of a shard directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub n_shards: usize,
    pub total_cells: usize,
    pub shard_sizes: Vec<usize>,
    #[serde(default)]
    pub vocab_hash: Option<String>,
}

/// The name of shard `i`'s directory.
pub fn shard_name(i: usize) -> String {
    format!("shard_{i:03}")
}

/// MD5 (hex) of `json.dumps(gene_to_idx, sort_keys=True)`: scModelForge's vocab_hash.
pub fn vocab_hash(gene_to_idx: &[(String, i64)]) -> String {
    let mut sorted: Vec<&(String, i64)> = gene_to_idx.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut text = String::from("{");
    for (i, (gene, idx)) in sorted.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        python_json_string(gene, &mut text);
        text.push_str(": ");
        text.push_str(&idx.to_string());
    }
    text.push('}');
    let digest = Md5::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A string as Python's json.dumps writes it (ensure_ascii: non-ASCII as \uXXXX escapes).
fn python_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The gene -> index pairs of an anvil vocabulary (gene i has index 4 + i, as in scModelForge).
pub fn gene_to_idx(vocab: &GeneVocab) -> Vec<(String, i64)> {
    vocab
        .genes()
        .iter()
        .map(|g| (g.clone(), vocab.id(g) as i64))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// .npy

/// Element types the shard arrays use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    I64,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::I64 => "<i8",
        }
    }
    fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::I64 => 8,
        }
    }
}

/// A .npy header (version 1.0), padded so the data starts at a multiple of 64 bytes.
fn npy_header(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        dtype.descr()
    );
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// An opened .npy array: where its data starts and its shape.
struct Npy {
    path: PathBuf,
    file: File,
    offset: u64,
    shape: Vec<usize>,
}

impl Npy {
    fn open(path: PathBuf, want: Dtype) -> Result<Self> {
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        let bad = |p: &str| DataError::invalid(&path, ".npy header", p.to_string());
        let mut lead = [0u8; 12];
        file.read_exact_at(&mut lead, 0)
            .map_err(|_| bad("too short for a .npy file"))?;
        if &lead[..6] != b"\x93NUMPY" {
            return Err(bad("not a .npy file (no \\x93NUMPY magic)"));
        }
        let (len, start) = match lead[6] {
            1 => (u16::from_le_bytes([lead[8], lead[9]]) as usize, 10u64),
            2 | 3 => (
                u32::from_le_bytes([lead[8], lead[9], lead[10], lead[11]]) as usize,
                12u64,
            ),
            v => return Err(bad(&format!("unsupported .npy version {v}"))),
        };
        let mut header = vec![0u8; len];
        file.read_exact_at(&mut header, start)
            .map_err(|_| bad("truncated header"))?;
        let header = String::from_utf8_lossy(&header).into_owned();
        let field = |key: &str| -> Option<String> {
            let at = header.find(&format!("'{key}'"))?;
            let rest = header[at + key.len() + 2..].trim_start();
            let rest = rest.strip_prefix(':')?.trim_start();
            let end = if rest.starts_with('(') {
                rest.find(')')? + 1
            } else {
                rest.find([',', '}'])?
            };
            Some(rest[..end].trim().trim_matches('\'').to_string())
        };
        let descr = field("descr").ok_or_else(|| bad("no 'descr'"))?;
        if descr != want.descr() {
            return Err(DataError::invalid(
                &path,
                "dtype",
                format!("is {descr}; the shard layout stores {} here", want.descr()),
            ));
        }
        if field("fortran_order").as_deref() != Some("False") {
            return Err(bad("Fortran-ordered arrays are not supported"));
        }
        let shape_text = field("shape").ok_or_else(|| bad("no 'shape'"))?;
        let shape = shape_text
            .trim_matches(|c| c == '(' || c == ')')
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>().map_err(|_| bad("bad 'shape'")))
            .collect::<Result<Vec<_>>>()?;
        let offset = start + len as u64;
        let need = offset + shape.iter().product::<usize>() as u64 * want.size();
        let have = file.metadata().map_err(|e| DataError::io(&path, e))?.len();
        if have < need {
            return Err(DataError::invalid(
                &path,
                "data",
                format!("truncated: {have} bytes, the shape {shape:?} needs {need}"),
            ));
        }
        Ok(Npy {
            path,
            file,
            offset,
            shape,
        })
    }

    fn read_bytes(&self, at: u64, out: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(out, self.offset + at)
            .map_err(|e| DataError::io(&self.path, e))
    }
}

fn le_f32(b: &[u8]) -> impl Iterator<Item = f32> + '_ {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn le_i64(b: &[u8]) -> impl Iterator<Item = i64> + '_ {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
}

// ---------------------------------------------------------------------------------------------
// Writing

/// What [`write_shards`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSummary {
    pub manifest: Manifest,
    /// Per input file: (path, its genes found in the vocabulary, its genes).
    pub overlap: Vec<(PathBuf, usize, usize)>,
    /// Non-zero values stored, over all cells.
    pub stored: u64,
}

/// Convert `files` into a shard directory at `out_dir` (which must not exist, or be empty),
/// genes aligned to `vocab`, at most `shard_size` cells per shard. Each cell keeps its non-zero
/// raw values of vocabulary genes, in the file's gene order. `progress(done, total)` is called
/// per block of cells. On error, what was written is removed.
pub fn write_shards(
    files: &[Box<dyn AnnDataReader>],
    vocab: &[(String, i64)],
    out_dir: &Path,
    shard_size: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<ShardSummary> {
    if shard_size == 0 {
        return Err(DataError::Config("shard size must be at least 1".into()));
    }
    if out_dir.exists() {
        let empty = std::fs::read_dir(out_dir)
            .map_err(|e| DataError::io(out_dir, e))?
            .next()
            .is_none();
        if !empty {
            return Err(DataError::invalid(
                out_dir,
                "output",
                "exists and is not empty; choose a new directory (nothing was written)",
            ));
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
    let result = write_into(files, vocab, out_dir, shard_size, &mut progress);
    if result.is_err() {
        if let Ok(entries) = std::fs::read_dir(out_dir) {
            for e in entries.flatten() {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
    }
    result
}

fn write_into(
    files: &[Box<dyn AnnDataReader>],
    vocab: &[(String, i64)],
    out_dir: &Path,
    shard_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ShardSummary> {
    // Check the vocabulary as a reader will, before any work.
    shard_genes(vocab, out_dir)?;
    let index: std::collections::HashMap<&str, i64> =
        vocab.iter().map(|(g, i)| (g.as_str(), *i)).collect();
    // Column -> vocabulary index per file (None: not in the vocabulary).
    let maps: Vec<Vec<Option<i64>>> = files
        .iter()
        .map(|f| {
            f.var_names()
                .iter()
                .map(|g| index.get(g.as_str()).copied())
                .collect()
        })
        .collect();
    let overlap = files
        .iter()
        .zip(&maps)
        .map(|(f, m)| {
            (
                f.path().to_path_buf(),
                m.iter().filter(|x| x.is_some()).count(),
                f.n_vars(),
            )
        })
        .collect();
    let total: usize = files.iter().map(|f| f.n_obs()).sum();

    // Pass 1: how many values each cell keeps (the shards' widths depend on it).
    let mut n_genes: Vec<i64> = Vec::with_capacity(total);
    let mut rows = CsrRows::default();
    for (f, map) in files.iter().zip(&maps) {
        for_blocks(f.as_ref(), &mut rows, |rows| {
            for r in 0..rows.n_rows() {
                let (idx, val) = rows.row(r);
                let kept = idx
                    .iter()
                    .zip(val)
                    .filter(|(&c, &v)| v > 0.0 && map[c as usize].is_some())
                    .count();
                n_genes.push(kept as i64);
            }
            Ok(())
        })?;
    }

    // Pass 2: the padded rows, shard by shard.
    let sizes: Vec<usize> = (0..total.div_ceil(shard_size).max(1))
        .map(|s| (total - s * shard_size).min(shard_size))
        .collect();
    let mut writer = ShardWriter::new(out_dir, &sizes, &n_genes)?;
    let mut done = 0usize;
    for (f, map) in files.iter().zip(&maps) {
        for_blocks(f.as_ref(), &mut rows, |rows| {
            for r in 0..rows.n_rows() {
                let (idx, val) = rows.row(r);
                writer.push(idx.iter().zip(val).filter_map(|(&c, &v)| {
                    (v > 0.0).then_some(())?;
                    map[c as usize].map(|id| (id, v))
                }))?;
            }
            done += rows.n_rows();
            progress(done, total);
            Ok(())
        })?;
    }
    writer.finish()?;

    let manifest = Manifest {
        n_shards: sizes.len(),
        total_cells: total,
        shard_sizes: sizes,
        vocab_hash: Some(vocab_hash(vocab)),
    };
    let p = out_dir.join("gene_vocab.json");
    std::fs::write(&p, vocab_json(vocab)).map_err(|e| DataError::io(&p, e))?;
    // The manifest last: a directory with one is complete.
    write_json(&out_dir.join("manifest.json"), &manifest)?;
    Ok(ShardSummary {
        manifest,
        overlap,
        stored: n_genes.iter().map(|&n| n as u64).sum(),
    })
}

/// `{gene: index}` in the vocabulary's order, as scModelForge's `GeneVocab.save` writes it.
fn vocab_json(vocab: &[(String, i64)]) -> String {
    let mut text = String::from("{");
    for (k, (g, i)) in vocab.iter().enumerate() {
        text.push_str(if k == 0 { "\n  " } else { ",\n  " });
        text.push_str(&serde_json::Value::from(g.as_str()).to_string());
        text.push_str(&format!(": {i}"));
    }
    text.push_str("\n}");
    text
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| DataError::invalid(path, "json", e.to_string()))?;
    std::fs::write(path, text).map_err(|e| DataError::io(path, e))
}

fn for_blocks(
    f: &dyn AnnDataReader,
    rows: &mut CsrRows,
    mut each: impl FnMut(&CsrRows) -> Result<()>,
) -> Result<()> {
    let n = f.n_obs();
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        f.read_rows_into(start, end, rows)?;
        each(rows)?;
        start = end;
    }
    Ok(())
}

/// Writes cells one after the other into the shards' padded arrays.
struct ShardWriter<'a> {
    out_dir: &'a Path,
    sizes: &'a [usize],
    n_genes: &'a [i64],
    /// Global index of the next cell.
    cell: usize,
    shard: usize,
    /// Open arrays of the current shard: (X, gene_indices, width).
    open: Option<(BufWriter<File>, BufWriter<File>, usize)>,
}

impl<'a> ShardWriter<'a> {
    fn new(out_dir: &'a Path, sizes: &'a [usize], n_genes: &'a [i64]) -> Result<Self> {
        Ok(ShardWriter {
            out_dir,
            sizes,
            n_genes,
            cell: 0,
            shard: 0,
            open: None,
        })
    }

    fn first_cell(&self, shard: usize) -> usize {
        self.sizes[..shard].iter().sum()
    }

    /// Create shard `s`'s directory, its n_genes.npy and metadata.json, and open X and
    /// gene_indices for its rows.
    fn start_shard(&mut self, s: usize) -> Result<()> {
        let dir = self.out_dir.join(shard_name(s));
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        let lo = self.first_cell(s);
        let counts = &self.n_genes[lo..lo + self.sizes[s]];
        let width = counts.iter().copied().max().unwrap_or(0) as usize;
        let n = counts.len();
        let mut ng = npy_header(Dtype::I64, &[n]);
        for &c in counts {
            ng.extend_from_slice(&c.to_le_bytes());
        }
        let p = dir.join("n_genes.npy");
        std::fs::write(&p, ng).map_err(|e| DataError::io(&p, e))?;
        write_json(
            &dir.join("metadata.json"),
            &serde_json::json!({"n_cells": n, "max_genes": width}),
        )?;
        let create = |name: &str, dtype: Dtype| -> Result<BufWriter<File>> {
            let p = dir.join(name);
            let f = File::create(&p).map_err(|e| DataError::io(&p, e))?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            w.write_all(&npy_header(dtype, &[n, width]))
                .map_err(|e| DataError::io(&p, e))?;
            Ok(w)
        };
        self.open = Some((
            create("X.npy", Dtype::F32)?,
            create("gene_indices.npy", Dtype::I64)?,
            width,
        ));
        Ok(())
    }

    fn push(&mut self, values: impl Iterator<Item = (i64, f32)>) -> Result<()> {
        if self.open.is_none() || self.cell == self.first_cell(self.shard) + self.sizes[self.shard]
        {
            if self.open.is_some() {
                self.close_shard()?;
                self.shard += 1;
            }
            self.start_shard(self.shard)?;
        }
        let dir = self.out_dir.join(shard_name(self.shard));
        let (x, g, width) = self.open.as_mut().expect("a shard is open");
        let io = |e| DataError::io(&dir, e);
        let mut n = 0usize;
        for (id, v) in values {
            x.write_all(&v.to_le_bytes()).map_err(io)?;
            g.write_all(&id.to_le_bytes()).map_err(io)?;
            n += 1;
        }
        debug_assert_eq!(n as i64, self.n_genes[self.cell]);
        for _ in n..*width {
            x.write_all(&0f32.to_le_bytes()).map_err(io)?;
            g.write_all(&0i64.to_le_bytes()).map_err(io)?;
        }
        self.cell += 1;
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some((mut x, mut g, _)) = self.open.take() {
            let dir = self.out_dir.join(shard_name(self.shard));
            x.flush().map_err(|e| DataError::io(&dir, e))?;
            g.flush().map_err(|e| DataError::io(&dir, e))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        if self.open.is_none() {
            // No cells at all: still one (empty) shard, as scModelForge writes.
            self.start_shard(0)?;
        }
        self.close_shard()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// The vocabulary of a shard directory: index -> gene, as written.
struct ShardGenes {
    /// Gene names by column (ascending vocabulary index).
    names: Arc<[String]>,
    /// Vocabulary index -> column (u32::MAX: no gene).
    column: Arc<[u32]>,
}

/// Read a vocabulary file as gene -> index pairs: a JSON object `{gene: index}` (scModelForge's
/// `GeneVocab.save`), or a JSON list of genes (indices from 4, as `GeneVocab.from_genes`).
pub fn read_gene_to_idx(path: &Path) -> Result<Vec<(String, i64)>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let bad = |p: &str| DataError::invalid(path, "vocabulary", p.to_string());
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(g, v)| {
                v.as_i64()
                    .map(|i| (g, i))
                    .ok_or_else(|| bad("must map gene names to integer indices"))
            })
            .collect(),
        serde_json::Value::Array(items) => {
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            for v in items {
                let g = v
                    .as_str()
                    .ok_or_else(|| bad("a JSON list must hold gene names"))?
                    .to_string();
                if seen.insert(g.clone()) {
                    out.push((g, 4 + out.len() as i64));
                }
            }
            Ok(out)
        }
        _ => Err(bad(
            "expected a JSON object {gene: index} or a list of genes",
        )),
    }
}

fn shard_genes(pairs: &[(String, i64)], path: &Path) -> Result<ShardGenes> {
    let mut sorted: Vec<&(String, i64)> = pairs.iter().collect();
    sorted.sort_by_key(|p| p.1);
    if let Some(p) = sorted.iter().find(|p| p.1 < 4) {
        return Err(DataError::invalid(
            path,
            "vocabulary",
            format!(
                "gene {} has index {}; indices 0-3 are the special tokens",
                p.0, p.1
            ),
        ));
    }
    if let Some(w) = sorted.windows(2).find(|w| w[0].1 == w[1].1) {
        return Err(DataError::invalid(
            path,
            "vocabulary",
            format!("genes {} and {} share index {}", w[0].0, w[1].0, w[0].1),
        ));
    }
    let max = sorted.last().map(|p| p.1 as usize).unwrap_or(3);
    let mut column = vec![u32::MAX; max + 1];
    for (c, p) in sorted.iter().enumerate() {
        column[p.1 as usize] = c as u32;
    }
    Ok(ShardGenes {
        names: sorted.iter().map(|p| p.0.clone()).collect(),
        column: column.into(),
    })
}

/// Open a shard directory as one reader per shard. The vocabulary is the directory's
/// gene_vocab.json, or else `vocab_file` (the file the shards were written with); it is
/// checked against the manifest's `vocab_hash`.
pub fn open_shard_dir(
    dir: &Path,
    vocab_file: Option<&Path>,
) -> Result<Vec<Box<dyn AnnDataReader>>> {
    let manifest_path = dir.join("manifest.json");
    if !dir.is_dir() {
        return Err(DataError::NotFound {
            path: dir.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(&manifest_path).map_err(|_| {
        DataError::invalid(
            dir,
            "manifest.json",
            "missing: not a complete shard directory (`coordinator shard` writes the manifest last)",
        )
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| DataError::invalid(&manifest_path, "manifest", e.to_string()))?;
    if manifest.shard_sizes.len() != manifest.n_shards
        || manifest.shard_sizes.iter().sum::<usize>() != manifest.total_cells
    {
        return Err(DataError::invalid(
            &manifest_path,
            "manifest",
            format!(
                "n_shards {} / total_cells {} do not agree with shard_sizes {:?}",
                manifest.n_shards, manifest.total_cells, manifest.shard_sizes
            ),
        ));
    }
    let own = dir.join("gene_vocab.json");
    let vocab_path = if own.is_file() {
        own
    } else if let Some(v) = vocab_file {
        v.to_path_buf()
    } else {
        return Err(DataError::invalid(
            dir,
            "gene_vocab.json",
            "missing, and data.gene_vocab names no vocabulary file: set data.gene_vocab to the JSON vocabulary the shards were written with (`scmodelforge shard --gene-vocab`)",
        ));
    };
    let pairs = read_gene_to_idx(&vocab_path)?;
    if let Some(want) = &manifest.vocab_hash {
        let got = vocab_hash(&pairs);
        if &got != want {
            return Err(DataError::invalid(
                &vocab_path,
                "vocabulary",
                format!(
                    "is not the one the shards in {} were written with (its hash {got}, the manifest's vocab_hash {want})",
                    dir.display()
                ),
            ));
        }
    }
    let genes = shard_genes(&pairs, &vocab_path)?;
    let mut readers: Vec<Box<dyn AnnDataReader>> = Vec::with_capacity(manifest.n_shards);
    for (i, &n) in manifest.shard_sizes.iter().enumerate() {
        readers.push(Box::new(ShardReader::open(
            &dir.join(shard_name(i)),
            n,
            &genes,
        )?));
    }
    Ok(readers)
}

/// One `shard_NNN` directory as an AnnData-like reader; its columns are the vocabulary's genes.
pub struct ShardReader {
    path: PathBuf,
    x: Npy,
    gene_indices: Npy,
    n_genes: Vec<u32>,
    width: usize,
    names: Arc<[String]>,
    column: Arc<[u32]>,
    info: XInfo,
}

impl ShardReader {
    fn open(dir: &Path, n_cells: usize, genes: &ShardGenes) -> Result<Self> {
        if !dir.is_dir() {
            return Err(DataError::NotFound {
                path: dir.to_path_buf(),
            });
        }
        let counts = Npy::open(dir.join("n_genes.npy"), Dtype::I64)?;
        let x = Npy::open(dir.join("X.npy"), Dtype::F32)?;
        let gene_indices = Npy::open(dir.join("gene_indices.npy"), Dtype::I64)?;
        if counts.shape != [n_cells] {
            return Err(DataError::invalid(
                &counts.path,
                "shape",
                format!("{:?}, but the manifest says {n_cells} cells", counts.shape),
            ));
        }
        let width = match x.shape[..] {
            [n, w] if n == n_cells => w,
            _ => {
                return Err(DataError::invalid(
                    &x.path,
                    "shape",
                    format!("{:?}, expected [{n_cells}, max_genes]", x.shape),
                ))
            }
        };
        if gene_indices.shape != x.shape {
            return Err(DataError::invalid(
                &gene_indices.path,
                "shape",
                format!("{:?}, but X.npy is {:?}", gene_indices.shape, x.shape),
            ));
        }
        let mut raw = vec![0u8; n_cells * 8];
        counts.read_bytes(0, &mut raw)?;
        let n_genes = le_i64(&raw)
            .enumerate()
            .map(|(cell, n)| {
                if n < 0 || n as usize > width {
                    Err(DataError::invalid(
                        &counts.path,
                        "n_genes",
                        format!("cell {cell} has {n} genes; the rows are {width} wide"),
                    ))
                } else {
                    Ok(n as u32)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let info = XInfo {
            encoding: XEncoding::Dense,
            dtype: "float32".into(),
            nnz: n_genes.iter().map(|&n| n as u64).sum(),
            compression: "none (shard rows padded to max_genes)".into(),
        };
        Ok(ShardReader {
            path: dir.to_path_buf(),
            x,
            gene_indices,
            n_genes,
            width,
            names: genes.names.clone(),
            column: genes.column.clone(),
            info,
        })
    }
}

impl AnnDataReader for ShardReader {
    fn path(&self) -> &Path {
        &self.path
    }
    fn n_obs(&self) -> usize {
        self.n_genes.len()
    }
    fn n_vars(&self) -> usize {
        self.names.len()
    }
    fn var_names(&self) -> &[String] {
        &self.names
    }
    fn x_info(&self) -> &XInfo {
        &self.info
    }

    fn read_rows(&self, start: usize, end: usize) -> Result<CsrRows> {
        let mut out = CsrRows::default();
        self.read_rows_into(start, end, &mut out)?;
        Ok(out)
    }

    fn read_rows_into(&self, start: usize, end: usize, out: &mut CsrRows) -> Result<()> {
        let end = end.min(self.n_obs());
        let start = start.min(end);
        let rows = end - start;
        let w = self.width as u64;
        let mut xb = vec![0u8; rows * self.width * 4];
        let mut gb = vec![0u8; rows * self.width * 8];
        self.x.read_bytes(start as u64 * w * 4, &mut xb)?;
        self.gene_indices
            .read_bytes(start as u64 * w * 8, &mut gb)?;
        out.indptr.clear();
        out.indices.clear();
        out.data.clear();
        out.indptr.push(0);
        for r in 0..rows {
            let n = self.n_genes[start + r] as usize;
            let row = r * self.width;
            for (k, (idx, v)) in le_i64(&gb[row * 8..(row + n) * 8])
                .zip(le_f32(&xb[row * 4..(row + n) * 4]))
                .enumerate()
            {
                let col = usize::try_from(idx)
                    .ok()
                    .and_then(|i| self.column.get(i).copied())
                    .filter(|&c| c != u32::MAX)
                    .ok_or_else(|| {
                        DataError::invalid(
                            &self.gene_indices.path,
                            "gene_indices",
                            format!(
                                "cell {}, entry {k}: index {idx} is not in the vocabulary",
                                start + r
                            ),
                        )
                    })?;
                out.indices.push(col);
                out.data.push(v);
            }
            out.indptr.push(out.indices.len());
        }
        validate_rows(&self.x.path, out, start, self.n_vars())
    }

    fn row_nnz(&self) -> Result<Vec<u32>> {
        Ok(self.n_genes.clone())
    }

    fn obs_columns(&self) -> Result<Vec<(String, ObsKind)>> {
        Ok(Vec::new())
    }

    fn obs_column(&self, name: &str) -> Result<ObsColumn> {
        Err(DataError::invalid(
            &self.path,
            format!("obs/{name}"),
            "shard directories carry no obs columns in anvil; use the .h5ad files (data.paths) for anything that needs cell labels",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_hash_is_pythons_md5_of_the_sorted_json() {
        // python: hashlib.md5(json.dumps(d, sort_keys=True).encode()).hexdigest()
        let d = vec![
            ("G\u{e8}ne".to_string(), 4),
            ("A\"b\\\\".to_string(), 5),
            ("\u{1F600}x".to_string(), 6),
            ("tab\t".to_string(), 7),
        ];
        assert_eq!(vocab_hash(&d), "d03c808b96bbba15251588590a19528b");
    }

    #[test]
    fn npy_headers_are_aligned_and_read_back() {
        let dir = std::env::temp_dir().join(format!("anvil-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for shape in [vec![3usize], vec![2, 5], vec![0, 0]] {
            let mut bytes = npy_header(Dtype::F32, &shape);
            assert_eq!(bytes.len() % 64, 0);
            let n: usize = shape.iter().product();
            for i in 0..n {
                bytes.extend_from_slice(&(i as f32).to_le_bytes());
            }
            let p = dir.join("a.npy");
            std::fs::write(&p, &bytes).unwrap();
            let npy = Npy::open(p.clone(), Dtype::F32).unwrap();
            assert_eq!(npy.shape, shape);
            let mut raw = vec![0u8; n * 4];
            npy.read_bytes(0, &mut raw).unwrap();
            assert_eq!(
                le_f32(&raw).collect::<Vec<_>>(),
                (0..n).map(|i| i as f32).collect::<Vec<_>>()
            );
            // The wrong element type, and a truncated file, are errors naming the file.
            let e = Npy::open(p.clone(), Dtype::I64).err().unwrap().to_string();
            assert!(e.contains("a.npy") && e.contains("<f4"), "{e}");
            if n > 0 {
                std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
                let e = Npy::open(p, Dtype::F32).err().unwrap().to_string();
                assert!(e.contains("truncated"), "{e}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
