//! Counter-based randomness: every draw is a pure function of (seed, step, layer, index), so a
//! resumed run and a run on a different number of threads draw the same dropout masks.

/// SplitMix64 finalizer: a bijective avalanche mix of 64 bits.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 32-bit bijective avalanche mix (Wellons' "lowbias32").
#[inline(always)]
pub fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Identifies one dropout site at one step. `layer` should also encode which dropout of the
/// layer it is (see [`RngKey::site`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RngKey {
    pub seed: u64,
    pub step: u64,
    pub layer: u64,
}

impl RngKey {
    pub fn new(seed: u64, step: u64, layer: u64) -> Self {
        Self { seed, step, layer }
    }

    /// The key of sub-site `site` (e.g. attention dropout vs. residual dropout) of this layer.
    pub fn site(self, site: u64) -> Self {
        Self {
            layer: self.layer.wrapping_mul(64).wrapping_add(site),
            ..self
        }
    }

    #[inline(always)]
    fn stream(self) -> u64 {
        mix64(mix64(mix64(self.seed ^ GOLDEN) ^ self.step) ^ self.layer.wrapping_add(GOLDEN))
    }

    /// 32 uniform bits for element `index`: SplitMix64 at position `index` of the key's stream.
    #[inline(always)]
    pub fn bits(self, index: u64) -> u32 {
        Self::bits_from(self.stream(), index)
    }

    /// Two rounds of a 32-bit avalanche hash (32-bit multiplies only, so dropout loops
    /// vectorize with AVX2): low index word keyed by the stream's low word, then the high word.
    #[inline(always)]
    pub fn bits_from(stream: u64, index: u64) -> u32 {
        let (k0, k1) = (stream as u32, (stream >> 32) as u32);
        lowbias32(lowbias32(index as u32 ^ k0) ^ ((index >> 32) as u32).wrapping_add(k1))
    }

    /// Precomputed stream state, for loops over many indices.
    pub fn stream_state(self) -> u64 {
        self.stream()
    }
}

/// Keep-threshold for dropout probability `p`: an element is kept when its bits are >= this.
pub fn keep_threshold(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * 4_294_967_296.0).min(4_294_967_295.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_keyed() {
        let k = RngKey::new(7, 3, 1);
        assert_eq!(k.bits(10), k.bits(10));
        assert_ne!(k.bits(10), k.bits(11));
        assert_ne!(k.bits(10), RngKey::new(7, 4, 1).bits(10));
        assert_ne!(k.bits(10), RngKey::new(8, 3, 1).bits(10));
        assert_ne!(k.bits(10), RngKey::new(7, 3, 2).bits(10));
        // Roughly uniform: the fraction below the p=0.3 threshold is near 0.3.
        let t = keep_threshold(0.3);
        let n = 100_000u64;
        let dropped = (0..n).filter(|&i| k.bits(i) < t).count() as f64 / n as f64;
        assert!((dropped - 0.3).abs() < 0.01, "{dropped}");
        // Neighbouring keys and indices past 2^32 give unrelated bits.
        let a = RngKey::new(7, 3, 1).stream_state();
        let b = RngKey::new(7, 3, 2).stream_state();
        let same = (0..10_000u64)
            .filter(|&i| RngKey::bits_from(a, i) >= t && RngKey::bits_from(b, i) >= t)
            .count() as f64
            / 10_000.0;
        assert!((same - 0.49).abs() < 0.02, "{same}");
        assert_ne!(RngKey::bits_from(a, 5), RngKey::bits_from(a, 5 + (1 << 32)));
    }
}
