//! Pictures of a model's predictions during training (`visualize_preds_during_training`), as
//! sleap-nn saves them into `<run>/viz/{train,validation}.NNNN.png`: the network's input in
//! grey, the predicted confidence maps (maximum over nodes) as a red overlay, the labeled
//! points as green dots and the predicted peaks as yellow crosses.

use std::path::Path;

use crate::error::{DataError, Result};

use super::Image;

/// An RGB picture of one sample. `image`: [channels, h, w] on 0–1; `maps`: [k, h/stride,
/// w/stride]; points in input pixels (NaN: not drawn).
#[allow(clippy::too_many_arguments)]
pub fn render_prediction(
    image: &[f32],
    channels: usize,
    h: usize,
    w: usize,
    maps: &[f32],
    stride: usize,
    labeled: &[[f64; 2]],
    predicted: &[[f64; 2]],
) -> Image {
    let (gh, gw) = (h.div_ceil(stride), w.div_ceil(stride));
    let k = maps.len().checked_div(gh * gw).unwrap_or(0);
    let mut data = vec![0u8; h * w * 3];
    for y in 0..h {
        for x in 0..w {
            let grey = (0..channels)
                .map(|c| image[(c * h + y) * w + x])
                .sum::<f32>()
                / channels.max(1) as f32;
            let (my, mx) = ((y / stride).min(gh - 1), (x / stride).min(gw - 1));
            let m = (0..k)
                .map(|c| maps[(c * gh + my) * gw + mx])
                .fold(0.0f32, f32::max)
                .clamp(0.0, 1.0);
            let g = grey.clamp(0.0, 1.0) * (1.0 - 0.6 * m);
            let px = &mut data[(y * w + x) * 3..][..3];
            px[0] = ((g + 0.6 * m) * 255.0).round() as u8;
            px[1] = (g * 255.0).round() as u8;
            px[2] = (g * 255.0).round() as u8;
        }
    }
    let mut put = |x: isize, y: isize, rgb: [u8; 3]| {
        if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
            data[(y as usize * w + x as usize) * 3..][..3].copy_from_slice(&rgb);
        }
    };
    for p in labeled
        .iter()
        .filter(|p| p[0].is_finite() && p[1].is_finite())
    {
        let (cx, cy) = (p[0].round() as isize, p[1].round() as isize);
        for dy in -2..=2isize {
            for dx in -2..=2isize {
                if dx * dx + dy * dy <= 5 {
                    put(cx + dx, cy + dy, [0, 220, 0]);
                }
            }
        }
    }
    for p in predicted
        .iter()
        .filter(|p| p[0].is_finite() && p[1].is_finite())
    {
        let (cx, cy) = (p[0].round() as isize, p[1].round() as isize);
        for d in -4..=4isize {
            put(cx + d, cy + d, [255, 230, 0]);
            put(cx + d, cy - d, [255, 230, 0]);
        }
    }
    Image {
        height: h,
        width: w,
        channels: 3,
        data,
    }
}

/// Writes a 1- or 3-channel image as PNG.
pub fn write_png(path: &Path, img: &Image) -> Result<()> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut enc = png::Encoder::new(
        std::io::BufWriter::new(file),
        img.width as u32,
        img.height as u32,
    );
    enc.set_color(if img.channels == 3 {
        png::ColorType::Rgb
    } else {
        png::ColorType::Grayscale
    });
    enc.set_depth(png::BitDepth::Eight);
    let invalid = |e: png::EncodingError| DataError::Invalid {
        path: path.to_path_buf(),
        object: "PNG".into(),
        problem: e.to_string(),
    };
    let mut writer = enc.write_header().map_err(invalid)?;
    writer.write_image_data(&img.data).map_err(invalid)?;
    writer.finish().map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_labels_and_predictions_and_round_trips_as_png() {
        let (h, w) = (32, 48);
        let image = vec![0.5f32; h * w];
        let mut maps = vec![0.0f32; (h / 2) * (w / 2)];
        maps[5 * 24 + 10] = 1.0;
        let img = render_prediction(&image, 1, h, w, &maps, 2, &[[8.0, 8.0]], &[[30.0, 20.0]]);
        let at = |x: usize, y: usize| &img.data[(y * w + x) * 3..][..3];
        assert_eq!(at(8, 8), &[0, 220, 0]);
        assert_eq!(at(30, 20), &[255, 230, 0]);
        // The map's peak at grid (10, 5) reddens pixels (20..22, 10..12).
        assert!(at(20, 10)[0] > at(20, 10)[1]);
        assert_eq!(at(0, 31), &[128, 128, 128]);
        let path = std::env::temp_dir().join(format!("anvil-viz-{}.png", std::process::id()));
        write_png(&path, &img).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (48, 32));
        let _ = std::fs::remove_file(path);
    }
}
