//! `DDIMScheduler` with eta = 0 (Song et al. 2021): the deterministic step
//! x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, both predicted from the network's output at
//! the current timestep. SD-2.1 ships it; MusicLDM too.
//!
//! diffusers' quirk kept: the previous timestep is always `t - num_train_timesteps / n`, whatever
//! the spacing (with `trailing`, the grid's own neighbour differs), and below 0 it takes the
//! final alpha (1 with `set_alpha_to_one`, else the first training alpha).

use candle_core::Tensor;
use serde::Deserialize;

use super::config::scale;
use super::{check_step_order, LatentScale, Prediction, PredictionType, Solver, SolverStep, StepNoise};
use crate::error::{Error, Result};
use crate::schedule::timesteps::ddim_timesteps;
use crate::schedule::{NoiseSchedule, TimestepSpacing, TrainingSchedule};

/// The keys of diffusers' `DDIMScheduler`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DdimConfig {
    /// The training schedule (`num_train_timesteps`, betas), read from the same keys.
    #[serde(flatten)]
    pub schedule: TrainingSchedule,
    /// What the network predicts.
    pub prediction_type: PredictionType,
    /// Clamp the predicted x0 to `clip_sample_range` (on by default in diffusers; SD's configs
    /// turn it off).
    pub clip_sample: bool,
    /// The clamp's bound.
    pub clip_sample_range: f64,
    /// The alpha after the last step is 1 (else the first training alpha).
    pub set_alpha_to_one: bool,
    /// Added to every timestep with `leading` spacing.
    pub steps_offset: usize,
    /// How the inference timesteps are picked from the training grid.
    pub timestep_spacing: TimestepSpacing,
    /// Dynamic thresholding (Imagen); not supported (must be off).
    pub thresholding: bool,
}

impl Default for DdimConfig {
    fn default() -> Self {
        Self {
            schedule: TrainingSchedule::default(),
            prediction_type: PredictionType::Epsilon,
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            timestep_spacing: TimestepSpacing::Leading,
            thresholding: false,
        }
    }
}

/// diffusers' `DDIMScheduler` (eta 0), set to a step count.
pub struct Ddim {
    schedule: NoiseSchedule,
    config: DdimConfig,
    timesteps: Vec<f64>,
    /// `num_train_timesteps / n`: how far back each step's previous timestep lies.
    stride: i64,
    final_alpha_cumprod: f32,
    next_step: usize,
}

impl Ddim {
    /// `from_config(config).set_timesteps(num_inference_steps)`, refusing options this port does not
    /// implement.
    pub fn new(config: &DdimConfig, num_inference_steps: usize) -> Result<Self> {
        let num_train = config.schedule.num_train_timesteps;
        super::check_num_steps(num_inference_steps, num_train)?;
        if config.thresholding {
            return Err(Error::unsupported("thresholding", true, "only false is supported"));
        }
        if config.prediction_type == PredictionType::FlowVelocity {
            return Err(Error::unsupported("prediction_type", "flow", "DDIM takes epsilon, sample or v_prediction"));
        }
        if !(config.clip_sample_range.is_finite() && config.clip_sample_range > 0.0) {
            return Err(Error::unsupported("clip_sample_range", config.clip_sample_range, "a positive number"));
        }
        let n = num_inference_steps;
        let timesteps = ddim_timesteps(config.timestep_spacing, n, num_train, config.steps_offset);
        if let Some(t) = timesteps.iter().find(|&&t| t < 0.0 || t > (num_train - 1) as f64) {
            return Err(Error::param("num_inference_steps", format!("timestep {t} falls outside the training grid 0..{num_train} with this spacing")));
        }
        let schedule = NoiseSchedule::new(&config.schedule)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { schedule.alphas_cumprod[0] };
        Ok(Self { schedule, config: config.clone(), timesteps, stride: (num_train / n) as i64, final_alpha_cumprod, next_step: 0 })
    }

    /// alphas_cumprod at timestep `t`, the final alpha below 0.
    fn alpha_at(&self, t: i64) -> f32 {
        if t >= 0 {
            self.schedule.alphas_cumprod[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// (alpha_prod_t, alpha_prod_t_prev) of step `step`.
    fn alphas(&self, step: usize) -> (f32, f32) {
        let t = self.timesteps[step] as i64;
        (self.alpha_at(t), self.alpha_at(t - self.stride))
    }

    /// x0 and eps from the network's output at alpha `a`.
    fn predictions(&self, out: &Tensor, sample: &Tensor, a: f32) -> Result<(Tensor, Tensor)> {
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        Ok(match self.config.prediction_type {
            PredictionType::Epsilon => ((sample - scale(out, sb)?)?.affine(1.0 / sa as f64, 0.0)?, out.clone()),
            PredictionType::Sample => (out.clone(), (sample - scale(out, sa)?)?.affine(1.0 / sb as f64, 0.0)?),
            PredictionType::VPrediction => ((scale(sample, sa)? - scale(out, sb)?)?, (scale(out, sa)? + scale(sample, sb)?)?),
            PredictionType::FlowVelocity => unreachable!("refused in new"),
        })
    }
}

impl Solver for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn prediction_type(&self) -> PredictionType {
        self.config.prediction_type
    }

    fn latent_scale(&self) -> LatentScale {
        LatentScale::VariancePreserving
    }

    fn noise(&self, step: usize) -> StepNoise {
        // after the last step: the alpha the last step lands on
        let (timestep, a) = match self.timesteps.get(step) {
            Some(&t) => (t, self.alphas(step).0),
            None => (0.0, self.timesteps.last().map_or(self.final_alpha_cumprod, |&t| self.alpha_at(t as i64 - self.stride))),
        };
        let (alpha_t, sigma_t) = (a.sqrt() as f64, (1.0 - a).sqrt() as f64);
        StepNoise { timestep, sigma: sigma_t / alpha_t, alpha_t, sigma_t }
    }

    fn noise_schedule(&self) -> Option<&NoiseSchedule> {
        Some(&self.schedule)
    }

    fn scale_model_input(&self, sample: &Tensor, _step: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn data_prediction(&self, model_output: &Tensor, sample: &Tensor, step: usize) -> Result<Tensor> {
        Ok(self.predictions(model_output, sample, self.alphas(step).0)?.0)
    }

    fn step(&mut self, step: usize, sample: &Tensor, prediction: Prediction) -> Result<SolverStep> {
        check_step_order(self.next_step, step, self.timesteps.len())?;
        let (a, a_prev) = self.alphas(step);
        let (x0, eps) = match prediction {
            Prediction::ModelOutput(o) => self.predictions(&o, sample, a)?,
            Prediction::DataPrediction(x0) => {
                let eps = (sample - scale(&x0, a.sqrt())?)?.affine(1.0 / (1.0 - a).sqrt() as f64, 0.0)?;
                (x0, eps)
            }
        };
        let x0 = if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0.clamp(-r, r)?
        } else {
            x0
        };
        let prev_sample = (scale(&x0, a_prev.sqrt())? + scale(&eps, (1.0 - a_prev).sqrt())?)?;
        self.next_step += 1;
        Ok(SolverStep { prev_sample, data_prediction: x0 })
    }

    fn reset(&mut self) {
        self.next_step = 0;
    }
}
