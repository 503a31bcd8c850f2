//! TIFF frames: the pages of a multi-page TIFF stack (sleap-io's `TiffVideo`, each page one
//! frame) and single `.tif` images of an image sequence, decoded with the `tiff` crate
//! (uncompressed, PackBits, LZW, Deflate and JPEG-in-TIFF). Frames are 8-bit grayscale or RGB,
//! as every other frame source gives them; alpha is dropped, and other sample types (16-bit
//! microscopy stacks, floats, palettes, CMYK) are refused with what to do instead.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;

use tiff::decoder::{Decoder, DecodingResult};
use tiff::ColorType;

use crate::pose::Image;

/// Whether `path` names a TIFF file (by extension, as sleap-io chooses `TiffVideo`).
pub fn is_tiff_file(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("tif" | "tiff"))
}

/// Whether `bytes` start with a TIFF header (little- or big-endian).
pub(crate) fn is_tiff(bytes: &[u8]) -> bool {
    bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*")
}

/// The first page of TIFF `bytes` (one image of an image sequence).
pub(crate) fn decode_tiff(bytes: &[u8]) -> Result<Image, String> {
    let mut dec = Decoder::new(Cursor::new(bytes)).map_err(|e| format!("TIFF: {e}"))?;
    read_current(&mut dec)
}

/// Page `page` (0-based) of the TIFF stack at `path`.
pub fn read_page(path: &Path, page: u64) -> Result<Image, String> {
    let mut found = None;
    for_each_page(path, Some(&[page]), |_, img| {
        found = Some(img);
        Ok(())
    })?;
    found.ok_or_else(|| format!("TIFF: page {page} was not decoded"))
}

/// Calls `each` with every page of the stack at `path` in order, or only with the pages in
/// `wanted` (ascending); one pass over the file, so a long stack is read once. Returns how
/// many pages the stack has (counted up to the last page visited when `wanted` ends early).
pub fn for_each_page(
    path: &Path,
    wanted: Option<&[u64]>,
    mut each: impl FnMut(u64, Image) -> Result<(), String>,
) -> Result<u64, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut dec = Decoder::new(BufReader::new(file)).map_err(|e| format!("TIFF: {e}"))?;
    let mut wanted = wanted.map(|w| w.iter().copied().peekable());
    let mut page = 0u64;
    loop {
        let take = match wanted.as_mut() {
            None => true,
            Some(w) => match w.peek() {
                None => return Ok(page),
                Some(&next) => next == page,
            },
        };
        if take {
            let img = read_current(&mut dec).map_err(|e| format!("page {page}: {e}"))?;
            each(page, img)?;
            if let Some(w) = wanted.as_mut() {
                w.next();
            }
        }
        if !dec.more_images() {
            break;
        }
        dec.next_image()
            .map_err(|e| format!("TIFF page {}: {e}", page + 1))?;
        page += 1;
    }
    let pages = page + 1;
    if let Some(missing) = wanted.as_mut().and_then(|w| w.next()) {
        return Err(format!(
            "frame {missing} is past the end of the TIFF stack ({pages} pages)"
        ));
    }
    Ok(pages)
}

/// How many pages (frames) the TIFF stack at `path` holds.
pub fn count_pages(path: &Path) -> Result<u64, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut dec = Decoder::new(BufReader::new(file)).map_err(|e| format!("TIFF: {e}"))?;
    let mut n = 1;
    while dec.more_images() {
        dec.next_image()
            .map_err(|e| format!("TIFF page {n}: {e}"))?;
        n += 1;
    }
    Ok(n)
}

/// The decoder's current page as an 8-bit image of 1 or 3 channels.
fn read_current<R: Read + Seek>(dec: &mut Decoder<R>) -> Result<Image, String> {
    let (w, h) = dec.dimensions().map_err(|e| format!("TIFF: {e}"))?;
    let color = dec.colortype().map_err(|e| format!("TIFF: {e}"))?;
    let (stored, keep) = match color {
        ColorType::Gray(8) => (1, 1),
        ColorType::GrayA(8) => (2, 1),
        ColorType::RGB(8) => (3, 3),
        ColorType::RGBA(8) => (4, 3),
        other => {
            return Err(format!(
                "TIFF pixels of type {other:?}: anvil reads 8-bit grayscale or RGB frames \
                 (the intensities models train on); convert the stack to 8 bits, e.g. with \
                 ImageJ's Image > Type > 8-bit or tifffile"
            ))
        }
    };
    let data = match dec.read_image().map_err(|e| format!("TIFF: {e}"))? {
        DecodingResult::U8(v) => v,
        _ => return Err("TIFF: 8-bit pixels did not decode as bytes".into()),
    };
    let (h, w) = (h as usize, w as usize);
    if data.len() != h * w * stored {
        return Err(format!(
            "TIFF: {} bytes for a {w}x{h} page of {stored} samples",
            data.len()
        ));
    }
    let data = if stored == keep {
        data
    } else {
        data.chunks_exact(stored)
            .flat_map(|p| p[..keep].to_vec())
            .collect()
    };
    Ok(Image {
        height: h,
        width: w,
        channels: keep,
        data,
    })
}
