//! AnnData readers. One trait, [`AnnDataReader`], with an HDF5 (.h5ad) and a zarr (.zarr, v2
//! and v3) implementation; [`open`] picks by what is on disk.

mod h5ad;
mod zarr;

pub use h5ad::H5adReader;
pub use zarr::ZarrReader;

use std::path::Path;

use crate::error::{DataError, Result};

/// How the expression matrix X is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XEncoding {
    Csr,
    Csc,
    Dense,
}

impl XEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            XEncoding::Csr => "csr_matrix",
            XEncoding::Csc => "csc_matrix",
            XEncoding::Dense => "dense array",
        }
    }
}

/// What `inspect` shows about X.
#[derive(Debug, Clone, PartialEq)]
pub struct XInfo {
    pub encoding: XEncoding,
    /// Element type as stored, e.g. "float32", "int64".
    pub dtype: String,
    /// Stored entries (sparse) or n_obs * n_vars (dense).
    pub nnz: u64,
    /// Compression filters on the value array, e.g. "gzip", "lzf", "none".
    pub compression: String,
}

/// A block of rows in CSR form, columns in the file's own gene order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsrRows {
    /// `indptr[i]..indptr[i + 1]` are the entries of row i of the block; `indptr[0] == 0`.
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub data: Vec<f32>,
}

impl CsrRows {
    pub fn n_rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (lo, hi) = (self.indptr[i], self.indptr[i + 1]);
        (&self.indices[lo..hi], &self.data[lo..hi])
    }
}

/// One obs column, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ObsColumn {
    /// Codes index `categories`; -1 is missing.
    Categorical {
        codes: Vec<i32>,
        categories: Vec<String>,
    },
    String(Vec<String>),
    Numeric(Vec<f64>),
    Boolean(Vec<bool>),
}

impl ObsColumn {
    pub fn len(&self) -> usize {
        match self {
            ObsColumn::Categorical { codes, .. } => codes.len(),
            ObsColumn::String(v) => v.len(),
            ObsColumn::Numeric(v) => v.len(),
            ObsColumn::Boolean(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of row `i` as text (category name, string, number or bool).
    pub fn value_string(&self, i: usize) -> String {
        match self {
            ObsColumn::Categorical { codes, categories } => match codes.get(i) {
                Some(&c) if c >= 0 => categories.get(c as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            },
            ObsColumn::String(v) => v.get(i).cloned().unwrap_or_default(),
            ObsColumn::Numeric(v) => v.get(i).map(|x| x.to_string()).unwrap_or_default(),
            ObsColumn::Boolean(v) => v.get(i).map(|x| x.to_string()).unwrap_or_default(),
        }
    }
}

/// The kind of an obs column, as `inspect` reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum ObsKind {
    Categorical {
        n_categories: usize,
    },
    String,
    Numeric {
        dtype: String,
    },
    Boolean,
    /// An encoding this reader does not decode (listed, not fatal).
    Other(String),
}

impl std::fmt::Display for ObsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObsKind::Categorical { n_categories } => {
                write!(f, "categorical ({n_categories} categories)")
            }
            ObsKind::String => write!(f, "string"),
            ObsKind::Numeric { dtype } => write!(f, "numeric ({dtype})"),
            ObsKind::Boolean => write!(f, "boolean"),
            ObsKind::Other(e) => write!(f, "{e}"),
        }
    }
}

/// Read access to one AnnData file. Readers are shared between loader threads.
pub trait AnnDataReader: Send + Sync {
    fn path(&self) -> &Path;
    fn n_obs(&self) -> usize;
    fn n_vars(&self) -> usize;
    fn var_names(&self) -> &[String];
    fn x_info(&self) -> &XInfo;
    /// Rows `start..end` of X. Values are checked: negative or non-finite entries are errors.
    fn read_rows(&self, start: usize, end: usize) -> Result<CsrRows>;
    /// As [`AnnDataReader::read_rows`], into `out`, reusing its buffers where the reader can.
    fn read_rows_into(&self, start: usize, end: usize, out: &mut CsrRows) -> Result<()> {
        *out = self.read_rows(start, end)?;
        Ok(())
    }
    /// Stored entries per row (a cheap pass over indptr for sparse X; a read for dense X).
    fn row_nnz(&self) -> Result<Vec<u32>>;
    /// obs column names in the file's order, with their kinds.
    fn obs_columns(&self) -> Result<Vec<(String, ObsKind)>>;
    fn obs_column(&self, name: &str) -> Result<ObsColumn>;
}

/// Open an AnnData file: a directory is a zarr store, anything else must be HDF5 (.h5ad).
pub fn open(path: impl AsRef<Path>) -> Result<Box<dyn AnnDataReader>> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_path_buf(),
        });
    }
    if path.is_dir() {
        return open_zarr(path);
    }
    Ok(Box::new(H5adReader::open(path)?))
}

fn open_zarr(path: &Path) -> Result<Box<dyn AnnDataReader>> {
    Ok(Box::new(ZarrReader::open(path)?))
}

/// Check values of a block: entries must be finite and non-negative, indices in range.
pub(crate) fn validate_rows(
    path: &Path,
    rows: &CsrRows,
    first_row: usize,
    n_vars: usize,
) -> Result<()> {
    // Branch-free scan first (vectorizes); locate the culprit only when something is wrong.
    let values_ok = rows
        .data
        .iter()
        .fold(true, |ok, &v| ok & (v >= 0.0) & v.is_finite());
    let max_index = rows.indices.iter().fold(0u32, |m, &c| m.max(c));
    if values_ok && (rows.indices.is_empty() || (max_index as usize) < n_vars) {
        return Ok(());
    }
    for r in 0..rows.n_rows() {
        let (idx, val) = rows.row(r);
        for (&c, &v) in idx.iter().zip(val) {
            if !(v >= 0.0 && v.is_finite()) {
                let what = if v.is_nan() {
                    "NaN".to_string()
                } else if v.is_infinite() {
                    "an infinite value".to_string()
                } else {
                    format!("a negative value ({v})")
                };
                return Err(DataError::invalid(
                    path,
                    "X",
                    format!(
                        "{what} at row {}, column {c}; expression values must be finite and non-negative",
                        first_row + r
                    ),
                ));
            }
            if c as usize >= n_vars {
                // int32 indices are read as stored: a negative one arrives as 2^32 - |c|.
                let c = if c > i32::MAX as u32 {
                    (c as i32).to_string()
                } else {
                    c.to_string()
                };
                return Err(DataError::invalid(
                    path,
                    "X",
                    format!(
                        "column index {c} at row {} is out of range (n_vars = {n_vars})",
                        first_row + r
                    ),
                ));
            }
        }
    }
    Ok(())
}
