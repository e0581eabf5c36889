//! Reading diffusers `scheduler_config.json` files into any solver class, with the semantics of
//! diffusers' `from_config`: keys present in the file are used, absent keys take the target
//! class's defaults, keys the class does not know are ignored. That is how SD-2.1's DDIM config
//! becomes a DPM-Solver++ config with `linspace` spacing.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The solver classes this crate implements, named (and serialised) as in diffusers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SolverKind {
    /// `DPMSolverMultistepScheduler` (DPM-Solver++).
    #[serde(rename = "DPMSolverMultistepScheduler")]
    DpmSolverMultistep,
    /// `EulerDiscreteScheduler` (the paper's "EDM" sampler).
    #[serde(rename = "EulerDiscreteScheduler")]
    EulerDiscrete,
    /// `FlowMatchEulerDiscreteScheduler` (Flux).
    #[serde(rename = "FlowMatchEulerDiscreteScheduler")]
    FlowMatchEulerDiscrete,
}

impl SolverKind {
    /// The diffusers class name (`_class_name` in `scheduler_config.json`).
    pub fn class_name(self) -> &'static str {
        match self {
            Self::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            Self::EulerDiscrete => "EulerDiscreteScheduler",
            Self::FlowMatchEulerDiscrete => "FlowMatchEulerDiscreteScheduler",
        }
    }

    /// The solver of a diffusers class name, if this crate implements that class.
    pub fn from_class_name(name: &str) -> Option<Self> {
        [Self::DpmSolverMultistep, Self::EulerDiscrete, Self::FlowMatchEulerDiscrete].into_iter().find(|k| k.class_name() == name)
    }
}

/// Read a `scheduler_config.json` as a JSON object.
pub fn load_scheduler_config(path: &Path) -> Result<Map<String, Value>> {
    scheduler_config_object(crate::config::read_config(path)?, path)
}

/// A parsed scheduler config must be a JSON object; `path` names the file otherwise.
pub fn scheduler_config_object(config: Value, path: &Path) -> Result<Map<String, Value>> {
    match config {
        Value::Object(map) => Ok(map),
        _ => Err(Error::file(path, "expected a JSON object")),
    }
}

/// `Class.from_config(config, **overrides)`: overrides win over the file.
pub fn from_config<T: DeserializeOwned>(config: &Map<String, Value>, overrides: &Map<String, Value>) -> Result<T> {
    let mut merged = config.clone();
    for (k, v) in overrides {
        merged.insert(k.clone(), v.clone());
    }
    crate::config::from_value(Value::Object(merged)).map_err(Error::Config)
}

/// Require a boolean option to be off (a feature of the diffusers class we have not ported).
pub(crate) fn require_off(key: &str, value: Option<bool>) -> Result<()> {
    if value.unwrap_or(false) {
        return Err(Error::unsupported(key, true, "only false is supported"));
    }
    Ok(())
}

/// diffusers' final sigma choice shared by DPM-Solver and Euler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigmas {
    /// `zero`: the last step goes to sigma 0 (diffusers' default).
    Zero,
    /// `sigma_min`: the last step stops at the training schedule's smallest sigma.
    SigmaMin,
}

impl FinalSigmas {
    /// Read `final_sigmas_type` (absent means `zero`).
    pub fn parse(s: Option<&str>) -> Result<Self> {
        match s.unwrap_or("zero") {
            "zero" => Ok(Self::Zero),
            "sigma_min" => Ok(Self::SigmaMin),
            other => Err(Error::unsupported("final_sigmas_type", other, "expected zero or sigma_min")),
        }
    }

    /// The sigma appended after the last step.
    pub fn value(self, alphas_cumprod: &[f32]) -> f32 {
        match self {
            Self::Zero => 0.0,
            Self::SigmaMin => {
                let a = alphas_cumprod[0];
                ((1.0 - a) / a).sqrt()
            }
        }
    }
}

/// `1 / sqrt(sigma^2 + 1)` and `sigma * alpha`, in float32 as diffusers evaluates them.
pub(crate) fn vp_alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha_t = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha_t, sigma * alpha_t)
}

pub(crate) fn div_scalar(t: &candle_core::Tensor, s: f32) -> Result<candle_core::Tensor> {
    let d = candle_core::Tensor::full(s, t.shape(), t.device())?.to_dtype(t.dtype())?;
    Ok(t.div(&d)?)
}

pub(crate) fn scale(t: &candle_core::Tensor, s: f32) -> Result<candle_core::Tensor> {
    Ok(t.affine(s as f64, 0.0)?)
}
