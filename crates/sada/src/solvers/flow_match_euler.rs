//! `FlowMatchEulerDiscreteScheduler` (Flux, SD3): Euler on the rectified-flow ODE
//! x_s = (1 - s) x0 + s eps, whose network predicts the velocity eps - x0.

use candle_core::Tensor;
use serde::Deserialize;

use super::config::{div_scalar, require_off, scale};
use super::{check_step_order, LatentScale, Prediction, PredictionType, Solver, SolverStep, StepNoise};
use crate::error::{Error, Result};
use crate::schedule::flow::{exponential_shift, linear_shift, static_shift};
use crate::schedule::np_linspace;
use crate::schedule::NoiseSchedule;

/// The keys of diffusers' `FlowMatchEulerDiscreteScheduler`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct FlowMatchEulerDiscreteConfig {
    /// Training timesteps; each timestep is `sigma * num_train_timesteps`.
    pub num_train_timesteps: usize,
    /// The static shift `shift * s / (1 + (shift - 1) * s)`, applied when `use_dynamic_shifting` is off.
    pub shift: f64,
    /// Shift by `mu` from the image size instead of by `shift` (Flux).
    pub use_dynamic_shifting: bool,
    /// `mu` at `base_image_seq_len` image tokens (default 0.5).
    pub base_shift: Option<f64>,
    /// `mu` at `max_image_seq_len` image tokens (default 1.15).
    pub max_shift: Option<f64>,
    /// Token count at which `mu` is `base_shift` (default 256).
    pub base_image_seq_len: Option<usize>,
    /// Token count at which `mu` is `max_shift` (default 4096).
    pub max_image_seq_len: Option<usize>,
    /// Only `false` is supported.
    pub invert_sigmas: bool,
    /// Stretch the shifted sigmas so that the last one lands on this value.
    pub shift_terminal: Option<f64>,
    /// Karras et al.'s sigma spacing; not supported (must be off).
    pub use_karras_sigmas: Option<bool>,
    /// Exponential sigma spacing; not supported (must be off).
    pub use_exponential_sigmas: Option<bool>,
    /// Beta-distribution sigma spacing; not supported (must be off).
    pub use_beta_sigmas: Option<bool>,
    /// The dynamic shift's form: `exponential` or `linear`.
    pub time_shift_type: String,
    /// Only `false` is supported.
    pub stochastic_sampling: bool,
}

impl Default for FlowMatchEulerDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: None,
            max_shift: None,
            base_image_seq_len: None,
            max_image_seq_len: None,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: None,
            use_exponential_sigmas: None,
            use_beta_sigmas: None,
            time_shift_type: "exponential".into(),
            stochastic_sampling: false,
        }
    }
}

impl FlowMatchEulerDiscreteConfig {
    /// diffusers' Flux pipeline: `mu` from the number of image tokens (packed 2x2 latent patches).
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        crate::schedule::flow::calculate_shift(
            image_seq_len,
            self.base_image_seq_len.unwrap_or(256),
            self.max_image_seq_len.unwrap_or(4096),
            self.base_shift.unwrap_or(0.5),
            self.max_shift.unwrap_or(1.15),
        )
    }
}

/// What the pipeline passes to `set_timesteps` besides the step count.
#[derive(Debug, Clone, Default)]
pub struct FlowTimesteps {
    /// Custom sigmas (Flux passes `linspace(1, 1/N, N)`); None for the scheduler's own grid (SD3).
    pub sigmas: Option<Vec<f64>>,
    /// The dynamic shift; required when `use_dynamic_shifting` is set.
    pub mu: Option<f64>,
}

/// diffusers' `FlowMatchEulerDiscreteScheduler`, set to a step count.
pub struct FlowMatchEulerDiscrete {
    timesteps: Vec<f64>,
    /// N + 1 float32 values, the last one 0.
    sigmas: Vec<f32>,
    next_step: usize,
}

impl FlowMatchEulerDiscrete {
    /// `from_config(config).set_timesteps(num_inference_steps, sigmas=..., mu=...)` with `ts`'s sigmas
    /// and mu, refusing options this port does not implement.
    pub fn new(config: &FlowMatchEulerDiscreteConfig, num_inference_steps: usize, ts: &FlowTimesteps) -> Result<Self> {
        super::check_num_steps(num_inference_steps, config.num_train_timesteps)?;
        if !(config.shift.is_finite() && config.shift > 0.0) {
            return Err(Error::unsupported("shift", config.shift, "must be a positive number"));
        }
        if config.invert_sigmas {
            return Err(Error::unsupported("invert_sigmas", true, "only false is supported"));
        }
        if config.stochastic_sampling {
            return Err(Error::unsupported("stochastic_sampling", true, "only false is supported"));
        }
        require_off("use_karras_sigmas", config.use_karras_sigmas)?;
        require_off("use_exponential_sigmas", config.use_exponential_sigmas)?;
        require_off("use_beta_sigmas", config.use_beta_sigmas)?;
        let exponential = match config.time_shift_type.as_str() {
            "exponential" => true,
            "linear" => false,
            other => return Err(Error::unsupported("time_shift_type", other, "expected exponential or linear")),
        };
        if config.shift.is_nan() || config.shift <= 0.0 {
            return Err(Error::unsupported("shift", config.shift, "expected a positive number"));
        }
        let n_train = config.num_train_timesteps as f64;

        // Sigmas before shifting: float32 when the caller provides them, float64 otherwise.
        let raw: Vec<f32> = match &ts.sigmas {
            Some(s) => {
                if s.len() != num_inference_steps {
                    return Err(Error::param("sigmas", format!("expected {num_inference_steps} values, got {}", s.len())));
                }
                let s32: Vec<f32> = s.iter().map(|&x| x as f32).collect();
                if config.use_dynamic_shifting {
                    s32
                } else {
                    let sh = config.shift as f32;
                    s32.iter().map(|&x| sh * x / (1.0 + (sh - 1.0) * x)).collect()
                }
            }
            None => {
                // The training grid's ends, already shifted in __init__ when shifting is static
                // (diffusers then shifts the interpolated grid a second time).
                let init = |t: f32| -> f32 {
                    let s = t / n_train as f32;
                    if config.use_dynamic_shifting {
                        s
                    } else {
                        let sh = config.shift as f32;
                        sh * s / (1.0 + (sh - 1.0) * s)
                    }
                };
                let (sigma_max, sigma_min) = (init(n_train as f32) as f64, init(1.0) as f64);
                let grid = np_linspace(sigma_max * n_train, sigma_min * n_train, num_inference_steps);
                grid.iter()
                    .map(|&t| {
                        let s = t / n_train;
                        if config.use_dynamic_shifting {
                            s as f32
                        } else {
                            static_shift(config.shift, s) as f32
                        }
                    })
                    .collect()
            }
        };
        let mut sigmas: Vec<f32> = if config.use_dynamic_shifting {
            let mu = ts.mu.ok_or_else(|| Error::param("mu", "use_dynamic_shifting is set, so the shift mu (from the image size) is required"))?;
            raw.iter().map(|&s| if exponential { exponential_shift(mu, 1.0, s) } else { linear_shift(mu, 1.0, s) }).collect()
        } else {
            raw
        };
        if let Some(terminal) = config.shift_terminal {
            // stretch_shift_to_terminal: rescale so the last sigma lands on shift_terminal
            let last = 1.0 - sigmas[sigmas.len() - 1];
            let scale_factor = last / (1.0 - terminal as f32);
            sigmas = sigmas.iter().map(|&s| 1.0 - (1.0 - s) / scale_factor).collect();
        }
        let timesteps = sigmas.iter().map(|&s| (s * n_train as f32) as f64).collect();
        sigmas.push(0.0);
        Ok(Self { timesteps, sigmas, next_step: 0 })
    }

    /// `scheduler.sigmas` (N + 1 values, the last one 0).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Solver for FlowMatchEulerDiscrete {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn prediction_type(&self) -> PredictionType {
        PredictionType::FlowVelocity
    }

    fn latent_scale(&self) -> LatentScale {
        LatentScale::Flow
    }

    fn noise(&self, step: usize) -> StepNoise {
        let sigma = self.sigmas[step] as f64;
        StepNoise { timestep: self.timesteps.get(step).copied().unwrap_or(0.0), sigma, alpha_t: 1.0 - sigma, sigma_t: sigma }
    }

    fn noise_schedule(&self) -> Option<&NoiseSchedule> {
        None
    }

    fn scale_model_input(&self, sample: &Tensor, _step: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn data_prediction(&self, model_output: &Tensor, sample: &Tensor, step: usize) -> Result<Tensor> {
        Ok((sample - scale(model_output, self.sigmas[step])?)?)
    }

    fn step(&mut self, step: usize, sample: &Tensor, prediction: Prediction) -> Result<SolverStep> {
        check_step_order(self.next_step, step, self.timesteps.len())?;
        let sigma = self.sigmas[step];
        let velocity = match prediction {
            Prediction::ModelOutput(v) => v,
            Prediction::DataPrediction(x0) => div_scalar(&(sample - &x0)?, sigma)?,
        };
        let dt = self.sigmas[step + 1] - sigma;
        let prev_sample = (sample + scale(&velocity, dt)?)?;
        let data_prediction = (sample - scale(&velocity, sigma)?)?;
        self.next_step += 1;
        Ok(SolverStep { prev_sample, data_prediction })
    }

    fn reset(&mut self) {
        self.next_step = 0;
    }
}
