//! Pipelines: assemble a model's parts (text encoder, denoiser, scheduler config, decoder) with
//! a solver and an accelerator. No numerics here.
//!
//! [`Pipeline`] is what the command line drives, whatever the model family.

pub mod default_model;
pub mod flux;
pub mod inputs;
pub mod pipeline;
pub mod stable_diffusion;

use candle_core::{DType, Device};

use crate::error::Result;
pub use flux::Flux;
pub use inputs::{ControlInput, PipelineInputs};
pub use pipeline::{validate_prompt, GenerateOptions, Pipeline, PromptCheck, PromptOptions, SizeConditioning, MAX_PROMPT_CHARS};
pub use stable_diffusion::StableDiffusion;

/// The pipeline for the model in `source`: Flux when its files say so, Stable Diffusion (1.x,
/// 2.x, XL) otherwise.
pub fn load_pipeline(source: crate::models::ModelSource, dtype: DType, device: &Device) -> Result<Box<dyn Pipeline>> {
    if Flux::detect(&source) {
        return Ok(Box::new(Flux::load_from(source, dtype, device)?));
    }
    Ok(Box::new(StableDiffusion::load_from(source, dtype, device)?))
}
