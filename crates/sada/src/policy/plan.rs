//! What a policy is: the plan of one step, what the sampling loop shows a policy after it, and
//! the [`Policy`] trait itself.

use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::denoiser::{Capabilities, SiteHook, TokenPlan};
use crate::error::{Error, Result};
use crate::solvers::{Prediction, Solver};

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
    /// Every decision, in the order traces list them.
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
    /// x0 from SADA's Adams-Moulton predictor (the step-wise approximation).
    AdamsMoulton,
    /// x0 extrapolated from SADA's Lagrange anchors (multistep-wise).
    Lagrange,
    /// x0 extrapolated in the solver's time variable (`sada+`).
    Extrapolate,
    /// The last network output, unchanged.
    Reuse,
}

/// What a policy plans for one step: call the network, or skip it.
#[derive(Debug, Clone, PartialEq)]
pub enum StepPlan {
    /// Call the network, computing the tokens the plan selects.
    Compute(TokenPlan),
    /// No network call: the solver gets a substitute of this kind.
    Skip(SkipKind),
}

impl StepPlan {
    /// How the trace reports this plan.
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

/// What each step costs. The defaults fit a policy that acts only inside the network: every
/// step computed, nothing to observe. A policy that serves branches of the network from its
/// own caches gives its [`SiteHook`] through [`Policy::hook`].
pub trait Policy {
    /// Prepare for a new image, for a denoiser that can do `caps`; a policy that needs what the
    /// denoiser cannot do says so here.
    fn begin(&mut self, solver: &dyn Solver, latent_shape: &[usize], caps: &Capabilities) -> Result<()>;

    /// What step `step` does; by default every token is computed.
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

    /// The part of this policy that acts at the network's branch sites during the evaluations
    /// it plans (None: it acts at none).
    fn hook(&self) -> Option<&dyn SiteHook> {
        None
    }
}

/// A hook's state behind its lock (poisoned only by a panic in another image's call).
pub(crate) fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock().map_err(|_| Error::internal("an accelerator's state was left inconsistent by a failed call"))
}

/// A hook's state kept per image of the batch, by the indices a site gives
/// ([`Site::images`](crate::denoiser::Site)), behind a lock: the calls of one batch that run one
/// image each share the hook.
pub(crate) struct PerImage<T>(Mutex<Vec<Option<T>>>);

impl<T: Clone> PerImage<T> {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    /// Each of `images`' state, in order; None while any of them has none yet.
    pub(crate) fn all(&self, images: Range<usize>) -> Result<Option<Vec<T>>> {
        let states = lock(&self.0)?;
        Ok(images.map(|i| states.get(i).cloned().flatten()).collect())
    }

    /// Replace each of `images`' state by `f(row, previous)`, `row` being the image's row in the
    /// call that covers `images`.
    pub(crate) fn update(&self, images: Range<usize>, mut f: impl FnMut(usize, Option<&T>) -> Result<T>) -> Result<()> {
        let mut states = lock(&self.0)?;
        for (row, i) in images.enumerate() {
            if states.len() <= i {
                states.resize(i + 1, None);
            }
            states[i] = Some(f(row, states[i].as_ref())?);
        }
        Ok(())
    }
}
