//! The unaccelerated baseline, and the plain solver with fewer steps: what every accelerator is
//! measured against.

use serde::{Deserialize, Serialize};

use super::method::Method;
use super::plan::Policy;
use crate::denoiser::Capabilities;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::solvers::Solver;

/// The unaccelerated baseline: every step computed in full.
#[derive(Debug, Default, Clone)]
pub struct NoAcceleration;

impl Policy for NoAcceleration {
    fn begin(&mut self, _: &dyn Solver, _: &[usize], _: &Capabilities) -> Result<()> {
        Ok(())
    }
}

/// The unaccelerated baseline.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {}

impl Method for Baseline {
    fn preset(_: Family) -> Self {
        Self {}
    }
    fn policy(&self, _seed: u64) -> Box<dyn Policy> {
        Box::new(NoAcceleration)
    }
}

/// The plain solver with fewer steps: what the same compute buys without an accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FewerSteps {
    /// Solver steps to run instead of the requested ones.
    pub steps: usize,
}

impl Default for FewerSteps {
    fn default() -> Self {
        Self { steps: 25 }
    }
}

impl Method for FewerSteps {
    fn preset(_: Family) -> Self {
        Self::default()
    }
    fn policy(&self, _seed: u64) -> Box<dyn Policy> {
        Box::new(NoAcceleration)
    }
    fn validate(&self, _: usize) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::param("fewer-steps:steps", "must be at least 1"));
        }
        Ok(())
    }
    fn steps(&self, _: usize) -> usize {
        self.steps
    }
    fn sweep(_: Family) -> Vec<Self> {
        [30, 25, 20, 15, 10].into_iter().map(|steps| Self { steps }).collect()
    }
}
