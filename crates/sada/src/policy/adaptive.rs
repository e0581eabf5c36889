//! AdaptiveDiffusion (Ye et al., NeurIPS 2024): skip the network at a step when the latent
//! trajectory is locally straight, judged by the second difference of the mean absolute step
//! sizes (the "third-order" latent difference), and reuse the last network output there; the
//! solver still steps with it (`docs/rivals.md`).
//!
//! With d_k = mean |z_k - z_{k-1}| over the solver's latents z_k (the batch shares one
//! decision), step k+1 is skipped when |d_k - 2 d_{k-1} + d_{k-2}| <= 2 threshold d_{k-1}; the
//! first four steps are always computed, and after `max_skip_steps` skips in a row the next
//! step is computed.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::method::Method;
use super::plan::{Observation, Policy, SkipKind, StepPlan};
use crate::denoiser::{Capabilities, TokenPlan};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::solvers::{Prediction, Solver};

/// Warm-up: these first steps are always computed (the reference's `len(prev_latents) <= 3`).
const WARMUP: usize = 4;

/// The settings of `adaptive` (AdaptiveDiffusion), named as in the reference code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// Relative tolerance on the second difference of step sizes (the reference's `threshold`).
    pub threshold: f64,
    /// At most this many skipped steps in a row (`max_skip_steps`).
    pub max_skip_steps: usize,
}

impl Default for AdaptiveConfig {
    /// The reference's defaults for its Stable Diffusion pipelines.
    fn default() -> Self {
        Self { threshold: 0.01, max_skip_steps: 4 }
    }
}

impl Method for AdaptiveConfig {
    fn preset(_: Family) -> Self {
        Self::default()
    }
    fn policy(&self, _seed: u64) -> Box<dyn Policy> {
        Box::new(Adaptive { cfg: self.clone(), prev: None, diffs: Vec::new(), compute_next: Vec::new(), last_output: None })
    }
    fn validate(&self, _: usize) -> Result<()> {
        if !(self.threshold >= 0.0 && self.threshold.is_finite()) {
            return Err(Error::param("adaptive:threshold", format!("{} must be a finite number >= 0", self.threshold)));
        }
        Ok(())
    }
    fn sweep(_: Family) -> Vec<Self> {
        [0.005, 0.01, 0.02, 0.05, 0.1].into_iter().map(|threshold| Self { threshold, ..Self::default() }).collect()
    }
}

/// The step-by-step state of AdaptiveDiffusion for one image.
pub struct Adaptive {
    cfg: AdaptiveConfig,
    /// z_{k-1}, the solver's last output.
    prev: Option<Tensor>,
    /// d_1, d_2, ...: mean absolute change of the latents per step.
    diffs: Vec<f64>,
    /// The reference's `mask`: entry j says whether step WARMUP + j is computed.
    compute_next: Vec<bool>,
    last_output: Option<Tensor>,
}

impl Adaptive {
    /// The reference's `estimate_skipping`: whether the step after the current one is computed,
    /// and the relative second difference it was judged by.
    fn decide(&self, cur: f64) -> (bool, f64) {
        let (prev, prev_prev) = (self.diffs[self.diffs.len() - 1], self.diffs[self.diffs.len() - 2]);
        let rel = ((cur + prev_prev) / 2.0 - prev).abs() / prev;
        let m = self.cfg.max_skip_steps;
        let forced = self.compute_next.len() > 4 && !self.compute_next[self.compute_next.len().saturating_sub(m)..].iter().any(|&c| c);
        if forced {
            return (true, rel);
        }
        (((cur + prev_prev) / 2.0 - prev).abs() > prev * self.cfg.threshold, rel)
    }
}

impl Policy for Adaptive {
    fn begin(&mut self, solver: &dyn Solver, _: &[usize], _: &Capabilities) -> Result<()> {
        self.cfg.validate(solver.num_steps())?;
        *self = Adaptive { cfg: self.cfg.clone(), prev: None, diffs: Vec::new(), compute_next: Vec::new(), last_output: None };
        Ok(())
    }

    fn plan(&self, step: usize) -> StepPlan {
        let compute = step < WARMUP || self.compute_next.get(step - WARMUP).copied().unwrap_or(true);
        if compute {
            StepPlan::Compute(TokenPlan::Full)
        } else {
            StepPlan::Skip(SkipKind::Reuse)
        }
    }

    fn substitute(&mut self, step: usize, _: &Tensor, _: &dyn Solver) -> Result<Prediction> {
        let out = self.last_output.clone().ok_or_else(|| Error::internal(format!("step {step} reuses an output before any was computed")))?;
        Ok(Prediction::ModelOutput(out))
    }

    fn observe(&mut self, step: usize, obs: &Observation, _: &dyn Solver) -> Result<Option<f64>> {
        if let Some(o) = obs.output {
            self.last_output = Some(o.clone());
        }
        let z = obs.prev_sample;
        let mut criterion = None;
        if let Some(prev) = &self.prev {
            let d = (z - prev)?.abs()?.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?;
            if step + 1 >= WARMUP {
                let (compute, rel) = self.decide(d);
                self.compute_next.push(compute);
                criterion = Some(rel);
            }
            self.diffs.push(d);
        }
        self.prev = Some(z.clone());
        Ok(criterion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(threshold: f64) -> Adaptive {
        Adaptive { cfg: AdaptiveConfig { threshold, max_skip_steps: 4 }, prev: None, diffs: Vec::new(), compute_next: Vec::new(), last_output: None }
    }

    /// The decisions the reference makes for a sequence of step sizes, replayed by hand:
    /// straight stretches skip, a kink computes, four skips in a row force a computed step.
    #[test]
    fn decisions_follow_the_second_difference_of_step_sizes() {
        let mut p = policy(0.01);
        // d_1 .. d_3 recorded before the first decision (made after step 3, for step 4)
        p.diffs = vec![1.0, 0.9];
        // straight: (0.8 + 1.0)/2 - 0.9 = 0 -> skip step 4
        assert!(!p.decide(0.8).0);
        // kink: (0.5 + 0.9)/2 - 0.8 = -0.1, |.| > 0.008 -> compute
        p.diffs.push(0.8);
        assert!(p.decide(0.5).0);
        // after 4 recorded skips (and more than 4 decisions) the next step is computed
        p.compute_next = vec![true, false, false, false, false];
        p.diffs = vec![1.0, 1.0];
        assert!(p.decide(1.0).0, "max_skip_steps forces a computed step");
        p.compute_next = vec![false, false, false, false];
        assert!(!p.decide(1.0).0, "the reference only forces once more than 4 decisions exist");
    }

    #[test]
    fn the_first_four_steps_are_computed_and_decisions_apply_from_step_four() {
        let mut p = policy(0.01);
        for s in 0..4 {
            assert_eq!(p.plan(s), StepPlan::Compute(TokenPlan::Full));
        }
        p.compute_next = vec![false, true];
        assert_eq!(p.plan(4), StepPlan::Skip(SkipKind::Reuse));
        assert_eq!(p.plan(5), StepPlan::Compute(TokenPlan::Full));
    }
}
