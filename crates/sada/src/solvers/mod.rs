//! ODE solvers, each a port of one diffusers scheduler class, behind one trait.
//!
//! A solver step in diffusers converts the network output to a data prediction x0 and then
//! runs its (multistep) update. The two halves are separate here because SADA replaces the
//! first half on skipped steps: it hands the solver a substitute x0 (or velocity) and the
//! solver's ordinary update, history included, runs on it.

pub mod config;
pub mod ddim;
pub mod dpm_solver;
pub mod euler;
pub mod flow_match_euler;
pub mod presets;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::schedule::NoiseSchedule;
pub use config::{load_scheduler_config, scheduler_config_object, SolverKind};
pub use dpm_solver::{DpmSolverConfig, DpmSolverMultistep};
pub use euler::{EulerDiscrete, EulerDiscreteConfig};
pub use flow_match_euler::{FlowMatchEulerDiscrete, FlowMatchEulerDiscreteConfig, FlowTimesteps};

impl SolverKind {
    /// Every solver this crate implements.
    pub const ALL: [SolverKind; 3] = [SolverKind::DpmSolverMultistep, SolverKind::EulerDiscrete, SolverKind::FlowMatchEulerDiscrete];

    /// The command line's name for this solver (`--solver dpm++`, `euler`, `flow`): the name
    /// messages to users give, never the enum's Rust name.
    pub fn cli_name(self) -> &'static str {
        match self {
            SolverKind::DpmSolverMultistep => "dpm++",
            SolverKind::EulerDiscrete => "euler",
            SolverKind::FlowMatchEulerDiscrete => "flow",
        }
    }

    /// The solver the command line calls `name` (see [`cli_name`](Self::cli_name)).
    pub fn from_cli_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.cli_name() == name)
    }
}

/// The command line's name (`dpm++`, `euler`, `flow`); [`SolverKind::class_name`] gives diffusers'.
impl std::fmt::Display for SolverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.cli_name())
    }
}

/// What the network was trained to predict (`prediction_type` in diffusers configs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum PredictionType {
    /// The added noise eps (`epsilon`).
    Epsilon,
    /// The velocity `v = alpha_t eps - sigma_t x0` (`v_prediction`).
    VPrediction,
    /// The clean sample x0 itself (`sample`).
    Sample,
    /// Flow matching: the velocity `noise - x0` (what FlowMatchEulerDiscrete's networks predict;
    /// not a value diffusion scheduler configs take).
    FlowVelocity,
}

impl PredictionType {
    /// The value as diffusers writes it (`flow_velocity` is this crate's own name; no config takes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::VPrediction => "v_prediction",
            Self::Sample => "sample",
            Self::FlowVelocity => "flow_velocity",
        }
    }
}

impl TryFrom<String> for PredictionType {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "epsilon" => Ok(Self::Epsilon),
            "v_prediction" => Ok(Self::VPrediction),
            "sample" => Ok(Self::Sample),
            other => Err(format!("unsupported `prediction_type` = {other}: expected one of epsilon, v_prediction, sample")),
        }
    }
}

impl From<PredictionType> for &'static str {
    fn from(p: PredictionType) -> &'static str {
        p.as_str()
    }
}

/// How the solver's latent relates to the variance-preserving one: SADA's drift is defined
/// in VP scale, so the policy needs to know how to get there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentScale {
    /// DPM-Solver++: the latent is x^VP = alpha x0 + sigma eps.
    VariancePreserving,
    /// Euler (EDM style): the latent is x^VP / alpha = x0 + s eps.
    VarianceExploding,
    /// Flow matching: x = (1 - s) x0 + s eps.
    Flow,
}

/// The noise level at one solver step, in every parameterisation SADA needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepNoise {
    /// The timestep passed to the network (diffusers' `scheduler.timesteps[n]`).
    pub timestep: f64,
    /// The solver's own sigma (`scheduler.sigmas[n]`): VE sigma for VP/VE solvers, flow sigma for flow.
    pub sigma: f64,
    /// VP signal scale alpha_t = 1 / sqrt(1 + sigma^2) (flow: 1 - sigma).
    pub alpha_t: f64,
    /// VP noise scale sigma_t = sigma alpha_t (flow: sigma).
    pub sigma_t: f64,
}

/// What a solver step consumes: the network's raw output, or a data prediction supplied by an
/// accelerator on a skipped step.
#[derive(Debug, Clone)]
pub enum Prediction {
    /// The network's raw output, which the solver converts according to its `prediction_type`.
    ModelOutput(Tensor),
    /// A data prediction x0, taken as is (flow matching turns it back into a velocity).
    DataPrediction(Tensor),
}

/// The result of one solver step.
#[derive(Debug, Clone)]
pub struct SolverStep {
    /// The latent for the next step (diffusers' `prev_sample`).
    pub prev_sample: Tensor,
    /// The x0 the update used (SADA's Lagrange anchors record it).
    pub data_prediction: Tensor,
}

/// One diffusers scheduler after `set_timesteps`: its step grid, the noise level at each step, and
/// the update from one step to the next.
pub trait Solver {
    /// diffusers' `scheduler.timesteps`.
    fn timesteps(&self) -> &[f64];
    /// The number of inference steps N.
    fn num_steps(&self) -> usize {
        self.timesteps().len()
    }
    /// diffusers' `init_noise_sigma`: the scale of the initial Gaussian noise.
    fn init_noise_sigma(&self) -> f64;
    /// What the network predicts ([`PredictionType::FlowVelocity`] for flow matching).
    fn prediction_type(&self) -> PredictionType;
    /// How this solver's latent relates to the variance-preserving one.
    fn latent_scale(&self) -> LatentScale;
    /// The noise level at `step`; `step = N` gives the final sigma, after the last step.
    fn noise(&self, step: usize) -> StepNoise;
    /// The training schedule (diffusers' `betas` and `alphas_cumprod`) of a diffusion solver;
    /// None for flow matching, which has none.
    fn noise_schedule(&self) -> Option<&NoiseSchedule>;
    /// What the network sees at `step` (Euler divides by sqrt(sigma^2 + 1)).
    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor>;
    /// x0 from a raw model output at `sample` (diffusers' `convert_model_output`).
    fn data_prediction(&self, model_output: &Tensor, sample: &Tensor, step: usize) -> Result<Tensor>;
    /// One solver step. Steps must be taken in order 0, 1, ..., N-1 after `reset`.
    fn step(&mut self, step: usize, sample: &Tensor, prediction: Prediction) -> Result<SolverStep>;
    /// Forget the multistep history, ready for a new image.
    fn reset(&mut self);
}

/// A run's step count: at least 1 and, as diffusers requires, no more than the training
/// timesteps it is drawn from (which also bounds what a run allocates).
pub(crate) fn check_num_steps(num_inference_steps: usize, num_train_timesteps: usize) -> Result<()> {
    if num_inference_steps == 0 {
        return Err(Error::param("steps", "must be at least 1"));
    }
    if num_inference_steps > num_train_timesteps {
        return Err(Error::param(
            "steps",
            format!("{num_inference_steps} is more than the scheduler's {num_train_timesteps} training timesteps (num_train_timesteps)"),
        ));
    }
    Ok(())
}

/// Steps must arrive in order: the multistep history depends on it.
pub(crate) fn check_step_order(expected: usize, step: usize, num_steps: usize) -> Result<()> {
    if step != expected || step >= num_steps {
        return Err(Error::param("step", format!("solver expected step {expected} of {num_steps}, got step {step}")));
    }
    Ok(())
}

/// Build a solver of class `kind` from a diffusers scheduler config (any class's), the way
/// `Kind.from_config(config, **overrides).set_timesteps(num_inference_steps)` would.
pub fn build_solver(
    kind: SolverKind,
    config: &serde_json::Map<String, serde_json::Value>,
    overrides: &serde_json::Map<String, serde_json::Value>,
    num_inference_steps: usize,
    flow: &FlowTimesteps,
) -> Result<Box<dyn Solver>> {
    Ok(match kind {
        SolverKind::DpmSolverMultistep => Box::new(DpmSolverMultistep::new(&config::from_config(config, overrides)?, num_inference_steps)?),
        SolverKind::EulerDiscrete => Box::new(EulerDiscrete::new(&config::from_config(config, overrides)?, num_inference_steps)?),
        SolverKind::FlowMatchEulerDiscrete => Box::new(FlowMatchEulerDiscrete::new(&config::from_config(config, overrides)?, num_inference_steps, flow)?),
    })
}

#[cfg(test)]
mod tests {
    use super::SolverKind;

    #[test]
    fn solvers_are_shown_by_their_command_line_names() {
        let shown: Vec<String> = SolverKind::ALL.iter().map(|k| k.to_string()).collect();
        assert_eq!(shown, ["dpm++", "euler", "flow"]);
        for kind in SolverKind::ALL {
            assert_eq!(SolverKind::from_cli_name(kind.cli_name()), Some(kind));
            assert_eq!(SolverKind::from_class_name(kind.class_name()), Some(kind));
        }
        assert_eq!(SolverKind::from_cli_name("DpmPp"), None);
    }
}
