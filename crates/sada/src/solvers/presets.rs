//! The `scheduler/scheduler_config.json` files that the published SADA models ship, verbatim,
//! so that demos and tests without a model folder sample with the real schedules.

use serde_json::{Map, Value};

/// stabilityai/stable-diffusion-2-1 (a DDIM config; v-prediction).
pub const SD21: &str = r#"{"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": false, "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null}"#;

/// stabilityai/stable-diffusion-xl-base-1.0 (an Euler config; epsilon, leading spacing).
pub const SDXL: &str = r#"{"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": false, "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": null, "use_karras_sigmas": false}"#;

/// black-forest-labs/FLUX.1-dev (flow matching with dynamic shift).
pub const FLUX: &str = r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0", "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": true}"#;

/// One of these presets as a JSON object (they are all valid, so this cannot fail).
pub fn parse(preset: &str) -> Map<String, Value> {
    match serde_json::from_str(preset) {
        Ok(Value::Object(m)) => m,
        _ => unreachable!("presets are valid JSON objects"),
    }
}
