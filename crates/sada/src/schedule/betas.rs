//! Training noise schedule: betas and `alphas_cumprod` (diffusers' scheduler `__init__`).

use serde::Deserialize;

use crate::error::{Error, Result};

/// The keys of a diffusers `scheduler_config.json` that define the training schedule.
/// Defaults are diffusers' constructor defaults, shared by DDPM/DDIM/DPM-Solver/Euler.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TrainingSchedule {
    /// Number of training timesteps (1000 for every published model).
    pub num_train_timesteps: usize,
    /// beta at the first training timestep.
    pub beta_start: f64,
    /// beta at the last training timestep.
    pub beta_end: f64,
    /// How betas run from `beta_start` to `beta_end`.
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, one per training timestep; when set, `beta_schedule` is ignored.
    pub trained_betas: Option<Vec<f64>>,
    /// Lin et al.'s zero-terminal-SNR rescaling; only `false` is supported.
    pub rescale_betas_zero_snr: bool,
}

impl Default for TrainingSchedule {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            rescale_betas_zero_snr: false,
        }
    }
}

/// More training timesteps than any published model has (they use 1000): a bound on what a
/// config can make us allocate.
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

crate::config::config_enum! {
    /// diffusers' `beta_schedule`: how betas are laid out over the training timesteps.
    BetaSchedule, "beta_schedule" {
        /// `torch.linspace(beta_start, beta_end, num_train_timesteps)`.
        Linear = "linear",
        /// Linear in `sqrt(beta)`, then squared (Stable Diffusion's schedule).
        ScaledLinear = "scaled_linear",
        /// The cosine schedule of Nichol & Dhariwal (`betas_for_alpha_bar`), betas capped at 0.999.
        SquaredcosCapV2 = "squaredcos_cap_v2",
    }
}

/// Betas and their cumulative products, in float32 as diffusers holds them.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    /// beta of each training timestep.
    pub betas: Vec<f32>,
    /// `alphas_cumprod[t]`: the product of `1 - beta` over timesteps `0..=t`.
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// Betas and `alphas_cumprod` of a scheduler config, refusing values this project does not
    /// implement (`rescale_betas_zero_snr`, betas outside (0, 1)).
    pub fn new(cfg: &TrainingSchedule) -> Result<Self> {
        let n = cfg.num_train_timesteps;
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&n) {
            return Err(Error::unsupported("num_train_timesteps", n, format!("expected 2 to {MAX_TRAIN_TIMESTEPS}")));
        }
        if !(cfg.beta_start.is_finite() && cfg.beta_end.is_finite()) {
            return Err(Error::unsupported("beta_start/beta_end", format!("{}/{}", cfg.beta_start, cfg.beta_end), "must be finite numbers"));
        }
        if cfg.rescale_betas_zero_snr {
            return Err(Error::unsupported("rescale_betas_zero_snr", true, "only false is supported"));
        }
        let betas: Vec<f32> = match &cfg.trained_betas {
            Some(b) => {
                if b.len() != n {
                    return Err(Error::unsupported("trained_betas", format!("{} values", b.len()), format!("expected num_train_timesteps = {n} values")));
                }
                b.iter().map(|&x| x as f32).collect()
            }
            None => match cfg.beta_schedule {
                BetaSchedule::Linear => torch_linspace_f32(cfg.beta_start as f32, cfg.beta_end as f32, n),
                BetaSchedule::ScaledLinear => {
                    torch_linspace_f32(cfg.beta_start.sqrt() as f32, cfg.beta_end.sqrt() as f32, n).into_iter().map(|b| b * b).collect()
                }
                BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar(n).into_iter().map(|b| b as f32).collect(),
            },
        };
        if let Some(i) = betas.iter().position(|b| !(*b > 0.0 && *b < 1.0)) {
            return Err(Error::unsupported("betas", betas[i], format!("every beta must lie in (0, 1); index {i} does not")));
        }
        // torch.cumprod accumulates float32 in double on CPU and rounds each output.
        let mut acc = 1.0f64;
        let alphas_cumprod = betas
            .iter()
            .map(|&b| {
                acc *= (1.0f32 - b) as f64;
                acc as f32
            })
            .collect();
        Ok(Self { betas, alphas_cumprod })
    }

    /// The sigma table `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5`, float32.
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
    }

    /// Natural log of [`Self::sigmas`] (diffusers' `log_sigmas`), the table `sigma_to_t` interpolates in.
    pub fn log_sigmas(&self) -> Vec<f32> {
        self.sigmas().iter().map(|s| s.ln()).collect()
    }

    /// beta at a training timestep; fractional timesteps (Euler) are truncated, as SADA's
    /// reference code indexes `betas[int(t)]`.
    pub fn beta_at(&self, t: f64) -> f64 {
        self.betas[self.index(t)] as f64
    }

    /// `sqrt(alphas_cumprod[int(t)])`.
    pub fn sqrt_alphas_cumprod_at(&self, t: f64) -> f64 {
        (self.alphas_cumprod[self.index(t)] as f64).sqrt()
    }

    fn index(&self, t: f64) -> usize {
        (t.max(0.0) as usize).min(self.betas.len() - 1)
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` as ATen evaluates it: one float32 step,
/// the first half counted up from `start`, the second half down from `end`.
fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { start + step * i as f32 } else { end - step * (n - i - 1) as f32 }).collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine alpha-bar (Nichol & Dhariwal), max_beta 0.999.
fn betas_for_alpha_bar(n: usize) -> Vec<f64> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
        })
        .collect()
}
