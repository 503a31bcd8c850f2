//! Training targets as sleap-nn makes them: Gaussian confidence maps sampled on the output
//! grid, and instance centroids.
//!
//! sleap-nn samples the grid at `0, s, 2s, …` in input pixels (`s` the output stride) and
//! spreads each Gaussian with standard deviation `sigma · s` (its `generate_confmaps`), so
//! `sigma` counts output-grid cells. A NaN point gives an all-zero map.

/// One map per point, [points, ⌈h/s⌉, ⌈w/s⌉] (h, w the input size), written into `out`.
pub fn confmaps(
    out: &mut Vec<f32>,
    points: &[[f64; 2]],
    h: usize,
    w: usize,
    sigma: f64,
    stride: usize,
) {
    let (gh, gw) = (h.div_ceil(stride), w.div_ceil(stride));
    out.clear();
    out.resize(points.len() * gh * gw, 0.0);
    let s = sigma * stride as f64;
    let inv = 1.0 / (2.0 * s * s);
    for (n, p) in points.iter().enumerate() {
        if !(p[0].is_finite() && p[1].is_finite()) {
            continue;
        }
        let map = &mut out[n * gh * gw..(n + 1) * gh * gw];
        // Separable: exp(−(dx² + dy²)/2s²) = ex(x)·ey(y).
        let ex: Vec<f64> = (0..gw)
            .map(|x| (-((x * stride) as f64 - p[0]).powi(2) * inv).exp())
            .collect();
        for y in 0..gh {
            let ey = (-((y * stride) as f64 - p[1]).powi(2) * inv).exp();
            for (x, &e) in ex.iter().enumerate() {
                map[y * gw + x] = (e * ey) as f32;
            }
        }
    }
}

/// One map per node holding the maximum over instances (sleap-nn's `make_multi_confmaps`), for
/// centroid maps: `instances[i]` is one point list per instance, all of the same length.
pub fn multi_confmaps(
    out: &mut Vec<f32>,
    instances: &[Vec<[f64; 2]>],
    nodes: usize,
    h: usize,
    w: usize,
    sigma: f64,
    stride: usize,
) {
    let (gh, gw) = (h.div_ceil(stride), w.div_ceil(stride));
    out.clear();
    out.resize(nodes * gh * gw, 0.0);
    let mut one = Vec::new();
    for inst in instances {
        confmaps(&mut one, inst, h, w, sigma, stride);
        for (o, &v) in out.iter_mut().zip(&one) {
            *o = o.max(v);
        }
    }
}

/// How an instance's centroid is found (`centroid_method` / `anchor_part` of a centroid or
/// centered-instance head).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CentroidRule {
    /// The anchor node when visible, otherwise the mean of the visible nodes.
    Anchor(usize),
    /// The mean of the visible nodes (sleap-nn's `center_of_mass`).
    CenterOfMass,
}

/// The centroid of one instance; None when no node is visible.
pub fn centroid(points: &[[f64; 2]], rule: CentroidRule) -> Option<[f64; 2]> {
    if let CentroidRule::Anchor(a) = rule {
        if let Some(p) = points
            .get(a)
            .filter(|p| p[0].is_finite() && p[1].is_finite())
        {
            return Some(*p);
        }
    }
    let vis: Vec<&[f64; 2]> = points
        .iter()
        .filter(|p| p[0].is_finite() && p[1].is_finite())
        .collect();
    if vis.is_empty() {
        return None;
    }
    let n = vis.len() as f64;
    Some([
        vis.iter().map(|p| p[0]).sum::<f64>() / n,
        vis.iter().map(|p| p[1]).sum::<f64>() / n,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confmap_peaks_at_the_point_with_sleap_nn_spread() {
        let mut m = Vec::new();
        confmaps(&mut m, &[[8.0, 4.0], [f64::NAN, f64::NAN]], 16, 16, 1.5, 2);
        assert_eq!(m.len(), 2 * 8 * 8);
        // Grid cell (x=4, y=2) sits on (8, 4).
        assert_eq!(m[2 * 8 + 4], 1.0);
        // One cell right: 2 px away with sigma 1.5·2 = 3 px.
        let want = (-(2.0f64 * 2.0) / (2.0 * 9.0)).exp() as f32;
        assert!((m[2 * 8 + 5] - want).abs() < 1e-7);
        assert!(
            m[64..].iter().all(|&v| v == 0.0),
            "a NaN point gives an empty map"
        );
    }

    #[test]
    fn multi_confmaps_take_the_maximum() {
        let mut m = Vec::new();
        multi_confmaps(
            &mut m,
            &[vec![[0.0, 0.0]], vec![[6.0, 0.0]]],
            1,
            8,
            8,
            1.0,
            1,
        );
        assert_eq!(m[0], 1.0);
        assert_eq!(m[6], 1.0);
    }

    #[test]
    fn centroid_uses_the_anchor_then_the_mean() {
        let pts = [[0.0, 0.0], [4.0, 2.0], [f64::NAN, f64::NAN]];
        assert_eq!(centroid(&pts, CentroidRule::Anchor(1)), Some([4.0, 2.0]));
        assert_eq!(centroid(&pts, CentroidRule::Anchor(2)), Some([2.0, 1.0]));
        assert_eq!(centroid(&pts, CentroidRule::CenterOfMass), Some([2.0, 1.0]));
        assert_eq!(
            centroid(&[[f64::NAN, 0.0]], CentroidRule::CenterOfMass),
            None
        );
    }
}
