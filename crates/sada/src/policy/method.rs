//! What every acceleration method provides: its presets per model family, the policy that runs
//! it, the checks a run needs and its sweep of settings. Each method implements it in its own
//! file; `acceleration.rs` names them all.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::plan::Policy;
use crate::error::Result;
use crate::family::Family;

/// One acceleration method's settings.
pub trait Method: Sized + Clone + Serialize + DeserializeOwned {
    /// The settings this method starts from for a model family.
    fn preset(_family: Family) -> Self;
    /// The policy that runs these settings for a run seeded with `seed` (the seed of its
    /// initial noise; a method that draws random numbers draws them from it).
    fn policy(&self, seed: u64) -> Box<dyn Policy>;
    /// Check the settings against a run of `steps` solver steps.
    fn validate(&self, _steps: usize) -> Result<()> {
        Ok(())
    }
    /// Solver steps this method runs when `requested` are asked for.
    fn steps(&self, requested: usize) -> usize {
        requested
    }
    /// Settings from least to most aggressive, for speed-vs-fidelity sweeps (empty: none).
    fn sweep(_family: Family) -> Vec<Self> {
        Vec::new()
    }
}
