//! Seeded draws that depend on no crate's sampling algorithm, so a seed gives the same splits,
//! synthetic data and training order whatever version of `rand` is in the build.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::RngCore;

/// A uniform integer in `0..n` (Lemire's multiply-shift).
pub fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    ((rng.next_u64() as u128 * n as u128) >> 64) as usize
}

/// A uniform float in `[0, 1)`.
pub fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Fisher-Yates shuffle.
pub fn shuffle<T>(v: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, below(rng, i + 1));
    }
}
