//! From a decoded frame to the network's input, as sleap-nn preprocesses it: pixel values on a
//! 0–1 scale (channels first), channel conversion (`ensure_rgb` / `ensure_grayscale`), the size
//! matcher (`max_height` / `max_width`: resize keeping the aspect ratio, then pad bottom/right),
//! `scale`, and zero padding bottom/right to a multiple of the network's max stride. Instance
//! points follow every resize.

use super::Image;

/// A frame as the network sees it, with the instances' points in its pixel coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// [channels, height, width], 0–1.
    pub image: Vec<f32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Per instance, one (x, y) per node; NaN where not labeled.
    pub instances: Vec<Vec<[f64; 2]>>,
    /// Original-frame coordinates = these coordinates / `scale`.
    pub scale: f64,
}

/// The preprocessing settings of `data_config.preprocessing` that apply to whole frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub ensure_rgb: bool,
    pub ensure_grayscale: bool,
    pub max_height: Option<usize>,
    pub max_width: Option<usize>,
    pub scale: f64,
    /// Pad height and width to a multiple of this (the network's max stride).
    pub pad_to: usize,
}

impl Preprocess {
    pub fn apply(&self, img: &Image, instances: &[Vec<[f64; 2]>]) -> Sample {
        let (h, w) = (img.height, img.width);
        let mut c = img.channels;
        let mut x: Vec<f32> = vec![0.0; c * h * w];
        for (i, px) in img.data.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                x[ch * h * w + i] = v as f32 / 255.0;
            }
        }
        if self.ensure_rgb && c == 1 {
            x = x.repeat(3);
            c = 3;
        } else if self.ensure_grayscale && c == 3 {
            // torchvision's rgb_to_grayscale weights.
            let (r, g, b) = (&x[..h * w], &x[h * w..2 * h * w], &x[2 * h * w..]);
            x = (0..h * w)
                .map(|i| 0.2989 * r[i] + 0.587 * g[i] + 0.114 * b[i])
                .collect();
            c = 1;
        }
        let mut s = Sample {
            image: x,
            channels: c,
            height: h,
            width: w,
            instances: instances.to_vec(),
            scale: 1.0,
        };
        let (mh, mw) = (self.max_height.unwrap_or(h), self.max_width.unwrap_or(w));
        if (mh, mw) != (h, w) {
            let ratio = (mh as f64 / h as f64).min(mw as f64 / w as f64);
            let (th, tw) = (
                (h as f64 * ratio).round() as usize,
                (w as f64 * ratio).round() as usize,
            );
            resize(&mut s, th, tw, ratio);
            pad(&mut s, mh, mw);
        }
        if self.scale != 1.0 {
            let (th, tw) = (
                (s.height as f64 * self.scale) as usize,
                (s.width as f64 * self.scale) as usize,
            );
            resize(&mut s, th.max(1), tw.max(1), self.scale);
        }
        let m = self.pad_to.max(1);
        let (ph, pw) = (s.height.div_ceil(m) * m, s.width.div_ceil(m) * m);
        pad(&mut s, ph, pw);
        s
    }
}

/// Bilinear resize to `nh × nw` (half-pixel centres, as torchvision without antialiasing); points
/// are multiplied by `factor`.
fn resize(s: &mut Sample, nh: usize, nw: usize, factor: f64) {
    let mut out = vec![0.0f32; s.channels * nh * nw];
    let (h, w) = (s.height, s.width);
    for ch in 0..s.channels {
        let src = &s.image[ch * h * w..(ch + 1) * h * w];
        let dst = &mut out[ch * nh * nw..(ch + 1) * nh * nw];
        bilinear_resize(src, h, w, dst, nh, nw);
    }
    s.image = out;
    s.height = nh;
    s.width = nw;
    s.scale *= factor;
    for inst in &mut s.instances {
        for p in inst {
            p[0] *= factor;
            p[1] *= factor;
        }
    }
}

/// One channel, `align_corners=False`: source = (dst + 0.5)·(in/out) − 0.5, clamped at 0.
pub fn bilinear_resize(src: &[f32], h: usize, w: usize, dst: &mut [f32], nh: usize, nw: usize) {
    let coord = |d: usize, n_in: usize, n_out: usize| {
        let s = ((d as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        (i0, i1, (s - i0 as f64) as f32)
    };
    let xs: Vec<_> = (0..nw).map(|x| coord(x, w, nw)).collect();
    for y in 0..nh {
        let (y0, y1, fy) = coord(y, h, nh);
        for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
            let top = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
            let bot = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
            dst[y * nw + x] = top * (1.0 - fy) + bot * fy;
        }
    }
}

/// Zero padding at the bottom and right to `nh × nw` (no-op when already that size).
fn pad(s: &mut Sample, nh: usize, nw: usize) {
    if (nh, nw) == (s.height, s.width) {
        return;
    }
    let mut out = vec![0.0f32; s.channels * nh * nw];
    for ch in 0..s.channels {
        for y in 0..s.height.min(nh) {
            let src = &s.image[(ch * s.height + y) * s.width..][..s.width.min(nw)];
            out[(ch * nh + y) * nw..][..src.len()].copy_from_slice(src);
        }
    }
    s.image = out;
    s.height = nh;
    s.width = nw;
}

/// Points outside `[0, w) × [0, h)` become NaN (sleap-nn's `filter_oob_points`).
pub fn drop_out_of_bounds(instances: &mut [Vec<[f64; 2]>], h: usize, w: usize) {
    for p in instances.iter_mut().flatten() {
        if !(p[0] >= 0.0 && p[0] < w as f64 && p[1] >= 0.0 && p[1] < h as f64) {
            *p = [f64::NAN, f64::NAN];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(h: usize, w: usize, f: impl Fn(usize, usize) -> u8) -> Image {
        Image {
            height: h,
            width: w,
            channels: 1,
            data: (0..h * w).map(|i| f(i / w, i % w)).collect(),
        }
    }

    #[test]
    fn pads_to_the_stride_and_scales_points() {
        let img = gray(30, 40, |y, x| (y + x) as u8);
        let p = Preprocess {
            ensure_rgb: false,
            ensure_grayscale: false,
            max_height: None,
            max_width: None,
            scale: 0.5,
            pad_to: 16,
        };
        let s = p.apply(&img, &[vec![[10.0, 20.0], [f64::NAN, f64::NAN]]]);
        assert_eq!((s.height, s.width), (16, 32));
        assert_eq!(s.instances[0][0], [5.0, 10.0]);
        assert!(s.instances[0][1][0].is_nan());
        // The padded rows are zero; the scaled image holds the (halved) gradient.
        assert_eq!(s.image[15 * 32], 0.0);
        assert!(s.image[5 * 32 + 5] > 0.0);
    }

    #[test]
    fn rgb_and_grayscale_conversion() {
        let img = gray(16, 16, |_, _| 255);
        let rgb = Preprocess {
            ensure_rgb: true,
            ensure_grayscale: false,
            max_height: None,
            max_width: None,
            scale: 1.0,
            pad_to: 16,
        }
        .apply(&img, &[]);
        assert_eq!(rgb.channels, 3);
        assert!(rgb.image.iter().all(|&v| v == 1.0));
        let img3 = Image {
            height: 16,
            width: 16,
            channels: 3,
            data: [255u8, 0, 0].repeat(256),
        };
        let g = Preprocess {
            ensure_rgb: false,
            ensure_grayscale: true,
            max_height: None,
            max_width: None,
            scale: 1.0,
            pad_to: 1,
        }
        .apply(&img3, &[]);
        assert_eq!(g.channels, 1);
        assert!((g.image[0] - 0.2989).abs() < 1e-6);
    }

    #[test]
    fn size_matcher_keeps_aspect_and_pads() {
        let img = gray(20, 40, |_, _| 100);
        let s = Preprocess {
            ensure_rgb: false,
            ensure_grayscale: false,
            max_height: Some(32),
            max_width: Some(32),
            scale: 1.0,
            pad_to: 16,
        }
        .apply(&img, &[vec![[40.0, 20.0]]]);
        assert_eq!((s.height, s.width), (32, 32));
        assert_eq!(s.instances[0][0], [32.0, 16.0]);
        // Rows 0..16 hold the image, below is padding.
        assert!(s.image[10 * 32 + 3] > 0.3);
        assert_eq!(s.image[20 * 32 + 3], 0.0);
    }
}
