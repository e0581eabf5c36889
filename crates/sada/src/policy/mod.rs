//! Acceleration policies: what each solver step costs.
//!
//! The sampling loop asks the policy for a [`StepPlan`] before each step. A computed step
//! carries a [`TokenPlan`] for the denoiser, and the policy may serve branches of the network
//! from its caches while it runs (it is the call's [`SiteHook`]); a skipped step gets its
//! prediction from [`Policy::substitute`]. After the solver has stepped, [`Policy::observe`]
//! shows the policy what happened so it can plan the next step.
//!
//! [`Acceleration`] names every policy as a value: the unaccelerated baseline, SADA and its
//! rivals, each built from its own settings.

pub mod acceleration;
pub mod adaptive;
pub mod deepcache;
pub mod fbcache;
pub mod lagrange;
pub mod rule;
pub mod sada;
pub mod sada_plus;
pub mod taylorseer;
pub mod teacache;
pub mod token_score;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::denoiser::{Capabilities, SiteHook, TokenPlan};
use crate::error::{Error, Result};
use crate::solvers::{Prediction, Solver};
pub use acceleration::Acceleration;
pub use sada::{Sada, SadaConfig};

/// What one step cost, as the trace reports it. [`Decision::ALL`] lists every kind once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Every token computed, no cache involved.
    Full,
    /// Every token computed and every block cache overwritten.
    Refresh,
    /// Only some tokens computed in the pruning blocks; the rest read from the block caches.
    Pruned,
    /// A network call in which a branch of the network was served from a cache.
    Partial,
    /// No network call: x0 from SADA's Adams-Moulton predictor and the last output.
    SkipAm,
    /// No network call: x0 extrapolated from SADA's Lagrange anchors.
    SkipLagrange,
    /// No network call: x0 extrapolated from the computed ones in the solver's time variable (`sada+`).
    SkipExtrapolate,
    /// No network call: the last network output reused as is.
    Reuse,
}

impl Decision {
    pub const ALL: [Decision; 8] = [
        Decision::Full,
        Decision::Refresh,
        Decision::Pruned,
        Decision::Partial,
        Decision::SkipAm,
        Decision::SkipLagrange,
        Decision::SkipExtrapolate,
        Decision::Reuse,
    ];

    /// The name used in traces (kebab-case).
    pub fn name(self) -> &'static str {
        match self {
            Decision::Full => "full",
            Decision::Refresh => "refresh",
            Decision::Pruned => "pruned",
            Decision::Partial => "partial",
            Decision::SkipAm => "skip-am",
            Decision::SkipLagrange => "skip-lagrange",
            Decision::SkipExtrapolate => "skip-extrapolate",
            Decision::Reuse => "reuse",
        }
    }

    /// Whether the step called the network (in full or in part).
    pub fn computed(self) -> bool {
        !matches!(self, Decision::SkipAm | Decision::SkipLagrange | Decision::SkipExtrapolate | Decision::Reuse)
    }

    fn of_tokens(plan: &TokenPlan) -> Self {
        match plan {
            TokenPlan::Full => Decision::Full,
            TokenPlan::Refresh => Decision::Refresh,
            TokenPlan::Pruned(_) => Decision::Pruned,
        }
    }
}

/// How a skipped step is approximated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipKind {
    AdamsMoulton,
    Lagrange,
    /// x0 extrapolated in the solver's time variable (`sada+`).
    Extrapolate,
    /// The last network output, unchanged.
    Reuse,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepPlan {
    Compute(TokenPlan),
    Skip(SkipKind),
}

impl StepPlan {
    pub fn decision(&self) -> Decision {
        match self {
            StepPlan::Compute(t) => Decision::of_tokens(t),
            StepPlan::Skip(SkipKind::AdamsMoulton) => Decision::SkipAm,
            StepPlan::Skip(SkipKind::Lagrange) => Decision::SkipLagrange,
            StepPlan::Skip(SkipKind::Extrapolate) => Decision::SkipExtrapolate,
            StepPlan::Skip(SkipKind::Reuse) => Decision::Reuse,
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

/// A policy is also the [`SiteHook`] of the evaluations it plans: it may serve branches of the
/// network from its own caches (the hook's methods default to computing everything). The
/// other defaults fit a policy that acts only inside the network: every step computed, nothing
/// to observe.
pub trait Policy: SiteHook {
    /// Prepare for a new image, for a denoiser that can do `caps`; a policy that needs what the
    /// denoiser cannot do says so here.
    fn begin(&mut self, solver: &dyn Solver, latent_shape: &[usize], caps: &Capabilities) -> Result<()>;

    fn plan(&self, _step: usize) -> StepPlan {
        StepPlan::Compute(TokenPlan::Full)
    }

    /// The prediction a skipped step feeds the solver.
    fn substitute(&mut self, step: usize, _sample: &Tensor, _solver: &dyn Solver) -> Result<Prediction> {
        Err(Error::internal(format!("step {step} asked for a substitute from a policy that never skips")))
    }

    /// Record step `step`; returns the policy's criterion computed after it, if any.
    fn observe(&mut self, _step: usize, _obs: &Observation, _solver: &dyn Solver) -> Result<Option<f64>> {
        Ok(None)
    }
}

/// The unaccelerated baseline: every step computed in full.
#[derive(Debug, Default, Clone)]
pub struct NoAcceleration;

impl SiteHook for NoAcceleration {}

impl Policy for NoAcceleration {
    fn begin(&mut self, _: &dyn Solver, _: &[usize], _: &Capabilities) -> Result<()> {
        Ok(())
    }
}
