//! The SADA policy in reference mode (`docs/method.md` §2-§7): the stability criterion decides,
//! after each step, whether the next one is computed (in full, or with token pruning) or skipped,
//! and supplies the approximation a skipped step uses.

use std::collections::VecDeque;

use candle_core::{DType, Tensor};

mod config;
mod rule;
mod token_score;

pub use config::SadaConfig;
use rule::{CacheUse, DecisionRule};

use super::lagrange;
use super::method::Method;
use super::plan::{Observation, Policy, SkipKind, StepPlan};
use crate::denoiser::{Capabilities, TokenPlan, TokenSelection};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::solvers::{LatentScale, Prediction, PredictionType, Solver};

/// The SADA policy. One instance samples one image at a time; [`Policy::begin`] resets it.
pub struct Sada {
    cfg: SadaConfig,
    /// Seed of the token-selection generator (the reference leaves it unseeded): the run's.
    seed: u64,
    num_steps: usize,
    latent: LatentScale,
    prediction_type: PredictionType,
    /// The finest token grid (height, width) when the denoiser prunes tokens: the latent grid
    /// over `token_patch`.
    token_grid: Option<(usize, usize)>,
    token_patch: usize,
    plans: Vec<StepPlan>,
    /// Last three drifts f (VP/VE solvers), oldest first.
    drifts: VecDeque<Tensor>,
    /// Last three velocities (flow matching), oldest first.
    velocities: VecDeque<Tensor>,
    /// The velocity the last skipped flow step used.
    substituted_velocity: Option<Tensor>,
    anchors: VecDeque<(usize, Tensor)>,
    last_output: Option<Tensor>,
    pending: Option<Prediction>,
    rule: DecisionRule,
}

impl Sada {
    /// SADA with `cfg`, its token selection drawn from `seed` (the run's seed).
    pub fn new(cfg: SadaConfig, seed: u64) -> Self {
        Self {
            seed,
            num_steps: 0,
            latent: LatentScale::VariancePreserving,
            prediction_type: PredictionType::Epsilon,
            token_grid: None,
            token_patch: 1,
            plans: Vec::new(),
            drifts: VecDeque::new(),
            velocities: VecDeque::new(),
            substituted_velocity: None,
            anchors: VecDeque::new(),
            last_output: None,
            pending: None,
            rule: DecisionRule::new(&cfg),
            cfg,
        }
    }

    /// The settings it was made with (`acc_range`, `max_interval`, ...).
    pub fn config(&self) -> &SadaConfig {
        &self.cfg
    }

    /// The ODE drift f_n in VP scale (§2), from x_n in VP scale and the guided output `o`.
    fn drift(&self, n: usize, x_vp: &Tensor, o: &Tensor, solver: &dyn Solver) -> Result<Tensor> {
        let nz = solver.noise(n);
        let schedule = solver.noise_schedule().ok_or_else(|| Error::internal("SADA's drift needs a diffusion solver's training schedule"))?;
        // the reference reads the training tables at int(t): betas[t], sqrt(alphas_cumprod[t])
        let coef = 0.5 * schedule.beta_at(nz.timestep) * self.num_steps as f64;
        match self.prediction_type {
            PredictionType::Epsilon => Ok((x_vp.affine(-coef, 0.0)? + o.affine(coef / nz.sigma_t, 0.0)?)?),
            PredictionType::VPrediction => {
                // The reference uses the table's sqrt(alphas_cumprod) for DPM-Solver (it differs
                // from the sigma-derived alpha with Karras sigmas) and that alpha for Euler.
                let alpha = match self.latent {
                    LatentScale::VarianceExploding => nz.alpha_t,
                    _ => schedule.sqrt_alphas_cumprod_at(nz.timestep),
                };
                Ok(o.affine(coef / nz.sigma_t * alpha, 0.0)?)
            }
            other => Err(Error::internal(format!("SADA's drift for {other:?} (begin() refuses it)"))),
        }
    }

    fn to_vp(&self, x: &Tensor, n: usize, solver: &dyn Solver) -> Result<Tensor> {
        Ok(match self.latent {
            LatentScale::VarianceExploding => x.affine(solver.noise(n).alpha_t, 0.0)?,
            _ => x.clone(),
        })
    }

    fn observe_vp(&mut self, n: usize, obs: &Observation, o: &Tensor, solver: &dyn Solver) -> Result<Option<(f64, Tensor)>> {
        let x_vp = self.to_vp(obs.sample, n, solver)?;
        let f = self.drift(n, &x_vp, o, solver)?;
        self.drifts.push_back(f);
        if self.drifts.len() > 3 {
            self.drifts.pop_front();
        }
        if self.cfg.lagrange_term > 0 && n % self.cfg.lagrange_int == 1 {
            let x0 = match self.latent {
                LatentScale::VarianceExploding => obs.data_prediction.affine(1.0 / solver.noise(n).alpha_t, 0.0)?,
                _ => obs.data_prediction.clone(),
            };
            self.anchors.push_back((n, x0));
            if self.anchors.len() > self.cfg.lagrange_term {
                self.anchors.pop_front();
            }
        }
        if self.drifts.len() < 3 || n + 1 >= self.num_steps {
            return Ok(None);
        }
        let (f2, f1, f0) = (&self.drifts[0], &self.drifts[1], &self.drifts[2]);
        let delta = 1.0 / self.num_steps as f64;
        // Third-order Adams-Moulton-style predictor, coefficients as in the reference code.
        let xhat_vp = (((x_vp - f0.affine(0.625 * delta, 0.0)?)? - f1.affine(0.75 * delta, 0.0)?)? + f2.affine(0.375 * delta, 0.0)?)?;
        let xhat = match self.latent {
            LatentScale::VarianceExploding => xhat_vp.affine(1.0 / solver.noise(n + 1).alpha_t, 0.0)?,
            _ => xhat_vp,
        };
        let residual = (obs.prev_sample - &xhat)?;
        let curvature = ((f0 - f1)? - (f1 - f2)?)?;
        let m = (residual * curvature)?;
        let criterion = mean(&m)?;

        // Prepare the AM substitute in case step n+1 is skipped: x0 of the stale output at the
        // predicted sample (Euler v-prediction uses the real x_{n+1}, as the reference does).
        let base = match (self.latent, self.prediction_type) {
            (LatentScale::VarianceExploding, PredictionType::VPrediction) => obs.prev_sample,
            _ => &xhat,
        };
        self.pending = Some(Prediction::DataPrediction(solver.data_prediction(o, base, n + 1)?));
        Ok(Some((criterion, m)))
    }

    fn observe_flow(&mut self, obs: &Observation) -> Result<Option<(f64, Tensor)>> {
        let used = match obs.output {
            Some(o) => {
                self.velocities.push_back(o.clone());
                if self.velocities.len() > 3 {
                    self.velocities.pop_front();
                }
                o.clone()
            }
            None => self.substituted_velocity.take().ok_or_else(|| Error::internal("a skipped flow step without a substitute velocity"))?,
        };
        if self.velocities.len() < 3 {
            return Ok(None);
        }
        let (h3, h2) = (&self.velocities[0], &self.velocities[1]);
        if obs.output.is_none() {
            // After a skip the history is [h3, h2, h2] and the step used 2 h2 - h3, so
            // m = (h2 - (2 h2 - h3)) + (h2 - h3) is exactly zero; computing it would leave
            // rounding noise of either sign (about 1e-9), and the decision `mean(m) <= 0` would
            // then depend on the dtype and the device. The exact value keeps every run on one path.
            return Ok(Some((0.0, h2.zeros_like()?)));
        }
        let m = ((h2 - &used)? + (h2 - h3)?)?;
        Ok(Some((mean(&m)?, m)))
    }

    fn decide(&mut self, n: usize, criterion: Option<f64>, m: Option<&Tensor>) -> Result<()> {
        let stable = criterion.is_some_and(|v| v <= 0.0);
        self.plans[n + 1] = match self.rule.decide(n, stable) {
            Some(kind) => StepPlan::Skip(kind),
            None => StepPlan::Compute(self.token_plan(n + 1, m)?),
        };
        Ok(())
    }

    fn token_plan(&self, s: usize, m: Option<&Tensor>) -> Result<TokenPlan> {
        let Some((h, w)) = self.token_grid else { return Ok(TokenPlan::Full) };
        match (self.rule.cache_use(s), m) {
            (CacheUse::None, _) => Ok(TokenPlan::Full),
            (CacheUse::Refresh, _) | (CacheUse::Prune, None) => Ok(TokenPlan::Refresh),
            (CacheUse::Prune, Some(m)) => {
                // Score per token: m averaged over batch, channels and the token's latent patch.
                let p = self.token_patch;
                let per_pixel = m.to_dtype(DType::F32)?.mean(0)?.mean(0)?;
                let per_token: Vec<f32> = if p > 1 {
                    per_pixel.narrow(0, 0, h * p)?.narrow(1, 0, w * p)?.reshape((h, p, w, p))?.mean(3)?.mean(1)?.flatten_all()?.to_vec1()?
                } else {
                    per_pixel.flatten_all()?.to_vec1()?
                };
                let score = token_score::score_map(&per_token, self.cfg.max_fix);
                let seed = self.seed ^ (s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                Ok(TokenPlan::Pruned(TokenSelection::new(score, h, w, self.cfg.sy, self.cfg.sx, seed, self.cfg.max_downsample)))
            }
        }
    }
}

fn mean(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?)
}

impl Policy for Sada {
    fn begin(&mut self, solver: &dyn Solver, latent_shape: &[usize], caps: &Capabilities) -> Result<()> {
        let n = solver.num_steps();
        self.cfg.validate(n)?;
        let prediction_type = solver.prediction_type();
        if prediction_type == PredictionType::Sample {
            return Err(Error::param("prediction_type", "SADA's drift is defined for epsilon, v_prediction and flow velocity outputs, not sample"));
        }
        let patch = caps.token_patch.max(1);
        *self = Sada {
            num_steps: n,
            latent: solver.latent_scale(),
            prediction_type,
            token_grid: (caps.token_pruning && self.cfg.max_downsample > 0 && latent_shape.len() == 4)
                .then(|| (latent_shape[2] / patch, latent_shape[3] / patch)),
            token_patch: patch,
            plans: vec![StepPlan::Compute(TokenPlan::Full); n],
            ..Sada::new(self.cfg.clone(), self.seed)
        };
        Ok(())
    }

    fn plan(&self, step: usize) -> StepPlan {
        self.plans.get(step).cloned().unwrap_or(StepPlan::Compute(TokenPlan::Full))
    }

    fn substitute(&mut self, step: usize, _sample: &Tensor, solver: &dyn Solver) -> Result<Prediction> {
        let kind = match self.plan(step) {
            StepPlan::Skip(k) => k,
            StepPlan::Compute(_) => return Err(Error::internal(format!("step {step} is not planned as a skip"))),
        };
        if self.latent == LatentScale::Flow {
            // Repeat the last velocity in the history, then extrapolate linearly (§6).
            let last = self.velocities.back().cloned().ok_or_else(|| Error::internal("a flow skip before any velocity was recorded"))?;
            self.velocities.push_back(last);
            self.velocities.pop_front();
            let (h3, h2) = (&self.velocities[0], &self.velocities[1]);
            let v = (h2 + (h2 - h3)?)?;
            self.substituted_velocity = Some(v.clone());
            return Ok(Prediction::ModelOutput(v));
        }
        match kind {
            SkipKind::AdamsMoulton => self.pending.take().ok_or_else(|| Error::internal(format!("no substitute prepared for step {step}"))),
            SkipKind::Reuse | SkipKind::Extrapolate => Err(Error::internal(format!("SADA never plans {kind:?}"))),
            SkipKind::Lagrange => {
                let anchors: Vec<(usize, Tensor)> = self.anchors.iter().cloned().collect();
                let x0 = lagrange::extrapolate(&anchors, step)?;
                let x0 = match self.latent {
                    LatentScale::VarianceExploding => x0.affine(solver.noise(step).alpha_t, 0.0)?,
                    _ => x0,
                };
                Ok(Prediction::DataPrediction(x0))
            }
        }
    }

    fn observe(&mut self, step: usize, obs: &Observation, solver: &dyn Solver) -> Result<Option<f64>> {
        let result = if self.latent == LatentScale::Flow {
            self.observe_flow(obs)?
        } else {
            let o = match obs.output {
                Some(o) => {
                    self.last_output = Some(o.clone());
                    o.clone()
                }
                // A skipped step's bookkeeping output is the last real one (§5).
                None => self.last_output.clone().ok_or_else(|| Error::internal("a skip before any computed step"))?,
            };
            self.pending = None;
            self.observe_vp(step, obs, &o, solver)?
        };
        let (criterion, m) = match result {
            Some((c, m)) => (Some(c), Some(m)),
            None => (None, None),
        };
        if step + 1 < self.num_steps {
            self.decide(step, criterion, m.as_ref())?;
        }
        Ok(criterion)
    }
}

impl Method for SadaConfig {
    fn preset(family: Family) -> Self {
        match family {
            Family::StableDiffusion => SadaConfig::sd2(),
            Family::Sdxl => SadaConfig::sdxl(),
            Family::Flux => SadaConfig::flux(),
        }
    }
    fn policy(&self, seed: u64) -> Box<dyn Policy> {
        Box::new(Sada::new(self.clone(), seed))
    }
    fn validate(&self, steps: usize) -> Result<()> {
        SadaConfig::validate(self, steps)
    }
}
