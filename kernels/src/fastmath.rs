//! Vectorizable f32 exp and erf for the softmax and GELU loops. libm's scalar calls were the
//! largest non-GEMM cost of an encoder layer; these are branch-free polynomials that LLVM turns
//! into SIMD code, with an AVX2+FMA build of each loop picked at run time.
//!
//! Accuracy: exp within 2 ulp of the correctly rounded value for x ≥ −87 (and exactly 0 below,
//! so −∞ masks give 0); erf within 6e-7 absolute (Abramowitz–Stegun 7.1.26, 1.5e-7, plus f32 rounding).

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer

/// e^x for f32 (Cephes-style range reduction x = n·ln2 + r, degree-7 polynomial in r).
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * (r * r) + r + 1.0;
    let e = (t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32 + 127) << 23;
    let res = y * f32::from_bits(e as u32);
    if x < -87.0 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        res
    }
}

/// erf for f32: A&S 7.1.26 form erf(x) = 1 − poly(t)·e^{−x²}, t = 1/(1 + p|x|).
#[inline(always)]
pub fn erff(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let y = 1.0 - poly * expf(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

macro_rules! dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn imp($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                // Same scalar code, compiled for wider vectors: the results are bit-identical
                // (no reassociation or contraction without fast-math), only faster.
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

/// Sums with 8 independent accumulators so the loop vectorizes.
#[inline(always)]
fn sum8(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ch = xs.chunks_exact(8);
    for c in &mut ch {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f32>() + ch.remainder().iter().sum::<f32>()
}

dispatch! {
    /// xs[i] ← e^{xs[i]·scale − m}; returns Σ xs[i].
    pub fn exp_scaled_sum(xs: &mut [f32], scale: f32, m: f32) -> f32 {
        for x in xs.iter_mut() {
            *x = expf(*x * scale - m);
        }
        sum8(xs)
    }
}

dispatch! {
    /// max of xs (−∞ for an empty slice).
    pub fn max(xs: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; 8];
        let mut ch = xs.chunks_exact(8);
        for c in &mut ch {
            for k in 0..8 {
                acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
            }
        }
        let m = ch.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        acc.iter().fold(m, |a, &b| a.max(b))
    }
}

dispatch! {
    /// y = ½·x·(1 + erf(x/√2)).
    pub fn gelu_fwd(y: &mut [f32], x: &[f32]) -> () {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + erff(v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

dispatch! {
    /// dx = dy·(½(1 + erf(x/√2)) + x·e^{−x²/2}/√(2π)).
    pub fn gelu_bwd(dx: &mut [f32], dy: &[f32], x: &[f32]) -> () {
        for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
            let cdf = 0.5 * (1.0 + erff(v * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = 0.398_942_3 * expf(-0.5 * v * v);
            *o = g * (cdf + v * pdf);
        }
    }
}

dispatch! {
    /// Attention backward's score gradient on one row: ds[j] ← p[j]·(ds[j] − d)·scale, where
    /// `ds` holds dP' on entry.
    pub fn softmax_grad_row(ds: &mut [f32], p: &[f32], d: f32, scale: f32) -> () {
        for (x, &pv) in ds.iter_mut().zip(p) {
            *x = pv * (*x - d) * scale;
        }
    }
}

dispatch! {
    /// [`softmax_grad_row`] under attention dropout: dP'·keep/(1−p) in place of dP', the keep
    /// mask read off the dropped probabilities `pd` (zero exactly where a key was dropped or P
    /// is zero, and where P is zero the product is zero either way).
    pub fn softmax_grad_row_dropped(ds: &mut [f32], p: &[f32], pd: &[f32], d: f32, drop_scale: f32, scale: f32) -> () {
        for ((x, &pv), &pdv) in ds.iter_mut().zip(p).zip(pd) {
            let kept = if pdv != 0.0 { *x * drop_scale } else { 0.0 };
            *x = pv * (kept - d) * scale;
        }
    }
}

dispatch! {
    /// Dropout on a run of elements: xs[j] ← keep(base + j) ? xs[j]·scale : 0.
    pub fn dropout_apply(xs: &mut [f32], stream: u64, base: u64, thr: u32, scale: f32) -> () {
        for (j, x) in xs.iter_mut().enumerate() {
            let keep = crate::rng::RngKey::bits_from(stream, base + j as u64) >= thr;
            *x = if keep { *x * scale } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expf_accuracy_and_specials() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((expf(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "max relative error {worst:e}");
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(-100.0), 0.0);
        assert_eq!(expf(0.0), 1.0);
        assert!(expf(f32::NAN).is_nan());
        let mut v = vec![
            0.0f32,
            f32::NEG_INFINITY,
            1.0,
            -1.0,
            2.0,
            0.5,
            -3.0,
            0.25,
            4.0,
        ];
        assert_eq!(max(&v), 4.0);
        let s = exp_scaled_sum(&mut v, 1.0, 1.0);
        let want: f64 = [
            0.0f64,
            f64::NEG_INFINITY,
            1.0,
            -1.0,
            2.0,
            0.5,
            -3.0,
            0.25,
            4.0,
        ]
        .iter()
        .map(|x| (x - 1.0).exp())
        .sum();
        assert!((s as f64 - want).abs() < 1e-5 * want);
        assert_eq!(v[1], 0.0);
    }

    #[test]
    fn erff_accuracy() {
        let mut worst = 0.0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            worst = worst.max((erff(x) as f64 - libm::erf(x as f64)).abs());
            x += 0.001;
        }
        assert!(worst < 6e-7, "max abs error {worst:e}");
        let xs: Vec<f32> = (0..100).map(|i| i as f32 * 0.1 - 5.0).collect();
        let mut y = vec![0.0; 100];
        gelu_fwd(&mut y, &xs);
        for (a, &b) in y.iter().zip(&xs) {
            let want = 0.5 * b as f64 * (1.0 + libm::erf(b as f64 / 2f64.sqrt()));
            assert!((*a as f64 - want).abs() < 1e-6, "{b}: {a} vs {want}");
        }
    }
}
