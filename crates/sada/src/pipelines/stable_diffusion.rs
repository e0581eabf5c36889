//! Stable Diffusion 1.x, 2.x and XL (diffusers' `StableDiffusionPipeline` and
//! `StableDiffusionXLPipeline`) from a diffusers folder, a Hugging Face cache snapshot or a
//! single-file checkpoint: `unet/`, `scheduler/`, optional `vae/`, and optional `tokenizer/` +
//! `text_encoder/` (SDXL: and `tokenizer_2/` + `text_encoder_2/`). Conditioning comes from a
//! prompt, encoded as diffusers' `encode_prompt` encodes it, or as precomputed embeddings named
//! as diffusers names the pipeline arguments. A folder whose `model_index.json` lists no VAE
//! (`"vae": [null, null]`) is a pixel-space model: the UNet denoises images directly and
//! "decoding" is the identity.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::inputs::{ControlInput, PipelineInputs};
use super::pipeline::{Decoder, GenerateOptions, Pipeline, PromptCheck, PromptOptions};
use crate::denoiser::{Conditioning, Denoiser, Guided};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::models::controlnet::{ControlNetModel, ControlUnit, ControlledUNet};
use crate::models::{AutoencoderKl, ModelSource, UNet2DConditionModel};
use crate::policy::Policy;
use crate::sampling::{sample, Trace};
use crate::solvers::{build_solver, scheduler_config_object, FlowTimesteps, Solver, SolverKind};
use crate::text::{ClipTextEncoder, Tokenizer};

/// Latents larger than this are refused before they are allocated (2^31 elements: 8 GiB in
/// f32, some hundred times a 1024 px SDXL batch).
const MAX_LATENT_ELEMENTS: usize = 1 << 31;

/// diffusers' `StableDiffusionPipeline` / `StableDiffusionXLPipeline`, with optional ControlNets:
/// the UNet and scheduler config, plus the VAE and text encoders when the folder has them.
pub struct StableDiffusion {
    /// Where the model's files are read from.
    pub source: ModelSource,
    /// The denoiser.
    pub unet: UNet2DConditionModel,
    /// The decoder, when the folder has `vae/` and the model is not pixel-space.
    pub vae: Option<AutoencoderKl>,
    /// Loaded on the first prompt (folders with only precomputed embeddings never need them):
    /// one tokenizer and encoder, two for SDXL.
    text: Option<Vec<(Tokenizer, ClipTextEncoder)>>,
    /// SDXL: the negative embeddings of an absent negative prompt are zeros (model_index.json).
    force_zeros_for_empty_prompt: bool,
    /// `model_index.json` lists no VAE: the UNet denoises images directly.
    pub pixel_space: bool,
    scheduler_config: serde_json::Map<String, serde_json::Value>,
    /// ControlNets (diffusers' `MultiControlNetModel` when several); each run gives their
    /// control images and settings.
    controlnets: Vec<ControlNetModel>,
    /// The default guidance scale when it is not diffusers' for the family (the embedded model's).
    pub guidance_scale: Option<f64>,
    device: Device,
    dtype: DType,
}

impl StableDiffusion {
    /// Load from a diffusers model folder.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::file(dir, "model folder not found"));
        }
        Self::load_from(ModelSource::Dir(dir.to_path_buf()), dtype, device)
    }

    /// Load the UNet, scheduler config and (unless pixel-space) VAE from `source`; the text
    /// encoders load on the first prompt.
    pub fn load_from(source: ModelSource, dtype: DType, device: &Device) -> Result<Self> {
        let unet = UNet2DConditionModel::load_from(&source, "unet", dtype, device)?;
        const SCHEDULER: &str = "scheduler/scheduler_config.json";
        let scheduler_config = scheduler_config_object(source.read_json(SCHEDULER)?, &source.path(SCHEDULER))?;
        let index: serde_json::Value = if source.exists("model_index.json") { source.read_json("model_index.json")? } else { serde_json::Value::Null };
        let pixel_space = index.get("vae").is_some_and(|v| v.as_array().is_some_and(|a| a.iter().all(|x| x.is_null())));
        let force_zeros_for_empty_prompt = index.get("force_zeros_for_empty_prompt").and_then(|v| v.as_bool()).unwrap_or(false);
        let vae = if !pixel_space && source.exists("vae/config.json") {
            // diffusers decodes in float32 when the VAE asks for it (SDXL's overflows in f16)
            let config: crate::models::vae::AutoencoderKlConfig = source.read_json("vae/config.json")?;
            let vae_dtype = if dtype != DType::F32 && config.force_upcast == Some(true) { DType::F32 } else { dtype };
            Some(AutoencoderKl::load_from(&source, "vae", vae_dtype, device)?)
        } else {
            None
        };
        Ok(Self {
            source,
            unet,
            vae,
            text: None,
            force_zeros_for_empty_prompt,
            pixel_space,
            scheduler_config,
            controlnets: Vec::new(),
            guidance_scale: None,
            device: device.clone(),
            dtype,
        })
    }

    /// Steer every later generation with `model` too (each run gives its control image and
    /// settings). Refuses a ControlNet built for another UNet.
    pub fn add_controlnet(&mut self, mut model: ControlNetModel) -> Result<()> {
        let m = &model;
        let mismatch = |what: &str, cn: String, unet: String| {
            Error::param("controlnet", format!("its {what} is {cn} but the UNet's is {unet}: it was made for another model"))
        };
        if m.in_channels() != self.unet.config.in_channels {
            return Err(mismatch("in_channels", m.in_channels().to_string(), self.unet.config.in_channels.to_string()));
        }
        if m.skips() != self.unet.skips() {
            return Err(mismatch("number of skip connections", m.skips().to_string(), self.unet.skips().to_string()));
        }
        if m.uses_text_time() != self.unet.uses_text_time() {
            return Err(mismatch(
                "addition_embed_type",
                format!("{:?}", m.config.unet.addition_embed_type),
                format!("{:?}", self.unet.config.addition_embed_type),
            ));
        }
        if m.cross_attention_dim() != self.unet.cross_attention_dim() {
            return Err(mismatch("cross_attention_dim", m.cross_attention_dim().to_string(), self.unet.cross_attention_dim().to_string()));
        }
        if m.image_factor() != self.vae_scale_factor() {
            return Err(Error::param(
                "controlnet",
                format!(
                    "its conditioning embedding shrinks the control image {}x but the latents are {}x smaller than the image",
                    m.image_factor(),
                    self.vae_scale_factor()
                ),
            ));
        }
        model.tag_sites(&format!("controlnet.{}", self.controlnets.len()));
        self.controlnets.push(model);
        Ok(())
    }

    /// The ControlNets added so far, in the order their control inputs are given.
    pub fn controlnets(&self) -> &[ControlNetModel] {
        &self.controlnets
    }

    /// One control input per ControlNet, each with an image and settings diffusers accepts.
    fn check_control(&self, control: &[ControlInput]) -> Result<()> {
        if control.len() != self.controlnets.len() {
            return Err(match self.controlnets.len() {
                0 => Error::param("control image", "this model has no ControlNet"),
                n => Error::param("control image", format!("{} given for {n} ControlNets: one each", control.len())),
            });
        }
        for c in control {
            c.settings.validate()?;
            if c.image.width == 0 || c.image.height == 0 {
                return Err(Error::param("control image", "it has no pixels"));
            }
        }
        Ok(())
    }

    /// The control images at `opts`' size, repeated over `batch`, in `cond` and `uncond`, with
    /// each half's `control_weight`.
    fn add_control(
        &self,
        cond: Conditioning,
        uncond: Option<Conditioning>,
        batch: usize,
        opts: &GenerateOptions,
        inputs: &PipelineInputs,
    ) -> Result<(Conditioning, Option<Conditioning>)> {
        let (mut cond, mut uncond) = (cond, uncond);
        for (i, c) in inputs.control.iter().enumerate() {
            let resized = crate::resample::resize_lanczos(&c.image, opts.width, opts.height);
            let t = crate::image::to_unit_tensor(&resized, &self.device)?.repeat((batch, 1, 1, 1))?.to_dtype(self.dtype)?;
            cond = cond.with(format!("controlnet_cond.{i}"), t.clone());
            uncond = uncond.map(|u| u.with(format!("controlnet_cond.{i}"), t));
        }
        let ones = Tensor::ones(batch, DType::F32, &self.device)?;
        let uncond_weight = if self.effective_guess_mode(inputs.guess_mode) { ones.zeros_like()? } else { ones.clone() };
        Ok((cond.with("control_weight", ones), uncond.map(|u| u.with("control_weight", uncond_weight))))
    }

    /// diffusers turns guess mode on for ControlNets that pool their residuals.
    fn effective_guess_mode(&self, asked: bool) -> bool {
        asked || self.controlnets.first().is_some_and(|c| c.global_pool_conditions())
    }

    /// The tokenizers and text encoders, loaded on first use.
    fn text(&mut self) -> Result<&[(Tokenizer, ClipTextEncoder)]> {
        if self.text.is_none() {
            if !self.has_text() {
                return Err(Error::file(
                    self.source.path("text_encoder"),
                    "this model has no text encoder: pass precomputed prompt_embeds instead of a prompt",
                ));
            }
            let mut text = Vec::new();
            for (tok_dir, enc_dir) in [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")] {
                if !self.source.exists(&format!("{enc_dir}/config.json")) {
                    continue;
                }
                let tok = Tokenizer::load_from(&self.source, tok_dir)?;
                let enc = ClipTextEncoder::load_from(&self.source, enc_dir, DType::F32, &self.device)?;
                if tok.max_length() > enc.config.max_position_embeddings {
                    return Err(Error::file(
                        self.source.path(&format!("{tok_dir}/tokenizer_config.json")),
                        format!("model_max_length {} is longer than the text encoder's {} positions", tok.max_length(), enc.config.max_position_embeddings),
                    ));
                }
                text.push((tok, enc));
            }
            if self.unet.uses_text_time() && !text.get(1).is_some_and(|(_, e)| e.has_projection()) {
                return Err(Error::file(
                    self.source.path("text_encoder_2"),
                    "an SDXL-style UNet needs text_encoder_2 with a text_projection (CLIPTextModelWithProjection) for its pooled embeddings",
                ));
            }
            self.text = Some(text);
        }
        Ok(self.text.as_deref().expect("loaded above"))
    }

    /// `encode_prompt` of diffusers' SD and SDXL pipelines for `texts`: (prompt_embeds, pooled).
    /// `clip_skip`: SD reads the output of `clip_skip` layers before the last through the final
    /// layer norm; SDXL the output `clip_skip + 1` layers before the last without it
    /// (penultimate by default), both encoders concatenated.
    fn encode_texts(&mut self, texts: &[&str], clip_skip: Option<usize>) -> Result<(Tensor, Option<Tensor>)> {
        let device = self.device.clone();
        let sdxl = self.unet.uses_text_time();
        let text = self.text()?;
        let mut embeds = Vec::new();
        let mut pooled = None;
        for (tok, enc) in text {
            let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t)).collect();
            let out = enc.encode(&Tensor::new(ids, &device)?)?;
            let n = out.hidden_states.len();
            let pick = |back: usize| -> Result<&Tensor> {
                out.hidden_states
                    .get(n.checked_sub(1 + back).ok_or_else(|| {
                        Error::param("clip_skip", format!("{} skips more layers than the text encoder has ({})", clip_skip.unwrap_or(0), n - 1))
                    })?)
                    .ok_or_else(|| Error::internal("hidden state index"))
            };
            embeds.push(match (sdxl, clip_skip) {
                (false, None) => out.last_hidden_state.clone(),
                (false, Some(k)) => enc.final_layer_norm(pick(k)?)?,
                (true, k) => pick(k.unwrap_or(0) + 1)?.clone(),
            });
            if enc.has_projection() {
                pooled = Some(enc.project(&out.pooled)?);
            }
        }
        let embeds = if embeds.len() == 1 { embeds.pop().expect("one") } else { Tensor::cat(&embeds, 2)? };
        Ok((embeds, if sdxl { pooled } else { None }))
    }

    /// The `kind` scheduler for `steps` steps, configured from the model's
    /// `scheduler/scheduler_config.json`.
    pub fn solver(&self, kind: SolverKind, steps: usize) -> Result<Box<dyn Solver>> {
        build_solver(kind, &self.scheduler_config, &Default::default(), steps, &FlowTimesteps::default()).map_err(|e| match e {
            // the run's own parameters (the step count), not the file's
            e @ Error::InvalidParameter { .. } => e,
            e => Error::file(self.source.path("scheduler/scheduler_config.json"), e.to_string()),
        })
    }

    fn conditioning(&self, inputs: &PipelineInputs, opts: &GenerateOptions) -> Result<(Conditioning, Option<Conditioning>, usize)> {
        let pe = inputs
            .prompt_embeds
            .as_ref()
            .ok_or_else(|| Error::param("prompt_embeds", "required: give a prompt, or prompt_embeds among the precomputed inputs"))?;
        let d = self.unet.cross_attention_dim();
        if pe.rank() != 3 || pe.dim(2)? != d {
            return Err(Error::Shape { what: "prompt_embeds".into(), expected: format!("[batch, tokens, {d}]"), got: format!("{:?}", pe.dims()) });
        }
        let batch = pe.dim(0)?;
        let mut cond = Conditioning::new().with("encoder_hidden_states", pe.to_dtype(self.dtype)?);
        let guided = opts.guidance_scale > 1.0;
        let mut uncond = if guided {
            let ne = inputs
                .negative_prompt_embeds
                .as_ref()
                .ok_or_else(|| Error::param("negative_prompt_embeds", "required when guidance_scale > 1 (the embeddings of the empty prompt)"))?;
            if ne.dims() != pe.dims() {
                return Err(Error::Shape { what: "negative_prompt_embeds".into(), expected: format!("{:?}", pe.dims()), got: format!("{:?}", ne.dims()) });
            }
            Some(Conditioning::new().with("encoder_hidden_states", ne.to_dtype(self.dtype)?))
        } else {
            None
        };
        if self.unet.uses_text_time() {
            let pooled = inputs.pooled_prompt_embeds.as_ref().ok_or_else(|| Error::param("pooled_prompt_embeds", "required by this (SDXL-style) UNet"))?;
            // diffusers' add_time_ids: original size, crop top-left, target size (image size by default)
            let ids = match &inputs.add_time_ids {
                Some(t) => t.clone(),
                None => {
                    let sc = &opts.size_conditioning;
                    let (oh, ow) = sc.original_size.unwrap_or((opts.height, opts.width));
                    let (ct, cl) = sc.crops_coords_top_left;
                    let (th, tw) = sc.target_size.unwrap_or((opts.height, opts.width));
                    let v: Vec<f32> = [oh, ow, ct, cl, th, tw].iter().map(|&x| x as f32).collect();
                    Tensor::new(v, &self.device)?.unsqueeze(0)?.repeat((batch, 1))?
                }
            };
            cond = cond.with("text_embeds", pooled.clone()).with("time_ids", ids.clone());
            if let Some(u) = uncond.take() {
                let np = inputs
                    .negative_pooled_prompt_embeds
                    .as_ref()
                    .ok_or_else(|| Error::param("negative_pooled_prompt_embeds", "required when guidance_scale > 1 with an SDXL-style UNet"))?;
                uncond = Some(u.with("text_embeds", np.clone()).with("time_ids", ids));
            }
        }
        Ok((cond, uncond, batch))
    }

    /// The solver for `opts` once everything [`Pipeline::validate`] checks has been checked.
    fn checked_solver(&self, opts: &GenerateOptions) -> Result<Box<dyn Solver>> {
        let scale = self.vae_scale_factor();
        if !opts.height.is_multiple_of(scale) || !opts.width.is_multiple_of(scale) || opts.height == 0 || opts.width == 0 {
            return Err(Error::param("height/width", format!("{}x{} must be positive multiples of {scale}", opts.width, opts.height)));
        }
        let steps = opts.acceleration.steps(opts.steps);
        let solver = self.solver(opts.solver, steps)?;
        opts.acceleration.check(opts.steps)?;
        let shape = [1, self.unet.config.in_channels, opts.height / scale, opts.width / scale];
        super::pipeline::check_run(opts, self.unet.uses_text_time(), solver.as_ref(), &shape, &self.unet.capabilities())?;
        Ok(solver)
    }

    /// Whether this folder has a text encoder and tokenizer to read prompts with.
    fn has_text(&self) -> bool {
        self.source.exists("text_encoder/config.json") && self.source.exists("tokenizer")
    }
}

impl Pipeline for StableDiffusion {
    /// SDXL-style models (text_time conditioning) take SDXL's settings, others SD-2's.
    fn family(&self) -> Family {
        if self.unet.uses_text_time() {
            Family::Sdxl
        } else {
            Family::StableDiffusion
        }
    }

    /// `unet.config.sample_size * vae_scale_factor`, as diffusers.
    fn default_size(&self) -> (usize, usize) {
        let s = self.unet.config.sample_size.as_ref().and_then(|v| v.as_u64()).unwrap_or(64) as usize * self.vae_scale_factor();
        (s, s)
    }

    /// diffusers' pipelines: 5.0 for SDXL, 7.5 otherwise, unless the model sets its own.
    fn default_guidance(&self) -> f64 {
        self.guidance_scale.unwrap_or(match self.family() {
            Family::Sdxl => 5.0,
            _ => 7.5,
        })
    }

    /// 2^(levels - 1) of the VAE (8 for every SD model), 1 in pixel space.
    fn vae_scale_factor(&self) -> usize {
        if self.pixel_space {
            return 1;
        }
        self.vae.as_ref().map(|v| 1 << (v.config.block_out_channels.len() - 1)).unwrap_or(8)
    }

    fn release_text_encoders(&mut self) {
        self.text = None;
    }

    fn has_text_encoder(&self) -> bool {
        self.has_text()
    }

    fn can_decode(&self) -> bool {
        self.vae.is_some() || self.pixel_space
    }

    fn check_prompt(&mut self, prompt: &str, _opts: &PromptOptions) -> Result<PromptCheck> {
        let c = self.text()?[0].0.count(prompt);
        Ok(PromptCheck { unknown: c.unknown, tokens: c.tokens, window: c.window })
    }

    fn estimate_memory(&self, opts: &GenerateOptions, batch: usize) -> u128 {
        let scale = self.vae_scale_factor().max(1);
        let (h, w) = (opts.height.div_ceil(scale), opts.width.div_ceil(scale));
        let guided = if opts.guidance_scale > 1.0 { 2 } else { 1 };
        // a ControlNet's activations are at most those of the UNet it copies half of
        let unet = self.unet.activation_bytes(batch * guided, h, w).saturating_mul(1 + self.controlnets.len() as u128);
        let decode = self.vae.as_ref().map(|v| v.decode_bytes(batch, h, w)).unwrap_or(0);
        unet.max(decode)
    }

    fn encode_prompts(&mut self, prompts: &[String], opts: &PromptOptions) -> Result<PipelineInputs> {
        if opts.max_sequence_length.is_some() {
            return Err(Error::param("max_sequence_length", "applies to models with a T5 text encoder (Flux) only"));
        }
        let (negative_prompt, clip_skip) = (opts.negative_prompt.as_deref(), opts.clip_skip);
        let dtype = self.dtype;
        let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let (pe, pooled) = self.encode_texts(&texts, clip_skip)?;
        // diffusers encodes the negative prompt without clip_skip; SDXL zeroes an absent one
        let (ne, npooled) = if negative_prompt.is_none() && self.force_zeros_for_empty_prompt {
            (pe.zeros_like()?, pooled.as_ref().map(Tensor::zeros_like).transpose()?)
        } else {
            self.encode_texts(&vec![negative_prompt.unwrap_or(""); prompts.len()], None)?
        };
        Ok(PipelineInputs {
            prompt_embeds: Some(pe.to_dtype(dtype)?),
            negative_prompt_embeds: Some(ne.to_dtype(dtype)?),
            pooled_prompt_embeds: pooled.map(|p| p.to_dtype(dtype)).transpose()?,
            negative_pooled_prompt_embeds: npooled.map(|p| p.to_dtype(dtype)).transpose()?,
            ..Default::default()
        })
    }

    fn validate(&self, opts: &GenerateOptions) -> Result<()> {
        self.checked_solver(opts).map(drop)
    }

    fn generate_with(
        &mut self,
        inputs: &PipelineInputs,
        opts: &GenerateOptions,
        policy: &mut dyn Policy,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<(Tensor, Trace)> {
        let scale = self.vae_scale_factor();
        // the solver checks the step count before anything is allocated for it
        let mut solver = self.checked_solver(opts)?;
        self.check_control(&inputs.control)?;
        let (cond, uncond, batch) = self.conditioning(inputs, opts)?;
        let shape = [batch, self.unet.config.in_channels, opts.height / scale, opts.width / scale];
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none_or(|n| n > MAX_LATENT_ELEMENTS) {
            return Err(Error::param("height/width", format!("{}x{} makes latents of {shape:?}, more than any run can hold", opts.width, opts.height)));
        }
        let noise = match &inputs.latents {
            Some(l) => {
                if l.dims() != shape {
                    return Err(Error::Shape {
                        what: "latents".into(),
                        expected: format!("{shape:?} (batch, channels, height/{scale}, width/{scale})"),
                        got: format!("{:?}", l.dims()),
                    });
                }
                l.clone()
            }
            // torch's CPU generator, as diffusers' randn_tensor draws it for this seed
            None => Tensor::from_vec(crate::torch_rng::TorchGenerator::new(opts.seed).randn(shape.iter().product()), &shape[..], &self.device)?,
        };
        let latents = noise.affine(solver.init_noise_sigma(), 0.0)?.to_dtype(self.dtype)?;
        if self.controlnets.is_empty() {
            let guided = Guided::new(&self.unet, cond, uncond, opts.guidance_scale)?;
            return sample(&guided, solver.as_mut(), policy, latents, on_step);
        }
        let (cond, uncond) = self.add_control(cond, uncond, batch, opts, inputs)?;
        let nets: Vec<ControlUnit> = self.controlnets.iter().zip(&inputs.control).map(|(model, c)| ControlUnit { model, settings: c.settings }).collect();
        let controlled =
            ControlledUNet { unet: &self.unet, nets: &nets, guess_mode: self.effective_guess_mode(inputs.guess_mode), num_steps: solver.num_steps() };
        let guided = Guided::new(&controlled, cond, uncond, opts.guidance_scale)?;
        sample(&guided, solver.as_mut(), policy, latents, on_step)
    }

    fn scheduler_class(&self) -> Option<String> {
        self.scheduler_config.get("_class_name").and_then(|v| v.as_str()).map(str::to_owned)
    }

    fn bundled_controlnet(&self, dtype: DType, device: &Device) -> Result<Option<ControlNetModel>> {
        if !self.source.exists("controlnet/config.json") {
            return Ok(None);
        }
        ControlNetModel::load_from(&self.source, "controlnet", dtype, device).map(Some)
    }

    fn add_controlnet(&mut self, model: ControlNetModel) -> Result<()> {
        StableDiffusion::add_controlnet(self, model)
    }

    fn set_vae_tiling(&mut self, on: bool) -> Result<()> {
        super::pipeline::tile_vae(self.vae.as_mut(), on)
    }

    fn decode(&self, latents: &Tensor) -> Result<Option<Tensor>> {
        super::pipeline::decode_latents(self.vae.as_ref(), self.pixel_space, latents)
    }

    fn into_decoder(self: Box<Self>) -> Decoder {
        Decoder { vae: self.vae, pixel_space: self.pixel_space }
    }
}
