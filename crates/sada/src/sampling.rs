//! The sampling loop: solver + policy + guided denoiser, with a per-step trace.

use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::denoiser::token_cache::TokenCache;
use crate::denoiser::{ForwardContext, Guided, TokenPlan};
use crate::error::{Error, Result};
use crate::policy::{Decision, Observation, Policy, StepPlan};
use crate::solvers::{Prediction, Solver};

/// One solver step as it happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTrace {
    /// The step index, from 0.
    pub index: usize,
    /// The solver's timestep at this step.
    pub timestep: f64,
    /// What the step cost: a full, partial or pruned call, or a skip.
    pub decision: Decision,
    /// The policy's criterion computed after this step (SADA: the mean of the stability
    /// product m; null before three drifts exist).
    pub criterion: Option<f64>,
    /// Tokens computed at latent resolution on pruned steps.
    pub tokens_computed: Option<usize>,
    /// Wall time of the whole step (network, solver and policy).
    pub seconds: f64,
}

/// What a sampling run cost.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Trace {
    /// Denoiser calls actually made (partial ones included).
    pub evaluations: usize,
    /// Every step, in order.
    pub steps: Vec<StepTrace>,
}

impl Trace {
    /// How many steps ended as `d`.
    pub fn count(&self, d: Decision) -> usize {
        self.steps.iter().filter(|s| s.decision == d).count()
    }

    /// Total wall time over all steps.
    pub fn seconds(&self) -> f64 {
        self.steps.iter().map(|s| s.seconds).sum()
    }

    /// The run's cost in full network evaluations: full calls count 1, and a partial or pruned
    /// call counts its time over the mean time of this run's full calls (1 when the run has
    /// none to compare with).
    pub fn equivalent_evaluations(&self) -> f64 {
        let full: Vec<f64> = self.steps.iter().filter(|s| matches!(s.decision, Decision::Full | Decision::Refresh)).map(|s| s.seconds).collect();
        let mean_full = (!full.is_empty()).then(|| full.iter().sum::<f64>() / full.len() as f64).filter(|m| *m > 0.0);
        self.steps
            .iter()
            .filter(|s| s.decision.computed())
            .map(|s| match (s.decision, mean_full) {
                (Decision::Partial | Decision::Pruned, Some(m)) => (s.seconds / m).min(1.0),
                _ => 1.0,
            })
            .sum()
    }

    /// One line per decision kind, e.g. `full 25, skip-am 8, skip-lagrange 17`.
    pub fn summary(&self) -> String {
        Decision::ALL
            .into_iter()
            .filter_map(|d| {
                let k = self.count(d);
                (k > 0).then(|| format!("{} {k}", d.name()))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Run the solver from `latents` (already multiplied by `init_noise_sigma`) to the end.
/// `on_step(done, total)` is called after each step (progress bars).
pub fn sample(
    model: &Guided,
    solver: &mut dyn Solver,
    policy: &mut dyn Policy,
    latents: Tensor,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor, Trace)> {
    let n_steps = solver.num_steps();
    solver.reset();
    policy.begin(solver, latents.dims(), &model.capabilities())?;
    // per image: the token caches of SADA's pruning start empty
    let mut token_cache = TokenCache::default();

    let mut x = latents;
    let mut trace = Trace::default();
    for n in 0..n_steps {
        let start = Instant::now();
        let t = solver.timesteps()[n];
        let plan = policy.plan(n);
        let mut decision = plan.decision();
        let (output, prediction, tokens_computed) = match &plan {
            StepPlan::Compute(tokens) => {
                let input = solver.scale_model_input(&x, n)?;
                let mut ctx = ForwardContext::new(n, tokens, &mut token_cache, policy.hook());
                let out = model.predict(&input, t, &mut ctx)?;
                if ctx.replaced() > 0 {
                    decision = Decision::Partial;
                }
                if out.dims() != x.dims() {
                    return Err(Error::Shape { what: "denoiser output".into(), expected: format!("{:?}", x.dims()), got: format!("{:?}", out.dims()) });
                }
                check_finite(&out, "denoiser output", n)?;
                trace.evaluations += 1;
                let tokens = match tokens {
                    TokenPlan::Pruned(sel) => Some(sel.num_computed()),
                    _ => None,
                };
                (Some(out.clone()), Prediction::ModelOutput(out), tokens)
            }
            StepPlan::Skip(_) => (None, policy.substitute(n, &x, solver)?, None),
        };
        let step = solver.step(n, &x, prediction)?;
        check_finite(&step.prev_sample, "solver output", n)?;
        let obs = Observation { sample: &x, prev_sample: &step.prev_sample, output: output.as_ref(), data_prediction: &step.data_prediction };
        let criterion = policy.observe(n, &obs, solver)?;
        trace.steps.push(StepTrace { index: n, timestep: t, decision, criterion, tokens_computed, seconds: start.elapsed().as_secs_f64() });
        x = step.prev_sample;
        on_step(n + 1, n_steps);
    }
    Ok((x, trace))
}

fn check_finite(t: &Tensor, what: &str, step: usize) -> Result<()> {
    if !crate::finite::all_finite(t)? {
        return Err(Error::NonFinite { what: what.into(), step });
    }
    Ok(())
}
