//! What a pipeline is: the [`Pipeline`] trait every model family implements, and the settings and
//! prompt options a generation takes.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::inputs::PipelineInputs;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::models::controlnet::ControlNetModel;
use crate::policy::{Acceleration, Method, Policy};
use crate::sampling::Trace;
use crate::solvers::SolverKind;

/// SDXL's size conditioning (`add_time_ids`): what diffusers' `original_size`,
/// `crops_coords_top_left` and `target_size` set; unset sizes are the image's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SizeConditioning {
    /// (height, width) the model is told the original image had; None: the output size.
    pub original_size: Option<(usize, usize)>,
    /// (top, left) of the crop the model is told was taken; (0, 0) by default.
    pub crops_coords_top_left: (usize, usize),
    /// (height, width) the model is told to aim for; None: the output size.
    pub target_size: Option<(usize, usize)>,
}

/// The settings of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    /// Solver steps requested (a method such as `fewer-steps` may run fewer).
    pub steps: usize,
    /// Classifier-free guidance scale (above 1 adds the unconditional pass); Flux instead feeds
    /// it to a network that embeds guidance (FLUX.1-dev).
    pub guidance_scale: f64,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Seed of the initial noise when none is given.
    pub seed: u64,
    /// The scheduler (solver) that integrates the sampling ODE.
    pub solver: SolverKind,
    /// The acceleration method and its settings (none for the baseline).
    pub acceleration: Acceleration,
    /// SDXL's size conditioning (ignored by other models).
    #[serde(default)]
    pub size_conditioning: SizeConditioning,
}

/// How prompts are encoded: the arguments of diffusers' `encode_prompt` besides the prompts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptOptions {
    /// The negative prompt (None: the pipeline's default, as diffusers' `negative_prompt=None`).
    pub negative_prompt: Option<String>,
    /// Read the text encoder this many layers before its last, as diffusers applies `clip_skip`.
    pub clip_skip: Option<usize>,
    /// T5 tokens every prompt is padded or cut to (Flux's `max_sequence_length`; None: the
    /// model's default).
    pub max_sequence_length: Option<usize>,
}

/// What a prompt becomes before it is encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptCheck {
    /// Words the tokenizer does not know (they become the unknown token).
    pub unknown: Vec<String>,
    /// Tokens the prompt has, and how many the text encoder reads (the rest are dropped).
    pub tokens: usize,
    /// How many tokens the text encoder reads (between its start and end tokens).
    pub window: usize,
}

/// What turns a pipeline's latents into images, on its own ([`Pipeline::into_decoder`]).
pub struct Decoder {
    /// The autoencoder, if the model has one.
    pub vae: Option<crate::models::vae::AutoencoderKl>,
    /// A pixel-space model: the latents are the image.
    pub pixel_space: bool,
}

impl Decoder {
    /// Latents to an image tensor in [-1, 1], as [`Pipeline::decode`] (None without a decoder).
    pub fn decode(&self, latents: &Tensor) -> Result<Option<Tensor>> {
        decode_latents(self.vae.as_ref(), self.pixel_space, latents)
    }
}

/// The one decoding rule of every pipeline and [`Decoder`]: through the autoencoder when there is
/// one, the latents themselves for a pixel-space model, else nothing.
pub(crate) fn decode_latents(vae: Option<&crate::models::vae::AutoencoderKl>, pixel_space: bool, latents: &Tensor) -> Result<Option<Tensor>> {
    match vae {
        Some(v) => Ok(Some(v.decode(latents)?)),
        None if pixel_space => Ok(Some(latents.clone())),
        None => Ok(None),
    }
}

/// [`Pipeline::set_vae_tiling`] on a pipeline's autoencoder, if it has one.
pub(crate) fn tile_vae(vae: Option<&mut crate::models::vae::AutoencoderKl>, on: bool) -> Result<()> {
    let vae = vae.ok_or_else(|| Error::param("vae_tiling", "this model has no autoencoder to tile"))?;
    vae.set_tiling(on);
    Ok(())
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

/// Guidance scales beyond this are refused: no model is used near it, and a larger one drives
/// the networks' outputs (or Flux's guidance embedding) to infinity.
pub const MAX_GUIDANCE: f64 = 1000.0;

/// What `validate` checks for every pipeline before any work, once the solver is built: a
/// usable guidance scale, size conditioning only where the model takes it, and that the
/// acceleration method can run on this denoiser (its policy's `begin`, tried on a fresh policy
/// against the solver, the latent shape and the denoiser's capabilities).
pub(crate) fn check_run(
    opts: &GenerateOptions,
    takes_size_conditioning: bool,
    solver: &dyn crate::solvers::Solver,
    latent_shape: &[usize],
    caps: &crate::denoiser::Capabilities,
) -> Result<()> {
    let g = opts.guidance_scale;
    if !g.is_finite() || g.abs() > MAX_GUIDANCE {
        return Err(Error::param("guidance_scale", format!("{g} is not a guidance scale; expected a finite number of at most {MAX_GUIDANCE} in size")));
    }
    if !takes_size_conditioning && opts.size_conditioning != SizeConditioning::default() {
        return Err(Error::param("original_size/target_size/crops_coords_top_left", "only SDXL models take size conditioning; this model does not"));
    }
    opts.acceleration.policy(opts.seed).begin(solver, latent_shape, caps)
}

/// A text-to-image model ready to sample.
pub trait Pipeline {
    /// Which published accelerator settings apply.
    fn family(&self) -> Family;
    /// diffusers' default image size (height, width) and guidance scale for this model.
    fn default_size(&self) -> (usize, usize);
    /// The default guidance scale for this model (diffusers', unless the model was tuned for
    /// another, as the embedded one was).
    fn default_guidance(&self) -> f64;
    /// Image pixels per latent pixel (1 for a pixel-space model).
    fn vae_scale_factor(&self) -> usize;
    /// Whether this model can turn prompts into conditioning.
    fn has_text_encoder(&self) -> bool;
    /// Drop the text encoders and tokenizers loaded for [`Pipeline::encode_prompts`] (they load
    /// again on the next prompt): once a run's prompts are encoded they only hold memory (FLUX.1's
    /// T5-XXL is 19 GB in f32).
    fn release_text_encoders(&mut self) {}
    /// Load the denoiser's weights where the pipeline defers them (Flux: its transformer loads
    /// after the prompt is encoded and the text encoders released, so that T5-XXL and the
    /// transformer never sit in memory together); a run loads it at the latest.
    fn load_denoiser(&mut self) -> Result<()> {
        Ok(())
    }
    /// Whether [`Pipeline::decode`] gives images.
    fn can_decode(&self) -> bool;
    /// Unknown words and length of `prompt` as the tokenizer reads it with `opts`.
    fn check_prompt(&mut self, prompt: &str, opts: &PromptOptions) -> Result<PromptCheck>;
    /// An estimate of the memory (bytes) generating and decoding `batch` images of `opts`
    /// needs beyond the loaded weights, to refuse sizes that cannot fit before allocating.
    fn estimate_memory(&self, opts: &GenerateOptions, batch: usize) -> u128;
    /// Conditioning for a batch of prompts, as diffusers' `encode_prompt`.
    fn encode_prompts(&mut self, prompts: &[String], opts: &PromptOptions) -> Result<PipelineInputs>;
    /// Check `opts` against this model (size, step count, accelerator settings) without
    /// sampling, so a run can be refused before any output exists.
    fn validate(&self, opts: &GenerateOptions) -> Result<()>;
    /// Sample latents with `opts.acceleration`; `on_step(done, total)` after every step.
    fn generate(&mut self, inputs: &PipelineInputs, opts: &GenerateOptions, on_step: &mut dyn FnMut(usize, usize)) -> Result<(Tensor, Trace)> {
        let mut policy = opts.acceleration.policy(opts.seed);
        self.generate_with(inputs, opts, policy.as_mut(), on_step)
    }
    /// Sample latents with `policy` deciding what each step costs (any [`Policy`], e.g. one of
    /// your own); `opts.acceleration` still sets the step count and is checked against it.
    fn generate_with(
        &mut self,
        inputs: &PipelineInputs,
        opts: &GenerateOptions,
        policy: &mut dyn Policy,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<(Tensor, Trace)>;
    /// The scheduler class the model ships (its `scheduler_config.json`), which the chosen
    /// solver is built from.
    fn scheduler_class(&self) -> Option<String>;
    /// Latents to an image tensor in [-1, 1], if the model has a decoder.
    fn decode(&self, latents: &Tensor) -> Result<Option<Tensor>>;
    /// The decoder alone, the rest of the pipeline (denoiser, text encoders, ControlNets)
    /// dropped: for decoding after the last sampling, when the denoiser's weights would
    /// otherwise sit beside the decoder's activations (SDXL at 1024 px: 2.7 GB of q8_0 UNet
    /// beside a 4 GB decode).
    fn into_decoder(self: Box<Self>) -> Decoder;
    /// diffusers' `enable_vae_tiling` / `disable_vae_tiling`: decode images larger than the
    /// autoencoder's `sample_size` in overlapping, blended tiles (the activation memory of one
    /// tile; the seams differ from an untiled decode by the blending). An error for a model
    /// without an autoencoder.
    fn set_vae_tiling(&mut self, _on: bool) -> Result<()> {
        tile_vae(None, false)
    }

    /// diffusers' defaults for this model (50 steps, its guidance scale and image size, seed 0)
    /// with the solver SADA's published runs use for its family and SADA at the family's
    /// published settings.
    fn default_options(&self) -> GenerateOptions {
        let (height, width) = self.default_size();
        let family = self.family();
        GenerateOptions {
            steps: 50,
            guidance_scale: self.default_guidance(),
            height,
            width,
            seed: 0,
            solver: family.default_solver(),
            acceleration: Acceleration::Sada(crate::policy::SadaConfig::preset(family)),
            size_conditioning: SizeConditioning::default(),
        }
    }

    /// The ControlNet the model folder ships (a `controlnet/` folder, as diffusers' ControlNet
    /// pipelines save one and the embedded model has), if any.
    fn bundled_controlnet(&self, _dtype: DType, _device: &Device) -> Result<Option<ControlNetModel>> {
        Ok(None)
    }
    /// Add a ControlNet: every later generation takes one [`ControlInput`](super::ControlInput) for it.
    fn add_controlnet(&mut self, _model: ControlNetModel) -> Result<()> {
        Err(Error::param("controlnet", "this model does not take ControlNets"))
    }
}
