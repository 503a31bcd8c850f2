//! HDF5 helpers both readers (.h5ad and .slp) use: errors that name the file and object, and
//! telling an HDF5 file from anything else before the library's own, vaguer error.

use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

const HDF5_SIGNATURE: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];

/// `.map_err(h5(path, "X/data"))`: an HDF5 error on `object` of `path`.
pub(crate) fn h5(path: &Path, object: &str) -> impl FnOnce(hdf5::Error) -> DataError {
    let path = path.to_path_buf();
    let object = object.to_string();
    move |source| DataError::Hdf5 {
        path,
        object,
        source,
    }
}

/// Whether `path` starts with an HDF5 superblock (at 0, or after a user block).
pub(crate) fn has_hdf5_signature(path: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut buf = Vec::new();
    f.by_ref()
        .take(8192 + 8)
        .read_to_end(&mut buf)
        .map_err(|e| DataError::io(path, e))?;
    // The superblock sits at 0 or, after a user block, at 512, 1024, 2048, ...
    let mut off = 0usize;
    while off + 8 <= buf.len() {
        if buf[off..off + 8] == HDF5_SIGNATURE {
            return Ok(true);
        }
        off = if off == 0 { 512 } else { off * 2 };
    }
    Ok(false)
}
