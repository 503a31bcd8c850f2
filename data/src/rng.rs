//! Counter-based randomness. Every random decision is a pure function of a key built from
//! (seed, purpose, epoch, index, ...), so no generator state has to be saved, shared between
//! threads or replayed on resume: recomputing the key gives the same numbers.

/// SplitMix64's finalizer: a bijective 64-bit mix with good avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Purposes keep streams for different decisions independent even with equal indices.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub enum Stream {
    Split = 1,
    BlockOrder = 2,
    CellOrder = 3,
    Masking = 4,
    Synth = 5,
    Augment = 6,
}

/// Hash a sequence of words into one key.
pub fn key(seed: u64, stream: Stream, words: &[u64]) -> u64 {
    let mut h = mix64(seed ^ GOLDEN.wrapping_mul(stream as u64 + 1));
    for &w in words {
        h = mix64(h ^ mix64(w.wrapping_add(GOLDEN)));
    }
    h
}

/// A generator whose n-th output is `mix64(key + n * GOLDEN)`: counter mode over SplitMix64.
#[derive(Debug, Clone)]
pub struct CounterRng {
    key: u64,
    counter: u64,
}

impl CounterRng {
    pub fn new(seed: u64, stream: Stream, words: &[u64]) -> Self {
        CounterRng {
            key: key(seed, stream, words),
            counter: 0,
        }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        mix64(self.key.wrapping_add(self.counter.wrapping_mul(GOLDEN)))
    }

    /// Uniform in [0, 1) with 53 bits.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n) without modulo bias worth caring about (Lemire's multiply-shift).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// The seed from a config's `training.seed` (an i64), reinterpreted bit for bit.
pub fn seed_from_config(seed: i64) -> u64 {
    seed as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_stream() {
        let mut a = CounterRng::new(42, Stream::Masking, &[1, 2]);
        let mut b = CounterRng::new(42, Stream::Masking, &[1, 2]);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut c = CounterRng::new(42, Stream::Masking, &[2, 1]);
        assert_ne!(a.next_u64(), c.next_u64());
    }

    #[test]
    fn uniform_mean() {
        let mut r = CounterRng::new(7, Stream::Synth, &[]);
        let n = 100_000;
        let mean: f64 = (0..n).map(|_| r.next_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let mut counts = [0usize; 10];
        for _ in 0..n {
            counts[r.below(10) as usize] += 1;
        }
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 500.0, "{counts:?}");
        }
    }
}
