//! Mixed-precision rounding. The CPU backend reproduces the rounding a GPU applies to
//! matrix-product operands (bf16/fp16 in, fp32 accumulate) so numerics agree across devices.

use crate::Float;

/// `training.precision`: "32", "bf16-mixed", "16-mixed".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16Mixed,
    F16Mixed,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "32" | "32-true" | "fp32" => Some(Self::F32),
            "bf16-mixed" => Some(Self::Bf16Mixed),
            "16-mixed" => Some(Self::F16Mixed),
            _ => None,
        }
    }

    /// Rounds one operand value the way the matrix-product inputs are rounded.
    #[inline(always)]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Self::F32 => x,
            Self::Bf16Mixed => round_bf16(x),
            Self::F16Mixed => round_f16(x),
        }
    }
}

/// f32 -> bf16 -> f32 with round-to-nearest-even: add 0x7FFF plus the lowest kept bit, then
/// truncate the low 16 bits. Overflow carries into the exponent and becomes ±inf as it should;
/// NaN stays NaN (quieted, sign kept) instead of possibly rounding to inf.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((b | 0x0040_0000) & 0xFFFF_0000);
    }
    let r = b.wrapping_add(0x7FFF + ((b >> 16) & 1));
    f32::from_bits(r & 0xFFFF_0000)
}

/// f32 -> f16 -> f32 with round-to-nearest-even, subnormals and overflow to inf (via `half`).
#[inline(always)]
pub fn round_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Rounds a buffer in place (no-op for fp32). bf16 in f32 is vectorized where the CPU has
/// AVX-512 ([`crate::bf16gemm::round_bf16_slice`], same bits).
pub fn round_slice<T: Float>(p: Precision, xs: &mut [T]) {
    if p == Precision::F32 {
        return;
    }
    if p == Precision::Bf16Mixed && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T is f32 (checked just above).
        let xs32 = unsafe { &mut *(xs as *mut [T] as *mut [f32]) };
        if crate::bf16gemm::round_bf16_slice(xs32) {
            return;
        }
    }
    for x in xs.iter_mut() {
        *x = T::from_f32(p.round(x.to_f32()));
    }
}

/// A rounded copy of `xs`; borrowed unchanged for fp32.
pub fn rounded<T: Float>(p: Precision, xs: &[T]) -> std::borrow::Cow<'_, [T]> {
    if p == Precision::F32 {
        std::borrow::Cow::Borrowed(xs)
    } else {
        let mut v = xs.to_vec();
        round_slice(p, &mut v);
        std::borrow::Cow::Owned(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_ties_to_even_and_specials() {
        // 1.0 + 2^-8 lies exactly halfway between bf16 1.0 and 1.0+2^-7: tie -> even (1.0).
        assert_eq!(round_bf16(f32::from_bits(0x3F80_8000)), 1.0);
        // 1.0+2^-7 (odd mantissa lsb) + half ulp: tie -> even rounds up.
        assert_eq!(
            round_bf16(f32::from_bits(0x3F81_8000)).to_bits(),
            0x3F82_0000
        );
        // Just above the tie rounds up, just below rounds down.
        assert_eq!(
            round_bf16(f32::from_bits(0x3F80_8001)).to_bits(),
            0x3F81_0000
        );
        assert_eq!(
            round_bf16(f32::from_bits(0x3F80_7FFF)).to_bits(),
            0x3F80_0000
        );
        // Negative values round symmetrically.
        assert_eq!(
            round_bf16(f32::from_bits(0xBF80_8001)).to_bits(),
            0xBF81_0000
        );
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
        // f32::MAX is above bf16's max + half ulp: overflows to inf under RNE.
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert!(round_bf16(f32::NAN).is_nan());
        // A NaN whose payload lives only in the low 16 bits must not become inf.
        let nan_low = f32::from_bits(0x7F80_0001);
        assert!(nan_low.is_nan());
        assert!(round_bf16(nan_low).is_nan());
        assert_eq!(round_bf16(-0.0).to_bits(), 0x8000_0000);
        // Subnormals keep their high bits.
        assert_eq!(
            round_bf16(f32::from_bits(0x0001_8000)).to_bits(),
            0x0002_0000
        );
        // Agrees with the `half` crate's conversion on a sweep of bit patterns.
        let mut b: u32 = 1;
        while b < u32::MAX / 7 * 7 {
            let x = f32::from_bits(b);
            if !x.is_nan() {
                assert_eq!(
                    round_bf16(x).to_bits(),
                    half::bf16::from_f32(x).to_f32().to_bits(),
                    "{b:#x}"
                );
            }
            b = b.wrapping_add(7_919_993);
        }
    }

    #[test]
    fn f16_rounding() {
        // 1 + 2^-11 is the tie between 1.0 and 1+2^-10: ties to even -> 1.0.
        assert_eq!(round_f16(1.0 + f32::powi(2.0, -11)), 1.0);
        assert_eq!(
            round_f16(1.0 + 3.0 * f32::powi(2.0, -11)),
            1.0 + 2.0 * f32::powi(2.0, -10)
        );
        assert_eq!(round_f16(65504.0), 65504.0);
        assert_eq!(round_f16(65520.0), f32::INFINITY); // halfway to 2^16 rounds to inf
        assert_eq!(round_f16(65519.0), 65504.0);
        assert!(round_f16(f32::NAN).is_nan());
        assert_eq!(round_f16(f32::NEG_INFINITY), f32::NEG_INFINITY);
        // Smallest f16 subnormal is 2^-24; half of it ties to even (0).
        assert_eq!(round_f16(f32::powi(2.0, -24)), f32::powi(2.0, -24));
        assert_eq!(round_f16(f32::powi(2.0, -25)), 0.0);
    }

    #[test]
    fn parse_precision() {
        assert_eq!(Precision::parse("bf16-mixed"), Some(Precision::Bf16Mixed));
        assert_eq!(Precision::parse("16-mixed"), Some(Precision::F16Mixed));
        assert_eq!(Precision::parse("32"), Some(Precision::F32));
        assert_eq!(Precision::parse("64"), None);
    }
}
