//! Augmentation applied identically to a frame and its keypoints, with sleap-nn's sets and
//! meanings (its skia path): intensity changes on the 0–1 scale (uniform and Gaussian noise,
//! contrast about mid-grey, brightness as a factor), then a horizontal flip that swaps
//! symmetric nodes, then one affine map about the image centre composed as rotation ∘ scale ∘
//! translation — each with its own probability, or bundled under `affine_p` when no individual
//! probability is set. Pixels that come from outside the frame are black.
//!
//! Every draw comes from a counter-based generator keyed by (seed, epoch, sample), so a
//! resumed run augments exactly as the uninterrupted one.

use configs::sleap::{GeometricConfig, IntensityConfig};

use super::frame::Sample;
use crate::rng::CounterRng;

#[derive(Debug, Clone, PartialEq)]
pub struct Augmenter {
    pub intensity: Option<IntensityConfig>,
    pub geometric: Option<GeometricConfig>,
    /// Node pairs swapped by a horizontal flip.
    pub symmetries: Vec<(usize, usize)>,
}

/// A 2-D affine map `p ↦ A·p + t`, as [a, b, c, d, tx, ty] for [[a, b], [c, d]].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine([f64; 6]);

impl Affine {
    pub const IDENTITY: Affine = Affine([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);

    pub fn apply(&self, p: [f64; 2]) -> [f64; 2] {
        let [a, b, c, d, tx, ty] = self.0;
        [a * p[0] + b * p[1] + tx, c * p[0] + d * p[1] + ty]
    }

    /// self ∘ other: apply `other` first.
    pub fn then_before(&self, other: &Affine) -> Affine {
        let [a, b, c, d, tx, ty] = self.0;
        let [e, f, g, h, ux, uy] = other.0;
        Affine([
            a * e + b * g,
            a * f + b * h,
            c * e + d * g,
            c * f + d * h,
            a * ux + b * uy + tx,
            c * ux + d * uy + ty,
        ])
    }

    pub fn inverse(&self) -> Affine {
        let [a, b, c, d, tx, ty] = self.0;
        let det = a * d - b * c;
        let (ia, ib, ic, id) = (d / det, -b / det, -c / det, a / det);
        Affine([ia, ib, ic, id, -(ia * tx + ib * ty), -(ic * tx + id * ty)])
    }

    /// Rotation by `deg` degrees about (cx, cy), clockwise on screen as skia's setRotate (y down).
    pub fn rotate(deg: f64, cx: f64, cy: f64) -> Affine {
        let (s, c) = deg.to_radians().sin_cos();
        Affine([c, -s, s, c, cx - c * cx + s * cy, cy - s * cx - c * cy])
    }

    pub fn scale(k: f64, cx: f64, cy: f64) -> Affine {
        Affine([k, 0.0, 0.0, k, cx - k * cx, cy - k * cy])
    }

    pub fn translate(tx: f64, ty: f64) -> Affine {
        Affine([1.0, 0.0, 0.0, 1.0, tx, ty])
    }
}

fn uniform(rng: &mut CounterRng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.next_f64()
}

fn happens(rng: &mut CounterRng, p: f64) -> bool {
    p > 0.0 && rng.next_f64() < p
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut CounterRng) -> f64 {
    let (u1, u2) = (rng.next_f64().max(1e-300), rng.next_f64());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl Augmenter {
    pub fn apply(&self, s: &mut Sample, rng: &mut CounterRng) {
        if let Some(c) = &self.intensity {
            intensity(s, c, rng);
        }
        if let Some(g) = &self.geometric {
            if happens(rng, g.flip_p) {
                flip(s, &self.symmetries);
            }
            if let Some(m) = affine(g, s.width as f64, s.height as f64, rng) {
                warp(s, &m);
            }
        }
    }
}

fn intensity(s: &mut Sample, c: &IntensityConfig, rng: &mut CounterRng) {
    let clamp = |v: f64| v.clamp(0.0, 1.0) as f32;
    if happens(rng, c.uniform_noise_p) {
        for v in &mut s.image {
            *v = clamp(*v as f64 + uniform(rng, c.uniform_noise_min, c.uniform_noise_max));
        }
    }
    if happens(rng, c.gaussian_noise_p) {
        for v in &mut s.image {
            *v = clamp(*v as f64 + c.gaussian_noise_mean + c.gaussian_noise_std * normal(rng));
        }
    }
    if happens(rng, c.contrast_p) {
        let k = uniform(rng, c.contrast_min, c.contrast_max);
        for v in &mut s.image {
            *v = clamp((*v as f64 - 0.5) * k + 0.5);
        }
    }
    if happens(rng, c.brightness_p) {
        let k = uniform(rng, c.brightness_min, c.brightness_max);
        for v in &mut s.image {
            *v = clamp(*v as f64 * k);
        }
    }
}

/// Mirror left–right: x ↦ (w − 1) − x, symmetric nodes swapped.
fn flip(s: &mut Sample, symmetries: &[(usize, usize)]) {
    let w = s.width;
    for row in s.image.chunks_exact_mut(w) {
        row.reverse();
    }
    for inst in &mut s.instances {
        for p in inst.iter_mut() {
            p[0] = (w as f64 - 1.0) - p[0];
        }
        for &(a, b) in symmetries {
            if a < inst.len() && b < inst.len() {
                inst.swap(a, b);
            }
        }
    }
}

/// The sampled map, or None when no transform was drawn.
fn affine(g: &GeometricConfig, w: f64, h: f64, rng: &mut CounterRng) -> Option<Affine> {
    let (cx, cy) = (w / 2.0, h / 2.0);
    let independent = g.rotation_p.is_some() || g.scale_p.is_some() || g.translate_p.is_some();
    let mut m = Affine::IDENTITY;
    let mut any = false;
    if independent {
        if happens(rng, g.rotation_p.unwrap_or(0.0)) {
            m = m.then_before(&Affine::rotate(
                uniform(rng, g.rotation_min, g.rotation_max),
                cx,
                cy,
            ));
            any = true;
        }
        if happens(rng, g.scale_p.unwrap_or(0.0)) {
            m = m.then_before(&Affine::scale(
                uniform(rng, g.scale_min, g.scale_max),
                cx,
                cy,
            ));
            any = true;
        }
        if happens(rng, g.translate_p.unwrap_or(0.0)) {
            let tx = uniform(rng, -g.translate_width, g.translate_width) * w;
            let ty = uniform(rng, -g.translate_height, g.translate_height) * h;
            m = m.then_before(&Affine::translate(tx, ty));
            any = true;
        }
    } else if happens(rng, g.affine_p) {
        let angle = uniform(rng, g.rotation_min, g.rotation_max);
        let k = uniform(rng, g.scale_min, g.scale_max);
        let tx = uniform(rng, -g.translate_width, g.translate_width) * w;
        let ty = uniform(rng, -g.translate_height, g.translate_height) * h;
        m = Affine::rotate(angle, cx, cy)
            .then_before(&Affine::scale(k, cx, cy))
            .then_before(&Affine::translate(tx, ty));
        any = true;
    }
    any.then_some(m)
}

/// Resamples the image through `m` (bilinear; a pixel covers [x, x+1) so its centre is x + ½,
/// as skia draws) and maps the keypoints with `m`.
fn warp(s: &mut Sample, m: &Affine) {
    let inv = m.inverse();
    let (h, w) = (s.height, s.width);
    let mut out = vec![0.0f32; s.image.len()];
    for ch in 0..s.channels {
        let src = &s.image[ch * h * w..(ch + 1) * h * w];
        let dst = &mut out[ch * h * w..(ch + 1) * h * w];
        let at = |x: isize, y: isize| -> f32 {
            if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
                0.0
            } else {
                src[y as usize * w + x as usize]
            }
        };
        for y in 0..h {
            for x in 0..w {
                let p = inv.apply([x as f64 + 0.5, y as f64 + 0.5]);
                let (sx, sy) = (p[0] - 0.5, p[1] - 0.5);
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
                let (x0, y0) = (x0 as isize, y0 as isize);
                let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
                let bot = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
                dst[y * w + x] = top * (1.0 - fy) + bot * fy;
            }
        }
    }
    s.image = out;
    for p in s.instances.iter_mut().flatten() {
        if p[0].is_finite() && p[1].is_finite() {
            *p = m.apply(*p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    /// A black frame with one bright 3x3 square per keypoint.
    fn squares(points: &[[f64; 2]], h: usize, w: usize) -> Sample {
        let mut image = vec![0.0f32; h * w];
        for p in points {
            let (cx, cy) = (p[0].round() as usize, p[1].round() as usize);
            for y in cy - 1..=cy + 1 {
                for x in cx - 1..=cx + 1 {
                    image[y * w + x] = 1.0;
                }
            }
        }
        Sample {
            image,
            channels: 1,
            height: h,
            width: w,
            instances: vec![points.to_vec()],
            scale: 1.0,
        }
    }

    /// The brightest pixel within 4 px of `p`, which must be near `p`.
    fn bright_near(s: &Sample, p: [f64; 2]) -> f32 {
        let mut best = 0.0f32;
        for y in (p[1] as isize - 1).max(0)..=(p[1] as isize + 1).min(s.height as isize - 1) {
            for x in (p[0] as isize - 1).max(0)..=(p[0] as isize + 1).min(s.width as isize - 1) {
                best = best.max(s.image[y as usize * s.width + x as usize]);
            }
        }
        best
    }

    #[test]
    fn keypoints_stay_on_their_features_under_rotation_scale_translation_and_flip() {
        let pts = [[20.0, 30.0], [45.0, 12.0], [33.0, 50.0]];
        let g = GeometricConfig {
            rotation_min: -40.0,
            rotation_max: 40.0,
            scale_min: 0.8,
            scale_max: 1.2,
            translate_width: 0.1,
            translate_height: 0.1,
            rotation_p: Some(1.0),
            scale_p: Some(1.0),
            translate_p: Some(1.0),
            flip_p: 0.5,
            ..GeometricConfig::default()
        };
        let aug = Augmenter {
            intensity: None,
            geometric: Some(g),
            symmetries: vec![],
        };
        let mut moved = 0;
        for k in 0..20 {
            let mut s = squares(&pts, 64, 64);
            let mut rng = CounterRng::new(7, Stream::Augment, &[k]);
            aug.apply(&mut s, &mut rng);
            for (p, q) in s.instances[0].iter().zip(&pts) {
                if p != q {
                    moved += 1;
                }
                assert!(
                    bright_near(&s, *p) > 0.5,
                    "sample {k}: nothing bright near {p:?}"
                );
            }
        }
        assert!(moved > 50, "the points were transformed ({moved})");
    }

    #[test]
    fn flip_mirrors_and_swaps_symmetric_nodes() {
        let mut s = squares(&[[10.0, 5.0], [50.0, 5.0]], 16, 64);
        flip(&mut s, &[(0, 1)]);
        assert_eq!(s.instances[0], vec![[13.0, 5.0], [53.0, 5.0]]);
        assert!(bright_near(&s, [53.0, 5.0]) > 0.5);
    }

    #[test]
    fn same_key_same_augmentation() {
        let aug = Augmenter {
            intensity: Some(IntensityConfig {
                gaussian_noise_p: 1.0,
                ..IntensityConfig::default()
            }),
            geometric: Some(GeometricConfig::default()),
            symmetries: vec![],
        };
        let run = |k| {
            let mut s = squares(&[[20.0, 20.0]], 48, 48);
            aug.apply(&mut s, &mut CounterRng::new(1, Stream::Augment, &[k]));
            s
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
