//! The scalar types the CPU ops are generic over: f32 for training, f64 so the tests can check
//! every backward against central finite differences without f32 noise.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use faer::{Accum, MatMut, MatRef, Par};

pub trait Float:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
    fn abs(self) -> Self;
    fn max(self, o: Self) -> Self;
    fn is_finite(self) -> bool;
    /// xs[i] ← e^{xs[i]·scale − m} (e^{−∞} = 0); returns Σ xs[i]. Vectorized for f32.
    fn exp_scaled_sum(xs: &mut [Self], scale: Self, m: Self) -> Self;
    /// Dropout on a run: xs[j] ← keep(stream, base + j) ? xs[j]·scale : 0 (see [`crate::rng`]).
    fn dropout_apply(xs: &mut [Self], stream: u64, base: u64, thr: u32, scale: Self);
    /// Attention backward's dS row: ds[j] ← p[j]·(kept(ds[j]) − d)·scale, with ds = dP' on
    /// entry; under dropout (`pd` = the row of P'), kept(x) = x·drop_scale where pd[j] ≠ 0 and
    /// 0 where the key was dropped; without (`pd` None), kept(x) = x.
    fn softmax_grad_row(
        ds: &mut [Self],
        p: &[Self],
        pd: Option<&[Self]>,
        d: Self,
        drop_scale: Self,
        scale: Self,
    );
    /// Largest element (−∞ when empty).
    fn slice_max(xs: &[Self]) -> Self;
    /// Exact-erf GELU over a slice (vectorized for f32).
    fn gelu_slice(y: &mut [Self], x: &[Self]);
    /// GELU backward over a slice.
    fn gelu_backward_slice(dx: &mut [Self], dy: &[Self], x: &[Self]);
    /// Row-major GEMM through faer: `c[m,n] (+)= op(a)[m,k] · op(b)[k,n]`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        c: &mut [Self],
        ldc: usize,
        a: &[Self],
        lda: usize,
        ta: bool,
        b: &[Self],
        ldb: usize,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
        parallel: bool,
    );
}

macro_rules! impl_float {
    ($t:ty, $erf:path, $fast:ident) => {
        impl Float for $t {
            fn exp_scaled_sum(xs: &mut [Self], scale: Self, m: Self) -> Self {
                $fast::exp_scaled_sum(xs, scale, m)
            }
            fn dropout_apply(xs: &mut [Self], stream: u64, base: u64, thr: u32, scale: Self) {
                $fast::dropout_apply(xs, stream, base, thr, scale)
            }
            fn softmax_grad_row(
                ds: &mut [Self],
                p: &[Self],
                pd: Option<&[Self]>,
                d: Self,
                drop_scale: Self,
                scale: Self,
            ) {
                match pd {
                    Some(pd) => $fast::softmax_grad_row_dropped(ds, p, pd, d, drop_scale, scale),
                    None => $fast::softmax_grad_row(ds, p, d, scale),
                }
            }
            fn slice_max(xs: &[Self]) -> Self {
                $fast::max(xs)
            }
            fn gelu_slice(y: &mut [Self], x: &[Self]) {
                $fast::gelu_fwd(y, x)
            }
            fn gelu_backward_slice(dx: &mut [Self], dy: &[Self], x: &[Self]) {
                $fast::gelu_bwd(dx, dy, x)
            }
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f32(x: f32) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn gemm(
                c: &mut [Self],
                ldc: usize,
                a: &[Self],
                lda: usize,
                ta: bool,
                b: &[Self],
                ldb: usize,
                tb: bool,
                m: usize,
                n: usize,
                k: usize,
                accumulate: bool,
                parallel: bool,
            ) {
                if m == 0 || n == 0 {
                    return;
                }
                // Built as the transpose of a column-major view: faer 0.24.4's
                // `from_row_major_slice_with_stride_mut` swaps the strides (column-major result).
                let dst =
                    MatMut::from_column_major_slice_with_stride_mut(c, n, m, ldc).transpose_mut();
                if k == 0 {
                    if !accumulate {
                        let mut dst = dst;
                        for i in 0..m {
                            for j in 0..n {
                                dst[(i, j)] = 0.0;
                            }
                        }
                    }
                    return;
                }
                let lhs = if ta {
                    MatRef::from_row_major_slice_with_stride(a, k, m, lda).transpose()
                } else {
                    MatRef::from_row_major_slice_with_stride(a, m, k, lda)
                };
                let rhs = if tb {
                    MatRef::from_row_major_slice_with_stride(b, n, k, ldb).transpose()
                } else {
                    MatRef::from_row_major_slice_with_stride(b, k, n, ldb)
                };
                let accum = if accumulate {
                    Accum::Add
                } else {
                    Accum::Replace
                };
                let par = if parallel { Par::rayon(0) } else { Par::Seq };
                faer::linalg::matmul::matmul(dst, accum, lhs, rhs, 1.0, par);
                clear_upper_simd_state(parallel);
            }
        }
    };
}

/// faer's AVX/AVX-512 micro-kernels return with the upper vector-register state dirty. Code
/// compiled for the baseline target (legacy-SSE encoded scalar math, libm calls) then pays a
/// state-transition penalty on every instruction: measured ~30x slower softmax/exp loops after a
/// GEMM. `vzeroupper` on every thread that ran the kernel restores full speed.
#[inline]
fn clear_upper_simd_state(parallel: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        unsafe fn zeroupper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: AVX support was just checked.
            unsafe { zeroupper() };
            if parallel {
                rayon::broadcast(|_| unsafe { zeroupper() });
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = parallel;
}

/// Scalar libm versions: the f64 path is the reference the tests differentiate.
mod exact64 {
    pub fn exp_scaled_sum(xs: &mut [f64], scale: f64, m: f64) -> f64 {
        xs.iter_mut()
            .map(|x| {
                *x = (*x * scale - m).exp();
                *x
            })
            .sum()
    }
    pub fn dropout_apply(xs: &mut [f64], stream: u64, base: u64, thr: u32, scale: f64) {
        for (j, x) in xs.iter_mut().enumerate() {
            let keep = crate::rng::RngKey::bits_from(stream, base + j as u64) >= thr;
            *x = if keep { *x * scale } else { 0.0 };
        }
    }
    pub fn softmax_grad_row(ds: &mut [f64], p: &[f64], d: f64, scale: f64) {
        for (x, &pv) in ds.iter_mut().zip(p) {
            *x = pv * (*x - d) * scale;
        }
    }
    pub fn softmax_grad_row_dropped(
        ds: &mut [f64],
        p: &[f64],
        pd: &[f64],
        d: f64,
        drop_scale: f64,
        scale: f64,
    ) {
        for ((x, &pv), &pdv) in ds.iter_mut().zip(p).zip(pd) {
            let kept = if pdv != 0.0 { *x * drop_scale } else { 0.0 };
            *x = pv * (kept - d) * scale;
        }
    }
    pub fn max(xs: &[f64]) -> f64 {
        xs.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b))
    }
    pub fn gelu_fwd(y: &mut [f64], x: &[f64]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + libm::erf(v * std::f64::consts::FRAC_1_SQRT_2));
        }
    }
    pub fn gelu_bwd(dx: &mut [f64], dy: &[f64], x: &[f64]) {
        for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
            let cdf = 0.5 * (1.0 + libm::erf(v * std::f64::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            *o = g * (cdf + v * pdf);
        }
    }
}

use crate::fastmath as fast32;

impl_float!(f32, libm::erff, fast32);
impl_float!(f64, libm::erf, exact64);
