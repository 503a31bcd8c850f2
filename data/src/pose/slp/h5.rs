//! HDF5 access shared by the labels reader, the image reader and the writer: opening a file
//! that should be SLEAP labels, JSON strings stored either fixed-length (old SLEAP, `|S`) or
//! variable-length (sleap-io), and the compound rows of `frames`, `instances` and `points`.

use std::path::Path;

use hdf5::types::{TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Dataset, File, Location};

use crate::error::{DataError, Result};
pub(crate) use crate::h5util::h5;
use crate::h5util::has_hdf5_signature;

/// Open `path` for reading, with errors that say whether it is missing or not HDF5 at all.
pub(crate) fn open_hdf5(path: &Path) -> Result<File> {
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_path_buf(),
        });
    }
    if !has_hdf5_signature(path)? {
        return Err(DataError::NotLabels {
            path: path.to_path_buf(),
            detail:
                "not an HDF5 file (no HDF5 signature); SLEAP labels are .slp / .pkg.slp HDF5 files"
                    .into(),
        });
    }
    File::open(path).map_err(|e| DataError::NotLabels {
        path: path.to_path_buf(),
        detail: format!("HDF5 file cannot be opened (truncated or corrupt?): {e}"),
    })
}

fn is_string(d: &TypeDescriptor) -> bool {
    matches!(
        d,
        TypeDescriptor::FixedAscii(_)
            | TypeDescriptor::FixedUnicode(_)
            | TypeDescriptor::VarLenAscii
            | TypeDescriptor::VarLenUnicode
    )
}

/// Split `n` fixed-length strings of `size` bytes each, dropping the NUL padding.
fn split_fixed(buf: &[u8], size: usize) -> Vec<String> {
    buf.chunks(size.max(1))
        .map(|c| {
            let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
            String::from_utf8_lossy(&c[..end]).into_owned()
        })
        .collect()
}

/// A string attribute, fixed- or variable-length; None when absent or not a string.
pub(crate) fn str_attr(loc: &Location, name: &str) -> Option<String> {
    if !loc.attr_names().ok()?.iter().any(|n| n == name) {
        return None;
    }
    let attr = loc.attr(name).ok()?;
    let dtype = attr.dtype().ok()?;
    match dtype.to_descriptor().ok()? {
        TypeDescriptor::VarLenUnicode => attr
            .read_scalar::<VarLenUnicode>()
            .ok()
            .map(|s| s.as_str().to_string()),
        TypeDescriptor::VarLenAscii => attr
            .read_scalar::<VarLenAscii>()
            .ok()
            .map(|s| s.as_str().to_string()),
        TypeDescriptor::FixedAscii(_) | TypeDescriptor::FixedUnicode(_) => {
            let size = dtype.size();
            let mut buf = vec![0u8; size];
            let status = hdf5::sync::sync(|| {
                // SAFETY: `buf` holds one element of the attribute's own (fixed-length
                // string) type, which is what H5Aread writes with that memory type.
                unsafe { hdf5_sys::h5a::H5Aread(attr.id(), dtype.id(), buf.as_mut_ptr().cast()) }
            });
            if status < 0 {
                return None;
            }
            split_fixed(&buf, size).into_iter().next()
        }
        _ => None,
    }
}

/// A numeric scalar attribute as f64; None when absent or not a number.
pub(crate) fn f64_attr(loc: &Location, name: &str) -> Option<f64> {
    if !loc.attr_names().ok()?.iter().any(|n| n == name) {
        return None;
    }
    loc.attr(name).ok()?.read_scalar::<f64>().ok()
}

/// The rows of a 1-D string dataset (`videos_json`, `tracks_json`). A missing dataset, and
/// the empty float64 placeholder old SLEAP writes for "no rows", read as no rows.
pub(crate) fn json_rows(path: &Path, file: &File, name: &str) -> Result<Vec<String>> {
    if !file.link_exists(name) {
        return Ok(Vec::new());
    }
    let ds = file.dataset(name).map_err(h5(path, name))?;
    let dtype = ds.dtype().map_err(h5(path, name))?;
    let desc = dtype.to_descriptor().map_err(h5(path, name))?;
    if ds.size() == 0 {
        return Ok(Vec::new());
    }
    if !is_string(&desc) {
        return Err(DataError::invalid(
            path,
            name,
            format!("expected JSON strings, found {desc:?} values"),
        ));
    }
    match desc {
        TypeDescriptor::VarLenUnicode => Ok(ds
            .read_raw::<VarLenUnicode>()
            .map_err(h5(path, name))?
            .iter()
            .map(|s| s.as_str().to_string())
            .collect()),
        TypeDescriptor::VarLenAscii => Ok(ds
            .read_raw::<VarLenAscii>()
            .map_err(h5(path, name))?
            .iter()
            .map(|s| s.as_str().to_string())
            .collect()),
        _ => {
            let size = dtype.size();
            let mut buf = vec![0u8; size * ds.size()];
            let status = hdf5::sync::sync(|| {
                // SAFETY: `buf` holds every element of the dataset in its own fixed-length
                // string type, which is what H5Dread writes with that memory type and
                // H5S_ALL selections.
                unsafe {
                    hdf5_sys::h5d::H5Dread(
                        ds.id(),
                        dtype.id(),
                        hdf5_sys::h5s::H5S_ALL,
                        hdf5_sys::h5s::H5S_ALL,
                        hdf5_sys::h5p::H5P_DEFAULT,
                        buf.as_mut_ptr().cast(),
                    )
                }
            });
            if status < 0 {
                return Err(DataError::invalid(
                    path,
                    name,
                    "fixed-length strings could not be read",
                ));
            }
            Ok(split_fixed(&buf, size))
        }
    }
}

/// The member names of a compound dataset (empty for any other type).
pub(crate) fn field_names(path: &Path, ds: &Dataset, name: &str) -> Result<Vec<String>> {
    let desc = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(h5(path, name))?;
    Ok(match desc {
        TypeDescriptor::Compound(c) => c.fields.iter().map(|f| f.name.clone()).collect(),
        _ => Vec::new(),
    })
}

/// Read the whole of compound dataset `name` as rows of `T`, whose fields HDF5 matches by
/// name (so `T` may hold a subset of the stored fields, in other integer/float widths).
pub(crate) fn read_rows<T: hdf5::H5Type>(
    path: &Path,
    file: &File,
    name: &str,
    required: &[&str],
) -> Result<Vec<T>> {
    if !file.link_exists(name) {
        return Err(DataError::invalid(
            path,
            name,
            "dataset missing; a SLEAP labels file has frames, instances, points and pred_points",
        ));
    }
    let ds = file.dataset(name).map_err(h5(path, name))?;
    let fields = field_names(path, &ds, name)?;
    if let Some(missing) = required.iter().find(|f| !fields.iter().any(|g| g == *f)) {
        return Err(DataError::invalid(
            path,
            name,
            format!(
                "field '{missing}' missing (fields: {})",
                if fields.is_empty() {
                    "none, not a compound dataset".to_string()
                } else {
                    fields.join(", ")
                }
            ),
        ));
    }
    if ds.size() == 0 {
        return Ok(Vec::new());
    }
    ds.read_raw::<T>().map_err(h5(path, name))
}
