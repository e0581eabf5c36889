//! Acceleration policies: what each solver step costs.
//!
//! The sampling loop asks the policy for a [`StepPlan`] before each step. A computed step
//! carries a [`TokenPlan`] for the denoiser (all tokens, all tokens with a cache refresh, or a
//! subset); a skipped step gets its prediction from [`Policy::substitute`]. After the solver
//! has stepped, [`Policy::observe`] shows the policy what happened so it can plan the next step.

pub mod lagrange;
pub mod rule;
pub mod sada;
pub mod tokens;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::solvers::{Prediction, Solver};
pub use sada::{Sada, SadaConfig};
pub use tokens::TokenSelection;

/// What one step's denoiser call did, as the trace reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Every token computed, no cache involved.
    Full,
    /// Every token computed and every block cache overwritten.
    Refresh,
    /// Only some tokens computed in the pruning blocks; the rest read from the block caches.
    Pruned,
    /// No network call: x0 from the Adams-Moulton predictor and the last output.
    SkipAm,
    /// No network call: x0 extrapolated from Lagrange anchors.
    SkipLagrange,
}

impl Decision {
    /// The name used in traces (kebab-case).
    pub fn name(self) -> &'static str {
        match self {
            Decision::Full => "full",
            Decision::Refresh => "refresh",
            Decision::Pruned => "pruned",
            Decision::SkipAm => "skip-am",
            Decision::SkipLagrange => "skip-lagrange",
        }
    }
}

/// Which tokens a computed step runs through the pruning-capable blocks.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenPlan {
    Full,
    Refresh,
    Pruned(TokenSelection),
}

impl TokenPlan {
    pub fn decision(&self) -> Decision {
        match self {
            TokenPlan::Full => Decision::Full,
            TokenPlan::Refresh => Decision::Refresh,
            TokenPlan::Pruned(_) => Decision::Pruned,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipKind {
    AdamsMoulton,
    Lagrange,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepPlan {
    Compute(TokenPlan),
    Skip(SkipKind),
}

impl StepPlan {
    pub fn decision(&self) -> Decision {
        match self {
            StepPlan::Compute(t) => t.decision(),
            StepPlan::Skip(SkipKind::AdamsMoulton) => Decision::SkipAm,
            StepPlan::Skip(SkipKind::Lagrange) => Decision::SkipLagrange,
        }
    }
}

/// What happened at step n.
pub struct Observation<'a> {
    /// x_n, the solver's input.
    pub sample: &'a Tensor,
    /// x_{n+1}, the solver's output.
    pub prev_sample: &'a Tensor,
    /// The guided network output, or None when the step was skipped.
    pub output: Option<&'a Tensor>,
    /// The x0 the solver used (network-derived or substituted).
    pub data_prediction: &'a Tensor,
}

pub trait Policy {
    /// Prepare for a new image. `token_pruning` says whether the denoiser can prune tokens;
    /// without it no step is planned as pruned or refresh.
    fn begin(&mut self, solver: &dyn Solver, latent_shape: &[usize], token_pruning: bool) -> Result<()>;
    fn plan(&self, step: usize) -> StepPlan;
    /// The prediction a skipped step feeds the solver.
    fn substitute(&mut self, step: usize, sample: &Tensor, solver: &dyn Solver) -> Result<Prediction>;
    /// Record step `step`; returns the stability criterion computed after it, if any.
    fn observe(&mut self, step: usize, obs: &Observation, solver: &dyn Solver) -> Result<Option<f64>>;
}

/// The unaccelerated baseline: every step computed in full.
#[derive(Debug, Default, Clone)]
pub struct NoAcceleration;

impl Policy for NoAcceleration {
    fn begin(&mut self, _: &dyn Solver, _: &[usize], _: bool) -> Result<()> {
        Ok(())
    }
    fn plan(&self, _: usize) -> StepPlan {
        StepPlan::Compute(TokenPlan::Full)
    }
    fn substitute(&mut self, step: usize, _: &Tensor, _: &dyn Solver) -> Result<Prediction> {
        Err(crate::Error::param("step", format!("the baseline never skips, but step {step} asked for a substitute")))
    }
    fn observe(&mut self, _: usize, _: &Observation, _: &dyn Solver) -> Result<Option<f64>> {
        Ok(None)
    }
}
