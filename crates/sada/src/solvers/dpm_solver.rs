//! `DPMSolverMultistepScheduler` with `algorithm_type = "dpmsolver++"` (Lu et al. 2022): orders 1-3,
//! midpoint/heun second-order variants, diffusers' lower-order tricks near the end.

use std::collections::VecDeque;

use candle_core::Tensor;
use serde::Deserialize;

use super::config::{require_off, scale, vp_alpha_sigma, FinalSigmas};
use super::{check_step_order, LatentScale, Prediction, PredictionType, Solver, SolverStep, StepNoise};
use crate::error::{Error, Result};
use crate::schedule::timesteps::dpm_timesteps;
use crate::schedule::{karras_sigmas, sigma_to_t, NoiseSchedule, TimestepSpacing, TrainingSchedule};

/// The keys of diffusers' `DPMSolverMultistepScheduler`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DpmSolverConfig {
    /// The training schedule (`num_train_timesteps`, betas), read from the same keys.
    #[serde(flatten)]
    pub schedule: TrainingSchedule,
    /// 1, 2 or 3: how many past data predictions the multistep update uses.
    pub solver_order: usize,
    /// What the network predicts.
    pub prediction_type: PredictionType,
    /// Dynamic thresholding; only `false` is supported.
    pub thresholding: bool,
    /// The algorithm; only `dpmsolver++` is supported.
    pub algorithm_type: String,
    /// The second-order update: `midpoint` or `heun`.
    pub solver_type: String,
    /// Take lower-order steps at the end of short runs (under 15 steps), for stability.
    pub lower_order_final: bool,
    /// Take the last step first-order (Euler).
    pub euler_at_final: bool,
    /// Karras et al.'s sigma spacing instead of `timestep_spacing`.
    pub use_karras_sigmas: Option<bool>,
    /// Exponential sigma spacing; not supported (must be off).
    pub use_exponential_sigmas: Option<bool>,
    /// Beta-distribution sigma spacing; not supported (must be off).
    pub use_beta_sigmas: Option<bool>,
    /// Lu et al.'s uniform-lambda spacing; not supported (must be off).
    pub use_lu_lambdas: Option<bool>,
    /// Flow-matching sigmas; not supported (must be off).
    pub use_flow_sigmas: Option<bool>,
    /// `zero` (the default) or `sigma_min`: the sigma after the last step.
    pub final_sigmas_type: Option<String>,
    /// Absent means -inf (no clipping); JSON cannot spell -inf.
    pub lambda_min_clipped: Option<f64>,
    /// Learned variance; only absent (null) is supported.
    pub variance_type: Option<String>,
    /// How the inference timesteps are picked from the training grid.
    pub timestep_spacing: TimestepSpacing,
    /// Added to every timestep with `leading` spacing (SD-1.x and SDXL use 1).
    pub steps_offset: usize,
}

impl Default for DpmSolverConfig {
    fn default() -> Self {
        Self {
            schedule: TrainingSchedule::default(),
            solver_order: 2,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            algorithm_type: "dpmsolver++".into(),
            solver_type: "midpoint".into(),
            lower_order_final: true,
            euler_at_final: false,
            use_karras_sigmas: None,
            use_exponential_sigmas: None,
            use_beta_sigmas: None,
            use_lu_lambdas: None,
            use_flow_sigmas: None,
            final_sigmas_type: None,
            lambda_min_clipped: None,
            variance_type: None,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecondOrder {
    Midpoint,
    Heun,
}

/// diffusers' `DPMSolverMultistepScheduler` (DPM-Solver++, orders 1 to 3), set to a step count.
pub struct DpmSolverMultistep {
    schedule: NoiseSchedule,
    prediction_type: PredictionType,
    order: usize,
    second_order: SecondOrder,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigmas: FinalSigmas,
    timesteps: Vec<f64>,
    /// `scheduler.sigmas`: N + 1 float32 values, the last one the final sigma.
    sigmas: Vec<f32>,
    /// Data predictions of the last `order` steps, oldest first.
    history: VecDeque<Tensor>,
    lower_order_nums: usize,
    next_step: usize,
}

impl DpmSolverMultistep {
    /// `from_config(config).set_timesteps(num_inference_steps)`, refusing options this port does not
    /// implement.
    pub fn new(config: &DpmSolverConfig, num_inference_steps: usize) -> Result<Self> {
        super::check_num_steps(num_inference_steps, config.schedule.num_train_timesteps)?;
        if config.steps_offset >= config.schedule.num_train_timesteps {
            return Err(Error::unsupported("steps_offset", config.steps_offset, "must be below num_train_timesteps"));
        }
        if config.algorithm_type != "dpmsolver++" {
            return Err(Error::unsupported("algorithm_type", &config.algorithm_type, "only dpmsolver++ is supported"));
        }
        if !(1..=3).contains(&config.solver_order) {
            return Err(Error::unsupported("solver_order", config.solver_order, "expected 1, 2 or 3"));
        }
        let second_order = match config.solver_type.as_str() {
            "midpoint" => SecondOrder::Midpoint,
            "heun" => SecondOrder::Heun,
            other => return Err(Error::unsupported("solver_type", other, "expected midpoint or heun")),
        };
        if config.thresholding {
            return Err(Error::unsupported("thresholding", true, "only false is supported"));
        }
        require_off("use_exponential_sigmas", config.use_exponential_sigmas)?;
        require_off("use_beta_sigmas", config.use_beta_sigmas)?;
        require_off("use_lu_lambdas", config.use_lu_lambdas)?;
        require_off("use_flow_sigmas", config.use_flow_sigmas)?;
        if let Some(v) = &config.variance_type {
            return Err(Error::unsupported("variance_type", v, "only null is supported"));
        }
        let (prediction_type, spacing) = (config.prediction_type, config.timestep_spacing);
        let final_sigmas = FinalSigmas::parse(config.final_sigmas_type.as_deref())?;
        let schedule = NoiseSchedule::new(&config.schedule)?;
        let num_train = config.schedule.num_train_timesteps;

        // lambda_min_clipped cuts the noisiest end of the grid (diffusers: searchsorted on flipped lambda_t).
        let clipped_idx = match config.lambda_min_clipped {
            None => 0,
            Some(min) => schedule
                .alphas_cumprod
                .iter()
                .rev()
                .filter(|&&a| {
                    let (alpha, sigma) = (a.sqrt(), (1.0 - a).sqrt());
                    ((alpha.ln() - sigma.ln()) as f64) < min
                })
                .count(),
        };
        let last_timestep = num_train - clipped_idx;

        let table = schedule.sigmas();
        let log_sigmas = schedule.log_sigmas();
        let (timesteps, mut sigmas): (Vec<f64>, Vec<f32>) = if config.use_karras_sigmas.unwrap_or(false) {
            let karras = karras_sigmas(table[0] as f64, table[num_train - 1] as f64, num_inference_steps);
            // diffusers rounds Karras timesteps unless the schedule is the cosine one
            let round = config.schedule.beta_schedule != crate::schedule::BetaSchedule::SquaredcosCapV2;
            let ts = karras
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &log_sigmas);
                    if round {
                        crate::schedule::round_half_even(t)
                    } else {
                        t
                    }
                })
                // diffusers stores DPM timesteps as int64
                .map(|t| t.trunc())
                .collect();
            (ts, karras.iter().map(|&s| s as f32).collect())
        } else {
            let ts = dpm_timesteps(spacing, num_inference_steps, num_train, last_timestep, config.steps_offset);
            if let Some(t) = ts.iter().find(|&&t| t < 0.0 || t >= num_train as f64) {
                return Err(Error::param("num_inference_steps", format!("timestep {t} falls outside the training grid 0..{num_train} with this spacing")));
            }
            let s = ts.iter().map(|&t| crate::schedule::interp_table(t, &table) as f32).collect();
            (ts, s)
        };
        sigmas.push(final_sigmas.value(&schedule.alphas_cumprod));

        Ok(Self {
            schedule,
            prediction_type,
            order: config.solver_order,
            second_order,
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            final_sigmas,
            timesteps,
            sigmas,
            history: VecDeque::new(),
            lower_order_nums: 0,
            next_step: 0,
        })
    }

    /// `scheduler.sigmas` (N + 1 values).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The training schedule's `alphas_cumprod`.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.schedule.alphas_cumprod
    }

    fn lambda(&self, i: usize) -> (f32, f32, f32) {
        let (alpha, sigma) = vp_alpha_sigma(self.sigmas[i]);
        (alpha, sigma, alpha.ln() - sigma.ln())
    }

    fn first_order(&self, n: usize, sample: &Tensor, x0: &Tensor) -> Result<Tensor> {
        let (alpha_t, sigma_t, lambda_t) = self.lambda(n + 1);
        let (_, sigma_s, lambda_s) = self.lambda(n);
        let h = lambda_t - lambda_s;
        Ok((scale(sample, sigma_t / sigma_s)? - scale(x0, alpha_t * ((-h).exp() - 1.0))?)?)
    }

    fn second_order(&self, n: usize, sample: &Tensor) -> Result<Tensor> {
        let (alpha_t, sigma_t, lambda_t) = self.lambda(n + 1);
        let (_, sigma_s0, lambda_s0) = self.lambda(n);
        let (_, _, lambda_s1) = self.lambda(n - 1);
        let k = self.history.len();
        let (m0, m1) = (&self.history[k - 1], &self.history[k - 2]);
        let (h, h_0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        let d1 = scale(&(m0 - m1)?, 1.0 / r0)?;
        let em1 = (-h).exp() - 1.0;
        let base = (scale(sample, sigma_t / sigma_s0)? - scale(m0, alpha_t * em1)?)?;
        Ok(match self.second_order {
            SecondOrder::Midpoint => (base - scale(&d1, 0.5 * (alpha_t * em1))?)?,
            SecondOrder::Heun => (base + scale(&d1, alpha_t * (em1 / h + 1.0))?)?,
        })
    }

    fn third_order(&self, n: usize, sample: &Tensor) -> Result<Tensor> {
        let (alpha_t, sigma_t, lambda_t) = self.lambda(n + 1);
        let (_, sigma_s0, lambda_s0) = self.lambda(n);
        let (_, _, lambda_s1) = self.lambda(n - 1);
        let (_, _, lambda_s2) = self.lambda(n - 2);
        let k = self.history.len();
        let (m0, m1, m2) = (&self.history[k - 1], &self.history[k - 2], &self.history[k - 3]);
        let (h, h_0, h_1) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d1_0 = scale(&(m0 - m1)?, 1.0 / r0)?;
        let d1_1 = scale(&(m1 - m2)?, 1.0 / r1)?;
        let diff = (&d1_0 - &d1_1)?;
        let d1 = (&d1_0 + scale(&diff, r0 / (r0 + r1))?)?;
        let d2 = scale(&diff, 1.0 / (r0 + r1))?;
        let em1 = (-h).exp() - 1.0;
        let x = (scale(sample, sigma_t / sigma_s0)? - scale(m0, alpha_t * em1)?)?;
        let x = (x + scale(&d1, alpha_t * (em1 / h + 1.0))?)?;
        Ok((x - scale(&d2, alpha_t * ((em1 + h) / (h * h) - 0.5))?)?)
    }
}

impl Solver for DpmSolverMultistep {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    fn latent_scale(&self) -> LatentScale {
        LatentScale::VariancePreserving
    }

    fn noise(&self, step: usize) -> StepNoise {
        let sigma = self.sigmas[step];
        let (alpha_t, sigma_t) = vp_alpha_sigma(sigma);
        let timestep = self.timesteps.get(step).copied().unwrap_or(0.0);
        StepNoise { timestep, sigma: sigma as f64, alpha_t: alpha_t as f64, sigma_t: sigma_t as f64 }
    }

    fn noise_schedule(&self) -> Option<&NoiseSchedule> {
        Some(&self.schedule)
    }

    fn scale_model_input(&self, sample: &Tensor, _step: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn data_prediction(&self, model_output: &Tensor, sample: &Tensor, step: usize) -> Result<Tensor> {
        let (alpha_t, sigma_t) = vp_alpha_sigma(self.sigmas[step]);
        Ok(match self.prediction_type {
            PredictionType::Epsilon => super::config::div_scalar(&(sample - scale(model_output, sigma_t)?)?, alpha_t)?,
            PredictionType::VPrediction => (scale(sample, alpha_t)? - scale(model_output, sigma_t)?)?,
            PredictionType::Sample => model_output.clone(),
            PredictionType::FlowVelocity => unreachable!("DPM-Solver++ is built with a VP prediction type"),
        })
    }

    fn step(&mut self, step: usize, sample: &Tensor, prediction: Prediction) -> Result<SolverStep> {
        let n_steps = self.timesteps.len();
        check_step_order(self.next_step, step, n_steps)?;
        let x0 = match prediction {
            Prediction::ModelOutput(o) => self.data_prediction(&o, sample, step)?,
            Prediction::DataPrediction(x0) => x0,
        };
        let short = n_steps < 15;
        let lower_order_final = step == n_steps - 1 && (self.euler_at_final || (self.lower_order_final && short) || self.final_sigmas == FinalSigmas::Zero);
        let lower_order_second = step + 2 == n_steps && self.lower_order_final && short;

        self.history.push_back(x0.clone());
        if self.history.len() > self.order {
            self.history.pop_front();
        }
        let prev_sample = if self.order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(step, sample, &x0)?
        } else if self.order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(step, sample)?
        } else {
            self.third_order(step, sample)?
        };
        if self.lower_order_nums < self.order {
            self.lower_order_nums += 1;
        }
        self.next_step += 1;
        Ok(SolverStep { prev_sample, data_prediction: x0 })
    }

    fn reset(&mut self) {
        self.history.clear();
        self.lower_order_nums = 0;
        self.next_step = 0;
    }
}
