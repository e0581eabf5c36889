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

/// The largest `|base_shift|` and `|max_shift|` accepted (Flux ships 0.5 and 1.15): the sigmas
/// use `exp(mu)`.
pub const MAX_ABS_SHIFT: f64 = 20.0;

/// The largest `|mu|` accepted: `exp(mu)` and `exp(-mu)` stay finite, nonzero float32 numbers.
pub const MAX_ABS_MU: f64 = 80.0;

impl FlowMatchEulerDiscreteConfig {
    /// Refuse dynamic-shift settings under which diffusers' `calculate_shift` divides by zero
    /// or `exp(mu)` overflows: token counts must be positive with `base_image_seq_len` below
    /// `max_image_seq_len`, and the shifts finite and at most [`MAX_ABS_SHIFT`] in size.
    pub fn check_dynamic_shift(&self) -> Result<()> {
        let (base_len, max_len) = (self.base_image_seq_len.unwrap_or(256), self.max_image_seq_len.unwrap_or(4096));
        if base_len == 0 {
            return Err(Error::unsupported("base_image_seq_len", base_len, "expected a positive token count below max_image_seq_len (Flux: 256)"));
        }
        if max_len <= base_len {
            return Err(Error::unsupported(
                "max_image_seq_len",
                max_len,
                format!("expected a token count above base_image_seq_len = {base_len} (Flux: 4096); mu is interpolated between the two"),
            ));
        }
        for (key, value, flux) in [("base_shift", self.base_shift.unwrap_or(0.5), 0.5), ("max_shift", self.max_shift.unwrap_or(1.15), 1.15)] {
            if !(value.is_finite() && value.abs() <= MAX_ABS_SHIFT) {
                return Err(Error::unsupported(
                    key,
                    value,
                    format!("expected a number from -{MAX_ABS_SHIFT} to {MAX_ABS_SHIFT} (Flux: {flux}); the sigmas use exp(mu)"),
                ));
            }
        }
        Ok(())
    }

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
        if config.use_dynamic_shifting {
            config.check_dynamic_shift()?;
        }
        if let Some(terminal) = config.shift_terminal {
            if !(terminal.is_finite() && terminal > 0.0 && terminal < 1.0) {
                return Err(Error::unsupported("shift_terminal", terminal, "expected null or a number between 0 and 1 (the last sigma)"));
            }
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
        let mu = if config.use_dynamic_shifting {
            let mu = ts.mu.ok_or_else(|| Error::param("mu", "use_dynamic_shifting is set, so the shift mu (from the image size) is required"))?;
            if !(mu.is_finite() && mu.abs() <= MAX_ABS_MU) {
                return Err(Error::Config(format!(
                    "the dynamic shift mu = {mu} (from base_shift, max_shift, base_image_seq_len, max_image_seq_len and the image's token count) \
                     is outside -{MAX_ABS_MU} to {MAX_ABS_MU}, where exp(mu) overflows: expected smaller shifts or a smaller image"
                )));
            }
            Some(mu)
        } else {
            None
        };
        let mut sigmas: Vec<f32> = match mu {
            Some(mu) => raw.iter().map(|&s| if exponential { exponential_shift(mu, 1.0, s) } else { linear_shift(mu, 1.0, s) }).collect(),
            None => raw,
        };
        if let Some(terminal) = config.shift_terminal {
            // stretch_shift_to_terminal: rescale so the last sigma lands on shift_terminal
            let last = 1.0 - sigmas[sigmas.len() - 1];
            let scale_factor = last / (1.0 - terminal as f32);
            sigmas = sigmas.iter().map(|&s| 1.0 - (1.0 - s) / scale_factor).collect();
        }
        // a NaN here would surface only as non-finite latents at step 0: name the keys instead
        if let Some((i, s)) = sigmas.iter().enumerate().find(|(_, s)| !(s.is_finite() && (0.0..=1.0 + 1e-4).contains(*s))) {
            let from = match mu {
                Some(mu) => format!("mu = {mu} and time_shift_type = {}", config.time_shift_type),
                None => format!("shift = {}", config.shift),
            };
            let terminal = config.shift_terminal.map(|t| format!(", shift_terminal = {t}")).unwrap_or_default();
            return Err(Error::Config(format!(
                "sigma {i} of {num_inference_steps} is {s} with {from}{terminal}: expected sigmas between 0 and 1; check those keys"
            )));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::flow::flux_default_sigmas;

    /// FLUX.1's scheduler config with `changes` applied.
    fn flux_config(changes: serde_json::Value) -> FlowMatchEulerDiscreteConfig {
        let mut v: serde_json::Value = serde_json::from_str(crate::solvers::presets::FLUX).unwrap();
        let object = v.as_object_mut().unwrap();
        for (k, x) in changes.as_object().unwrap() {
            object.insert(k.clone(), x.clone());
        }
        crate::config::from_value(v).unwrap()
    }

    /// What the Flux pipeline does at 1024 x 1024 (4096 image tokens): mu from the config, then
    /// the solver with Flux's sigmas.
    fn build(config: &FlowMatchEulerDiscreteConfig) -> Result<FlowMatchEulerDiscrete> {
        let ts = FlowTimesteps { sigmas: Some(flux_default_sigmas(28)), mu: config.use_dynamic_shifting.then(|| config.mu(4096)) };
        FlowMatchEulerDiscrete::new(config, 28, &ts)
    }

    fn refusal(changes: serde_json::Value) -> String {
        match build(&flux_config(changes)) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn flux_config_gives_sigmas_between_0_and_1() {
        let solver = build(&flux_config(serde_json::json!({}))).unwrap();
        assert!(solver.sigmas().iter().all(|s| s.is_finite() && (0.0..=1.0).contains(s)), "{:?}", solver.sigmas());
    }

    #[test]
    fn token_counts_that_make_mu_divide_by_zero_are_refused_by_key() {
        let e = refusal(serde_json::json!({"base_image_seq_len": 4096, "max_image_seq_len": 4096}));
        assert!(e.starts_with("unsupported config value `max_image_seq_len` = 4096") && e.contains("base_image_seq_len = 4096"), "{e}");
        let e = refusal(serde_json::json!({"base_image_seq_len": 0}));
        assert!(e.starts_with("unsupported config value `base_image_seq_len` = 0"), "{e}");
        let e = refusal(serde_json::json!({"base_image_seq_len": 8192}));
        assert!(e.contains("`max_image_seq_len`"), "{e}");
    }

    #[test]
    fn shifts_whose_exp_overflows_are_refused_by_key() {
        let e = refusal(serde_json::json!({"max_shift": 1e6}));
        assert!(e.starts_with("unsupported config value `max_shift` = 1000000") && e.contains("exp(mu)"), "{e}");
        let e = refusal(serde_json::json!({"base_shift": -30.0}));
        assert!(e.starts_with("unsupported config value `base_shift` = -30"), "{e}");
        // shifts in range, extrapolated far beyond max_image_seq_len
        let config = flux_config(serde_json::json!({"max_shift": 20.0}));
        let ts = FlowTimesteps { sigmas: Some(flux_default_sigmas(28)), mu: Some(config.mu(1 << 20)) };
        let e = FlowMatchEulerDiscrete::new(&config, 28, &ts).err().expect("refused").to_string();
        assert!(e.contains("mu = ") && e.contains("max_shift"), "{e}");
        // unused keys are not checked: dynamic shifting off
        let solver = build(&flux_config(serde_json::json!({"use_dynamic_shifting": false, "max_shift": 1e6}))).unwrap();
        assert!(solver.sigmas().iter().all(|s| s.is_finite()));
    }

    #[test]
    fn static_shift_and_shift_terminal_that_give_non_finite_sigmas_are_refused() {
        for bad in [serde_json::json!(0.0), serde_json::json!(-3.0)] {
            let e = refusal(serde_json::json!({"use_dynamic_shifting": false, "shift": bad}));
            assert!(e.starts_with("unsupported config value `shift`"), "{e}");
        }
        // positive, but zero in float32: 0 / 0 at sigma 1
        let e = refusal(serde_json::json!({"use_dynamic_shifting": false, "shift": 1e-50}));
        assert!(e.contains("shift = ") && e.contains("expected sigmas between 0 and 1"), "{e}");
        for bad in [1.0, 1.5, -0.1] {
            let e = refusal(serde_json::json!({ "shift_terminal": bad }));
            assert!(e.starts_with("unsupported config value `shift_terminal`"), "{e}");
        }
        let solver = build(&flux_config(serde_json::json!({"shift_terminal": 0.1}))).unwrap();
        assert!(solver.sigmas().iter().all(|s| s.is_finite() && (0.0..=1.0 + 1e-4).contains(s)), "{:?}", solver.sigmas());
    }
}
