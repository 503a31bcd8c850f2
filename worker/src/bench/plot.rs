//! A PNG of the cell embedding in two dimensions (a UMAP layout, see `umap`), one dot
//! per cell coloured by cell type, with a legend of colour swatches (the class names are in
//! report.md beside their colours: no font is bundled). The PNG is written here, by hand:
//! 8-bit RGB, one IDAT (zlib through flate2), filter 0 on every row.

use std::io::Write;

/// Colours for classes (matplotlib's tab20 order: tab10 first, then the lighter ten).
pub const PALETTE: [[u8; 3]; 20] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
    [174, 199, 232],
    [255, 187, 120],
    [152, 223, 138],
    [255, 152, 150],
    [197, 176, 213],
    [196, 156, 148],
    [247, 182, 210],
    [199, 199, 199],
    [219, 219, 141],
    [158, 218, 229],
];

/// The colour of class `c` (the palette repeats after 20 classes).
pub fn colour(c: usize) -> [u8; 3] {
    PALETTE[c % PALETTE.len()]
}

/// Encodes an 8-bit RGB image (row-major, 3 bytes per pixel) as PNG.
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> std::io::Result<Vec<u8>> {
    assert_eq!(rgb.len(), width as usize * height as usize * 3);
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(kind);
        h.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&h.finalize().to_be_bytes());
    }
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // depth 8, RGB, deflate, filter 0, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let row = width as usize * 3;
    for r in rgb.chunks(row) {
        z.write_all(&[0])?;
        z.write_all(r)?;
    }
    chunk(&mut out, b"IDAT", &z.finish()?);
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

/// A scatter plot of `xy` (one point per cell) coloured by `labels`, with a column of colour
/// swatches, one per class in class order, at the right. Returns (width, height, rgb).
pub fn scatter(xy: &[(f64, f64)], labels: &[u32], n_classes: usize) -> (u32, u32, Vec<u8>) {
    let (plot, margin, legend) = (760usize, 20usize, 60usize);
    let (w, h) = (plot + 2 * margin + legend, plot + 2 * margin);
    let mut img = vec![255u8; w * h * 3];
    let put = |img: &mut Vec<u8>, x: usize, y: usize, c: [u8; 3]| {
        if x < w && y < h {
            img[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
        }
    };
    // Frame.
    for i in 0..=plot {
        for (x, y) in [
            (margin + i, margin),
            (margin + i, margin + plot),
            (margin, margin + i),
            (margin + plot, margin + i),
        ] {
            put(&mut img, x, y, [160, 160, 160]);
        }
    }
    let finite = xy.iter().filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in finite {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
        y0 = y0.min(p.1);
        y1 = y1.max(p.1);
    }
    let span = (x1 - x0).max(y1 - y0).max(1e-12);
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let inner = (plot - 20) as f64;
    for (p, &l) in xy.iter().zip(labels) {
        if !(p.0.is_finite() && p.1.is_finite()) {
            continue;
        }
        let px = margin as f64 + plot as f64 / 2.0 + (p.0 - cx) / span * inner;
        let py = margin as f64 + plot as f64 / 2.0 - (p.1 - cy) / span * inner;
        let c = colour(l as usize);
        // A disc of radius 3.
        for dy in -3i64..=3 {
            for dx in -3i64..=3 {
                if dx * dx + dy * dy <= 9 {
                    let (x, y) = (px as i64 + dx, py as i64 + dy);
                    if x >= 0 && y >= 0 {
                        put(&mut img, x as usize, y as usize, c);
                    }
                }
            }
        }
    }
    // Legend: one 20 x 20 swatch per class, top to bottom.
    let lx = margin * 2 + plot + 10;
    for c in 0..n_classes {
        let top = margin + c * 28;
        for y in top..top + 20 {
            for x in lx..lx + 20 {
                put(&mut img, x, y, colour(c));
            }
        }
    }
    (w as u32, h as u32, img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Decodes what `encode_png` wrote: chunk CRCs, the header, and the pixels.
    #[test]
    fn png_round_trip() {
        let rgb: Vec<u8> = (0..2 * 3 * 3).map(|i| (i * 13) as u8).collect();
        let png = encode_png(3, 2, &rgb).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut at = 8;
        let mut idat = Vec::new();
        let mut kinds = Vec::new();
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind = &png[at + 4..at + 8];
            let data = &png[at + 8..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            let mut h = crc32fast::Hasher::new();
            h.update(kind);
            h.update(data);
            assert_eq!(h.finalize(), crc);
            if kind == b"IHDR" {
                assert_eq!(&data[..8], &[0, 0, 0, 3, 0, 0, 0, 2]);
            }
            if kind == b"IDAT" {
                idat.extend_from_slice(data);
            }
            kinds.push(String::from_utf8_lossy(kind).into_owned());
            at += 12 + len;
        }
        assert_eq!(kinds, ["IHDR", "IDAT", "IEND"]);
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), 2 * (1 + 9));
        assert_eq!(&raw[1..10], &rgb[..9]);
        assert_eq!(&raw[11..20], &rgb[9..]);
    }

    #[test]
    fn scatter_draws_each_class_colour() {
        let xy = [(0.0, 0.0), (1.0, 1.0), (0.5, -1.0)];
        let (w, h, img) = scatter(&xy, &[0, 1, 2], 3);
        assert_eq!(img.len(), (w * h * 3) as usize);
        for c in 0..3 {
            let col = colour(c);
            assert!(img.chunks(3).any(|p| p == col), "class {c} not drawn");
        }
    }
}
