//! Token scores and the per-step token selection for cache-assisted pruning (SADA §7).
//!
//! The score marks latent positions whose trajectory is locally unstable (criterion m >= 0);
//! the selection computes those plus one random token in every sy x sx cell, so every region
//! of the image keeps being refreshed. The generator is seeded per step: unlike the reference
//! implementation, a run is reproducible.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which tokens of an `height x width` grid a pruned step computes.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSelection {
    pub height: usize,
    pub width: usize,
    /// Row-major flags, true = computed.
    pub mask: Vec<bool>,
}

impl TokenSelection {
    /// Indices (row-major) of the computed tokens, ascending.
    pub fn computed(&self) -> Vec<usize> {
        self.mask.iter().enumerate().filter(|(_, &c)| c).map(|(i, _)| i).collect()
    }

    pub fn num_computed(&self) -> usize {
        self.mask.iter().filter(|&&c| c).count()
    }
}

/// Unstable positions: `values[i] >= 0`; when more than `max_fix` qualify, only the `max_fix`
/// largest are kept (ties broken by position, lowest first).
pub fn score_map(values: &[f32], max_fix: usize) -> Vec<bool> {
    let mut unstable: Vec<usize> = (0..values.len()).filter(|&i| values[i] >= 0.0).collect();
    if unstable.len() > max_fix {
        unstable.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        unstable.truncate(max_fix);
    }
    let mut score = vec![false; values.len()];
    for i in unstable {
        score[i] = true;
    }
    score
}

/// One uniformly random token per full `sy x sx` cell (leftover rows and columns get none),
/// plus every token with score 1.
pub fn select(score: &[bool], height: usize, width: usize, sy: usize, sx: usize, seed: u64) -> TokenSelection {
    debug_assert_eq!(score.len(), height * width);
    let mut mask = score.to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for cy in 0..height / sy {
        for cx in 0..width / sx {
            let r = rng.gen_range(0..sy * sx);
            let (dy, dx) = (r / sx, r % sx);
            mask[(cy * sy + dy) * width + cx * sx + dx] = true;
        }
    }
    TokenSelection { height, width, mask }
}
