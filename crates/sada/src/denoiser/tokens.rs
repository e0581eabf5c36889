//! Which tokens a computed step runs through a denoiser's pruning-capable blocks: the plan a
//! policy hands the denoiser (all tokens, all tokens with a cache refresh, or a subset), and
//! the subset itself (`docs/method.md` §7).
//!
//! A subset holds the tokens a policy scored as unstable plus one random token in every
//! sy x sx cell, so every region of the image keeps being refreshed. The generator is seeded per
//! step: unlike the reference implementation, a run is reproducible.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which tokens the pruning-capable blocks compute at one step.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenPlan {
    /// Every token.
    Full,
    /// Every token, and every block cache overwritten with the block's output.
    Refresh,
    /// Only the selected tokens; the rest are read from the block caches.
    Pruned(TokenSelection),
}

/// Which tokens a pruned step computes, at latent resolution, and how to derive the same
/// decision for coarser transformer levels.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSelection {
    /// Latent token grid height.
    pub height: usize,
    /// Latent token grid width.
    pub width: usize,
    /// Row-major flags, true = computed.
    pub mask: Vec<bool>,
    /// The unstable tokens (score 1) the mask was built from.
    pub score: Vec<bool>,
    /// Cell height: one random token is computed in every full `sy x sx` cell.
    pub sy: usize,
    /// Cell width.
    pub sx: usize,
    /// Seeds the random token per cell (xored with the downsample factor at coarser levels).
    pub seed: u64,
    /// Levels at most this many times coarser than the latent prune.
    pub max_downsample: usize,
}

impl TokenSelection {
    /// The selection computing every token of `score` plus one random token per `sy x sx` cell
    /// (drawn from `seed`) on a `height x width` latent grid.
    pub fn new(score: Vec<bool>, height: usize, width: usize, sy: usize, sx: usize, seed: u64, max_downsample: usize) -> Self {
        let mask = select(&score, height, width, sy, sx, seed);
        Self { height, width, mask, score, sy, sx, seed, max_downsample }
    }

    /// The computed-token mask for a transformer level whose grid is `height x width`, or None
    /// when that level is too coarse to prune. Coarser levels pool the score map (mean over
    /// the covered latent window > 0.25, as the reference does) and draw their own cells.
    pub fn mask_at(&self, height: usize, width: usize) -> Option<Vec<bool>> {
        if height == 0 || width == 0 {
            return None;
        }
        // the reference's downsample factor: ceil(sqrt(H*W / N))
        let d = ((self.height * self.width) as f64 / (height * width) as f64).sqrt().ceil() as usize;
        if d == 0 || d > self.max_downsample {
            return None;
        }
        if (height, width) == (self.height, self.width) {
            return Some(self.mask.clone());
        }
        let mut pooled = vec![false; height * width];
        for y in 0..height {
            let (y0, y1) = (y * self.height / height, ((y + 1) * self.height).div_ceil(height));
            for x in 0..width {
                let (x0, x1) = (x * self.width / width, ((x + 1) * self.width).div_ceil(width));
                let n = (y1 - y0) * (x1 - x0);
                let hits = (y0..y1).flat_map(|yy| (x0..x1).map(move |xx| (yy, xx))).filter(|&(yy, xx)| self.score[yy * self.width + xx]).count();
                pooled[y * width + x] = hits as f64 / n as f64 > 0.25;
            }
        }
        Some(select(&pooled, height, width, self.sy, self.sx, self.seed ^ d as u64))
    }

    /// Indices (row-major) of the computed tokens, ascending.
    pub fn computed(&self) -> Vec<usize> {
        self.mask.iter().enumerate().filter(|(_, &c)| c).map(|(i, _)| i).collect()
    }

    /// How many tokens are computed at latent resolution.
    pub fn num_computed(&self) -> usize {
        self.mask.iter().filter(|&&c| c).count()
    }
}

/// One uniformly random token per full `sy x sx` cell (leftover rows and columns get none),
/// plus every token with score 1.
pub fn select(score: &[bool], height: usize, width: usize, sy: usize, sx: usize, seed: u64) -> Vec<bool> {
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
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_per_full_cell_plus_scored_tokens() {
        // 7 x 8 grid, 3 x 3 cells: 2 x 2 full cells; leftover row 6 and columns 6-7 get none.
        let (h, w) = (7, 8);
        let mut score = vec![false; h * w];
        score[6 * w + 7] = true; // a scored token in the leftover corner
        let sel = TokenSelection::new(score, h, w, 3, 3, 42, 1);
        assert_eq!(sel.num_computed(), 4 + 1);
        for cy in 0..2 {
            for cx in 0..2 {
                let in_cell = (0..3).flat_map(|dy| (0..3).map(move |dx| (cy * 3 + dy) * w + cx * 3 + dx)).filter(|&i| sel.mask[i]).count();
                assert_eq!(in_cell, 1, "cell ({cy}, {cx})");
            }
        }
        assert!(sel.mask[6 * w + 7]);
        assert_eq!(sel.computed().len(), 5);
    }

    #[test]
    fn selection_is_reproducible_from_its_seed() {
        let score = vec![false; 12 * 12];
        assert_eq!(select(&score, 12, 12, 3, 3, 7), select(&score, 12, 12, 3, 3, 7));
        assert_ne!(select(&score, 12, 12, 3, 3, 7), select(&score, 12, 12, 3, 3, 8));
    }

    #[test]
    fn coarser_levels_prune_only_within_max_downsample() {
        let mut score = vec![false; 12 * 12];
        score[0] = true;
        score[1] = true; // half of the top-left 2x2 window: pooled 0.5 > 0.25
        let sel = TokenSelection::new(score, 12, 12, 3, 3, 1, 2);
        assert_eq!(sel.mask_at(12, 12), Some(sel.mask.clone()));
        let half = sel.mask_at(6, 6).unwrap();
        assert!(half[0], "pooled score 1 at the top-left token");
        assert!(half.iter().filter(|&&c| c).count() >= 4);
        assert_eq!(sel.mask_at(3, 3), None, "4x coarser than the latent");
        let only_full = TokenSelection { max_downsample: 1, ..sel };
        assert_eq!(only_full.mask_at(6, 6), None);
    }
}
