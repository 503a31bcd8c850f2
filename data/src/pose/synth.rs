//! Deterministic synthetic pose labels: one animal per grayscale frame, a bright elongated body
//! (an ellipse) with a larger, brighter head disc in front and a smaller, dimmer tail disc
//! behind, gliding along a smooth Lissajous path and turning slowly over a textured, noisy
//! background. Head and tail sit off the body's axis, to the same side (a curled animal whose
//! curl varies over time): sleap-nn's OKS scales by the keypoints' bounding-box area, which
//! three points on one line would make vanish whenever the animal is axis-aligned. The skeleton is head -> body -> tail, and each keypoint is the exact centre of
//! its shape, so a model's error against these labels is its own.
//!
//! Every number derives from (seed, purpose, frame) through the counter-based generator, so
//! the same options give the same frames and labels bit for bit; another seed gives another
//! path and background (held-out frames from the same distribution).

use std::f64::consts::TAU;
use std::path::Path;

use crate::error::{DataError, Result};
use crate::pose::slp::write_labels_with_frames;
use crate::pose::VideoSource;
use crate::pose::{Image, Instance, InstanceKind, LabeledFrame, Labels, Skeleton, Video};
use crate::rng::{CounterRng, Stream};

#[derive(Debug, Clone, PartialEq)]
pub struct SynthPoseOptions {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub seed: u64,
}

impl Default for SynthPoseOptions {
    fn default() -> Self {
        SynthPoseOptions {
            frames: 300,
            height: 256,
            width: 256,
            seed: 0,
        }
    }
}

/// Node order of the synthetic skeleton.
pub const NODES: [&str; 3] = ["head", "body", "tail"];

/// Smallest side that leaves room for the animal and its path.
const MIN_SIDE: usize = 32;

/// The animal's geometry, in fractions of the frame's shorter side.
const BODY_HALF_LENGTH: f64 = 0.09;
const BODY_HALF_WIDTH: f64 = 0.04;
const HEAD_RADIUS: f64 = 0.035;
const TAIL_RADIUS: f64 = 0.022;
/// Centre-to-centre distances from the body centre.
const HEAD_OFFSET: f64 = BODY_HALF_LENGTH + 0.6 * HEAD_RADIUS;
const TAIL_OFFSET: f64 = BODY_HALF_LENGTH + 0.8 * TAIL_RADIUS;

/// Curl: head and tail are turned this far (radians) off the body's axis, towards one side.
const CURL_MEAN: f64 = 0.45;
const CURL_SWING: f64 = 0.15;

/// Pixel intensities (before noise).
const BODY_LEVEL: f64 = 190.0;
const HEAD_LEVEL: f64 = 235.0;
const TAIL_LEVEL: f64 = 150.0;
const BACKGROUND_MEAN: f64 = 70.0;
const TEXTURE_AMPLITUDE: f64 = 25.0;
const NOISE_AMPLITUDE: f64 = 12.0;

/// The path and texture of one seed.
struct Scene {
    /// x and y: (period in frames, phase).
    path: [(f64, f64); 2],
    /// Turning: base angle, frames per turn, wobble period, wobble phase.
    heading: (f64, f64, f64, f64),
    /// Curl: period in frames, phase.
    curl: (f64, f64),
    /// Background texture: sinusoid gratings (kx, ky, phase, weight).
    gratings: Vec<(f64, f64, f64, f64)>,
}

impl Scene {
    fn new(seed: u64) -> Self {
        let mut rng = CounterRng::new(seed, Stream::Synth, &[u64::from_le_bytes(*b"posescen")]);
        let mut uniform = |lo: f64, hi: f64| lo + (hi - lo) * rng.next_f64();
        let path = [
            (uniform(70.0, 110.0), uniform(0.0, TAU)),
            (uniform(50.0, 80.0), uniform(0.0, TAU)),
        ];
        let turn = if uniform(0.0, 1.0) < 0.5 { -1.0 } else { 1.0 };
        let heading = (
            uniform(0.0, TAU),
            turn * uniform(120.0, 200.0),
            uniform(20.0, 40.0),
            uniform(0.0, TAU),
        );
        let curl = (uniform(40.0, 90.0), uniform(0.0, TAU));
        let gratings = (0..6)
            .map(|_| {
                let angle = uniform(0.0, TAU);
                // Wavelengths of 8 to 40 pixels: texture at the animal's scale.
                let k = TAU / uniform(8.0, 40.0);
                (
                    k * angle.cos(),
                    k * angle.sin(),
                    uniform(0.0, TAU),
                    uniform(0.3, 1.0),
                )
            })
            .collect();
        Scene {
            path,
            heading,
            curl,
            gratings,
        }
    }

    /// Body centre, heading (radians, pointing from tail to head) and curl at frame `t`.
    fn pose(&self, t: f64, height: usize, width: usize) -> ([f64; 2], f64, f64) {
        let side = height.min(width) as f64;
        let margin = (HEAD_OFFSET + HEAD_RADIUS) * side + 2.0;
        let coord = |extent: usize, (period, phase): (f64, f64)| {
            let lo = margin;
            let hi = extent as f64 - 1.0 - margin;
            let mid = 0.5 * (lo + hi);
            mid + 0.5 * (hi - lo) * (TAU * t / period + phase).sin()
        };
        let centre = [coord(width, self.path[0]), coord(height, self.path[1])];
        let (base, per_turn, wobble_period, wobble_phase) = self.heading;
        let angle =
            base + TAU * t / per_turn + 0.6 * (TAU * t / wobble_period + wobble_phase).sin();
        let curl = CURL_MEAN + CURL_SWING * (TAU * t / self.curl.0 + self.curl.1).sin();
        (centre, angle, curl)
    }

    fn texture(&self, x: f64, y: f64) -> f64 {
        let total: f64 = self.gratings.iter().map(|g| g.3).sum();
        let v: f64 = self
            .gratings
            .iter()
            .map(|&(kx, ky, phase, w)| w * (kx * x + ky * y + phase).sin())
            .sum();
        v / total
    }
}

/// Coverage of a pixel by a shape whose signed distance (negative inside) is `d` pixels:
/// a one-pixel linear ramp, so edges are anti-aliased and centres are sub-pixel exact.
fn coverage(d: f64) -> f64 {
    (0.5 - d).clamp(0.0, 1.0)
}

/// The keypoints (head, body, tail) of a body at `centre` heading along `angle`, head and
/// tail turned by `curl` towards the same side.
fn keypoints(centre: [f64; 2], angle: f64, curl: f64, side: f64) -> [[f64; 2]; 3] {
    let at = |d: f64, a: f64| [centre[0] + d * a.cos(), centre[1] + d * a.sin()];
    [
        at(HEAD_OFFSET * side, angle + curl),
        centre,
        at(TAIL_OFFSET * side, angle + std::f64::consts::PI - curl),
    ]
}

fn render(
    scene: &Scene,
    seed: u64,
    frame: usize,
    opts: &SynthPoseOptions,
) -> (Image, [[f64; 2]; 3]) {
    let (h, w) = (opts.height, opts.width);
    let side = h.min(w) as f64;
    let (centre, angle, curl) = scene.pose(frame as f64, h, w);
    let points = keypoints(centre, angle, curl, side);
    let (s, c) = angle.sin_cos();
    let (a, b) = (BODY_HALF_LENGTH * side, BODY_HALF_WIDTH * side);
    let (rh, rt) = (HEAD_RADIUS * side, TAIL_RADIUS * side);
    let mut noise = CounterRng::new(seed, Stream::Synth, &[frame as u64]);
    let mut data = Vec::with_capacity(h * w);
    for row in 0..h {
        for col in 0..w {
            let (x, y) = (col as f64, row as f64);
            let mut v = BACKGROUND_MEAN + TEXTURE_AMPLITUDE * scene.texture(x, y);
            // The ellipse's distance, approximated by scaling its implicit radius by the
            // semi-minor axis: exact on the boundary, which is all the edge ramp needs.
            let (dx, dy) = (x - centre[0], y - centre[1]);
            let (u, q) = (dx * c + dy * s, -dx * s + dy * c);
            let body = ((u / a).powi(2) + (q / b).powi(2)).sqrt();
            v += (BODY_LEVEL - v) * coverage((body - 1.0) * b);
            let disc = |p: [f64; 2], r: f64| ((x - p[0]).powi(2) + (y - p[1]).powi(2)).sqrt() - r;
            v += (TAIL_LEVEL - v) * coverage(disc(points[2], rt));
            v += (HEAD_LEVEL - v) * coverage(disc(points[0], rh));
            v += NOISE_AMPLITUDE * (2.0 * noise.next_f64() - 1.0);
            data.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
    let image = Image {
        height: h,
        width: w,
        channels: 1,
        data,
    };
    (image, points)
}

fn check(opts: &SynthPoseOptions) -> std::result::Result<(), String> {
    if opts.frames == 0 {
        return Err("frames must be at least 1".into());
    }
    if opts.height < MIN_SIDE || opts.width < MIN_SIDE {
        return Err(format!(
            "frames of {}x{} are too small for the animal (at least {MIN_SIDE}x{MIN_SIDE})",
            opts.height, opts.width
        ));
    }
    Ok(())
}

/// The labels (one user instance per frame, video 0 embedded in `path`) and the frames.
/// `path` is the file the labels will be written to: the video refers to it.
pub fn synth_pose(path: &Path, opts: &SynthPoseOptions) -> Result<(Labels, Vec<Image>)> {
    check(opts).map_err(|e| DataError::invalid(path, "synthetic pose options", e))?;
    let scene = Scene::new(opts.seed);
    let mut images = Vec::with_capacity(opts.frames);
    let mut frames = Vec::with_capacity(opts.frames);
    for f in 0..opts.frames {
        let (image, points) = render(&scene, opts.seed, f, opts);
        images.push(image);
        frames.push(LabeledFrame {
            video: 0,
            frame_idx: f as u64,
            instances: vec![Instance {
                skeleton: 0,
                points: points.to_vec(),
                point_scores: Vec::new(),
                kind: InstanceKind::User,
                track: None,
                tracking_score: 0.0,
            }],
        });
    }
    let labels = Labels {
        skeletons: vec![Skeleton {
            name: "synthetic".into(),
            nodes: NODES.iter().map(|n| n.to_string()).collect(),
            edges: vec![(0, 1), (1, 2)],
            symmetries: Vec::new(),
        }],
        videos: vec![Video {
            filename: path.display().to_string(),
            source: VideoSource::Embedded {
                file: path.to_path_buf(),
                dataset: "video0/video".into(),
                format: "png".into(),
                frame_numbers: (0..opts.frames as u64).collect(),
            },
            shape: Some([opts.frames, opts.height, opts.width, 1]),
        }],
        frames,
        tracks: Vec::new(),
    };
    Ok((labels, images))
}

/// Generate the synthetic labels and write them to `path` as a `.pkg.slp` with the frames
/// embedded as PNG. Returns the labels written.
pub fn write_synth_pose(path: &Path, opts: &SynthPoseOptions) -> Result<Labels> {
    let (labels, images) = synth_pose(path, opts)?;
    let frames: Vec<(usize, u64, Image)> = images
        .into_iter()
        .enumerate()
        .map(|(f, image)| (0, f as u64, image))
        .collect();
    write_labels_with_frames(path, &labels, &frames)?;
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pose::slp::{read_labels, SlpImages};

    fn small() -> SynthPoseOptions {
        SynthPoseOptions {
            frames: 12,
            height: 96,
            width: 128,
            seed: 3,
        }
    }

    #[test]
    fn written_file_reads_back_with_frames_and_keypoints() {
        let dir = std::env::temp_dir().join(format!("anvil-synthpose-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("synth.pkg.slp");
        let opts = small();
        let (_, images) = synth_pose(&path, &opts).unwrap();
        let written = write_synth_pose(&path, &opts).unwrap();
        let read = read_labels(&path).unwrap();
        assert_eq!(read.skeletons, written.skeletons);
        assert_eq!(read.frames.len(), opts.frames);
        for (r, w) in read.frames.iter().zip(&written.frames) {
            assert_eq!(r.frame_idx, w.frame_idx);
            assert_eq!(r.instances.len(), 1);
            assert!(r.instances[0].is_user());
            assert_eq!(r.instances[0].points, w.instances[0].points);
        }
        assert_eq!(read.videos[0].shape, Some([12, 96, 128, 1]));
        let reader = SlpImages::open(&path, &read).unwrap();
        for (f, image) in images.iter().enumerate() {
            assert_eq!(&reader.frame(0, f as u64).unwrap(), image, "frame {f}");
        }
        drop(reader);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn same_seed_same_frames_other_seed_other_path() {
        let p = Path::new("x.pkg.slp");
        let a = synth_pose(p, &small()).unwrap();
        let b = synth_pose(p, &small()).unwrap();
        assert_eq!(a, b);
        let other = synth_pose(p, &SynthPoseOptions { seed: 4, ..small() }).unwrap();
        assert_ne!(
            a.0.frames[0].instances[0].points,
            other.0.frames[0].instances[0].points
        );
    }

    #[test]
    fn keypoints_sit_on_their_shapes_inside_the_frame() {
        let opts = small();
        let (labels, images) = synth_pose(Path::new("x.pkg.slp"), &opts).unwrap();
        for (frame, image) in labels.frames.iter().zip(&images) {
            let pts = &frame.instances[0].points;
            let pixel = |p: [f64; 2]| {
                assert!(p[0] >= 0.0 && p[1] >= 0.0, "{p:?} outside");
                assert!(p[0] <= (opts.width - 1) as f64 && p[1] <= (opts.height - 1) as f64);
                image.data[p[1].round() as usize * opts.width + p[0].round() as usize] as f64
            };
            // The shapes' levels, give or take the noise; the background is far darker.
            assert!((pixel(pts[0]) - HEAD_LEVEL).abs() <= NOISE_AMPLITUDE + 1.0);
            assert!((pixel(pts[1]) - BODY_LEVEL).abs() <= NOISE_AMPLITUDE + 1.0);
            assert!((pixel(pts[2]) - TAIL_LEVEL).abs() <= NOISE_AMPLITUDE + 1.0);
            let len = |a: [f64; 2], b: [f64; 2]| (a[0] - b[0]).hypot(a[1] - b[1]);
            let side = opts.height.min(opts.width) as f64;
            assert!((len(pts[0], pts[1]) - HEAD_OFFSET * side).abs() < 1e-9);
            assert!((len(pts[2], pts[1]) - TAIL_OFFSET * side).abs() < 1e-9);
            // Never one line: the triangle's area keeps the OKS scale away from zero.
            let cross = (pts[0][0] - pts[1][0]) * (pts[2][1] - pts[1][1])
                - (pts[0][1] - pts[1][1]) * (pts[2][0] - pts[1][0]);
            let min_area = 0.5
                * HEAD_OFFSET
                * TAIL_OFFSET
                * side
                * side
                * (2.0 * (CURL_MEAN - CURL_SWING)).sin();
            assert!(0.5 * cross.abs() >= min_area - 1e-6, "{pts:?}");
        }
    }

    #[test]
    fn embedding_refuses_unknown_videos_repeats_and_mixed_sizes() {
        let dir = std::env::temp_dir().join(format!("anvil-synthpose-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.pkg.slp");
        let (labels, images) = synth_pose(&path, &small()).unwrap();
        let other = synth_pose(
            &path,
            &SynthPoseOptions {
                height: 64,
                ..small()
            },
        )
        .unwrap()
        .1;
        let cases = [
            (vec![(1, 0, images[0].clone())], "video 1 of 1"),
            (
                vec![(0, 0, images[0].clone()), (0, 0, images[1].clone())],
                "more than once",
            ),
            (
                vec![(0, 0, images[0].clone()), (0, 1, other[1].clone())],
                "differs from the video's first frame",
            ),
        ];
        for (frames, expected) in cases {
            let msg = write_labels_with_frames(&path, &labels, &frames)
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("bad.pkg.slp") && msg.contains(expected),
                "{msg}"
            );
            assert!(!path.exists());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_frames_too_small_for_the_animal() {
        let err = synth_pose(
            Path::new("tiny.pkg.slp"),
            &SynthPoseOptions {
                height: 16,
                ..small()
            },
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("tiny.pkg.slp") && msg.contains("too small"),
            "{msg}"
        );
    }
}
