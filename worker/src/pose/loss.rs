//! The pose loss, as sleap-nn computes it: the mean squared error over every confidence-map
//! value, plus — with `online_hard_keypoint_mining.online_mining` — its online hard keypoint
//! mining term (`compute_ohkm_loss`): per node channel, the squared error summed over the batch
//! and the map, `l_c`; the channels with `l_c / min(l) ≥ hard_to_easy_ratio` are hard (at least
//! `min_hard_keypoints`, at most `max_hard_keypoints`, the largest `l_c` first); the term is
//! `loss_scale · Σ_hard l_c / (batch · height · width · k)` for the `k` hard channels.

use configs::sleap::OhkmConfig;

/// Mean loss of maps `y` against targets `t`, both [n, c, hw]; with `dy`, writes its gradient.
pub fn pose_loss(
    y: &[f32],
    t: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    ohkm: Option<&OhkmConfig>,
    dy: Option<&mut [f32]>,
) -> f64 {
    let count = (n * c * hw) as f64;
    let mut per_channel = vec![0.0f64; c];
    let mut total = 0.0f64;
    for (i, (&a, &b)) in y.iter().zip(t).enumerate() {
        let d = (a - b) as f64;
        per_channel[(i / hw) % c] += d * d;
        total += d * d;
    }
    let hard = ohkm
        .map(|o| hard_channels(&per_channel, o))
        .unwrap_or_default();
    let mut loss = total / count;
    // Gradient scale per channel: 2/N for the MSE, plus 2·scale/(n·hw·k) for a hard channel.
    let mut scale = vec![2.0 / count; c];
    if let Some(o) = ohkm.filter(|_| !hard.is_empty()) {
        let denom = (n * hw * hard.len()) as f64;
        loss += o.loss_scale * hard.iter().map(|&h| per_channel[h]).sum::<f64>() / denom;
        for &h in &hard {
            scale[h] += 2.0 * o.loss_scale / denom;
        }
    }
    if let Some(dy) = dy {
        for (i, ((g, &a), &b)) in dy.iter_mut().zip(y).zip(t).enumerate() {
            *g = (scale[(i / hw) % c] * (a - b) as f64) as f32;
        }
    }
    loss
}

/// The hard channels, largest loss first (ties by channel).
fn hard_channels(l: &[f64], o: &OhkmConfig) -> Vec<usize> {
    let best = l.iter().cloned().fold(f64::INFINITY, f64::min);
    // As torch divides: x/0 is inf for x > 0 (hard), NaN for 0/0 (not hard).
    let n_hard = l
        .iter()
        .filter(|&&v| v / best >= o.hard_to_easy_ratio)
        .count();
    let max = o.max_hard_keypoints.map_or(l.len(), |m| m.min(l.len()));
    let k = n_hard.max(o.min_hard_keypoints).min(max);
    let mut order: Vec<usize> = (0..l.len()).collect();
    order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ohkm(ratio: f64, min: usize, scale: f64) -> OhkmConfig {
        OhkmConfig {
            online_mining: true,
            hard_to_easy_ratio: ratio,
            min_hard_keypoints: min,
            max_hard_keypoints: None,
            loss_scale: scale,
        }
    }

    #[test]
    fn without_mining_it_is_the_mean_squared_error() {
        let (y, t) = ([1.0f32, 2.0, 3.0, 4.0], [0.0f32, 2.0, 1.0, 4.0]);
        assert_eq!(pose_loss(&y, &t, 1, 2, 2, None, None), (1.0 + 4.0) / 4.0);
    }

    #[test]
    fn mining_adds_the_hard_channels_as_sleap_nn_does() {
        // Channel losses 1, 4, 16 (n = 1, hw = 1): min 1, ratios 1, 4, 16 -> two hard (>= 2).
        let (y, t) = ([1.0f32, 2.0, 4.0], [0.0f32; 3]);
        let got = pose_loss(&y, &t, 1, 3, 1, Some(&ohkm(2.0, 1, 5.0)), None);
        let mse = 21.0 / 3.0;
        let term = 5.0 * (4.0 + 16.0) / 2.0;
        assert!((got - (mse + term)).abs() < 1e-12, "{got}");
        // min_hard_keypoints raises k to 3.
        let got = pose_loss(&y, &t, 1, 3, 1, Some(&ohkm(2.0, 3, 5.0)), None);
        assert!((got - (mse + 5.0 * 21.0 / 3.0)).abs() < 1e-12, "{got}");
    }

    /// Values from sleap-nn 0.3.5's `compute_ohkm_loss` and `F.mse_loss` on the same [2, 3, 2, 2]
    /// tensors (computed once with its PyPI package).
    #[test]
    fn matches_sleap_nn_on_a_batch() {
        let y: Vec<f32> = (0..24).map(|i| ((i * 37 % 11) as f32) / 10.0).collect();
        let t: Vec<f32> = (0..24).map(|i| ((i * 13 % 7) as f32) / 10.0).collect();
        let mse = pose_loss(&y, &t, 2, 3, 4, None, None);
        assert!((mse - 0.16166666666666665).abs() < 1e-6, "{mse}");
        let with = pose_loss(&y, &t, 2, 3, 4, Some(&ohkm(1.5, 1, 5.0)), None);
        assert!((with - mse - 0.9718749999999999).abs() < 1e-6, "{with}");
        let mut capped = ohkm(2.0, 2, 3.0);
        capped.max_hard_keypoints = Some(2);
        let with = pose_loss(&y, &t, 2, 3, 4, Some(&capped), None);
        assert!((with - mse - 0.583125).abs() < 1e-6, "{with}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (n, c, hw) = (2, 3, 4);
        let y: Vec<f32> = (0..n * c * hw)
            .map(|i| ((i * 37 % 11) as f32) / 10.0)
            .collect();
        let t: Vec<f32> = (0..n * c * hw)
            .map(|i| ((i * 13 % 7) as f32) / 10.0)
            .collect();
        let o = ohkm(1.5, 1, 5.0);
        let mut dy = vec![0.0f32; y.len()];
        pose_loss(&y, &t, n, c, hw, Some(&o), Some(&mut dy));
        for i in 0..y.len() {
            let h = 1e-3f32;
            let (mut p, mut m) = (y.clone(), y.clone());
            p[i] += h;
            m[i] -= h;
            let num = (pose_loss(&p, &t, n, c, hw, Some(&o), None)
                - pose_loss(&m, &t, n, c, hw, Some(&o), None))
                / (2.0 * h as f64);
            assert!(
                (num - dy[i] as f64).abs() < 1e-3 * num.abs().max(1.0),
                "[{i}] {num} vs {}",
                dy[i]
            );
        }
    }
}
