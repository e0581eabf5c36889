//! Pipelines: assemble a model's parts (text encoder, denoiser, scheduler config, decoder) with
//! a solver and an accelerator. No numerics here.
//!
//! [`Pipeline`] is what the command line drives, whatever the model family.

pub mod default_model;
pub mod flux;
pub mod inputs;
pub mod stable_diffusion;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::models::controlnet::{ControlNetModel, ControlUnit};
use crate::policy::acceleration::Family;
use crate::policy::Acceleration;
use crate::sampling::Trace;
use crate::solvers::SolverKind;
pub use inputs::PipelineInputs;
pub use flux::Flux;
pub use stable_diffusion::StableDiffusion;

/// SDXL's size conditioning (`add_time_ids`): what diffusers' `original_size`,
/// `crops_coords_top_left` and `target_size` set; unset sizes are the image's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SizeConditioning {
    pub original_size: Option<(usize, usize)>,
    pub crops_coords_top_left: (usize, usize),
    pub target_size: Option<(usize, usize)>,
}

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
    /// SDXL's size conditioning (ignored by other models).
    #[serde(default)]
    pub size_conditioning: SizeConditioning,
}

/// What a prompt becomes before it is encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptCheck {
    /// Words the tokenizer does not know (they become the unknown token).
    pub unknown: Vec<String>,
    /// Tokens the prompt has, and how many the text encoder reads (the rest are dropped).
    pub tokens: usize,
    pub window: usize,
}

/// Prompts longer than this are refused: far beyond any text encoder's window, and cheap to
/// refuse before tokenising.
pub const MAX_PROMPT_CHARS: usize = 10_000;

/// A prompt worth encoding: not blank (unless `may_be_blank`, as a negative prompt may be)
/// and not absurdly long; `flag` names it in the error.
pub fn validate_prompt(flag: &str, text: &str, may_be_blank: bool) -> Result<()> {
    if !may_be_blank && text.trim().is_empty() {
        return Err(Error::param(flag, "is empty; describe the image to generate"));
    }
    let n = text.chars().count();
    if n > MAX_PROMPT_CHARS {
        return Err(Error::param(flag, format!("has {n} characters; at most {MAX_PROMPT_CHARS} are read")));
    }
    Ok(())
}

/// The pipeline for the model in `source`: Flux when its files say so, Stable Diffusion (1.x,
/// 2.x, XL) otherwise.
pub fn load_pipeline(source: crate::models::ModelSource, dtype: DType, device: &Device) -> Result<Box<dyn Pipeline>> {
    if Flux::detect(&source) {
        return Ok(Box::new(Flux::load_from(source, dtype, device)?));
    }
    Ok(Box::new(StableDiffusion::load_from(source, dtype, device)?))
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
    /// Unknown words and length of `prompt` as the tokenizer reads it.
    fn check_prompt(&mut self, prompt: &str) -> Result<PromptCheck>;
    /// An estimate of the memory (bytes) generating and decoding `batch` images of `opts`
    /// needs beyond the loaded weights, to refuse sizes that cannot fit before allocating.
    fn estimate_memory(&self, opts: &GenerateOptions, batch: usize) -> u128;
    /// Conditioning for a batch of prompts and one negative prompt (None: the pipeline's
    /// default, as diffusers' `negative_prompt=None`), as diffusers' `encode_prompt`;
    /// `clip_skip` as diffusers applies it.
    fn encode_prompts(&mut self, prompts: &[String], negative_prompt: Option<&str>, clip_skip: Option<usize>) -> Result<PipelineInputs>;
    /// Check `opts` against this model (size, step count, accelerator settings) without
    /// sampling, so a run can be refused before any output exists.
    fn validate(&self, opts: &GenerateOptions) -> Result<()>;
    /// Sample latents; `on_step(done, total)` after every step.
    fn generate(&mut self, inputs: &PipelineInputs, opts: &GenerateOptions, on_step: &mut dyn FnMut(usize, usize)) -> Result<(Tensor, Trace)>;
    /// The scheduler class the model ships (its `scheduler_config.json`), which the chosen
    /// solver is built from.
    fn scheduler_class(&self) -> Option<String>;
    /// Latents to an image tensor in [-1, 1], if the model has a decoder.
    fn decode(&self, latents: &Tensor) -> Result<Option<Tensor>>;

    /// The ControlNet the model folder ships (a `controlnet/` folder, as diffusers' ControlNet
    /// pipelines save one and the embedded model has), if any.
    fn bundled_controlnet(&self, _dtype: DType, _device: &Device) -> Result<Option<ControlNetModel>> {
        Ok(None)
    }
    /// Steer every later generation with `unit` from `image`.
    fn add_controlnet(&mut self, _unit: ControlUnit, _image: RgbImage) -> Result<()> {
        Err(Error::param("controlnet", "this model does not take ControlNets"))
    }
    /// Replace the control images (one per ControlNet, in order), e.g. per prompt.
    fn set_control_images(&mut self, _images: Vec<RgbImage>) -> Result<()> {
        Err(Error::param("control image", "this model has no ControlNet"))
    }
    /// diffusers' `guess_mode` for the ControlNets.
    fn set_guess_mode(&mut self, _on: bool) {}
    /// diffusers' `max_sequence_length`: the T5 tokens every prompt is padded or cut to (Flux).
    fn set_max_sequence_length(&mut self, _n: usize) -> Result<()> {
        Err(Error::param("max_sequence_length", "applies to models with a T5 text encoder (Flux) only"))
    }
}
