//! AnnData in zarr stores (v2 and v3), through `zarrs`. Same layout as .h5ad: group
//! attributes carry `encoding-type`; X is a csr/csc group or a dense array.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zarrs::array::{Array, ArraySubset, ElementOwned};
use zarrs::filesystem::FilesystemStore;
use zarrs::group::Group;

use super::{validate_rows, AnnDataReader, CsrRows, ObsColumn, ObsKind, XEncoding, XInfo};
use crate::error::{DataError, Result};

type Store = FilesystemStore;

enum XStore {
    Csr {
        indptr: Vec<u64>,
        data: Box<Array<Store>>,
        indices: Box<Array<Store>>,
    },
    InMemory(CsrRows),
    Dense(Box<Array<Store>>),
}

pub struct ZarrReader {
    path: PathBuf,
    store: Arc<Store>,
    n_obs: usize,
    n_vars: usize,
    var_names: Vec<String>,
    x: XStore,
    info: XInfo,
}

fn bad(path: &Path, object: &str, problem: impl Into<String>) -> DataError {
    DataError::invalid(path, object, problem)
}

fn attr_str(attrs: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<String> {
    attrs.get(key).and_then(|v| v.as_str()).map(str::to_string)
}

fn open_array(path: &Path, store: &Arc<Store>, node: &str) -> Result<Array<Store>> {
    Array::open(store.clone(), node).map_err(|e| {
        bad(
            path,
            node.trim_start_matches('/'),
            format!("cannot open array: {e}"),
        )
    })
}

/// Read a whole or partial 1-D array converting from whatever numeric type it stores.
fn read_num<T: Copy + 'static>(
    path: &Path,
    arr: &Array<Store>,
    range: std::ops::Range<u64>,
    conv: fn(f64) -> T,
) -> Result<Vec<T>> {
    let subset = ArraySubset::new_with_ranges(&[range]);
    macro_rules! attempt {
        ($($t:ty),*) => {
            $(
                if let Ok(v) = arr.retrieve_array_subset::<Vec<$t>>(&subset) {
                    return Ok(v.into_iter().map(|x| conv(x as f64)).collect());
                }
            )*
        };
    }
    attempt!(f32, f64, i8, i16, i32, i64, u8, u16, u32, u64);
    if let Ok(v) = arr.retrieve_array_subset::<Vec<bool>>(&subset) {
        return Ok(v
            .into_iter()
            .map(|x| conv(if x { 1.0 } else { 0.0 }))
            .collect());
    }
    Err(bad(
        path,
        arr.path().as_str().trim_start_matches('/'),
        format!(
            "unsupported data type {} (expected a number)",
            arr.data_type()
        ),
    ))
}

fn read_all<T: ElementOwned>(arr: &Array<Store>) -> std::result::Result<Vec<T>, String> {
    let subset = ArraySubset::new_with_shape(arr.shape().to_vec());
    arr.retrieve_array_subset::<Vec<T>>(&subset)
        .map_err(|e| e.to_string())
}

fn read_strings(path: &Path, arr: &Array<Store>) -> Result<Vec<String>> {
    read_all::<String>(arr).map_err(|e| {
        bad(
            path,
            arr.path().as_str().trim_start_matches('/'),
            format!("expected strings: {e}"),
        )
    })
}

/// "float32" rather than zarrs' "float32 / <f4".
fn dtype_name(arr: &Array<Store>) -> String {
    let s = arr.data_type().to_string();
    s.split(" / ").next().unwrap_or(&s).to_string()
}

fn len1(arr: &Array<Store>) -> u64 {
    arr.shape().first().copied().unwrap_or(0)
}

fn compression(arr: &Array<Store>) -> String {
    let meta = serde_json::to_value(arr.metadata()).unwrap_or_default();
    let mut names = Vec::new();
    if let Some(c) = meta
        .get("compressor")
        .and_then(|c| c.get("id"))
        .and_then(|v| v.as_str())
    {
        names.push(c.to_string());
    }
    if let Some(codecs) = meta.get("codecs").and_then(|c| c.as_array()) {
        for c in codecs {
            if let Some(n) = c.get("name").and_then(|v| v.as_str()) {
                if !matches!(n, "bytes" | "vlen-utf8" | "transpose") {
                    names.push(n.to_string());
                }
            }
        }
    }
    if names.is_empty() {
        "none".into()
    } else {
        names.join("+")
    }
}

impl ZarrReader {
    pub fn open(path: &Path) -> Result<Self> {
        let is_v2 = path.join(".zgroup").exists();
        let is_v3 = path.join("zarr.json").exists();
        if !is_v2 && !is_v3 {
            return Err(DataError::NotAnnData {
                path: path.to_path_buf(),
                detail: "directory is not a zarr store (no .zgroup or zarr.json)".into(),
            });
        }
        let store = Arc::new(
            FilesystemStore::new(path).map_err(|e| DataError::NotAnnData {
                path: path.to_path_buf(),
                detail: format!("cannot open zarr store: {e}"),
            })?,
        );
        let has = |name: &str| {
            let d = path.join(name);
            d.join(".zarray").exists() || d.join(".zgroup").exists() || d.join("zarr.json").exists()
        };
        if !has("X") {
            return Err(bad(path, "X", "no expression matrix X in this store"));
        }
        let var_names = {
            let var = Group::open(store.clone(), "/var")
                .map_err(|e| bad(path, "var", format!("no var dataframe: {e}")))?;
            let idx = attr_str(var.attributes(), "_index").unwrap_or_else(|| "_index".into());
            // A plain string array, or a nullable-string-array group (pandas' string dtype).
            let arr = open_array(path, &store, &format!("/var/{idx}"))
                .or_else(|_| open_array(path, &store, &format!("/var/{idx}/values")))?;
            read_strings(path, &arr)?
        };
        let (x, info, n_obs, n_vars) = if path.join("X").join(".zarray").exists()
            || Array::open(store.clone(), "/X").is_ok()
        {
            let arr = open_array(path, &store, "/X")?;
            if let Some(enc) = attr_str(arr.attributes(), "encoding-type") {
                if enc != "array" {
                    return Err(bad(
                        path,
                        "X",
                        format!("unknown encoding-type '{enc}' for an array; expected 'array'"),
                    ));
                }
            }
            let shape = arr.shape().to_vec();
            if shape.len() != 2 {
                return Err(bad(
                    path,
                    "X",
                    format!("dense X must be 2-D, found shape {shape:?}"),
                ));
            }
            let info = XInfo {
                encoding: XEncoding::Dense,
                dtype: dtype_name(&arr),
                nnz: shape[0] * shape[1],
                compression: compression(&arr),
            };
            (
                XStore::Dense(Box::new(arr)),
                info,
                shape[0] as usize,
                shape[1] as usize,
            )
        } else {
            let g = Group::open(store.clone(), "/X")
                .map_err(|e| bad(path, "X", format!("cannot open: {e}")))?;
            let enc = attr_str(g.attributes(), "encoding-type").unwrap_or_default();
            let encoding = match enc.as_str() {
                "csr_matrix" => XEncoding::Csr,
                "csc_matrix" => XEncoding::Csc,
                "" => return Err(bad(
                    path,
                    "X",
                    "group without an 'encoding-type' attribute; expected csr_matrix or csc_matrix",
                )),
                other => {
                    return Err(bad(
                        path,
                        "X",
                        format!(
                        "unknown encoding-type '{other}'; supported: csr_matrix, csc_matrix, array"
                    ),
                    ))
                }
            };
            let shape: Vec<u64> = g
                .attributes()
                .get("shape")
                .and_then(|s| s.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
                .unwrap_or_default();
            if shape.len() != 2 {
                return Err(bad(
                    path,
                    "X",
                    "sparse matrix group has no valid 'shape' attribute",
                ));
            }
            let (rows, cols) = (shape[0] as usize, shape[1] as usize);
            let data = open_array(path, &store, "/X/data")?;
            let indices = open_array(path, &store, "/X/indices")?;
            let indptr_arr = open_array(path, &store, "/X/indptr")?;
            let indptr_i: Vec<i64> =
                read_num(path, &indptr_arr, 0..len1(&indptr_arr), |x| x as i64)?;
            if indptr_i.iter().any(|&v| v < 0) {
                return Err(bad(path, "X/indptr", "negative offsets"));
            }
            let indptr: Vec<u64> = indptr_i.into_iter().map(|v| v as u64).collect();
            let major = if encoding == XEncoding::Csr {
                rows
            } else {
                cols
            };
            if indptr.len() != major + 1
                || indptr.windows(2).any(|w| w[0] > w[1])
                || *indptr.last().unwrap_or(&0) > len1(&data).min(len1(&indices))
            {
                return Err(bad(
                    path,
                    "X/indptr",
                    "inconsistent with shape or data length",
                ));
            }
            let info = XInfo {
                encoding,
                dtype: dtype_name(&data),
                nnz: *indptr.last().unwrap_or(&0),
                compression: compression(&data),
            };
            let store_x = if encoding == XEncoding::Csr {
                XStore::Csr {
                    indptr,
                    data: Box::new(data),
                    indices: Box::new(indices),
                }
            } else {
                eprintln!(
                    "{}: X is stored column-wise (csc_matrix); converting to rows once...",
                    path.display()
                );
                let nnz = *indptr.last().unwrap_or(&0);
                let r: Vec<u32> = read_num(path, &indices, 0..nnz, |x| x as u32)?;
                let v: Vec<f32> = read_num(path, &data, 0..nnz, |x| x as f32)?;
                let mut counts = vec![0usize; rows + 1];
                for &ri in &r {
                    if ri as usize >= rows {
                        return Err(bad(
                            path,
                            "X/indices",
                            format!("row index {ri} out of range"),
                        ));
                    }
                    counts[ri as usize + 1] += 1;
                }
                for i in 0..rows {
                    counts[i + 1] += counts[i];
                }
                let mut next = counts.clone();
                let mut idx = vec![0u32; nnz as usize];
                let mut val = vec![0f32; nnz as usize];
                for c in 0..cols {
                    for k in indptr[c] as usize..indptr[c + 1] as usize {
                        let dst = next[r[k] as usize];
                        idx[dst] = c as u32;
                        val[dst] = v[k];
                        next[r[k] as usize] += 1;
                    }
                }
                XStore::InMemory(CsrRows {
                    indptr: counts,
                    indices: idx,
                    data: val,
                })
            };
            (store_x, info, rows, cols)
        };
        if var_names.len() != n_vars {
            return Err(bad(
                path,
                "var",
                format!(
                    "index has {} gene names but X has {n_vars} columns",
                    var_names.len()
                ),
            ));
        }
        Ok(ZarrReader {
            path: path.to_path_buf(),
            store,
            n_obs,
            n_vars,
            var_names,
            x,
            info,
        })
    }

    fn obs(&self) -> Result<Group<Store>> {
        Group::open(self.store.clone(), "/obs")
            .map_err(|e| bad(&self.path, "obs", format!("no obs dataframe: {e}")))
    }

    fn column_names(&self, obs: &Group<Store>) -> Vec<String> {
        obs.attributes()
            .get("column-order")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn kind(&self, name: &str) -> ObsKind {
        let node = format!("/obs/{name}");
        if let Ok(arr) = Array::open(self.store.clone(), &node) {
            let dt = dtype_name(&arr);
            return if dt.contains("string") || dt.contains("str") || dt.contains('O') {
                ObsKind::String
            } else if dt == "bool" {
                ObsKind::Boolean
            } else {
                ObsKind::Numeric { dtype: dt }
            };
        }
        match Group::open(self.store.clone(), &node) {
            Ok(g) => match attr_str(g.attributes(), "encoding-type").as_deref() {
                Some("categorical") => {
                    let n = Array::open(self.store.clone(), &format!("{node}/categories"))
                        .or_else(|_| {
                            Array::open(self.store.clone(), &format!("{node}/categories/values"))
                        })
                        .map(|a| len1(&a) as usize)
                        .unwrap_or(0);
                    ObsKind::Categorical { n_categories: n }
                }
                Some("nullable-integer") => ObsKind::Numeric {
                    dtype: "nullable integer".into(),
                },
                Some("nullable-boolean") => ObsKind::Boolean,
                Some("nullable-string-array") => ObsKind::String,
                Some(o) => ObsKind::Other(o.to_string()),
                None => ObsKind::Other("group without encoding-type".into()),
            },
            Err(_) => ObsKind::Other("missing".into()),
        }
    }
}

impl AnnDataReader for ZarrReader {
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
        if start > end || end > self.n_obs {
            return Err(bad(
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
            } => {
                let (lo, hi) = (indptr[start], indptr[end]);
                let (idx, val) = if hi > lo {
                    (
                        read_num(&self.path, indices, lo..hi, |x| x as u32)?,
                        read_num(&self.path, data, lo..hi, |x| x as f32)?,
                    )
                } else {
                    (Vec::new(), Vec::new())
                };
                CsrRows {
                    indptr: indptr[start..=end]
                        .iter()
                        .map(|&p| (p - lo) as usize)
                        .collect(),
                    indices: idx,
                    data: val,
                }
            }
            XStore::InMemory(all) => {
                let (lo, hi) = (all.indptr[start], all.indptr[end]);
                CsrRows {
                    indptr: all.indptr[start..=end].iter().map(|&p| p - lo).collect(),
                    indices: all.indices[lo..hi].to_vec(),
                    data: all.data[lo..hi].to_vec(),
                }
            }
            XStore::Dense(arr) => {
                let mut out = CsrRows {
                    indptr: vec![0],
                    ..Default::default()
                };
                if end > start {
                    let subset = ArraySubset::new_with_ranges(&[
                        start as u64..end as u64,
                        0..self.n_vars as u64,
                    ]);
                    let vals: Vec<f32> = {
                        let mut got = None;
                        macro_rules! attempt {
                            ($($t:ty),*) => {$(
                                if got.is_none() {
                                    if let Ok(v) = arr.retrieve_array_subset::<Vec<$t>>(&subset) {
                                        got = Some(v.into_iter().map(|x| x as f32).collect::<Vec<f32>>());
                                    }
                                }
                            )*};
                        }
                        attempt!(f32, f64, i8, i16, i32, i64, u8, u16, u32, u64);
                        got.ok_or_else(|| {
                            bad(
                                &self.path,
                                "X",
                                format!("unsupported data type {}", arr.data_type()),
                            )
                        })?
                    };
                    for row in vals.chunks(self.n_vars.max(1)) {
                        for (c, &v) in row.iter().enumerate() {
                            if v != 0.0 {
                                out.indices.push(c as u32);
                                out.data.push(v);
                            }
                        }
                        out.indptr.push(out.indices.len());
                    }
                }
                out
            }
        };
        validate_rows(&self.path, &rows, start, self.n_vars)?;
        Ok(rows)
    }

    fn row_nnz(&self) -> Result<Vec<u32>> {
        match &self.x {
            XStore::Csr { indptr, .. } => {
                Ok(indptr.windows(2).map(|w| (w[1] - w[0]) as u32).collect())
            }
            XStore::InMemory(all) => Ok(all
                .indptr
                .windows(2)
                .map(|w| (w[1] - w[0]) as u32)
                .collect()),
            XStore::Dense(_) => {
                let mut out = Vec::with_capacity(self.n_obs);
                let mut start = 0;
                while start < self.n_obs {
                    let end = (start + 1024).min(self.n_obs);
                    let rows = self.read_rows(start, end)?;
                    out.extend(rows.indptr.windows(2).map(|w| (w[1] - w[0]) as u32));
                    start = end;
                }
                Ok(out)
            }
        }
    }

    fn obs_columns(&self) -> Result<Vec<(String, ObsKind)>> {
        let obs = self.obs()?;
        Ok(self
            .column_names(&obs)
            .into_iter()
            .map(|n| {
                let k = self.kind(&n);
                (n, k)
            })
            .collect())
    }

    fn obs_column(&self, name: &str) -> Result<ObsColumn> {
        let obs = self.obs()?;
        let names = self.column_names(&obs);
        if !names.iter().any(|n| n == name) {
            return Err(DataError::MissingObsColumn {
                path: self.path.clone(),
                column: name.to_string(),
                existing: names,
            });
        }
        let node = format!("/obs/{name}");
        let object = format!("obs/{name}");
        let p = &self.path;
        let col = match self.kind(name) {
            ObsKind::Categorical { .. } => {
                let codes_arr = open_array(p, &self.store, &format!("{node}/codes"))?;
                let codes: Vec<i32> = read_num(p, &codes_arr, 0..len1(&codes_arr), |x| x as i32)?;
                let cats_arr =
                    open_array(p, &self.store, &format!("{node}/categories")).or_else(|_| {
                        open_array(p, &self.store, &format!("{node}/categories/values"))
                    })?;
                let categories = match read_all::<String>(&cats_arr) {
                    Ok(v) => v,
                    Err(_) => read_num(p, &cats_arr, 0..len1(&cats_arr), |x| x)?
                        .into_iter()
                        .map(|x| x.to_string())
                        .collect(),
                };
                if let Some(&c) = codes.iter().find(|&&c| c >= categories.len() as i32) {
                    return Err(bad(
                        p,
                        &object,
                        format!("category code {c} but only {} categories", categories.len()),
                    ));
                }
                ObsColumn::Categorical { codes, categories }
            }
            ObsKind::String => {
                let arr = open_array(p, &self.store, &node)
                    .or_else(|_| open_array(p, &self.store, &format!("{node}/values")))?;
                ObsColumn::String(read_strings(p, &arr)?)
            }
            ObsKind::Numeric { .. } => {
                let arr = open_array(p, &self.store, &node)
                    .or_else(|_| open_array(p, &self.store, &format!("{node}/values")))?;
                ObsColumn::Numeric(read_num(p, &arr, 0..len1(&arr), |x| x)?)
            }
            ObsKind::Boolean => {
                let arr = open_array(p, &self.store, &node)
                    .or_else(|_| open_array(p, &self.store, &format!("{node}/values")))?;
                ObsColumn::Boolean(read_num(p, &arr, 0..len1(&arr), |x| x != 0.0)?)
            }
            ObsKind::Other(what) => {
                return Err(bad(
                    p,
                    &object,
                    format!("unsupported column encoding: {what}"),
                ))
            }
        };
        if col.len() != self.n_obs {
            return Err(bad(
                p,
                &object,
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
