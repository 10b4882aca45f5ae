//! easel's one seeded generator: SplitMix64 (Steele, Lea & Flood, "Fast Splittable
//! Pseudorandom Number Generators", OOPSLA 2014). Small, fast, and the same on every platform
//! and device, so that seeded runs (initialisation, data order, noise, KID subsets) repeat bit
//! for bit. Not for anything that needs unpredictability.

/// The SplitMix64 generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64(u64);

/// SplitMix64's finaliser (also a good 64-bit mixer of its own).
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The generator of step `step` of a run seeded `seed` (independent streams per step, so a
    /// resumed run draws what an uninterrupted one would).
    pub fn for_step(seed: u64, step: usize) -> Self {
        Self(mix(seed ^ mix((step as u64).wrapping_add(0x5EED))))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)` (53 bits).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `(0, 1]` (53 bits; safe under a logarithm).
    pub fn unit_nonzero(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, 1)` as f32 (24 bits).
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `0..n` by multiply-shift (`n ≥ 1`; the bias is below 2⁻⁶⁴·n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `k` distinct indices of `0..n` in draw order (partial Fisher–Yates; `k` is capped at
    /// `n`).
    pub fn choose(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The first outputs for seed 1234567 of the reference C code (Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
        let mut rng = SplitMix64::new(7);
        for _ in 0..1000 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
            let v = rng.unit_nonzero();
            assert!(v > 0.0 && v <= 1.0);
            assert!(rng.below(10) < 10);
        }
        let mut picks = SplitMix64::new(3).choose(10, 4);
        assert_eq!(picks.len(), 4);
        picks.sort();
        picks.dedup();
        assert_eq!(picks.len(), 4);
        assert_eq!(SplitMix64::new(3).choose(3, 9).len(), 3);
    }
}
