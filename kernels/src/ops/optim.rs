//! Optimizer, gradient clipping and the whole-buffer checks and scalings around them, one pass
//! over the flat parameter/gradient buffers. (Dynamic loss scaling, which decides what to do
//! with these, is [`crate::optim::LossScaler`].)

use std::ops::Range;

use rayon::prelude::*;

use crate::Float;

const CHUNK: usize = 1 << 14;

/// torch.optim.Adam / AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// true: AdamW (decoupled decay p ← p·(1 − lr·wd)); false: Adam (L2: g ← g + wd·p).
    pub decoupled: bool,
}

impl AdamConfig {
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            decoupled: true,
        }
    }
}

/// One Adam(W) step `t` (1-based), PyTorch's formulation:
///   AdamW: p ← p·(1 − lr·wd)          Adam: g ← g + wd·p
///   m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²
///   p ← p − (lr/(1−β₁ᵗ)) · m / (√v/√(1−β₂ᵗ) + ε)
///
/// `decay_free` lists the parameter ranges that take no weight decay (sorted, not
/// overlapping): torch's second parameter group with `weight_decay=0` (biases and LayerNorm
/// parameters in scModelForge).
pub fn adam_step<T: Float>(
    cfg: &AdamConfig,
    t: u64,
    params: &mut [T],
    grads: &[T],
    m: &mut [T],
    v: &mut [T],
    decay_free: &[Range<usize>],
) {
    let n = params.len();
    assert!(grads.len() == n && m.len() == n && v.len() == n);
    let mut at = 0;
    for r in decay_free {
        assert!(
            at <= r.start && r.start <= r.end && r.end <= n,
            "decay_free must be sorted"
        );
        at = r.end;
    }
    adam_step_in(cfg, t, 0..n, params, grads, m, v, 0, decay_free);
}

/// [`adam_step`] over `range` of the parameters only; everything outside it is left as it is
/// (a frozen parameter group). The moments of `range` start at `moments_at` in `m` and `v`:
/// `range.start` when they are laid out like the parameters, elsewhere when they hold only the
/// groups that train (LoRA). `decay_free` is as for [`adam_step`] (parameter indices over the
/// whole buffer) and is clipped to `range`.
#[allow(clippy::too_many_arguments)]
pub fn adam_step_in<T: Float>(
    cfg: &AdamConfig,
    t: u64,
    range: Range<usize>,
    params: &mut [T],
    grads: &[T],
    m: &mut [T],
    v: &mut [T],
    moments_at: usize,
    decay_free: &[Range<usize>],
) {
    let n = params.len();
    let mend = moments_at + range.len();
    assert!(grads.len() == n && range.end <= n && m.len() >= mend && v.len() >= mend);
    let no_decay = AdamConfig {
        weight_decay: 0.0,
        ..*cfg
    };
    // A stretch [lo, hi) of the parameters and its moments.
    let mut segment = |c: &AdamConfig, lo: usize, hi: usize| {
        let mo = moments_at + (lo - range.start);
        adam_segment(
            c,
            t,
            &mut params[lo..hi],
            &grads[lo..hi],
            &mut m[mo..mo + (hi - lo)],
            &mut v[mo..mo + (hi - lo)],
        );
    };
    let mut at = range.start;
    for r in decay_free {
        let (lo, hi) = (r.start.max(range.start), r.end.min(range.end));
        if lo >= hi {
            continue;
        }
        segment(cfg, at, lo);
        segment(&no_decay, lo, hi);
        at = hi;
    }
    segment(cfg, at, range.end);
}

fn adam_segment<T: Float>(
    cfg: &AdamConfig,
    t: u64,
    params: &mut [T],
    grads: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    if params.is_empty() {
        return;
    }
    let ti = t.max(1) as i32;
    let bc1 = 1.0 - cfg.beta1.powi(ti);
    let bc2 = 1.0 - cfg.beta2.powi(ti);
    let step = T::from_f64(cfg.lr / bc1);
    let bc2_sqrt = T::from_f64(bc2.sqrt());
    let (b1, b2) = (T::from_f64(cfg.beta1), T::from_f64(cfg.beta2));
    let (ob1, ob2) = (T::from_f64(1.0 - cfg.beta1), T::from_f64(1.0 - cfg.beta2));
    let k = AdamCoef {
        step,
        bc2_sqrt,
        b1,
        b2,
        ob1,
        ob2,
        eps: T::from_f64(cfg.eps),
        wd: T::from_f64(cfg.weight_decay),
        decay: T::from_f64(1.0 - cfg.lr * cfg.weight_decay),
        decoupled: cfg.decoupled,
    };
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| adam_chunk(&k, p, g, m, v));
}

/// Adam's per-step constants, in the parameters' type.
struct AdamCoef<T> {
    step: T,
    bc2_sqrt: T,
    b1: T,
    b2: T,
    ob1: T,
    ob2: T,
    eps: T,
    wd: T,
    decay: T,
    decoupled: bool,
}

crate::fastmath::dispatch! {
    /// One chunk of Adam, in the widest vector build this CPU runs (the same bits, with 16 or 8
    /// square roots and divisions per instruction instead of 4).
    fn adam_chunk<T: Float>(k: &AdamCoef<T>, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) -> () {
        let n = p.len();
        // Equal lengths up front, so the loop has no bounds checks and vectorizes.
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let mut gi = g[i];
            if k.decoupled {
                p[i] *= k.decay;
            } else {
                gi += k.wd * p[i];
            }
            m[i] = k.b1 * m[i] + k.ob1 * gi;
            v[i] = k.b2 * v[i] + k.ob2 * gi * gi;
            p[i] -= k.step * m[i] / (v[i].sqrt() / k.bc2_sqrt + k.eps);
        }
    }
}

/// ‖g‖₂ over the whole gradient buffer, accumulated in f64.
pub fn global_norm<T: Float>(grads: &[T]) -> f64 {
    super::in_order(grads.par_chunks(CHUNK).map(sum_of_squares))
        .sum::<f64>()
        .sqrt()
}

/// Partial sums of [`sum_of_squares`], interleaved so its adds do not wait on each other.
const SQUARE_LANES: usize = 32;

crate::fastmath::dispatch! {
    /// Σ x² of one chunk in f64, in [`SQUARE_LANES`] interleaved partial sums (then added in
    /// order), in the widest vector build this CPU runs (the same order, so the same bits).
    fn sum_of_squares<T: Float>(xs: &[T]) -> f64 {
        let mut acc = [0.0f64; SQUARE_LANES];
        let mut blocks = xs.chunks_exact(SQUARE_LANES);
        for b in &mut blocks {
            for (a, &x) in acc.iter_mut().zip(b) {
                let x = x.to_f64();
                *a += x * x;
            }
        }
        let rest: f64 = blocks
            .remainder()
            .iter()
            .map(|&x| x.to_f64() * x.to_f64())
            .sum();
        acc.iter().sum::<f64>() + rest
    }
}

/// torch.nn.utils.clip_grad_norm_: with n = ‖g‖₂, g ← g·min(1, max_norm/(n + 1e-6)).
/// Returns n (before clipping).
pub fn clip_grad_norm<T: Float>(grads: &mut [T], max_norm: f64) -> f64 {
    let n = global_norm(grads);
    let coef = max_norm / (n + 1e-6);
    if coef < 1.0 {
        scale(grads, coef);
    }
    n
}

/// x ← x·f with f = `factor` rounded to T once (for f32: `factor as f32`), elementwise.
pub fn scale<T: Float>(x: &mut [T], factor: f64) {
    let f = T::from_f64(factor);
    x.par_chunks_mut(CHUNK)
        .for_each(|ch| ch.iter_mut().for_each(|v| *v *= f));
}

/// Whether every element is finite (no inf, no NaN).
pub fn all_finite<T: Float>(x: &[T]) -> bool {
    x.par_chunks(CHUNK).all(|c| c.iter().all(|v| v.is_finite()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_step_in_equals_the_whole_step_inside_its_range_and_leaves_the_rest() {
        let n = 40;
        let p0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let cfg = AdamConfig::adamw(0.1, 0.5);
        let decay_free = [3..7, 18..25];
        let (mut pa, mut ma, mut va) = (p0.clone(), vec![0.2f32; n], vec![0.3f32; n]);
        adam_step(&cfg, 3, &mut pa, &g, &mut ma, &mut va, &decay_free);
        let (mut pb, mut mb, mut vb) = (p0.clone(), vec![0.2f32; n], vec![0.3f32; n]);
        adam_step_in(
            &cfg,
            3,
            5..21,
            &mut pb,
            &g,
            &mut mb,
            &mut vb,
            5,
            &decay_free,
        );
        for i in 0..n {
            if (5..21).contains(&i) {
                assert_eq!((pa[i], ma[i], va[i]), (pb[i], mb[i], vb[i]), "{i}");
            } else {
                assert_eq!((pb[i], mb[i], vb[i]), (p0[i], 0.2, 0.3), "{i}");
            }
        }
        // Compact moments (only what trains, as under LoRA): the same step, the moments of
        // 5..21 at 2..18 of a buffer of 20.
        let (mut pc, mut mc, mut vc) = (p0.clone(), vec![0.2f32; 20], vec![0.3f32; 20]);
        adam_step_in(
            &cfg,
            3,
            5..21,
            &mut pc,
            &g,
            &mut mc,
            &mut vc,
            2,
            &decay_free,
        );
        assert_eq!(pc, pb);
        assert_eq!(&mc[2..18], &mb[5..21]);
        assert_eq!(&vc[2..18], &vb[5..21]);
        assert!(mc[..2].iter().chain(&mc[18..]).all(|&x| x == 0.2));
    }

    /// Each wider build of the Adam loop and of the sum of squares that this CPU runs gives
    /// the baseline build's bits (f32, both weight-decay styles, a partial vector).
    #[test]
    fn the_wide_builds_of_adam_and_the_norm_give_the_baseline_bits() {
        let n = 1003;
        let p0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 1e-3).collect();
        let m0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.07).sin() * 1e-3).collect();
        let v0: Vec<f32> = (0..n)
            .map(|i| (i as f32 * 0.05).cos().powi(2) * 1e-6)
            .collect();
        type Build = fn(&AdamCoef<f32>, &mut [f32], &[f32], &mut [f32], &mut [f32]);
        type SumBuild = fn(&[f32]) -> f64;
        let mut builds: Vec<(&str, Build, SumBuild)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use crate::fastmath::{has_avx2, has_avx512};
            // SAFETY (all four): only listed when the CPU supports the build's features.
            if has_avx512() {
                builds.push((
                    "avx512",
                    |k, p, g, m, v| unsafe { adam_chunk::avx512(k, p, g, m, v) },
                    |x| unsafe { sum_of_squares::avx512(x) },
                ));
            }
            if has_avx2() {
                builds.push((
                    "avx2",
                    |k, p, g, m, v| unsafe { adam_chunk::avx2(k, p, g, m, v) },
                    |x| unsafe { sum_of_squares::avx2(x) },
                ));
            }
        }
        if builds.is_empty() {
            eprintln!("no AVX2 or AVX-512 on this CPU: only the baseline build runs here");
        }
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (name, adam, squares) in builds {
            assert_eq!(
                squares(&g).to_bits(),
                sum_of_squares::scalar(&g).to_bits(),
                "{name}"
            );
            for decoupled in [true, false] {
                let k = AdamCoef {
                    step: 1e-3f32 / 0.271,
                    bc2_sqrt: 0.0447,
                    b1: 0.9,
                    b2: 0.999,
                    ob1: 0.1,
                    ob2: 0.001,
                    eps: 1e-8,
                    wd: 0.01,
                    decay: 1.0 - 1e-5,
                    decoupled,
                };
                let (mut pa, mut ma, mut va) = (p0.clone(), m0.clone(), v0.clone());
                adam(&k, &mut pa, &g, &mut ma, &mut va);
                let (mut pb, mut mb, mut vb) = (p0.clone(), m0.clone(), v0.clone());
                adam_chunk::scalar(&k, &mut pb, &g, &mut mb, &mut vb);
                assert_eq!(
                    bits(&pa),
                    bits(&pb),
                    "{name}: params, decoupled {decoupled}"
                );
                assert_eq!(bits(&ma), bits(&mb), "{name}");
                assert_eq!(bits(&va), bits(&vb), "{name}");
                assert_ne!(pa, p0, "the step moved the parameters");
            }
        }
    }

    /// The norm over several chunks, each with a tail shorter than the partial sums' width,
    /// against one sequential f64 sum.
    #[test]
    fn global_norm_matches_a_sequential_f64_sum() {
        for n in [1, 31, 33, 2 * CHUNK + 77] {
            let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() + 0.5).collect();
            let want = g.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let got = global_norm(&g);
            assert!((got - want).abs() <= 1e-12 * want, "n {n}: {got} vs {want}");
        }
    }

    #[test]
    fn adamw_matches_hand_computed_steps() {
        // Two steps on two parameters, computed by hand from the formulas of torch.optim.AdamW.
        let cfg = AdamConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decoupled: true,
        };
        let mut p = vec![1.0f64, -2.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        adam_step(&cfg, 1, &mut p, &[0.5, -1.0], &mut m, &mut v, &[]);
        // Step 1: p·(1−0.001), then m̂ = g, v̂ = g², update = lr·g/(|g|+eps) ≈ ±0.1.
        let e0 = 1.0 * 0.999 - 0.1 * 0.5 / (0.5 + 1e-8);
        let e1 = -2.0 * 0.999 + 0.1 * 1.0 / (1.0 + 1e-8);
        assert!((p[0] - e0).abs() < 1e-12, "{} {}", p[0], e0);
        assert!((p[1] - e1).abs() < 1e-12);
        adam_step(&cfg, 2, &mut p, &[0.25, 0.5], &mut m, &mut v, &[]);
        let m0 = 0.9 * 0.05 + 0.1 * 0.25;
        let v0 = 0.999 * 0.001 * 0.25 + 0.001 * 0.0625;
        let e0b = e0 * 0.999
            - (0.1 / (1.0 - 0.81)) * m0 / (v0.sqrt() / (1.0f64 - 0.998001).sqrt() + 1e-8);
        assert!((p[0] - e0b).abs() < 1e-12, "{} {}", p[0], e0b);
        // By hand: 0.898101 − (0.1/0.19)·0.07/(√0.00031225/√0.001999) = 0.804885.
        assert!((e0b - 0.804885).abs() < 1e-5, "{e0b}");
    }

    #[test]
    fn decay_free_ranges_take_no_weight_decay_and_the_rest_does() {
        // Zero gradients: AdamW's update is the decay alone, p·(1 − lr·wd).
        let cfg = AdamConfig::adamw(0.1, 0.5);
        let n = 40_000; // several rayon chunks, ranges across chunk boundaries
        let mut p = vec![1.0f64; n];
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let free = [3..5, 16_380..16_390, 39_999..40_000];
        adam_step(&cfg, 1, &mut p, &vec![0.0; n], &mut m, &mut v, &free);
        for (i, &x) in p.iter().enumerate() {
            let expect = if free.iter().any(|r| r.contains(&i)) {
                1.0
            } else {
                0.95
            };
            assert!(
                (x - expect).abs() < 1e-12,
                "element {i}: {x}, expected {expect}"
            );
        }
    }

    #[test]
    fn adam_l2_differs_from_adamw() {
        let mut cfg = AdamConfig::adamw(0.1, 0.5);
        cfg.decoupled = false;
        let mut p = vec![1.0f64];
        let (mut m, mut v) = (vec![0.0], vec![0.0]);
        adam_step(&cfg, 1, &mut p, &[0.0], &mut m, &mut v, &[]);
        // g = 0 + 0.5·1 = 0.5 → step 1 moves by lr·sign(g) = 0.1.
        assert!((p[0] - 0.9).abs() < 1e-7, "{}", p[0]);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![3.0f32, 4.0];
        let n = clip_grad_norm(&mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-6);
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
        let mut g = vec![0.3f32, 0.4];
        clip_grad_norm(&mut g, 1.0);
        assert_eq!(g, vec![0.3, 0.4]);
    }
}
