//! Vectorizable f32 exp and erf for the softmax and GELU loops. libm's scalar calls were the
//! largest non-GEMM cost of an encoder layer; these are branch-free polynomials that LLVM turns
//! into SIMD code, with an AVX2+FMA build of each loop picked at run time. The softmax's two
//! row passes (`max`, `exp_scaled_sum`, most of attention's non-GEMM time) and GELU's forward
//! and backward are also written out in AVX-512 (FMA, `vscalefps`) where the CPU has it: the
//! compiled loops were latency-bound or without FMA.
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

/// Whether this CPU runs the AVX-512 builds of [`dispatch!`] functions (checked once, then
/// cached by `is_x86_feature_detected`).
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("fma")
}

/// Whether this CPU runs the AVX2 + FMA builds of [`dispatch!`] functions.
#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// A function whose scalar body is compiled three times — as is, with AVX2 + FMA and with
/// AVX-512 enabled — and run in the widest build this CPU supports. The builds are the same
/// arithmetic in the same order (Rust neither contracts nor reassociates without fast-math),
/// so they give the same bits; the wider ones vectorize 8 or 16 lanes wide. They stand in a
/// module of the function's name (`f::scalar`, `f::avx2`, `f::avx512`) for tests to compare.
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident $(<$($g:ident: $b:path),*>)?
        ($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$m])*
        $vis fn $name $(<$($g: $b),*>)? ($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                if $crate::fastmath::has_avx512() {
                    // SAFETY: the CPU supports the features `avx512` was compiled for.
                    return unsafe { $name::avx512($($arg),*) };
                }
                if $crate::fastmath::has_avx2() {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    return unsafe { $name::avx2($($arg),*) };
                }
            }
            $name::scalar($($arg),*)
        }

        #[allow(dead_code, clippy::unused_unit)]
        $vis mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[inline(always)]
            pub fn scalar $(<$($g: $b),*>)? ($($arg: $ty),*) -> $ret $body
            /// # Safety
            /// The CPU must support AVX-512 F/BW/VL/DQ and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
            pub unsafe fn avx512 $(<$($g: $b),*>)? ($($arg: $ty),*) -> $ret {
                scalar($($arg),*)
            }
            /// # Safety
            /// The CPU must support AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            pub unsafe fn avx2 $(<$($g: $b),*>)? ($($arg: $ty),*) -> $ret {
                scalar($($arg),*)
            }
        }
    };
}
pub(crate) use dispatch;

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

/// xs[i] ← e^{xs[i]·scale − m}; returns Σ xs[i]. The softmax's inner loop (attention's scores,
/// the loss): on AVX-512 one pass with FMA and `vscalefps` ([`exp_scaled_sum_avx512`]), else the
/// portable loop. The two agree within the exp's 2 ulp, not to the bit.
pub fn exp_scaled_sum(xs: &mut [f32], scale: f32, m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F.
        return unsafe { exp_scaled_sum_avx512(xs, scale, m) };
    }
    exp_scaled_sum_portable(xs, scale, m)
}

dispatch! {
    /// [`exp_scaled_sum`] as scalar code that LLVM vectorizes (no FMA contraction).
    pub fn exp_scaled_sum_portable(xs: &mut [f32], scale: f32, m: f32) -> f32 {
        for x in xs.iter_mut() {
            *x = expf(*x * scale - m);
        }
        sum8(xs)
    }
}

/// e^y on 16 lanes: [`expf`]'s range reduction and polynomial evaluated with FMAs, 2ⁿ applied by
/// `vscalefps`; exactly 0 below −87 (as `expf`), NaN stays NaN (max/min return their second
/// operand when one is NaN, and the compare is false).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp16(y: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    const C: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    let lo = _mm512_set1_ps(-87.0);
    let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(y, lo);
    let yc = _mm512_min_ps(_mm512_set1_ps(88.0), _mm512_max_ps(lo, y));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(yc, _mm512_set1_ps(LOG2E)),
    );
    let r = _mm512_fmadd_ps(
        n,
        _mm512_set1_ps(-LN2_LO),
        _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), yc),
    );
    let mut q = _mm512_fmadd_ps(_mm512_set1_ps(C[0]), r, _mm512_set1_ps(C[1]));
    for &cj in &C[2..] {
        q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(cj));
    }
    let e = _mm512_add_ps(
        _mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(e, n))
}

/// erf on 16 lanes: [`erff`]'s formula with FMAs and [`exp16`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn erf16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let one = _mm512_set1_ps(1.0);
    let a = _mm512_abs_ps(x);
    let t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.327_591_1), a, one));
    let mut poly = _mm512_fmadd_ps(_mm512_set1_ps(1.061_405_4), t, _mm512_set1_ps(-1.453_152_1));
    for c in [1.421_413_8f32, -0.284_496_74, 0.254_829_6] {
        poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(c));
    }
    poly = _mm512_mul_ps(poly, t);
    let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
    let y = _mm512_fnmadd_ps(poly, e, one);
    let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
    _mm512_mask_sub_ps(y, neg, _mm512_setzero_ps(), y)
}

#[cfg(target_arch = "x86_64")]
use crate::bf16gemm::lanes16 as lanes;

/// [`exp_scaled_sum`] on AVX-512: [`exp16`] with the sum kept in 16 lanes in the same pass (the
/// portable loop is ~40 instructions per 16 values and a second pass for the sum; this is ~20
/// and one pass).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_scaled_sum_avx512(xs: &mut [f32], scale: f32, m: f32) -> f32 {
    use std::arch::x86_64::*;
    let len = xs.len();
    let p = xs.as_mut_ptr();
    let (vs, vm) = (_mm512_set1_ps(scale), _mm512_set1_ps(-m));
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < len {
        let k = lanes(len - i);
        // SAFETY: lanes past the end are masked off for the load and the store.
        let x = _mm512_maskz_loadu_ps(k, p.add(i));
        let e = _mm512_maskz_mov_ps(k, exp16(_mm512_fmadd_ps(x, vs, vm)));
        _mm512_mask_storeu_ps(p.add(i), k, e);
        acc = _mm512_add_ps(acc, e);
        i += 16;
    }
    _mm512_reduce_add_ps(acc)
}

/// y = ½·x·(1 + erf(x/√2)). On AVX-512 [`gelu_fwd_avx512`], else the portable loop; they agree
/// within erf's error.
pub fn gelu_fwd(y: &mut [f32], x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F.
        return unsafe { gelu_fwd_avx512(y, x) };
    }
    gelu_fwd_portable(y, x)
}

/// dx = dy·(½(1 + erf(x/√2)) + x·e^{−x²/2}/√(2π)). On AVX-512 [`gelu_bwd_avx512`].
pub fn gelu_bwd(dx: &mut [f32], dy: &[f32], x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F.
        return unsafe { gelu_bwd_avx512(dx, dy, x) };
    }
    gelu_bwd_portable(dx, dy, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_fwd_avx512(y: &mut [f32], x: &[f32]) {
    use std::arch::x86_64::*;
    let len = y.len().min(x.len());
    let half = _mm512_set1_ps(0.5);
    let mut i = 0;
    while i < len {
        let k = lanes(len - i);
        // SAFETY: lanes past the end are masked off.
        let v = _mm512_maskz_loadu_ps(k, x.as_ptr().add(i));
        let e = erf16(_mm512_mul_ps(
            v,
            _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
        ));
        let hv = _mm512_mul_ps(half, v);
        _mm512_mask_storeu_ps(y.as_mut_ptr().add(i), k, _mm512_fmadd_ps(hv, e, hv));
        i += 16;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_bwd_avx512(dx: &mut [f32], dy: &[f32], x: &[f32]) {
    use std::arch::x86_64::*;
    let len = dx.len().min(dy.len()).min(x.len());
    let half = _mm512_set1_ps(0.5);
    let mut i = 0;
    while i < len {
        let k = lanes(len - i);
        // SAFETY: lanes past the end are masked off.
        let v = _mm512_maskz_loadu_ps(k, x.as_ptr().add(i));
        let g = _mm512_maskz_loadu_ps(k, dy.as_ptr().add(i));
        let e = erf16(_mm512_mul_ps(
            v,
            _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
        ));
        let cdf = _mm512_fmadd_ps(half, e, half);
        let pdf = _mm512_mul_ps(
            _mm512_set1_ps(0.398_942_3),
            exp16(_mm512_mul_ps(_mm512_set1_ps(-0.5), _mm512_mul_ps(v, v))),
        );
        let d = _mm512_mul_ps(g, _mm512_fmadd_ps(v, pdf, cdf));
        _mm512_mask_storeu_ps(dx.as_mut_ptr().add(i), k, d);
        i += 16;
    }
}

/// max of xs (−∞ for an empty slice; NaN entries are passed over). On AVX-512 four 16-lane
/// running maxima ([`max_avx512`]): the portable loop's single 8-lane chain waits on each
/// compare-and-select in turn (it was ~1/5 of attention's forward at T = 2048).
pub fn max(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F.
        return unsafe { max_avx512(xs) };
    }
    max_portable(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_avx512(xs: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let (len, p) = (xs.len(), xs.as_ptr());
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut acc = [ninf; 4];
    let mut i = 0;
    while i + 64 <= len {
        for (j, a) in acc.iter_mut().enumerate() {
            // vmaxps returns its second operand when one is NaN: a NaN entry leaves acc as is.
            *a = _mm512_max_ps(_mm512_loadu_ps(p.add(i + 16 * j)), *a);
        }
        i += 64;
    }
    while i < len {
        let k = lanes(len - i);
        // SAFETY: lanes past the end are masked off (−∞ there).
        let x = _mm512_mask_loadu_ps(ninf, k, p.add(i));
        acc[0] = _mm512_max_ps(x, acc[0]);
        i += 16;
    }
    let m = _mm512_max_ps(_mm512_max_ps(acc[0], acc[1]), _mm512_max_ps(acc[2], acc[3]));
    _mm512_reduce_max_ps(m)
}

dispatch! {
    /// [`max`] as scalar code that LLVM vectorizes.
    pub fn max_portable(xs: &[f32]) -> f32 {
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
    /// [`gelu_fwd`] as scalar code that LLVM vectorizes (no FMA contraction).
    pub fn gelu_fwd_portable(y: &mut [f32], x: &[f32]) -> () {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + erff(v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

dispatch! {
    /// [`gelu_bwd`] as scalar code that LLVM vectorizes.
    pub fn gelu_bwd_portable(dx: &mut [f32], dy: &[f32], x: &[f32]) -> () {
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
    fn exp_scaled_sum_accuracy_specials_and_tails() {
        // Every length from 0 to 40 (full and partial 16-lane blocks), values across the range
        // the softmax sees, −∞ (masked scores), below −87, NaN.
        for len in 0..=40usize {
            let xs: Vec<f32> = (0..len)
                .map(|i| -90.0 + 97.3 * (i as f32 / 40.0).powf(0.3))
                .collect();
            for (scale, m) in [(1.0f32, 0.0f32), (0.125, 1.5), (0.176_776_7, -2.0)] {
                let mut v = xs.clone();
                let s = exp_scaled_sum(&mut v, scale, m);
                let mut want_sum = 0.0f64;
                for (&x, &got) in xs.iter().zip(&v) {
                    let y = x as f64 * scale as f64 - m as f64;
                    let want = if y < -87.0 { 0.0 } else { y.exp() };
                    want_sum += want;
                    // The polynomial's 2 ulp, plus y itself rounded to f32 (e^y moves by |Δy|).
                    let tol = want * (4e-7 + 1.2e-7 * y.abs());
                    let err = (got as f64 - want).abs();
                    assert!(
                        err <= tol,
                        "len {len} x {x} scale {scale} m {m}: {got} vs {want}"
                    );
                }
                assert!(
                    (s as f64 - want_sum).abs() <= 1e-6 * want_sum.max(1e-30),
                    "sum {s} vs {want_sum}"
                );
            }
        }
        let mut v = vec![f32::NEG_INFINITY, -200.0, f32::NAN, 0.0, 88.5, -86.9];
        let s = exp_scaled_sum(&mut v, 1.0, 0.0);
        assert_eq!(&v[..2], &[0.0, 0.0]);
        assert!(v[2].is_nan() && s.is_nan());
        assert_eq!(v[3], 1.0);
        assert!(v[4].is_finite() && v[4] > 1e38);
        assert!(v[5] > 0.0);
        // The AVX-512 pass and the portable loop agree within the exp's error.
        let xs: Vec<f32> = (0..1000).map(|i| -30.0 + 0.037 * i as f32).collect();
        let (mut a, mut b) = (xs.clone(), xs.clone());
        let (sa, sb) = (
            exp_scaled_sum(&mut a, 0.7, 1.0),
            exp_scaled_sum_portable(&mut b, 0.7, 1.0),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 4e-6 * y.abs(), "{x} vs {y}");
        }
        assert!((sa - sb).abs() <= 4e-6 * sb);
    }

    #[test]
    fn max_of_every_length_passes_over_nan() {
        for len in 0..=150usize {
            let mut xs: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.5)
                .collect();
            let want = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&xs), want, "len {len}");
            assert_eq!(max(&xs), max_portable(&xs), "len {len}");
            if len > 0 {
                // The maximum at the very end (a tail lane), a NaN at the front.
                xs[len - 1] = 1e9;
                xs[0] = f32::NAN;
                assert_eq!(
                    max(&xs),
                    if len > 1 { 1e9 } else { f32::NEG_INFINITY },
                    "len {len}"
                );
            }
        }
        assert_eq!(max(&[f32::NEG_INFINITY; 20]), f32::NEG_INFINITY);
    }

    #[test]
    fn gelu_forward_and_backward_match_f64_and_the_portable_loops() {
        let gelu = |x: f64| 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt()));
        let dgelu = |x: f64| {
            0.5 * (1.0 + libm::erf(x / 2f64.sqrt()))
                + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
        };
        for len in [0usize, 1, 15, 16, 17, 33, 2000] {
            let xs: Vec<f32> = (0..len)
                .map(|i| (i as f32 * 0.0173).sin() * 9.0 - 0.3)
                .collect();
            let dys: Vec<f32> = (0..len).map(|i| (i as f32 * 0.31).cos()).collect();
            let (mut y, mut yp) = (vec![7.0f32; len], vec![7.0f32; len]);
            gelu_fwd(&mut y, &xs);
            gelu_fwd_portable(&mut yp, &xs);
            let (mut dx, mut dxp) = (vec![7.0f32; len], vec![7.0f32; len]);
            gelu_bwd(&mut dx, &dys, &xs);
            gelu_bwd_portable(&mut dxp, &dys, &xs);
            for i in 0..len {
                let (x, g) = (xs[i] as f64, dys[i] as f64);
                // erf within 6e-7 absolute: ½·|x|·6e-7 on y, plus f32 rounding.
                let tol = 4e-7 * x.abs() + 1e-6;
                assert!(
                    (y[i] as f64 - gelu(x)).abs() < tol,
                    "gelu({x}) = {} vs {}",
                    y[i],
                    gelu(x)
                );
                assert!((y[i] - yp[i]).abs() as f64 <= 2.0 * tol, "{x}");
                let want = g * dgelu(x);
                assert!(
                    (dx[i] as f64 - want).abs() < 2e-6 * (1.0 + x.abs()),
                    "gelu'({x}): {} vs {want}",
                    dx[i]
                );
                assert!(
                    ((dx[i] - dxp[i]).abs() as f64) < 4e-6 * (1.0 + x.abs()),
                    "{x}"
                );
            }
        }
        let mut y = vec![1.0f32; 3];
        gelu_fwd(&mut y, &[f32::NAN, -30.0, 0.0]);
        assert!(y[0].is_nan());
        assert_eq!(&y[1..], &[0.0, 0.0]);
    }

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
