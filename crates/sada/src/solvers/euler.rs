//! `EulerDiscreteScheduler`: first-order Euler in the variance-exploding (EDM, Karras et al. 2022)
//! parameterisation x = x0 + s eps. The paper calls this sampler "EDM".

use candle_core::Tensor;
use serde::Deserialize;

use super::config::{div_scalar, require_off, scale, vp_alpha_sigma, FinalSigmas};
use super::{check_step_order, LatentScale, Prediction, PredictionType, Solver, SolverStep, StepNoise};
use crate::error::{Error, Result};
use crate::schedule::timesteps::euler_timesteps;
use crate::schedule::{interp_table, karras_sigmas, sigma_to_t, NoiseSchedule, TimestepSpacing, TrainingSchedule};

/// The keys of diffusers' `EulerDiscreteScheduler`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EulerDiscreteConfig {
    /// The training schedule (`num_train_timesteps`, betas), read from the same keys.
    #[serde(flatten)]
    pub schedule: TrainingSchedule,
    /// What the network predicts.
    pub prediction_type: PredictionType,
    /// How sigmas are interpolated from the training table; only `linear` is supported.
    pub interpolation_type: String,
    /// Karras et al.'s sigma spacing between `sigma_min` and `sigma_max`.
    pub use_karras_sigmas: Option<bool>,
    /// Exponential sigma spacing; not supported (must be off).
    pub use_exponential_sigmas: Option<bool>,
    /// Beta-distribution sigma spacing; not supported (must be off).
    pub use_beta_sigmas: Option<bool>,
    /// Low end of the Karras ramp; defaults to the last interpolated sigma.
    pub sigma_min: Option<f64>,
    /// High end of the Karras ramp; defaults to the first interpolated sigma.
    pub sigma_max: Option<f64>,
    /// How the inference timesteps are picked from the training grid.
    pub timestep_spacing: TimestepSpacing,
    /// Only `discrete` is supported.
    pub timestep_type: String,
    /// Added to every timestep with `leading` spacing (SDXL uses 1).
    pub steps_offset: usize,
    /// `zero` (the default) or `sigma_min`: the sigma after the last step.
    pub final_sigmas_type: Option<String>,
}

impl Default for EulerDiscreteConfig {
    fn default() -> Self {
        Self {
            schedule: TrainingSchedule::default(),
            prediction_type: PredictionType::Epsilon,
            interpolation_type: "linear".into(),
            use_karras_sigmas: None,
            use_exponential_sigmas: None,
            use_beta_sigmas: None,
            sigma_min: None,
            sigma_max: None,
            timestep_spacing: TimestepSpacing::Linspace,
            timestep_type: "discrete".into(),
            steps_offset: 0,
            final_sigmas_type: None,
        }
    }
}

/// diffusers' `EulerDiscreteScheduler` (the paper's "EDM" sampler), set to a step count.
pub struct EulerDiscrete {
    schedule: NoiseSchedule,
    prediction_type: PredictionType,
    spacing: TimestepSpacing,
    timesteps: Vec<f64>,
    /// `scheduler.sigmas`: N + 1 float32 values.
    sigmas: Vec<f32>,
    next_step: usize,
}

impl EulerDiscrete {
    /// `from_config(config).set_timesteps(num_inference_steps)`, refusing options this port does not
    /// implement.
    pub fn new(config: &EulerDiscreteConfig, num_inference_steps: usize) -> Result<Self> {
        super::check_num_steps(num_inference_steps, config.schedule.num_train_timesteps)?;
        if config.steps_offset >= config.schedule.num_train_timesteps {
            return Err(Error::unsupported("steps_offset", config.steps_offset, "must be below num_train_timesteps"));
        }
        if config.interpolation_type != "linear" {
            return Err(Error::unsupported("interpolation_type", &config.interpolation_type, "only linear is supported"));
        }
        if config.timestep_type != "discrete" {
            return Err(Error::unsupported("timestep_type", &config.timestep_type, "only discrete is supported"));
        }
        require_off("use_exponential_sigmas", config.use_exponential_sigmas)?;
        require_off("use_beta_sigmas", config.use_beta_sigmas)?;
        let (prediction_type, spacing) = (config.prediction_type, config.timestep_spacing);
        let final_sigmas = FinalSigmas::parse(config.final_sigmas_type.as_deref())?;
        let schedule = NoiseSchedule::new(&config.schedule)?;
        let num_train = config.schedule.num_train_timesteps;

        let mut timesteps = euler_timesteps(spacing, num_inference_steps, num_train, config.steps_offset);
        if let Some(t) = timesteps.iter().find(|&&t| t < 0.0 || t > (num_train - 1) as f64) {
            return Err(Error::param("num_inference_steps", format!("timestep {t} falls outside the training grid 0..{num_train} with this spacing")));
        }
        let table = schedule.sigmas();
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp_table(t, &table)).collect();
        if config.use_karras_sigmas.unwrap_or(false) {
            // Euler builds the Karras ramp between the ends of its *interpolated* grid.
            let lo = config.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let hi = config.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(lo, hi, num_inference_steps);
            let log_sigmas = schedule.log_sigmas();
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64).collect();
        }
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(final_sigmas.value(&schedule.alphas_cumprod));
        Ok(Self { schedule, prediction_type, spacing, timesteps, sigmas, next_step: 0 })
    }

    /// `scheduler.sigmas` (N + 1 values, the last one the final sigma).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The training schedule's `alphas_cumprod`.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.schedule.alphas_cumprod
    }
}

impl Solver for EulerDiscrete {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().cloned().fold(f32::MIN, f32::max);
        match self.spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
        }
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    fn latent_scale(&self) -> LatentScale {
        LatentScale::VarianceExploding
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

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        let sigma = self.sigmas[step];
        div_scalar(sample, (sigma * sigma + 1.0).sqrt())
    }

    fn data_prediction(&self, model_output: &Tensor, sample: &Tensor, step: usize) -> Result<Tensor> {
        let sigma = self.sigmas[step];
        Ok(match self.prediction_type {
            PredictionType::Epsilon => (sample - scale(model_output, sigma)?)?,
            PredictionType::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                (scale(model_output, -sigma / s2.sqrt())? + div_scalar(sample, s2)?)?
            }
            PredictionType::Sample => model_output.clone(),
            PredictionType::FlowVelocity => unreachable!("Euler is built with a VP prediction type"),
        })
    }

    fn step(&mut self, step: usize, sample: &Tensor, prediction: Prediction) -> Result<SolverStep> {
        check_step_order(self.next_step, step, self.timesteps.len())?;
        let x0 = match prediction {
            Prediction::ModelOutput(o) => self.data_prediction(&o, sample, step)?,
            Prediction::DataPrediction(x0) => x0,
        };
        // s_churn = 0 (diffusers' default), so sigma_hat = sigma.
        let sigma = self.sigmas[step];
        let derivative = div_scalar(&(sample - &x0)?, sigma)?;
        let dt = self.sigmas[step + 1] - sigma;
        let prev_sample = (sample + scale(&derivative, dt)?)?;
        self.next_step += 1;
        Ok(SolverStep { prev_sample, data_prediction: x0 })
    }

    fn reset(&mut self) {
        self.next_step = 0;
    }
}
