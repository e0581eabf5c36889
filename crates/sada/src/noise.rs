//! Initial noise from a seed, identical on every machine and independent of any tensor
//! library's generator.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` standard-normal samples from `seed` (Box-Muller on a ChaCha8 stream).
pub fn normal_samples(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f64::consts::TAU * u2;
        out.push((r * th.cos()) as f32);
        out.push((r * th.sin()) as f32);
    }
    out.truncate(n);
    out
}
