//! A minimal AnnData (.h5ad) writer in the layout anndata 0.12 writes, so files made here open
//! in anndata/scanpy: CSR X streamed in blocks, a var index, obs columns (categorical,
//! numeric, string, boolean), and the empty `layers`/`obsm`/`obsp`/`varm`/`varp`/`uns` dicts.

use std::path::{Path, PathBuf};

use hdf5::types::VarLenUnicode;
use hdf5::{Dataset, File, Group, Location};

use crate::anndata::ObsColumn;
use crate::error::{DataError, Result};

/// Compression of the X arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip(u8),
    Lzf,
}

/// Elements per chunk of X/data and X/indices.
const CHUNK: usize = 1 << 16;

fn vlu(path: &Path, s: &str) -> Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>()
        .map_err(|e| DataError::invalid(path, "string", format!("cannot store '{s}': {e}")))
}

pub(crate) struct H5Out {
    pub(crate) path: PathBuf,
}

impl H5Out {
    pub(crate) fn err(&self, object: &str) -> impl FnOnce(hdf5::Error) -> DataError {
        let path = self.path.clone();
        let object = object.to_string();
        move |source| DataError::Hdf5 {
            path,
            object,
            source,
        }
    }

    pub(crate) fn str_attr(&self, loc: &Location, name: &str, value: &str) -> Result<()> {
        let v = vlu(&self.path, value)?;
        loc.new_attr::<VarLenUnicode>()
            .create(name)
            .and_then(|a| a.write_scalar(&v))
            .map_err(self.err(name))
    }

    pub(crate) fn encoding(&self, loc: &Location, kind: &str, version: &str) -> Result<()> {
        self.str_attr(loc, "encoding-type", kind)?;
        self.str_attr(loc, "encoding-version", version)
    }

    pub(crate) fn strings(&self, g: &Group, name: &str, values: &[String]) -> Result<Dataset> {
        let v: Vec<VarLenUnicode> = values
            .iter()
            .map(|s| vlu(&self.path, s))
            .collect::<Result<_>>()?;
        let ds = g
            .new_dataset_builder()
            .with_data(&v[..])
            .create(name)
            .map_err(self.err(name))?;
        self.encoding(&ds, "string-array", "0.2.0")?;
        Ok(ds)
    }

    pub(crate) fn array<T: hdf5::H5Type>(
        &self,
        g: &Group,
        name: &str,
        values: &[T],
    ) -> Result<Dataset> {
        let ds = g
            .new_dataset_builder()
            .with_data(values)
            .create(name)
            .map_err(self.err(name))?;
        self.encoding(&ds, "array", "0.2.0")?;
        Ok(ds)
    }

    /// A new, empty AnnData dict group `name` in `parent`.
    pub(crate) fn dict(&self, parent: &Group, name: &str) -> Result<Group> {
        let g = parent.create_group(name).map_err(self.err(name))?;
        self.encoding(&g, "dict", "0.1.0")?;
        Ok(g)
    }

    pub(crate) fn dataframe(
        &self,
        g: &Group,
        index: &[String],
        columns: &[(String, ObsColumn)],
    ) -> Result<()> {
        self.encoding(g, "dataframe", "0.2.0")?;
        self.str_attr(g, "_index", "_index")?;
        if columns.is_empty() {
            g.new_attr::<f64>()
                .shape(0)
                .create("column-order")
                .map_err(self.err("column-order"))?;
        } else {
            let names: Vec<VarLenUnicode> = columns
                .iter()
                .map(|(n, _)| vlu(&self.path, n))
                .collect::<Result<_>>()?;
            g.new_attr_builder()
                .with_data(&names[..])
                .create("column-order")
                .map_err(self.err("column-order"))?;
        }
        self.strings(g, "_index", index)?;
        for (name, col) in columns {
            match col {
                ObsColumn::Categorical { codes, categories } => {
                    let cg = g.create_group(name).map_err(self.err(name))?;
                    self.encoding(&cg, "categorical", "0.2.0")?;
                    cg.new_attr::<bool>()
                        .create("ordered")
                        .and_then(|a| a.write_scalar(&false))
                        .map_err(self.err("ordered"))?;
                    self.strings(&cg, "categories", categories)?;
                    if categories.len() < 128 {
                        let c: Vec<i8> = codes.iter().map(|&c| c as i8).collect();
                        self.array(&cg, "codes", &c[..])?;
                    } else {
                        self.array(&cg, "codes", &codes[..])?;
                    }
                }
                ObsColumn::Numeric(v) => {
                    self.array(g, name, &v[..])?;
                }
                ObsColumn::Boolean(v) => {
                    self.array(g, name, &v[..])?;
                }
                ObsColumn::String(v) => {
                    self.strings(g, name, v)?;
                }
            }
        }
        Ok(())
    }
}

/// Rows of a CSR matrix: (column indices ascending, values).
pub type Row = (Vec<u32>, Vec<f32>);

/// Write an AnnData file with CSR X. `rows` yields blocks of rows (streamed: the matrix is
/// never held whole). `obs_names.len()` is the number of cells.
pub fn write_h5ad<I>(
    path: &Path,
    var_names: &[String],
    obs_names: &[String],
    obs: &[(String, ObsColumn)],
    rows: I,
    compression: Compression,
) -> Result<()>
where
    I: IntoIterator<Item = Result<Vec<Row>>>,
{
    let out = H5Out {
        path: path.to_path_buf(),
    };
    let file = File::create(path).map_err(out.err("file"))?;
    out.encoding(&file, "anndata", "0.1.0")?;
    let n_obs = write_csr_x(&out, &file, var_names.len(), rows, compression)?;
    if n_obs != obs_names.len() {
        return Err(DataError::invalid(
            path,
            "X",
            format!("wrote {n_obs} rows but {} cell names", obs_names.len()),
        ));
    }

    let obs_g = file.create_group("obs").map_err(out.err("obs"))?;
    out.dataframe(&obs_g, obs_names, obs)?;
    let var_g = file.create_group("var").map_err(out.err("var"))?;
    out.dataframe(&var_g, var_names, &[])?;
    for name in ["layers", "obsm", "obsp", "varm", "varp", "uns"] {
        out.dict(&file, name)?;
    }
    file.flush().map_err(out.err("file"))?;
    Ok(())
}

/// Stream `rows` into a new CSR group `X` of `file` with `n_vars` columns; returns the number
/// of rows written.
pub(crate) fn write_csr_x<I>(
    out: &H5Out,
    file: &File,
    n_vars: usize,
    rows: I,
    compression: Compression,
) -> Result<usize>
where
    I: IntoIterator<Item = Result<Vec<Row>>>,
{
    let x = file.create_group("X").map_err(out.err("X"))?;
    out.encoding(&x, "csr_matrix", "0.1.0")?;
    let make = |name: &str, is_float: bool| -> Result<Dataset> {
        let b = x.new_dataset_builder();
        let b = if is_float {
            b.empty::<f32>()
        } else {
            b.empty::<i32>()
        };
        let b = b.shape(0..).chunk(CHUNK);
        let b = match compression {
            Compression::None => b,
            Compression::Gzip(l) => b.deflate(l),
            Compression::Lzf => b.lzf(),
        };
        b.create(name).map_err(out.err(&format!("X/{name}")))
    };
    let data = make("data", true)?;
    let indices = make("indices", false)?;
    let mut indptr: Vec<i64> = vec![0];
    let mut nnz = 0usize;
    for block in rows {
        let block = block?;
        let add: usize = block.iter().map(|(i, _)| i.len()).sum();
        let mut idx = Vec::with_capacity(add);
        let mut val = Vec::with_capacity(add);
        for (i, v) in block {
            idx.extend(i.into_iter().map(|c| c as i32));
            val.extend(v);
            indptr.push((nnz + idx.len()) as i64);
        }
        if add > 0 {
            data.resize(nnz + add).map_err(out.err("X/data"))?;
            indices.resize(nnz + add).map_err(out.err("X/indices"))?;
            data.write_slice(&val[..], nnz..nnz + add)
                .map_err(out.err("X/data"))?;
            indices
                .write_slice(&idx[..], nnz..nnz + add)
                .map_err(out.err("X/indices"))?;
            nnz += add;
        }
    }
    let n_obs = indptr.len() - 1;
    x.new_dataset_builder()
        .with_data(&indptr[..])
        .create("indptr")
        .map_err(out.err("X/indptr"))?;
    x.new_attr_builder()
        .with_data(&[n_obs as i64, n_vars as i64][..])
        .create("shape")
        .map_err(out.err("X/shape"))?;
    Ok(n_obs)
}

/// Store `values` (row-major [n_obs, dim]) as `obsm/<key>` of the AnnData file at `path`,
/// opened read-write: creates the `obsm` dict if the file lacks it and replaces an existing
/// `obsm/<key>`. Everything else in the file is left as it is.
pub fn put_obsm(path: &Path, key: &str, values: &[f32], n_obs: usize, dim: usize) -> Result<()> {
    let out = H5Out {
        path: path.to_path_buf(),
    };
    if values.len() != n_obs * dim {
        return Err(DataError::invalid(
            path,
            "obsm",
            format!("{} values do not fill [{n_obs}, {dim}]", values.len()),
        ));
    }
    let file = File::open_rw(path).map_err(out.err("file"))?;
    let obsm = if file.link_exists("obsm") {
        file.group("obsm").map_err(out.err("obsm"))?
    } else {
        let g = file.create_group("obsm").map_err(out.err("obsm"))?;
        out.encoding(&g, "dict", "0.1.0")?;
        g
    };
    let object = format!("obsm/{key}");
    if obsm.link_exists(key) {
        obsm.unlink(key).map_err(out.err(&object))?;
    }
    let ds = obsm
        .new_dataset::<f32>()
        .shape([n_obs, dim])
        .create(key)
        .map_err(out.err(&object))?;
    ds.write_raw(values).map_err(out.err(&object))?;
    out.encoding(&ds, "array", "0.2.0")?;
    file.flush().map_err(out.err("file"))?;
    Ok(())
}
