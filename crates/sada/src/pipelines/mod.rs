//! Pipelines: assemble a model's parts (text encoder, denoiser, scheduler config, decoder) with
//! a solver and an accelerator. No numerics here.
//!
//! [`Pipeline`] is what the command line drives, whatever the model family.

pub mod default_model;
pub mod inputs;
pub mod stable_diffusion;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::policy::acceleration::Family;
use crate::policy::Acceleration;
use crate::sampling::Trace;
use crate::solvers::SolverKind;
pub use inputs::PipelineInputs;
pub use stable_diffusion::StableDiffusion;

/// The settings of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    /// Solver steps requested (a method such as `fewer-steps` may run fewer).
    pub steps: usize,
    pub guidance_scale: f64,
    pub height: usize,
    pub width: usize,
    /// Seed of the initial noise when none is given.
    pub seed: u64,
    pub solver: SolverKind,
    pub acceleration: Acceleration,
}

/// A text-to-image model ready to sample.
pub trait Pipeline {
    /// Which published accelerator settings apply.
    fn family(&self) -> Family;
    /// diffusers' default image size (height, width) and guidance scale for this model.
    fn default_size(&self) -> (usize, usize);
    fn default_guidance(&self) -> f64;
    /// Image pixels per latent pixel (1 for a pixel-space model).
    fn vae_scale_factor(&self) -> usize;
    /// Whether this model can turn prompts into conditioning.
    fn has_text_encoder(&self) -> bool;
    /// Whether [`Pipeline::decode`] gives images.
    fn can_decode(&self) -> bool;
    /// Words of `prompt` the tokenizer does not know (they become the unknown token).
    fn unknown_words(&mut self, prompt: &str) -> Result<Vec<String>>;
    /// Conditioning for a batch of prompts and one negative prompt, as diffusers' `encode_prompt`.
    fn encode_prompts(&mut self, prompts: &[String], negative_prompt: &str) -> Result<PipelineInputs>;
    /// Sample latents; `on_step(done, total)` after every step.
    fn generate(&mut self, inputs: &PipelineInputs, opts: &GenerateOptions, on_step: &mut dyn FnMut(usize, usize)) -> Result<(Tensor, Trace)>;
    /// Latents to an image tensor in [-1, 1], if the model has a decoder.
    fn decode(&self, latents: &Tensor) -> Result<Option<Tensor>>;
}
