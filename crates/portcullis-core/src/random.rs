//! Injected randomness: the engine never reaches for a global RNG.

use parking_lot::Mutex;

/// A source of random bytes. Production uses [`OsRandom`]; tests may use [`SeededRandom`].
pub trait RandomSource: Send + Sync + 'static {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

/// The operating system's CSPRNG (`getrandom`): the only source fit for tokens.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&self, buf: &mut [u8]) {
        // The OS CSPRNG failing is not recoverable: issuing a weak token would be worse than stopping.
        getrandom::fill(buf).expect("the operating system's random number generator failed");
    }
}

/// A deterministic generator (SplitMix64) for reproducible tests. Never use it for real tokens.
#[derive(Debug)]
pub struct SeededRandom(Mutex<u64>);

impl SeededRandom {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(seed))
    }
}

impl RandomSource for SeededRandom {
    fn fill(&self, buf: &mut [u8]) {
        let mut state = self.0.lock();
        for chunk in buf.chunks_mut(8) {
            *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}
