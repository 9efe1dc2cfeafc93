//! [`Rng`]: the one seeded pseudo-random generator of the tests, the test programs and xtask.

/// xorshift64* (Marsaglia's xorshift with a multiplicative output step): fast, reproducible
/// from its seed, and good enough for random sizes, choices and garbage. Not for anything that
/// must be unpredictable.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0, which would stay 0 forever, is replaced by a fixed
    /// non-zero constant). The same seed gives the same sequence on every run and machine.
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)] // an endless generator, not an Iterator of Options
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`; the modulo bias is negligible for the small `n` of tests).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        self.next() % n
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        self.fill(&mut out);
        out
    }

    /// Fills `buf` with random bytes: one [`Rng::next`] per 8 bytes, little-endian (the last
    /// word's unused bytes are dropped).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn same_seed_same_sequence_and_zero_is_not_stuck() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        assert_eq!((0..100).map(|_| a.next()).collect::<Vec<_>>(), (0..100).map(|_| b.next()).collect::<Vec<_>>());
        let mut zero = Rng::new(0);
        assert_ne!(zero.next(), zero.next());
    }

    #[test]
    fn below_stays_below_and_bytes_follow_next() {
        let mut r = Rng::new(7);
        assert!((0..10_000).all(|_| r.below(13) < 13));
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        let bytes = a.bytes(12);
        assert_eq!(bytes[..8], b.next().to_le_bytes());
        assert_eq!(bytes[8..], b.next().to_le_bytes()[..4]);
    }
}
