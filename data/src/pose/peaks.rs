//! Peak finding on confidence maps and instance crops, as sleap-nn 0.3.5's inference does it
//! (`inference/ops/peaks.py`, `inference/ops/crops.py`, `data/instance_cropping.py`).
//!
//! Maps are row-major `[channels, h, w]` f32 slices; points are `(x, y)` in map-grid units
//! (cell centres at integers). [`grid_to_image`] takes them to frame pixels.

use super::targets::{centroid, CentroidRule};
use thiserror::Error;

/// A slice that does not hold the shape it was described with.
#[derive(Debug, Error, PartialEq)]
pub enum PeakError {
    #[error("{what}: expected {expected} values for its shape, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), PeakError> {
    if got == expected {
        Ok(())
    } else {
        Err(PeakError::Shape {
            what,
            expected,
            got,
        })
    }
}

/// Sub-pixel refinement of a grid peak (sleap-nn's `refinement` / `integral_refinement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refinement {
    /// The grid-aligned peak.
    None,
    /// Integral regression over a `patch × patch` window around the peak (sleap-nn's
    /// predictor default, with `integral_patch_size` 5).
    Integral,
    /// sleap-nn 0.3.5 accepts `"local"` but only refines when the mode is `"integral"`, so
    /// this returns the grid-aligned peak, as [`Refinement::None`] does.
    Local,
}

/// One peak: its position in map-grid units and the map value at the grid peak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    pub x: f32,
    pub y: f32,
    pub score: f32,
}

/// torch's max ordering: NaN is above every number.
fn above(a: f32, b: f32) -> bool {
    (a.is_nan() && !b.is_nan()) || a > b
}

/// Window `[top, top + patch)` that sleap-nn's `crop_bboxes` takes around `centre` on one
/// axis: the box starts at `c − patch/2 + 0.5` (`make_centered_bboxes`) and the crop at
/// `trunc(start + patch div 2) − patch div 2`.
fn crop_start(centre: f32, size: usize) -> i64 {
    let start = (centre - size as f32 / 2.0) + 0.5;
    let half = (size / 2) as f32;
    (start + half) as i64 - (size / 2) as i64
}

/// Integral regression on the `patch × patch` window of `map` around the grid cell
/// `(x, y)`, zero outside the map: the offset `(Σ g_x·v / Σ v, Σ g_y·v / Σ v)` with
/// `g = i − (patch − 1)/2`. A window summing to 0 gives NaN, as in sleap-nn.
fn integral_offset(map: &[f32], h: usize, w: usize, x: f32, y: f32, patch: usize) -> [f32; 2] {
    let (x0, y0) = (crop_start(x, patch), crop_start(y, patch));
    let centre = (patch as f64 - 1.0) / 2.0;
    let (mut z, mut sx, mut sy) = (0.0f64, 0.0f64, 0.0f64);
    for i in 0..patch {
        let r = y0 + i as i64;
        if r < 0 || r >= h as i64 {
            continue;
        }
        for j in 0..patch {
            let c = x0 + j as i64;
            if c < 0 || c >= w as i64 {
                continue;
            }
            let v = map[r as usize * w + c as usize] as f64;
            z += v;
            sx += (j as f64 - centre) * v;
            sy += (i as f64 - centre) * v;
        }
    }
    [(sx / z) as f32, (sy / z) as f32]
}

/// One peak per channel of `maps` `[channels, h, w]` (sleap-nn's `find_global_peaks`).
///
/// x is the first column holding the map's maximum and y the first row holding it (torch
/// reduces each axis separately, so under ties they may come from different cells). A peak
/// with value `< threshold` is `(NaN, NaN)` with score 0; others are refined per
/// `refinement` with a `patch`-sized window.
pub fn global_peaks(
    maps: &[f32],
    channels: usize,
    h: usize,
    w: usize,
    threshold: f32,
    refinement: Refinement,
    patch: usize,
) -> Result<Vec<Peak>, PeakError> {
    check_len("global_peaks maps", maps.len(), channels * h * w)?;
    if h == 0 || w == 0 {
        return Ok(Vec::new());
    }
    let mut peaks = Vec::with_capacity(channels);
    for map in maps.chunks_exact(h * w) {
        let (mut best, mut bx, mut by) = (map[0], usize::MAX, usize::MAX);
        for &v in map {
            if above(v, best) {
                best = v;
            }
        }
        // First row / column whose maximum equals the map's (NaN equals NaN here).
        let same = |v: f32| v == best || (v.is_nan() && best.is_nan());
        for r in 0..h {
            if map[r * w..(r + 1) * w].iter().any(|&v| same(v)) {
                by = r;
                break;
            }
        }
        for c in 0..w {
            if (0..h).any(|r| same(map[r * w + c])) {
                bx = c;
                break;
            }
        }
        if best < threshold {
            peaks.push(Peak {
                x: f32::NAN,
                y: f32::NAN,
                score: 0.0,
            });
            continue;
        }
        let (x, y) = (bx as f32, by as f32);
        let [dx, dy] = match refinement {
            Refinement::Integral => integral_offset(map, h, w, x, y, patch),
            Refinement::None | Refinement::Local => [0.0, 0.0],
        };
        peaks.push(Peak {
            x: x + dx,
            y: y + dy,
            score: best,
        });
    }
    Ok(peaks)
}

/// (row, col) offsets of the 8 neighbours, in sleap-nn's `_NEIGHBORS` order.
const NEIGHBOURS: [(i64, i64); 8] = [
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, -1),
    (0, 1),
    (1, -1),
    (1, 0),
    (1, 1),
];

/// All local maxima of one map `[h, w]` (sleap-nn's `find_local_peaks`), in raster order.
///
/// A cell is a peak when its value `v > threshold`, `v >` its 4 neighbours before it in
/// raster order and `v ≥` the 4 after it (outside the map counts as −∞). Equal neighbours
/// form a flat top, kept only if it fits a 2×2 block (E/S/SE or SW/S of the first cell)
/// and no cell around it is `≥ v`; its point is the mean of its cells. Refinement
/// anchors the window at `floor(point)` and adds the integral offset.
pub fn local_peaks(
    map: &[f32],
    h: usize,
    w: usize,
    threshold: f32,
    refinement: Refinement,
    patch: usize,
) -> Result<Vec<Peak>, PeakError> {
    check_len("local_peaks map", map.len(), h * w)?;
    let at = |r: i64, c: i64| -> f32 {
        if r < 0 || c < 0 || r >= h as i64 || c >= w as i64 {
            f32::NEG_INFINITY
        } else {
            map[r as usize * w + c as usize]
        }
    };
    let mut peaks = Vec::new();
    for r in 0..h as i64 {
        for c in 0..w as i64 {
            let v = at(r, c);
            let n = NEIGHBOURS.map(|(dr, dc)| at(r + dr, c + dc));
            let is_candidate =
                n[..4].iter().all(|&b| v > b) && n[4..].iter().all(|&a| v >= a) && v > threshold;
            if !is_candidate {
                continue;
            }
            // The flat top: this cell and its neighbours that are ≥ it (all come after it).
            let tied: Vec<(i64, i64)> = NEIGHBOURS
                .iter()
                .zip(n)
                .filter(|&(_, nv)| nv >= v)
                .map(|(&d, _)| d)
                .collect();
            let fits = [&[(0, 1), (1, 0), (1, 1)][..], &[(1, -1), (1, 0)][..]]
                .iter()
                .any(|block| tied.iter().all(|d| block.contains(d)));
            let in_top = |d: (i64, i64)| d == (0, 0) || tied.contains(&d);
            let leaks = tied.iter().any(|&(tr, tc)| {
                NEIGHBOURS.iter().any(|&(dr, dc)| {
                    let d = (tr + dr, tc + dc);
                    !in_top(d) && at(r + d.0, c + d.1) >= v
                })
            });
            if !fits || leaks {
                continue;
            }
            let k = (tied.len() + 1) as f32;
            let ox = tied.iter().map(|d| d.1 as f32).sum::<f32>() / k;
            let oy = tied.iter().map(|d| d.0 as f32).sum::<f32>() / k;
            let (x, y) = (c as f32 + ox, r as f32 + oy);
            let peak = match refinement {
                Refinement::Integral => {
                    let (ax, ay) = (x.floor(), y.floor());
                    let [dx, dy] = integral_offset(map, h, w, ax, ay, patch);
                    Peak {
                        x: ax + dx,
                        y: ay + dy,
                        score: v,
                    }
                }
                Refinement::None | Refinement::Local => Peak { x, y, score: v },
            };
            peaks.push(peak);
        }
    }
    Ok(peaks)
}

/// A map-grid point in frame pixels, as sleap-nn's inference layers adjust it:
/// `p · output_stride / input_scale / eff_scale`. No half-cell offset: grid cell `i` sits
/// on input pixel `i · output_stride`, as the targets are drawn.
pub fn grid_to_image(
    p: [f32; 2],
    output_stride: usize,
    input_scale: f32,
    eff_scale: f32,
) -> [f32; 2] {
    let s = output_stride as f32;
    p.map(|v| v * s / input_scale / eff_scale)
}

/// Top-left `(x, y)` of the crop box sleap-nn centres on `centre`
/// (`make_centered_bboxes`): `centre − crop_size/2 + 0.5`. Crop points map back to the frame
/// by adding it ([`point_from_crop`]), and training keypoints into the crop by subtracting it.
pub fn crop_origin(centre: [f32; 2], crop_size: usize) -> [f32; 2] {
    centre.map(|c| (c - crop_size as f32 / 2.0) + 0.5)
}

/// A frame point in the crop around `centre`: `p − crop_origin`.
pub fn point_to_crop(p: [f32; 2], centre: [f32; 2], crop_size: usize) -> [f32; 2] {
    let o = crop_origin(centre, crop_size);
    [p[0] - o[0], p[1] - o[1]]
}

/// A crop point back in the frame: `p + crop_origin` (sleap-nn adds the box's top-left to the
/// centered-instance peaks).
pub fn point_from_crop(p: [f32; 2], centre: [f32; 2], crop_size: usize) -> [f32; 2] {
    let o = crop_origin(centre, crop_size);
    [p[0] + o[0], p[1] + o[1]]
}

/// The `crop_size × crop_size` crop of `image` `[channels, h, w]` around `centre`, as
/// sleap-nn's top-down inference takes it (`crop_bboxes`): whole pixels from
/// `trunc(origin + crop_size div 2) − crop_size div 2`, zero outside the frame. Output is
/// `[channels, crop_size, crop_size]`.
///
/// sleap-nn's training crop (Skia `crop_and_resize`) instead resamples the box at scale
/// `crop_size / (crop_size − 1)` on 8-bit pixels; that path is not reproduced here.
pub fn crop_around(
    image: &[f32],
    channels: usize,
    h: usize,
    w: usize,
    centre: [f32; 2],
    crop_size: usize,
) -> Result<Vec<f32>, PeakError> {
    check_len("crop_around image", image.len(), channels * h * w)?;
    let (x0, y0) = (
        crop_start(centre[0], crop_size),
        crop_start(centre[1], crop_size),
    );
    let mut out = vec![0.0f32; channels * crop_size * crop_size];
    for ch in 0..channels {
        let src = &image[ch * h * w..(ch + 1) * h * w];
        let dst = &mut out[ch * crop_size * crop_size..(ch + 1) * crop_size * crop_size];
        for i in 0..crop_size {
            let r = y0 + i as i64;
            if r < 0 || r >= h as i64 {
                continue;
            }
            for j in 0..crop_size {
                let c = x0 + j as i64;
                if c >= 0 && c < w as i64 {
                    dst[i * crop_size + j] = src[r as usize * w + c as usize];
                }
            }
        }
    }
    Ok(out)
}

/// The automatic centered-instance crop size (sleap-nn's `find_instance_crop_size` on native
/// pixels): each instance needs `2 · max |p − centroid|` over its visible points and axes;
/// `L = max(min_crop_size − padding, needs…, 0) + padding`, rounded up to a multiple of
/// `max_stride`. Instances without a visible point are skipped.
pub fn find_instance_crop_size(
    instances: &[Vec<[f64; 2]>],
    rule: CentroidRule,
    padding: usize,
    max_stride: usize,
    min_crop_size: Option<usize>,
) -> usize {
    let mut max_length = min_crop_size.unwrap_or(0) as f64 - padding as f64;
    for points in instances {
        let Some(c) = centroid(points, rule) else {
            continue;
        };
        let reach = points
            .iter()
            .flat_map(|p| [(p[0] - c[0]).abs(), (p[1] - c[1]).abs()])
            .filter(|d| !d.is_nan())
            .fold(0.0f64, f64::max);
        max_length = max_length.max(2.0 * reach);
    }
    let length = max_length.max(0.0) + padding as f64;
    let stride = max_stride.max(1) as f64;
    ((length / stride).ceil() * stride) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(h: usize, w: usize, x: f32, y: f32, sigma: f32) -> Vec<f32> {
        let mut m = Vec::with_capacity(h * w);
        for r in 0..h {
            for c in 0..w {
                let d2 = (c as f32 - x).powi(2) + (r as f32 - y).powi(2);
                m.push((-d2 / (2.0 * sigma * sigma)).exp());
            }
        }
        m
    }

    #[test]
    fn integral_refinement_recovers_a_subpixel_blob() {
        for &(x, y) in &[(10.3f32, 7.8f32), (4.45, 12.2), (9.0, 9.0), (15.6, 3.35)] {
            let m = blob(20, 24, x, y, 0.75);
            let p = global_peaks(&m, 1, 20, 24, 0.2, Refinement::Integral, 5).unwrap()[0];
            assert!(
                (p.x - x).abs() < 0.05 && (p.y - y).abs() < 0.05,
                "blob at ({x}, {y}) found at ({}, {})",
                p.x,
                p.y
            );
            let q = &local_peaks(&m, 20, 24, 0.2, Refinement::Integral, 5).unwrap()[0];
            assert!((q.x - x).abs() < 0.05 && (q.y - y).abs() < 0.05);
            // Without refinement the peak is the nearest grid cell.
            let g = global_peaks(&m, 1, 20, 24, 0.2, Refinement::None, 5).unwrap()[0];
            assert_eq!((g.x, g.y), (x.round(), y.round()));
        }
    }

    #[test]
    fn below_threshold_is_nan_with_zero_score() {
        let m = blob(8, 8, 3.0, 4.0, 1.0)
            .iter()
            .map(|v| v * 0.1)
            .collect::<Vec<_>>();
        let p = global_peaks(&m, 1, 8, 8, 0.2, Refinement::Integral, 5).unwrap()[0];
        assert!(p.x.is_nan() && p.y.is_nan());
        assert_eq!(p.score, 0.0);
        assert!(local_peaks(&m, 8, 8, 0.2, Refinement::None, 5)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn ties_take_the_first_row_and_first_column_separately() {
        let mut m = vec![0.0f32; 4 * 6];
        m[5] = 1.0; // row 0, column 5
        m[3 * 6 + 1] = 1.0; // row 3, column 1
        let p = global_peaks(&m, 1, 4, 6, 0.5, Refinement::None, 5).unwrap()[0];
        assert_eq!((p.x, p.y, p.score), (1.0, 0.0, 1.0));
    }

    #[test]
    fn flat_tops_merge_when_they_fit_a_2x2_block() {
        let (h, w) = (6, 8);
        let mut m = vec![0.0f32; h * w];
        // A 2-cell top at row 1, columns 1-2, and a 3-cell-wide top at row 4 (no peak).
        m[w + 1] = 0.9;
        m[w + 2] = 0.9;
        m[4 * w + 3] = 0.8;
        m[4 * w + 4] = 0.8;
        m[4 * w + 5] = 0.8;
        let peaks = local_peaks(&m, h, w, 0.1, Refinement::None, 5).unwrap();
        assert_eq!(
            peaks,
            vec![Peak {
                x: 1.5,
                y: 1.0,
                score: 0.9
            }]
        );
    }

    #[test]
    fn crop_round_trips_points_and_zero_fills() {
        let (h, w) = (5, 6);
        let img: Vec<f32> = (0..h * w).map(|i| i as f32 + 1.0).collect();
        let crop = crop_around(&img, 1, h, w, [1.0, 1.0], 4).unwrap();
        // Origin (1 − 2 + 0.5) = −0.5 → start trunc(−0.5 + 2) − 2 = −1.
        assert_eq!(crop_origin([1.0, 1.0], 4), [-0.5, -0.5]);
        assert_eq!(&crop[..4], &[0.0; 4]);
        assert_eq!(&crop[4..8], &[0.0, 1.0, 2.0, 3.0]);
        let p = [2.25, 3.5];
        let back = point_from_crop(point_to_crop(p, [1.0, 1.0], 4), [1.0, 1.0], 4);
        assert_eq!(back, p);
        assert_eq!(grid_to_image([3.0, 1.5], 4, 0.5, 1.0), [24.0, 12.0]);
    }

    #[test]
    fn crop_size_covers_the_farthest_node_from_the_centroid() {
        let inst = vec![vec![[0.0, 0.0], [30.0, 10.0], [f64::NAN, f64::NAN]]];
        // Centroid (15, 5): reach 15 → 30, + 4 padding = 34 → 48 at stride 16.
        assert_eq!(
            find_instance_crop_size(&inst, CentroidRule::CenterOfMass, 4, 16, None),
            48
        );
        // Anchor on node 0: reach 30 → 60 + 4 = 64.
        assert_eq!(
            find_instance_crop_size(&inst, CentroidRule::Anchor(0), 4, 16, None),
            64
        );
        assert_eq!(
            find_instance_crop_size(&inst, CentroidRule::CenterOfMass, 0, 16, Some(100)),
            112
        );
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let err = global_peaks(&[0.0; 5], 1, 2, 3, 0.2, Refinement::None, 5).unwrap_err();
        assert_eq!(
            err,
            PeakError::Shape {
                what: "global_peaks maps",
                expected: 6,
                got: 5
            }
        );
    }
}
