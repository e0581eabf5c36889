//! `sada+`: adaptive step skipping of our own (`docs/sada-plus.md`), built on SADA's idea that the
//! trajectory itself says which network calls can be spared, with three changes where the
//! reference is weak:
//!
//! - **Predictor in the solver's own time variable.** A skipped step's x0 is the polynomial
//!   through the last `order + 1` *computed* x0s, in lambda = -log(sigma) for DPM-Solver++ and
//!   Euler and in sigma for flow matching, on the real non-uniform grid (the reference mixes a fixed-coefficient
//!   drift predictor on one training timestep with Lagrange in step indices).
//! - **A criterion with a magnitude.** Each computed step measures how far its x0 lies from what
//!   the predictor would have said: the interpolation error constant C of the Lagrange remainder,
//!   C = |x0_n - p(t_n)| / |prod_i (t_n - t_i)| (relative RMS). The error of skipping step s is then
//!   estimated as w_s C |prod_i (t_s - t_i)|, with w_s the share of the step that x0 drives. A
//!   `tolerance` bounds it; or a budget (`max_evals`) is spent where the estimates are largest,
//!   re-planned after every step from the current C (as adaptive ODE solvers re-plan their step).
//! - **Re-entry through the solver's history.** The substituted x0 goes through the solver's
//!   ordinary multistep update, so the next computed step's second-order term is consistent.

use std::collections::VecDeque;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::lagrange;
use super::method::Method;
use super::plan::{Observation, Policy, SkipKind, StepPlan};
use crate::denoiser::{Capabilities, TokenPlan};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::solvers::{LatentScale, Prediction, Solver};

/// The settings of `sada+`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SadaPlusConfig {
    /// Skip a step when its estimated error (relative RMS of the x0 it feeds the solver, times
    /// the share of the step x0 drives) is at most this. Ignored when `max_evals` is set.
    pub tolerance: f64,
    /// At most this many network evaluations per image (0: no budget; the tolerance decides).
    pub max_evals: usize,
    /// Under a budget, a step whose estimated error exceeds this is computed as long as the
    /// later steps can still make up the skips the budget needs (an x0 this far off is a guess).
    pub max_error: f64,
    /// Degree of the extrapolating polynomial (it passes through `order + 1` computed x0s).
    pub order: usize,
    /// At most this many consecutive skips.
    pub max_interval: usize,
    /// The first steps always computed; raised to `order + 2`, the first step with an error estimate.
    pub warmup: usize,
    /// The last steps always computed (the solver's largest steps in lambda).
    pub tail: usize,
}

impl Default for SadaPlusConfig {
    fn default() -> Self {
        Self { tolerance: 1e-2, max_evals: 0, max_error: 0.1, order: 2, max_interval: 3, warmup: 0, tail: 2 }
    }
}

impl SadaPlusConfig {
    /// The first steps always computed: `warmup`, raised to `order + 2` (the first step with an error
    /// estimate).
    pub fn effective_warmup(&self) -> usize {
        self.warmup.max(self.order + 2)
    }

    /// The fewest evaluations these settings can spend on `num_steps` steps: warm-up and tail
    /// computed, at most `max_interval` skips between computed steps in between.
    pub fn min_evals(&self, num_steps: usize) -> usize {
        let fixed = (self.effective_warmup() + self.tail).min(num_steps);
        fixed + (num_steps - fixed) / (self.max_interval + 1)
    }

    /// Check the settings against a run of `num_steps` steps (a `max_evals` budget must be reachable).
    pub fn validate(&self, num_steps: usize) -> Result<()> {
        for (name, v) in [("tolerance", self.tolerance), ("max_error", self.max_error)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::param(name, format!("{v} must be a finite number >= 0")));
            }
        }
        if self.order > 4 {
            return Err(Error::param("order", format!("{} is beyond what the predictor supports (0 to 4)", self.order)));
        }
        if self.max_interval == 0 {
            return Err(Error::param("max_interval", "must be at least 1"));
        }
        if self.max_evals > 0 && self.max_evals < self.min_evals(num_steps) {
            return Err(Error::param(
                "max_evals",
                format!(
                    "{} is below the {} evaluations these settings need on {num_steps} steps (warm-up {} + tail {} computed, at most {} skips in a row); raise max_evals or max_interval",
                    self.max_evals,
                    self.min_evals(num_steps),
                    self.effective_warmup(),
                    self.tail,
                    self.max_interval
                ),
            ));
        }
        Ok(())
    }
}

impl Method for SadaPlusConfig {
    /// Flow matching computes its first 10 steps, as SADA's published Flux settings do (its
    /// acc_range starts at 10): on the Gaussian-mixture study an early skip there sends the
    /// trajectory to another mode (3 seeds of 4 at 25 of 50 evaluations with warmup 4, none
    /// with 10), while on the embedded U-Net model early skips are the cheapest ones.
    fn preset(family: Family) -> Self {
        match family {
            Family::Flux => Self { warmup: 10, ..Self::default() },
            Family::StableDiffusion | Family::Sdxl => Self::default(),
        }
    }
    fn policy(&self, _seed: u64) -> Box<dyn Policy> {
        Box::new(SadaPlus::new(self.clone()))
    }
    fn validate(&self, steps: usize) -> Result<()> {
        SadaPlusConfig::validate(self, steps)
    }
    fn sweep(family: Family) -> Vec<Self> {
        [2e-3, 5e-3, 1e-2, 2e-2, 4e-2].into_iter().map(|tolerance| Self { tolerance, ..Self::preset(family) }).collect()
    }
}

/// The step-by-step state of `sada+` for one image.
pub struct SadaPlus {
    cfg: SadaPlusConfig,
    num_steps: usize,
    /// The solver's time variable at every step.
    times: Vec<f64>,
    /// The share of each step's update driven by x0.
    weights: Vec<f64>,
    /// The last computed x0s with their times, oldest first (order + 2 of them: one more than the
    /// predictor uses, to measure its error).
    anchors: VecDeque<(f64, Tensor)>,
    /// The interpolation error constant measured at the last computed step.
    error_constant: Option<f64>,
    plans: Vec<StepPlan>,
    evaluations: usize,
    consecutive_skips: usize,
}

impl SadaPlus {
    /// A fresh state for these settings; the step grid is read from the solver when a run begins.
    pub fn new(cfg: SadaPlusConfig) -> Self {
        Self {
            cfg,
            num_steps: 0,
            times: Vec::new(),
            weights: Vec::new(),
            anchors: VecDeque::new(),
            error_constant: None,
            plans: Vec::new(),
            evaluations: 0,
            consecutive_skips: 0,
        }
    }

    /// The `order + 1` newest anchors: what the predictor extrapolates from.
    fn predictor_anchors(&self) -> impl Iterator<Item = &(f64, Tensor)> {
        self.anchors.iter().skip(self.anchors.len().saturating_sub(self.cfg.order + 1))
    }

    /// The times of [`Self::predictor_anchors`].
    fn predictor_nodes(&self) -> Vec<f64> {
        self.predictor_anchors().map(|(t, _)| *t).collect()
    }

    /// The estimated error of skipping `step`, with the error constant `c` and the predictor's
    /// nodes `nodes`.
    fn estimate(&self, step: usize, c: f64, nodes: &[f64]) -> f64 {
        let t = self.times[step];
        self.weights[step] * c * nodes.iter().map(|ti| (t - ti).abs()).product::<f64>()
    }

    fn may_skip(&self, step: usize, consecutive: usize) -> bool {
        step >= self.cfg.effective_warmup() && step + self.cfg.tail < self.num_steps && consecutive < self.cfg.max_interval
    }

    /// Run the decision rule forward from `from` with threshold `tau`, the current error
    /// constant and nodes, as if C stayed as it is (and with step `from` computed when
    /// `compute_first`): the skips it would make, and whether the first step is one of them.
    fn simulate(&self, from: usize, tau: f64, c: f64, compute_first: bool) -> (usize, bool) {
        let k = self.cfg.order + 1;
        let mut nodes = self.predictor_nodes();
        let (mut consecutive, mut skips, mut first) = (self.consecutive_skips, 0, false);
        for step in from..self.num_steps {
            let skip = !(compute_first && step == from) && self.may_skip(step, consecutive) && nodes.len() == k && self.estimate(step, c, &nodes) <= tau;
            if skip {
                skips += 1;
                consecutive += 1;
            } else {
                consecutive = 0;
                nodes.push(self.times[step]);
                if nodes.len() > k {
                    nodes.remove(0);
                }
            }
            if step == from {
                first = skip;
            }
        }
        (skips, first)
    }

    /// Whether step `step` is skipped, given the error constant `c`.
    fn skip_next(&self, step: usize, c: f64) -> bool {
        if !self.may_skip(step, self.consecutive_skips) || self.predictor_nodes().len() < self.cfg.order + 1 {
            return false;
        }
        if self.cfg.max_evals == 0 {
            return self.estimate(step, c, &self.predictor_nodes()) <= self.cfg.tolerance;
        }
        // The budget: skips still needed so the remaining steps fit the remaining evaluations.
        let remaining_steps = self.num_steps - step;
        let remaining_evals = self.cfg.max_evals.saturating_sub(self.evaluations);
        let needed = remaining_steps.saturating_sub(remaining_evals);
        if needed == 0 {
            return false;
        }
        // A skip estimated beyond max_error waits while the later steps can still make up the
        // needed skips: the plan below assumes C stays as it is, and C is largest early.
        if self.estimate(step, c, &self.predictor_nodes()) > self.cfg.max_error && self.simulate(step, f64::INFINITY, c, true).0 >= needed {
            return false;
        }
        // The smallest threshold whose simulated plan makes the needed skips (bisection in log
        // scale; the count grows with the threshold). If none does, skip whenever allowed.
        let (all, first_all) = self.simulate(step, f64::INFINITY, c, false);
        if all <= needed {
            return first_all;
        }
        let (mut lo, mut hi) = (-60.0f64, 20.0f64);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if self.simulate(step, mid.exp(), c, false).0 >= needed {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        self.simulate(step, hi.exp(), c, false).1
    }
}

/// Root mean square of a tensor's elements.
fn rms(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.sqr()?.mean_all()?.to_scalar::<f64>()?.sqrt())
}

impl Policy for SadaPlus {
    fn begin(&mut self, solver: &dyn Solver, _latent_shape: &[usize], _caps: &Capabilities) -> Result<()> {
        let n = solver.num_steps();
        self.cfg.validate(n)?;
        let times: Vec<f64> = (0..n).map(|s| time_variable(solver, s)).collect();
        if let Some(t) = times.iter().find(|t| !t.is_finite()) {
            return Err(Error::param("steps", format!("the solver's time variable is {t} at a step; sada+ needs finite noise levels")));
        }
        *self = SadaPlus {
            num_steps: n,
            weights: (0..n).map(|s| data_weight(solver, s)).collect(),
            times,
            plans: vec![StepPlan::Compute(TokenPlan::Full); n],
            ..SadaPlus::new(self.cfg.clone())
        };
        Ok(())
    }

    fn plan(&self, step: usize) -> StepPlan {
        self.plans.get(step).cloned().unwrap_or(StepPlan::Compute(TokenPlan::Full))
    }

    fn substitute(&mut self, step: usize, _sample: &Tensor, _solver: &dyn Solver) -> Result<Prediction> {
        let k = self.cfg.order + 1;
        let used: Vec<(f64, Tensor)> = self.predictor_anchors().cloned().collect();
        if used.len() < k {
            return Err(Error::internal(format!("step {step} skipped with {} of {k} anchors", used.len())));
        }
        Ok(Prediction::DataPrediction(lagrange::extrapolate_at(&used, self.times[step])?))
    }

    fn observe(&mut self, step: usize, obs: &Observation, _solver: &dyn Solver) -> Result<Option<f64>> {
        if obs.output.is_some() {
            self.evaluations += 1;
            self.consecutive_skips = 0;
            let t = self.times[step];
            let k = self.cfg.order + 1;
            if self.anchors.len() >= k {
                // What the predictor would have said for this step, against what the network said.
                let used: Vec<(f64, Tensor)> = self.predictor_anchors().cloned().collect();
                let predicted = lagrange::extrapolate_at(&used, t)?;
                let error = rms(&(obs.data_prediction - &predicted)?)? / rms(obs.data_prediction)?.max(1e-12);
                let span: f64 = used.iter().map(|(ti, _)| (t - ti).abs()).product();
                if error.is_finite() && span > 0.0 {
                    self.error_constant = Some(error / span);
                }
            }
            self.anchors.push_back((t, obs.data_prediction.clone()));
            if self.anchors.len() > k + 1 {
                self.anchors.pop_front();
            }
        } else {
            self.consecutive_skips += 1;
        }
        let next = step + 1;
        if next >= self.num_steps {
            return Ok(None);
        }
        let Some(c) = self.error_constant else { return Ok(None) };
        if self.skip_next(next, c) {
            self.plans[next] = StepPlan::Skip(SkipKind::Extrapolate);
        }
        let nodes = self.predictor_nodes();
        Ok((nodes.len() == self.cfg.order + 1).then(|| self.estimate(next, c, &nodes)))
    }
}

/// The time in which `sada+` extrapolates x0, at `step`: lambda = log(alpha_t / sigma_t) =
/// -log(sigma) for DPM-Solver++ (its multistep terms are polynomials in lambda) and for Euler
/// (its sigma spans 14.6 to 0.03 on SD's schedule, and x0 is far smoother in log sigma; the
/// comparison with sigma itself is in docs/sada-plus.md); sigma for flow matching (it reaches 1, where lambda is infinite). Monotone in the
/// step, finite for steps < N.
pub fn time_variable(solver: &dyn Solver, step: usize) -> f64 {
    let sigma = solver.noise(step).sigma;
    match solver.latent_scale() {
        LatentScale::VariancePreserving | LatentScale::VarianceExploding => -sigma.ln(),
        LatentScale::Flow => sigma,
    }
}
/// The share of step `step`'s update that the data prediction drives, in data scale:
/// every solver here moves x/alpha (DPM-Solver++'s first-order part, Euler, flow Euler) as
/// (s_{n+1}/s_n) x + (1 - s_{n+1}/s_n) x0, with s the solver's sigma.
pub fn data_weight(solver: &dyn Solver, step: usize) -> f64 {
    let (s, s_next) = (solver.noise(step).sigma, solver.noise(step + 1).sigma);
    if s > 0.0 {
        (1.0 - s_next / s).clamp(0.0, 1.0)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solvers::{build_solver, presets, FlowTimesteps, SolverKind};
    use candle_core::Device;

    fn solver(kind: SolverKind, steps: usize) -> Box<dyn Solver> {
        let (preset, flow) = match kind {
            SolverKind::FlowMatchEulerDiscrete => {
                (presets::FLUX, FlowTimesteps { sigmas: Some(crate::schedule::flow::flux_default_sigmas(steps)), mu: Some(0.8) })
            }
            _ => (presets::SD21, FlowTimesteps::default()),
        };
        build_solver(kind, &presets::parse(preset), &Default::default(), steps, &flow).unwrap()
    }

    /// A direction that is not a constant, so relative errors are well defined.
    fn direction() -> Tensor {
        Tensor::new(&[0.3f32, -1.2, 0.7, 2.0, -0.4, 1.1], &Device::Cpu).unwrap()
    }

    /// Drive the policy through `solver`'s steps with x0(t) = f(t) * direction at every computed
    /// step (no network, no solver update: only the policy's bookkeeping). Returns the plans,
    /// and for every skip the substitute next to the exact x0 there.
    fn drive(policy: &mut SadaPlus, solver: &dyn Solver, f: &dyn Fn(f64) -> f64) -> (Vec<StepPlan>, Vec<(usize, Tensor, Tensor)>) {
        let v = direction();
        policy.begin(solver, &[6], &Capabilities::default()).unwrap();
        let (mut plans, mut skips) = (Vec::new(), Vec::new());
        for n in 0..solver.num_steps() {
            let plan = policy.plan(n);
            let exact = v.affine(f(time_variable(solver, n)), 0.0).unwrap();
            let x0 = match plan {
                StepPlan::Compute(_) => exact.clone(),
                StepPlan::Skip(_) => match policy.substitute(n, &exact, solver).unwrap() {
                    Prediction::DataPrediction(x0) => x0,
                    Prediction::ModelOutput(_) => panic!("sada+ substitutes a data prediction"),
                },
            };
            if matches!(plan, StepPlan::Skip(_)) {
                skips.push((n, x0.clone(), exact.clone()));
            }
            let output = matches!(plan, StepPlan::Compute(_)).then(|| x0.clone());
            let obs = Observation { sample: &x0, prev_sample: &x0, output: output.as_ref(), data_prediction: &x0 };
            policy.observe(n, &obs, solver).unwrap();
            plans.push(plan);
        }
        (plans, skips)
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        rms(&(a - b).unwrap()).unwrap() / rms(b).unwrap()
    }

    fn evals(plans: &[StepPlan]) -> usize {
        plans.iter().filter(|p| matches!(p, StepPlan::Compute(_))).count()
    }

    #[test]
    fn time_variables_are_lambda_for_dpm_and_euler_and_sigma_for_flow() {
        let dpm = solver(SolverKind::DpmSolverMultistep, 50);
        let lambdas: Vec<f64> = (0..50).map(|n| time_variable(dpm.as_ref(), n)).collect();
        assert!(lambdas.windows(2).all(|w| w[1] > w[0]), "lambda grows as the noise falls");
        let (a, s) = (dpm.noise(7).alpha_t, dpm.noise(7).sigma_t);
        assert!((lambdas[7] - (a / s).ln()).abs() < 1e-6);
        // the grid is far from uniform in lambda: the last steps are the longest
        // far from uniform in lambda: longest at the end, shortest in the middle
        let h: Vec<f64> = lambdas.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(h[48] > 2.5 * h[0] && h[25] < 0.6 * h[0], "{h:?}");
        let euler = solver(SolverKind::EulerDiscrete, 20);
        assert!((0..20).all(|n| time_variable(euler.as_ref(), n) == -euler.noise(n).sigma.ln()));
        let flow = solver(SolverKind::FlowMatchEulerDiscrete, 20);
        assert!((0..20).all(|n| time_variable(flow.as_ref(), n) == flow.noise(n).sigma));
    }

    #[test]
    fn the_predictor_is_exact_on_polynomials_of_its_order_in_the_solvers_time() {
        for kind in [SolverKind::DpmSolverMultistep, SolverKind::EulerDiscrete, SolverKind::FlowMatchEulerDiscrete] {
            let s = solver(kind, 50);
            for order in 0..=3usize {
                // a polynomial of degree `order` in the solver's time, and one of degree order + 1
                let exact = move |t: f64| (0..=order).map(|k| (0.4 - 0.1 * k as f64) * t.powi(k as i32)).sum::<f64>() + 2.0;
                // scaled to the grid so that the extrapolation error is about 1e-2 wherever it is
                let spacing = (time_variable(s.as_ref(), 49) - time_variable(s.as_ref(), 0)).abs() / 49.0;
                let above = move |t: f64| exact(t) + 1e-2 * (t / spacing).powi(order as i32 + 1);
                let cfg = SadaPlusConfig { order, tolerance: 1e9, ..Default::default() };
                let (_, skips) = drive(&mut SadaPlus::new(cfg.clone()), s.as_ref(), &exact);
                assert!(!skips.is_empty(), "{kind:?} order {order}: nothing skipped");
                for (n, got, want) in &skips {
                    assert!(rel_err(got, want) < 2e-5, "{kind:?} order {order}, step {n}: {}", rel_err(got, want));
                }
                let (_, skips) = drive(&mut SadaPlus::new(cfg), s.as_ref(), &above);
                assert!(skips.iter().all(|(_, got, want)| rms(&(got - want).unwrap()).unwrap() > 1e-3), "{kind:?} order {order}: degree order+1 reproduced");
            }
        }
    }

    #[test]
    fn the_error_estimate_predicts_the_error_of_a_skip() {
        // x0 a polynomial of degree order + 1: the Lagrange remainder is then exactly its leading
        // coefficient times prod (t - t_i), so the estimate must match the error a skip makes.
        let s = solver(SolverKind::DpmSolverMultistep, 50);
        let f = |t: f64| 1.0 + 0.2 * t - 0.03 * t * t + 0.01 * t * t * t;
        let mut p = SadaPlus::new(SadaPlusConfig { order: 2, tolerance: 1e9, max_interval: 1, ..Default::default() });
        let v = direction();
        p.begin(s.as_ref(), &[6], &Capabilities::default()).unwrap();
        let mut checked = 0;
        for n in 0..50 {
            let exact = v.affine(f(time_variable(s.as_ref(), n)), 0.0).unwrap();
            let (x0, estimate) = match p.plan(n) {
                StepPlan::Compute(_) => (exact.clone(), None),
                StepPlan::Skip(_) => {
                    let Prediction::DataPrediction(x0) = p.substitute(n, &exact, s.as_ref()).unwrap() else { unreachable!() };
                    (x0, Some(p.estimate(n, p.error_constant.unwrap(), &p.predictor_nodes())))
                }
            };
            if let Some(est) = estimate {
                // the estimate is relative to the last computed x0, the error to this one
                let want = data_weight(s.as_ref(), n) * rel_err(&x0, &exact);
                assert!((est / want - 1.0).abs() < 0.35, "step {n}: estimate {est:.3e}, error {want:.3e}");
                checked += 1;
            }
            let output = estimate.is_none().then(|| x0.clone());
            p.observe(n, &Observation { sample: &x0, prev_sample: &x0, output: output.as_ref(), data_prediction: &x0 }, s.as_ref()).unwrap();
        }
        assert!(checked > 10, "only {checked} skips checked");
    }

    #[test]
    fn a_tighter_tolerance_never_skips_more() {
        let s = solver(SolverKind::DpmSolverMultistep, 50);
        let f = |t: f64| (0.7 * t).sin() + 0.1 * t;
        let mut last = usize::MAX;
        let mut counts = Vec::new();
        for tolerance in [1e3, 1e-1, 1e-2, 1e-3, 1e-4, 0.0] {
            let (plans, _) = drive(&mut SadaPlus::new(SadaPlusConfig { tolerance, ..Default::default() }), s.as_ref(), &f);
            let skips = 50 - evals(&plans);
            assert!(skips <= last, "tolerance {tolerance}: {skips} skips, more than a looser one's {last}");
            last = skips;
            counts.push(skips);
        }
        let cfg = SadaPlusConfig::default();
        assert_eq!(counts[0], 50 - cfg.min_evals(50), "a huge tolerance skips all it may");
        assert_eq!(*counts.last().unwrap(), 0, "tolerance 0 skips nothing on a curved trajectory");
        assert!(counts.iter().any(|&c| c > 0 && c < counts[0]), "{counts:?}: no tolerance in between");
    }

    #[test]
    fn a_budget_is_spent_exactly_and_on_the_hardest_steps() {
        let s = solver(SolverKind::DpmSolverMultistep, 50);
        let f = |t: f64| (0.7 * t).sin() + 0.1 * t;
        let min = SadaPlusConfig::default().min_evals(50);
        for budget in [min, 20, 25, 30, 40, 49, 50] {
            let cfg = SadaPlusConfig { max_evals: budget, ..Default::default() };
            let (plans, _) = drive(&mut SadaPlus::new(cfg), s.as_ref(), &f);
            assert_eq!(evals(&plans), budget, "budget {budget}");
            let run = plans.iter().fold((0, 0), |(best, cur), p| if matches!(p, StepPlan::Skip(_)) { (best.max(cur + 1), cur + 1) } else { (best, 0) }).0;
            assert!(run <= 3, "budget {budget}: {run} skips in a row");
            assert!(plans[..4].iter().chain(&plans[48..]).all(|p| matches!(p, StepPlan::Compute(_))), "warm-up and tail computed");
        }
        // lambda steps grow towards the end, so the computed steps crowd there
        let (plans, _) = drive(&mut SadaPlus::new(SadaPlusConfig { max_evals: 25, ..Default::default() }), s.as_ref(), &f);
        let (first, second) = (evals(&plans[4..26]), evals(&plans[26..48]));
        assert!(second > first, "computed steps: {first} in 4..26, {second} in 26..48");
        let e = SadaPlusConfig { max_evals: min - 1, ..Default::default() }.validate(50).unwrap_err().to_string();
        assert!(e.contains("max_evals") && e.contains(&min.to_string()), "{e}");
    }
}
