//! AnnData in HDF5 (.h5ad), as anndata 0.8–0.12 writes it: X as a `csr_matrix` / `csc_matrix`
//! group (data, indices, indptr) or a dense 2-D dataset; var/obs as `dataframe` groups with an
//! `_index` attribute naming the index dataset and a `column-order` attribute.

use std::path::{Path, PathBuf};

use hdf5::types::{TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Dataset, File, Location, LocationType};

use super::{validate_rows, AnnDataReader, CsrRows, ObsColumn, ObsKind, XEncoding, XInfo};
use crate::error::{DataError, Result};
use crate::h5util::{h5, has_hdf5_signature};

enum XStore {
    /// Sparse rows read on demand; indptr is kept in memory (n_obs + 1 offsets).
    Csr {
        indptr: Vec<u64>,
        data: Dataset,
        indices: Dataset,
        /// Stored as float32 / int32 (what anndata writes): read straight into the caller's
        /// buffers without conversion.
        data_f32: bool,
        indices_i32: bool,
    },
    /// CSC cannot be sliced by row cheaply, so it is converted to CSR once, at open.
    InMemory(CsrRows),
    Dense(Dataset),
}

pub struct H5adReader {
    path: PathBuf,
    file: File,
    n_obs: usize,
    n_vars: usize,
    var_names: Vec<String>,
    x: XStore,
    info: XInfo,
}

/// A string attribute, if present and a string.
pub(crate) fn str_attr(loc: &Location, name: &str) -> Option<String> {
    let names = loc.attr_names().ok()?;
    if !names.iter().any(|n| n == name) {
        return None;
    }
    let attr = loc.attr(name).ok()?;
    if let Ok(s) = attr.read_scalar::<VarLenUnicode>() {
        return Some(s.as_str().to_string());
    }
    if let Ok(s) = attr.read_scalar::<VarLenAscii>() {
        return Some(s.as_str().to_string());
    }
    None
}

fn str_array_attr(loc: &Location, name: &str) -> Option<Vec<String>> {
    let names = loc.attr_names().ok()?;
    if !names.iter().any(|n| n == name) {
        return None;
    }
    let attr = loc.attr(name).ok()?;
    if attr.size() == 0 {
        return Some(Vec::new());
    }
    if let Ok(v) = attr.read_raw::<VarLenUnicode>() {
        return Some(v.iter().map(|s| s.as_str().to_string()).collect());
    }
    if let Ok(v) = attr.read_raw::<VarLenAscii>() {
        return Some(v.iter().map(|s| s.as_str().to_string()).collect());
    }
    None
}

fn read_strings(ds: &Dataset) -> hdf5::Result<Vec<String>> {
    match ds.read_raw::<VarLenUnicode>() {
        Ok(v) => Ok(v.iter().map(|s| s.as_str().to_string()).collect()),
        Err(e) => match ds.read_raw::<VarLenAscii>() {
            Ok(v) => Ok(v.iter().map(|s| s.as_str().to_string()).collect()),
            Err(_) => Err(e),
        },
    }
}

fn dtype_name(ds: &Dataset) -> String {
    match ds.dtype().and_then(|t| t.to_descriptor()) {
        Ok(d) => descriptor_name(&d),
        Err(_) => "unknown".into(),
    }
}

fn descriptor_name(d: &TypeDescriptor) -> String {
    match d {
        TypeDescriptor::Integer(s) => format!("int{}", *s as usize * 8),
        TypeDescriptor::Unsigned(s) => format!("uint{}", *s as usize * 8),
        TypeDescriptor::Float(s) => format!("float{}", *s as usize * 8),
        TypeDescriptor::Boolean => "bool".into(),
        TypeDescriptor::VarLenUnicode | TypeDescriptor::VarLenAscii => "string".into(),
        TypeDescriptor::FixedAscii(_) | TypeDescriptor::FixedUnicode(_) => "string".into(),
        TypeDescriptor::Enum(e) if is_bool_enum(e) => "bool".into(),
        other => other.to_string(),
    }
}

fn is_bool_enum(e: &hdf5::types::EnumType) -> bool {
    e.members.len() == 2
        && e.members
            .iter()
            .all(|m| m.name.eq_ignore_ascii_case("true") || m.name.eq_ignore_ascii_case("false"))
}

fn compression_name(ds: &Dataset) -> String {
    let filters = ds.filters();
    let names: Vec<String> = filters
        .iter()
        .filter_map(|f| match f {
            hdf5::filters::Filter::Deflate(level) => Some(format!("gzip({level})")),
            hdf5::filters::Filter::LZF => Some("lzf".into()),
            hdf5::filters::Filter::Shuffle => None,
            hdf5::filters::Filter::Fletcher32 => None,
            other => Some(format!("{other:?}").to_lowercase()),
        })
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join("+")
    }
}

fn member_names(file: &File) -> String {
    file.member_names()
        .map(|m| m.join(", "))
        .unwrap_or_else(|_| "?".into())
}

impl H5adReader {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(DataError::NotFound {
                path: path.to_path_buf(),
            });
        }
        if !has_hdf5_signature(path)? {
            return Err(DataError::NotAnnData {
                path: path.to_path_buf(),
                detail: "not an HDF5 file (no HDF5 signature); expected an AnnData .h5ad file or a .zarr directory".into(),
            });
        }
        let file = File::open(path).map_err(|e| DataError::NotAnnData {
            path: path.to_path_buf(),
            detail: format!("HDF5 file cannot be opened (truncated or corrupt?): {e}"),
        })?;
        if !file.link_exists("X") {
            return Err(DataError::invalid(
                path,
                "X",
                format!(
                    "no expression matrix X in this file (top-level members: {})",
                    member_names(&file)
                ),
            ));
        }
        let var_names = read_var_names(path, &file)?;
        let n_vars_index = var_names.len();
        let x_type = file.loc_type_by_name("X").map_err(h5(path, "X"))?;
        let (x, info, n_obs, n_vars) = match x_type {
            LocationType::Group => {
                let g = file.group("X").map_err(h5(path, "X"))?;
                let enc = str_attr(&g, "encoding-type").unwrap_or_default();
                let shape = g
                    .attr("shape")
                    .and_then(|a| a.read_raw::<i64>())
                    .map_err(|_| {
                        DataError::invalid(
                            path,
                            "X",
                            "sparse matrix group has no 'shape' attribute",
                        )
                    })?;
                if shape.len() != 2 || shape.iter().any(|&s| s < 0) {
                    return Err(DataError::invalid(
                        path,
                        "X",
                        format!("bad 'shape' attribute {shape:?}"),
                    ));
                }
                let (rows, cols) = (shape[0] as usize, shape[1] as usize);
                let encoding = match enc.as_str() {
                    "csr_matrix" => XEncoding::Csr,
                    "csc_matrix" => XEncoding::Csc,
                    "" => {
                        return Err(DataError::invalid(
                            path,
                            "X",
                            "group without an 'encoding-type' attribute; expected csr_matrix or csc_matrix",
                        ))
                    }
                    other => {
                        return Err(DataError::invalid(
                            path,
                            "X",
                            format!("unknown encoding-type '{other}'; supported: csr_matrix, csc_matrix, array"),
                        ))
                    }
                };
                for m in ["data", "indices", "indptr"] {
                    if !g.link_exists(m) {
                        return Err(DataError::invalid(
                            path,
                            format!("X/{m}"),
                            "missing from the sparse matrix group",
                        ));
                    }
                }
                let data = g.dataset("data").map_err(h5(path, "X/data"))?;
                let indices = g.dataset("indices").map_err(h5(path, "X/indices"))?;
                let indptr_ds = g.dataset("indptr").map_err(h5(path, "X/indptr"))?;
                let indptr = read_indptr(path, &indptr_ds)?;
                let major = if encoding == XEncoding::Csr {
                    rows
                } else {
                    cols
                };
                check_indptr(path, &indptr, major, data.size(), indices.size())?;
                let info = XInfo {
                    encoding,
                    dtype: dtype_name(&data),
                    nnz: *indptr.last().unwrap_or(&0),
                    compression: compression_name(&data),
                };
                let store = if encoding == XEncoding::Csr {
                    let descriptor = |ds: &Dataset| ds.dtype().and_then(|t| t.to_descriptor()).ok();
                    XStore::Csr {
                        data_f32: matches!(
                            descriptor(&data),
                            Some(TypeDescriptor::Float(hdf5::types::FloatSize::U4))
                        ),
                        indices_i32: matches!(
                            descriptor(&indices),
                            Some(TypeDescriptor::Integer(hdf5::types::IntSize::U4))
                        ),
                        indptr,
                        data,
                        indices,
                    }
                } else {
                    XStore::InMemory(csc_to_csr(path, &indptr, &data, &indices, rows, cols)?)
                };
                (store, info, rows, cols)
            }
            LocationType::Dataset => {
                let ds = file.dataset("X").map_err(h5(path, "X"))?;
                if let Some(enc) = str_attr(&ds, "encoding-type") {
                    if enc != "array" {
                        return Err(DataError::invalid(
                            path,
                            "X",
                            format!(
                                "unknown encoding-type '{enc}' for a dataset; expected 'array'"
                            ),
                        ));
                    }
                }
                let shape = ds.shape();
                if shape.len() != 2 {
                    return Err(DataError::invalid(
                        path,
                        "X",
                        format!("dense X must be 2-D, found shape {shape:?}"),
                    ));
                }
                let info = XInfo {
                    encoding: XEncoding::Dense,
                    dtype: dtype_name(&ds),
                    nnz: (shape[0] * shape[1]) as u64,
                    compression: compression_name(&ds),
                };
                (XStore::Dense(ds), info, shape[0], shape[1])
            }
            _ => {
                return Err(DataError::invalid(
                    path,
                    "X",
                    "is neither a group (sparse) nor a dataset (dense)",
                ))
            }
        };
        if n_vars != n_vars_index {
            return Err(DataError::invalid(
                path,
                "var",
                format!("index has {n_vars_index} gene names but X has {n_vars} columns"),
            ));
        }
        Ok(H5adReader {
            path: path.to_path_buf(),
            file,
            n_obs,
            n_vars,
            var_names,
            x,
            info,
        })
    }

    /// Every column of `var` (in its column order), each decoded or the reason it cannot be.
    pub fn var_columns(&self) -> Result<Vec<(String, Result<ObsColumn>)>> {
        let var = self
            .file
            .group("var")
            .map_err(|_| DataError::invalid(&self.path, "var", "no var dataframe in this file"))?;
        Ok(obs_column_names(&var)
            .into_iter()
            .map(|name| {
                let object = format!("var/{name}");
                let col = read_obs_column(&self.path, &var, &name, &object);
                (name, col)
            })
            .collect())
    }

    fn obs_group(&self) -> Result<hdf5::Group> {
        self.file
            .group("obs")
            .map_err(|_| DataError::invalid(&self.path, "obs", "no obs dataframe in this file"))
    }
}

/// A string array stored as a dataset, or as anndata's `nullable-string-array` group (`values`
/// plus a `mask`; pandas' string dtype, the default since pandas 3), missing entries empty.
fn read_string_elem(parent: &hdf5::Group, name: &str) -> hdf5::Result<Vec<String>> {
    if let Ok(ds) = parent.dataset(name) {
        return read_strings(&ds);
    }
    let g = parent.group(name)?;
    let mut values = read_strings(&g.dataset("values")?)?;
    if let Ok(mask) = g.dataset("mask").and_then(|d| read_bools(&d)) {
        for (v, missing) in values.iter_mut().zip(mask) {
            if missing {
                v.clear();
            }
        }
    }
    Ok(values)
}

fn read_var_names(path: &Path, file: &File) -> Result<Vec<String>> {
    let var = file.group("var").map_err(|_| {
        DataError::invalid(path, "var", "no var dataframe (gene names) in this file")
    })?;
    let index_name = str_attr(&var, "_index").unwrap_or_else(|| "_index".into());
    if !var.link_exists(&index_name) {
        return Err(DataError::invalid(
            path,
            format!("var/{index_name}"),
            "gene-name index named by var's '_index' attribute is missing",
        ));
    }
    read_string_elem(&var, &index_name).map_err(|e| {
        DataError::invalid(
            path,
            format!("var/{index_name}"),
            format!("gene names are not strings: {e}"),
        )
    })
}

fn read_indptr(path: &Path, ds: &Dataset) -> Result<Vec<u64>> {
    let raw = ds.read_raw::<i64>().map_err(h5(path, "X/indptr"))?;
    let mut out = Vec::with_capacity(raw.len());
    for (i, &v) in raw.iter().enumerate() {
        if v < 0 {
            return Err(DataError::invalid(
                path,
                "X/indptr",
                format!("negative offset {v} at position {i}"),
            ));
        }
        out.push(v as u64);
    }
    Ok(out)
}

fn check_indptr(
    path: &Path,
    indptr: &[u64],
    major: usize,
    n_data: usize,
    n_idx: usize,
) -> Result<()> {
    if indptr.len() != major + 1 {
        return Err(DataError::invalid(
            path,
            "X/indptr",
            format!(
                "has {} entries, expected {} (shape)",
                indptr.len(),
                major + 1
            ),
        ));
    }
    if indptr.windows(2).any(|w| w[0] > w[1]) {
        return Err(DataError::invalid(
            path,
            "X/indptr",
            "offsets are not non-decreasing",
        ));
    }
    let nnz = *indptr.last().unwrap_or(&0) as usize;
    if n_data != n_idx || nnz > n_data {
        return Err(DataError::invalid(
            path,
            "X",
            format!(
                "inconsistent sparse arrays: indptr ends at {nnz}, data has {n_data}, indices has {n_idx} entries"
            ),
        ));
    }
    Ok(())
}

fn read_indices(path: &Path, ds: &Dataset, lo: usize, hi: usize) -> Result<Vec<u32>> {
    let out_of_range =
        |v: i64| DataError::invalid(path, "X/indices", format!("index {v} out of range"));
    // anndata writes int32 indices: read them as stored, skipping HDF5's type conversion.
    let native_i32 = matches!(
        ds.dtype().and_then(|t| t.to_descriptor()),
        Ok(TypeDescriptor::Integer(hdf5::types::IntSize::U4))
    );
    if native_i32 {
        let raw = ds
            .read_slice_1d::<i32, _>(lo..hi)
            .map_err(h5(path, "X/indices"))?;
        let mut out = Vec::with_capacity(raw.len());
        for &v in raw.iter() {
            if v < 0 {
                return Err(out_of_range(v as i64));
            }
            out.push(v as u32);
        }
        return Ok(out);
    }
    let raw = ds
        .read_slice_1d::<i64, _>(lo..hi)
        .map_err(h5(path, "X/indices"))?;
    let mut out = Vec::with_capacity(raw.len());
    for &v in raw.iter() {
        if !(0..=u32::MAX as i64).contains(&v) {
            return Err(out_of_range(v));
        }
        out.push(v as u32);
    }
    Ok(out)
}

/// Elements `lo..hi` of a 1-D dataset into `out` (resized), read as HDF5 type `T` into memory
/// of `B` (same size and layout, e.g. int32 into u32). `out` keeps its allocation from call to
/// call; its previous contents are overwritten by the read.
fn read_slice_into<T: hdf5::H5Type, B: Copy + Default>(
    ds: &Dataset,
    lo: usize,
    hi: usize,
    out: &mut Vec<B>,
) -> hdf5::Result<()> {
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<B>());
    out.resize(hi - lo, B::default());
    if hi == lo {
        return Ok(());
    }
    let file_space = ds.space()?.select(lo..hi)?;
    let mem_space = hdf5::Dataspace::try_new(hi - lo)?;
    let mem_type = hdf5::Datatype::from_type::<T>()?;
    hdf5::sync::sync(|| {
        // SAFETY: `out` holds exactly `hi - lo` elements of B, which has T's size, and the
        // memory dataspace selects that many elements of type T.
        let status = unsafe {
            hdf5_sys::h5d::H5Dread(
                ds.id(),
                mem_type.id(),
                mem_space.id(),
                file_space.id(),
                hdf5_sys::h5p::H5P_DEFAULT,
                out.as_mut_ptr().cast(),
            )
        };
        hdf5::h5check(status).map(|_| ())
    })
}

fn read_values(path: &Path, ds: &Dataset, lo: usize, hi: usize) -> Result<Vec<f32>> {
    Ok(ds
        .read_slice_1d::<f32, _>(lo..hi)
        .map_err(h5(path, "X/data"))?
        .into_raw_vec_and_offset()
        .0)
}

/// Convert a CSC matrix to CSR in memory, column block by column block.
fn csc_to_csr(
    path: &Path,
    indptr: &[u64],
    data: &Dataset,
    indices: &Dataset,
    n_rows: usize,
    n_cols: usize,
) -> Result<CsrRows> {
    tracing::info!(
        "{}: X is CSC; converting to CSR in memory once ({} stored values)",
        path.display(),
        indptr.last().unwrap_or(&0)
    );
    eprintln!(
        "{}: X is stored column-wise (csc_matrix); converting to rows once...",
        path.display()
    );
    let nnz = *indptr.last().unwrap_or(&0) as usize;
    let mut counts = vec![0usize; n_rows + 1];
    let block = 4096usize;
    let mut col = 0usize;
    // Pass 1: count entries per row.
    while col < n_cols {
        let end = (col + block).min(n_cols);
        let (lo, hi) = (indptr[col] as usize, indptr[end] as usize);
        for r in read_indices(path, indices, lo, hi)? {
            if r as usize >= n_rows {
                return Err(DataError::invalid(
                    path,
                    "X/indices",
                    format!("row index {r} out of range (n_obs = {n_rows})"),
                ));
            }
            counts[r as usize + 1] += 1;
        }
        col = end;
    }
    for i in 0..n_rows {
        counts[i + 1] += counts[i];
    }
    let out_indptr = counts.clone();
    let mut next = counts;
    let mut out_idx = vec![0u32; nnz];
    let mut out_val = vec![0f32; nnz];
    // Pass 2: scatter. Columns ascend, so each row's columns come out sorted.
    col = 0;
    while col < n_cols {
        let end = (col + block).min(n_cols);
        let (lo, hi) = (indptr[col] as usize, indptr[end] as usize);
        let rows = read_indices(path, indices, lo, hi)?;
        let vals = read_values(path, data, lo, hi)?;
        for c in col..end {
            let (a, b) = (indptr[c] as usize - lo, indptr[c + 1] as usize - lo);
            for k in a..b {
                let r = rows[k] as usize;
                let dst = next[r];
                out_idx[dst] = c as u32;
                out_val[dst] = vals[k];
                next[r] += 1;
            }
        }
        col = end;
    }
    eprintln!("{}: CSC conversion done", path.display());
    Ok(CsrRows {
        indptr: out_indptr,
        indices: out_idx,
        data: out_val,
    })
}

impl AnnDataReader for H5adReader {
    fn path(&self) -> &Path {
        &self.path
    }
    fn n_obs(&self) -> usize {
        self.n_obs
    }
    fn n_vars(&self) -> usize {
        self.n_vars
    }
    fn var_names(&self) -> &[String] {
        &self.var_names
    }
    fn x_info(&self) -> &XInfo {
        &self.info
    }

    fn read_rows(&self, start: usize, end: usize) -> Result<CsrRows> {
        let mut rows = CsrRows::default();
        self.read_rows_into(start, end, &mut rows)?;
        Ok(rows)
    }

    fn read_rows_into(&self, start: usize, end: usize, out: &mut CsrRows) -> Result<()> {
        if start > end || end > self.n_obs {
            return Err(DataError::invalid(
                &self.path,
                "X",
                format!("row range {start}..{end} outside 0..{}", self.n_obs),
            ));
        }
        let rows = match &self.x {
            XStore::Csr {
                indptr,
                data,
                indices,
                data_f32,
                indices_i32,
            } => {
                let (lo, hi) = (indptr[start] as usize, indptr[end] as usize);
                out.indptr.clear();
                out.indptr
                    .extend(indptr[start..=end].iter().map(|&p| p as usize - lo));
                if *indices_i32 {
                    // Negative indices arrive as values >= 2^31 and fail validation below.
                    read_slice_into::<i32, u32>(indices, lo, hi, &mut out.indices)
                        .map_err(h5(&self.path, "X/indices"))?;
                } else if hi > lo {
                    out.indices = read_indices(&self.path, indices, lo, hi)?;
                } else {
                    out.indices.clear();
                }
                if *data_f32 {
                    read_slice_into::<f32, f32>(data, lo, hi, &mut out.data)
                        .map_err(h5(&self.path, "X/data"))?;
                } else if hi > lo {
                    out.data = read_values(&self.path, data, lo, hi)?;
                } else {
                    out.data.clear();
                }
                validate_rows(&self.path, out, start, self.n_vars)?;
                return Ok(());
            }
            XStore::InMemory(all) => {
                let (lo, hi) = (all.indptr[start], all.indptr[end]);
                CsrRows {
                    indptr: all.indptr[start..=end].iter().map(|&p| p - lo).collect(),
                    indices: all.indices[lo..hi].to_vec(),
                    data: all.data[lo..hi].to_vec(),
                }
            }
            XStore::Dense(ds) => {
                let mut out = CsrRows {
                    indptr: vec![0],
                    ..Default::default()
                };
                if end > start {
                    let block = ds
                        .read_slice_2d::<f32, _>(ndarray::s![start..end, ..])
                        .map_err(h5(&self.path, "X"))?;
                    for row in block.rows() {
                        for (c, &v) in row.iter().enumerate() {
                            if v != 0.0 {
                                out.indices.push(c as u32);
                                out.data.push(v);
                            }
                        }
                        out.indptr.push(out.indices.len());
                    }
                } else {
                    out.indptr = vec![0];
                }
                out
            }
        };
        validate_rows(&self.path, &rows, start, self.n_vars)?;
        *out = rows;
        Ok(())
    }

    fn row_nnz(&self) -> Result<Vec<u32>> {
        let from_indptr = |p: &[u64]| p.windows(2).map(|w| (w[1] - w[0]) as u32).collect();
        match &self.x {
            XStore::Csr { indptr, .. } => Ok(from_indptr(indptr)),
            XStore::InMemory(all) => Ok(all
                .indptr
                .windows(2)
                .map(|w| (w[1] - w[0]) as u32)
                .collect()),
            XStore::Dense(_) => {
                let mut out = Vec::with_capacity(self.n_obs);
                let step = 1024;
                let mut start = 0;
                while start < self.n_obs {
                    let end = (start + step).min(self.n_obs);
                    let rows = self.read_rows(start, end)?;
                    out.extend(rows.indptr.windows(2).map(|w| (w[1] - w[0]) as u32));
                    start = end;
                }
                Ok(out)
            }
        }
    }

    fn obs_columns(&self) -> Result<Vec<(String, ObsKind)>> {
        let obs = self.obs_group()?;
        let names = obs_column_names(&obs);
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let kind = obs_kind(&obs, &name);
            out.push((name, kind));
        }
        Ok(out)
    }

    fn obs_column(&self, name: &str) -> Result<ObsColumn> {
        let obs = self.obs_group()?;
        let names = obs_column_names(&obs);
        if !names.iter().any(|n| n == name) || !obs.link_exists(name) {
            return Err(DataError::MissingObsColumn {
                path: self.path.clone(),
                column: name.to_string(),
                existing: names,
            });
        }
        let object = format!("obs/{name}");
        let col = read_obs_column(&self.path, &obs, name, &object)?;
        if col.len() != self.n_obs {
            return Err(DataError::invalid(
                &self.path,
                object,
                format!(
                    "has {} values but there are {} cells",
                    col.len(),
                    self.n_obs
                ),
            ));
        }
        Ok(col)
    }
}

fn obs_column_names(obs: &hdf5::Group) -> Vec<String> {
    let index = str_attr(obs, "_index").unwrap_or_else(|| "_index".into());
    match str_array_attr(obs, "column-order") {
        Some(cols) => cols,
        None => obs
            .member_names()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| *n != index && n != "__categories")
            .collect(),
    }
}

fn obs_kind(obs: &hdf5::Group, name: &str) -> ObsKind {
    match obs.loc_type_by_name(name) {
        Ok(LocationType::Group) => {
            let Ok(g) = obs.group(name) else {
                return ObsKind::Other("unreadable".into());
            };
            match str_attr(&g, "encoding-type").as_deref() {
                Some("categorical") => {
                    let n = g
                        .dataset("categories")
                        .or_else(|_| g.dataset("categories/values"))
                        .map(|d| d.size())
                        .unwrap_or(0);
                    ObsKind::Categorical { n_categories: n }
                }
                Some("nullable-integer") => ObsKind::Numeric {
                    dtype: g
                        .dataset("values")
                        .map(|d| format!("nullable {}", dtype_name(&d)))
                        .unwrap_or_else(|_| "nullable integer".into()),
                },
                Some("nullable-boolean") => ObsKind::Boolean,
                Some("nullable-string-array") => ObsKind::String,
                Some(other) => ObsKind::Other(other.to_string()),
                None => ObsKind::Other("group without encoding-type".into()),
            }
        }
        Ok(LocationType::Dataset) => match obs.dataset(name) {
            Ok(ds) => {
                let dt = dtype_name(&ds);
                match dt.as_str() {
                    "string" => ObsKind::String,
                    "bool" => ObsKind::Boolean,
                    d if d.starts_with("int")
                        || d.starts_with("uint")
                        || d.starts_with("float") =>
                    {
                        ObsKind::Numeric { dtype: dt }
                    }
                    _ => ObsKind::Other(dt),
                }
            }
            Err(_) => ObsKind::Other("unreadable".into()),
        },
        _ => ObsKind::Other("missing".into()),
    }
}

fn read_bools(ds: &Dataset) -> hdf5::Result<Vec<bool>> {
    match ds.read_raw::<bool>() {
        Ok(v) => Ok(v),
        Err(e) => match ds.read_raw::<i8>() {
            Ok(v) => Ok(v.into_iter().map(|x| x != 0).collect()),
            Err(_) => Err(e),
        },
    }
}

fn read_obs_column(path: &Path, obs: &hdf5::Group, name: &str, object: &str) -> Result<ObsColumn> {
    let bad = |problem: String| DataError::invalid(path, object, problem);
    match obs_kind(obs, name) {
        ObsKind::Categorical { .. } => {
            let g = obs.group(name).map_err(h5(path, object))?;
            let codes = g
                .dataset("codes")
                .and_then(|d| d.read_raw::<i32>())
                .map_err(h5(path, &format!("{object}/codes")))?;
            let cats_object = format!("{object}/categories");
            let categories = match g.dataset("categories") {
                // pandas' string dtype: a nullable-string-array group.
                Err(_) => read_string_elem(&g, "categories").map_err(h5(path, &cats_object))?,
                Ok(cats_ds) => match dtype_name(&cats_ds).as_str() {
                    "string" => {
                        read_strings(&cats_ds).map_err(h5(path, &format!("{object}/categories")))?
                    }
                    "bool" => read_bools(&cats_ds)
                        .map_err(h5(path, &format!("{object}/categories")))?
                        .into_iter()
                        .map(|b| b.to_string())
                        .collect(),
                    _ => cats_ds
                        .read_raw::<f64>()
                        .map_err(h5(path, &format!("{object}/categories")))?
                        .into_iter()
                        .map(|x| x.to_string())
                        .collect(),
                },
            };
            if let Some(&c) = codes.iter().find(|&&c| c >= categories.len() as i32) {
                return Err(bad(format!(
                    "category code {c} but only {} categories",
                    categories.len()
                )));
            }
            Ok(ObsColumn::Categorical { codes, categories })
        }
        ObsKind::String => {
            if let Ok(ds) = obs.dataset(name) {
                Ok(ObsColumn::String(
                    read_strings(&ds).map_err(h5(path, object))?,
                ))
            } else {
                let g = obs.group(name).map_err(h5(path, object))?;
                let vals = g
                    .dataset("values")
                    .and_then(|d| read_strings(&d))
                    .map_err(h5(path, &format!("{object}/values")))?;
                Ok(ObsColumn::String(vals))
            }
        }
        ObsKind::Numeric { .. } => {
            if let Ok(ds) = obs.dataset(name) {
                Ok(ObsColumn::Numeric(
                    ds.read_raw::<f64>().map_err(h5(path, object))?,
                ))
            } else {
                let g = obs.group(name).map_err(h5(path, object))?;
                let mut vals = g
                    .dataset("values")
                    .and_then(|d| d.read_raw::<f64>())
                    .map_err(h5(path, &format!("{object}/values")))?;
                if let Ok(mask) = g.dataset("mask").and_then(|d| read_bools(&d)) {
                    for (v, m) in vals.iter_mut().zip(mask) {
                        if m {
                            *v = f64::NAN;
                        }
                    }
                }
                Ok(ObsColumn::Numeric(vals))
            }
        }
        ObsKind::Boolean => {
            if let Ok(ds) = obs.dataset(name) {
                Ok(ObsColumn::Boolean(
                    read_bools(&ds).map_err(h5(path, object))?,
                ))
            } else {
                let g = obs.group(name).map_err(h5(path, object))?;
                let vals = g
                    .dataset("values")
                    .and_then(|d| read_bools(&d))
                    .map_err(h5(path, &format!("{object}/values")))?;
                Ok(ObsColumn::Boolean(vals))
            }
        }
        ObsKind::Other(what) => Err(bad(format!("unsupported column encoding: {what}"))),
    }
}
