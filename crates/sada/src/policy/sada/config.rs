//! SADA's settings, named as in the paper's code, with the published presets and the checks
//! a run of a given length needs.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// SADA's parameters, named as in the paper's code. Unset fields take the published SD-2
/// settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SadaConfig {
    /// Half-open step range [a0, a1) in which steps may be accelerated; a0 is raised to 3,
    /// the first step at which three drifts exist.
    pub acc_range: (usize, usize),
    /// At most this many consecutive skips.
    pub max_interval: usize,
    /// Number of Lagrange anchors (0 disables the Lagrange phase).
    pub lagrange_term: usize,
    /// Anchors are recorded at steps n with n % lagrange_int == 1; in the Lagrange phase every
    /// step n with n % lagrange_int != 0 is followed by a skip.
    pub lagrange_int: usize,
    /// First step of the Lagrange phase.
    pub lagrange_step: usize,
    /// At most this many unstable tokens are forced into a pruned step's computed set.
    pub max_fix: usize,
    /// Token pruning in blocks whose grid is the latent grid downsampled by at most this (0 = off).
    pub max_downsample: usize,
    /// Cell width for the one-random-token-per-cell selection.
    pub sx: usize,
    /// Cell height.
    pub sy: usize,
}

impl Default for SadaConfig {
    fn default() -> Self {
        Self::sd2()
    }
}

impl SadaConfig {
    /// The published Stable Diffusion 2.x settings.
    pub fn sd2() -> Self {
        Self { acc_range: (10, 47), max_interval: 4, lagrange_term: 4, lagrange_int: 4, lagrange_step: 24, max_fix: 5 * 1024, max_downsample: 1, sx: 3, sy: 3 }
    }

    /// The published SDXL settings (demo: token pruning at the half-resolution level).
    pub fn sdxl() -> Self {
        Self { max_fix: 10 * 1024, max_downsample: 2, ..Self::sd2() }
    }

    /// The published Flux settings.
    pub fn flux() -> Self {
        Self { lagrange_term: 3, lagrange_int: 4, lagrange_step: 20, max_fix: 0, max_downsample: 0, ..Self::sd2() }
    }

    /// The accelerated range with the start raised to 3, as the reference does.
    pub fn effective_range(&self) -> (usize, usize) {
        (self.acc_range.0.max(3), self.acc_range.1)
    }

    /// Check the parameters against a run of `num_steps` steps.
    pub fn validate(&self, num_steps: usize) -> Result<()> {
        let (a0, a1) = self.acc_range;
        if a0 >= a1 || a1 > num_steps {
            return Err(Error::param("acc_range", format!("({a0}, {a1}) must satisfy start < end <= the {num_steps} sampling steps")));
        }
        if self.effective_range().0 >= a1 {
            return Err(Error::param("acc_range", format!("({a0}, {a1}) is empty once its start is raised to 3 (the first step with three drifts)")));
        }
        if self.max_interval == 0 {
            return Err(Error::param("max_interval", "must be at least 1"));
        }
        if self.sx == 0 || self.sy == 0 {
            return Err(Error::param("sx/sy", "token cells must be at least 1 x 1"));
        }
        if self.lagrange_term == 0 {
            return Ok(());
        }
        let (li, ls) = (self.lagrange_int, self.lagrange_step);
        if li == 0 {
            return Err(Error::param("lagrange_int", "must be at least 1 when lagrange_term > 0"));
        }
        if ls % li != 0 {
            return Err(Error::param("lagrange_step", format!("{ls} must be a multiple of lagrange_int = {li}")));
        }
        let (e0, _) = self.effective_range();
        if ls < e0 || ls > a1 {
            return Err(Error::param("lagrange_step", format!("{ls} must lie inside acc_range [{e0}, {a1}]")));
        }
        // The first Lagrange skip follows the first n in [lagrange_step, a1) with n % lagrange_int != 0;
        // by then anchors exist for every k <= n with k % lagrange_int == 1.
        if let Some(n) = (ls..a1).find(|n| n % li != 0) {
            let anchors: Vec<usize> = (0..=n).filter(|k| k % li == 1).collect();
            if anchors.len() < self.lagrange_term {
                return Err(Error::param(
                    "lagrange_term",
                    format!(
                        "{} anchors are needed, but only {} are recorded (steps {:?}) before the first Lagrange skip at step {}",
                        self.lagrange_term,
                        anchors.len(),
                        anchors,
                        n + 1
                    ),
                ));
            }
        }
        Ok(())
    }
}
