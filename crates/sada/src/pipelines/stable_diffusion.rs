//! Stable Diffusion (1.x, 2.x, XL) from a diffusers folder: `unet/`, `scheduler/`, optional `vae/`,
//! and optional `tokenizer/` + `text_encoder/`. Conditioning comes either from a prompt (where
//! the folder's tokenizer is one we read: word-level, as the embedded default model's) or as
//! precomputed embeddings named as diffusers names the pipeline arguments. A folder whose
//! `model_index.json` lists no VAE (`"vae": [null, null]`) is a pixel-space model: the UNet
//! denoises images directly and "decoding" is the identity.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{GenerateOptions, Pipeline, PipelineInputs, PromptCheck};
use crate::denoiser::{Conditioning, Guided};
use crate::error::{Error, Result};
use crate::models::{AutoencoderKl, ModelSource, UNet2DConditionModel};
use crate::policy::acceleration::Family;
use crate::sampling::{sample, Trace};
use crate::solvers::{build_solver, scheduler_config_object, FlowTimesteps, Solver, SolverKind};
use crate::text::{ClipTextEncoder, WordLevelTokenizer};

/// Latents larger than this are refused before they are allocated (2^31 elements: 8 GiB in
/// f32, some hundred times a 1024 px SDXL batch).
const MAX_LATENT_ELEMENTS: usize = 1 << 31;

pub struct StableDiffusion {
    pub source: ModelSource,
    pub unet: UNet2DConditionModel,
    pub vae: Option<AutoencoderKl>,
    /// Loaded on the first prompt (folders with only precomputed embeddings never need it).
    text: Option<(WordLevelTokenizer, ClipTextEncoder)>,
    pub pixel_space: bool,
    scheduler_config: serde_json::Map<String, serde_json::Value>,
    device: Device,
    dtype: DType,
}

impl StableDiffusion {
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::file(dir, "model folder not found"));
        }
        Self::load_from(ModelSource::Dir(dir.to_path_buf()), dtype, device)
    }

    pub fn load_from(source: ModelSource, dtype: DType, device: &Device) -> Result<Self> {
        let unet = UNet2DConditionModel::load_from(&source, "unet", dtype, device)?;
        const SCHEDULER: &str = "scheduler/scheduler_config.json";
        let scheduler_config = scheduler_config_object(source.read_json(SCHEDULER)?, &source.path(SCHEDULER))?;
        let pixel_space = source.exists("model_index.json") && {
            let index: serde_json::Value = source.read_json("model_index.json")?;
            index.get("vae").is_some_and(|v| v.as_array().is_some_and(|a| a.iter().all(|x| x.is_null())))
        };
        let vae = if !pixel_space && source.exists("vae/config.json") { Some(AutoencoderKl::load_from(&source, "vae", dtype, device)?) } else { None };
        Ok(Self { source, unet, vae, text: None, pixel_space, scheduler_config, device: device.clone(), dtype })
    }

    fn text(&mut self) -> Result<&(WordLevelTokenizer, ClipTextEncoder)> {
        if self.text.is_none() {
            if !self.has_text() {
                return Err(Error::file(self.source.path("text_encoder"), "this model has no text encoder: pass precomputed prompt_embeds instead of a prompt"));
            }
            let tok = WordLevelTokenizer::load_from(&self.source, "tokenizer")?;
            let enc = ClipTextEncoder::load_from(&self.source, "text_encoder", DType::F32, &self.device)?;
            if tok.max_length > enc.config.max_position_embeddings {
                return Err(Error::file(
                    self.source.path("tokenizer/tokenizer_config.json"),
                    format!("model_max_length {} is longer than the text encoder's {} positions", tok.max_length, enc.config.max_position_embeddings),
                ));
            }
            self.text = Some((tok, enc));
        }
        Ok(self.text.as_ref().expect("loaded above"))
    }

    pub fn solver(&self, kind: SolverKind, steps: usize) -> Result<Box<dyn Solver>> {
        build_solver(kind, &self.scheduler_config, &Default::default(), steps, &FlowTimesteps::default()).map_err(|e| match e {
            // the run's own parameters (the step count), not the file's
            e @ Error::InvalidParameter { .. } => e,
            e => Error::file(self.source.path("scheduler/scheduler_config.json"), e.to_string()),
        })
    }

    fn conditioning(&self, inputs: &PipelineInputs, opts: &GenerateOptions) -> Result<(Conditioning, Option<Conditioning>, usize)> {
        let pe = inputs.prompt_embeds.as_ref().ok_or_else(|| Error::param("prompt_embeds", "required (this model folder has no text encoder support yet)"))?;
        let d = self.unet.cross_attention_dim();
        if pe.rank() != 3 || pe.dim(2)? != d {
            return Err(Error::Shape { what: "prompt_embeds".into(), expected: format!("[batch, tokens, {d}]"), got: format!("{:?}", pe.dims()) });
        }
        let batch = pe.dim(0)?;
        let mut cond = Conditioning::new().with("encoder_hidden_states", pe.to_dtype(self.dtype)?);
        let guided = opts.guidance_scale > 1.0;
        let mut uncond = if guided {
            let ne = inputs.negative_prompt_embeds.as_ref().ok_or_else(|| {
                Error::param("negative_prompt_embeds", "required when guidance_scale > 1 (the embeddings of the empty prompt)")
            })?;
            if ne.dims() != pe.dims() {
                return Err(Error::Shape { what: "negative_prompt_embeds".into(), expected: format!("{:?}", pe.dims()), got: format!("{:?}", ne.dims()) });
            }
            Some(Conditioning::new().with("encoder_hidden_states", ne.to_dtype(self.dtype)?))
        } else {
            None
        };
        if self.unet.uses_text_time() {
            let pooled = inputs.pooled_prompt_embeds.as_ref().ok_or_else(|| Error::param("pooled_prompt_embeds", "required by this (SDXL-style) UNet"))?;
            // diffusers' default add_time_ids: original size, crop (0, 0), target size
            let ids = match &inputs.add_time_ids {
                Some(t) => t.clone(),
                None => {
                    let (h, w) = (opts.height as f32, opts.width as f32);
                    Tensor::new(&[h, w, 0.0, 0.0, h, w], &self.device)?.unsqueeze(0)?.repeat((batch, 1))?
                }
            };
            cond = cond.with("text_embeds", pooled.clone()).with("time_ids", ids.clone());
            if let Some(u) = uncond.take() {
                let np = inputs.negative_pooled_prompt_embeds.as_ref().ok_or_else(|| {
                    Error::param("negative_pooled_prompt_embeds", "required when guidance_scale > 1 with an SDXL-style UNet")
                })?;
                uncond = Some(u.with("text_embeds", np.clone()).with("time_ids", ids));
            }
        }
        Ok((cond, uncond, batch))
    }

    /// The solver for `opts` once size, steps and accelerator settings have been checked.
    fn checked_solver(&self, opts: &GenerateOptions) -> Result<Box<dyn Solver>> {
        let scale = self.vae_scale_factor();
        if opts.height % scale != 0 || opts.width % scale != 0 || opts.height == 0 || opts.width == 0 {
            return Err(Error::param("height/width", format!("{}x{} must be positive multiples of {scale}", opts.width, opts.height)));
        }
        let steps = opts.acceleration.steps(opts.steps);
        let solver = self.solver(opts.solver, steps)?;
        opts.acceleration.validate(steps)?;
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

    /// diffusers' pipelines: 5.0 for SDXL, 7.5 otherwise.
    fn default_guidance(&self) -> f64 {
        match self.family() {
            Family::Sdxl => 5.0,
            _ => 7.5,
        }
    }

    /// 2^(levels - 1) of the VAE (8 for every SD model), 1 in pixel space.
    fn vae_scale_factor(&self) -> usize {
        if self.pixel_space {
            return 1;
        }
        self.vae.as_ref().map(|v| 1 << (v.config.block_out_channels.len() - 1)).unwrap_or(8)
    }

    fn has_text_encoder(&self) -> bool {
        self.has_text()
    }

    fn can_decode(&self) -> bool {
        self.vae.is_some() || self.pixel_space
    }

    fn check_prompt(&mut self, prompt: &str) -> Result<PromptCheck> {
        let tok = &self.text()?.0;
        let (tokens, window) = tok.word_counts(prompt);
        Ok(PromptCheck { unknown: tok.unknown_words(prompt), tokens, window })
    }

    fn estimate_memory(&self, opts: &GenerateOptions, batch: usize) -> u128 {
        let scale = self.vae_scale_factor().max(1);
        let (h, w) = (opts.height.div_ceil(scale), opts.width.div_ceil(scale));
        let guided = if opts.guidance_scale > 1.0 { 2 } else { 1 };
        let unet = self.unet.activation_bytes(batch * guided, h, w);
        let decode = self.vae.as_ref().map(|v| v.decode_bytes(batch, h, w)).unwrap_or(0);
        unet.max(decode)
    }

    fn encode_prompts(&mut self, prompts: &[String], negative_prompt: &str) -> Result<PipelineInputs> {
        let dtype = self.dtype;
        let device = self.device.clone();
        let (tok, enc) = self.text()?;
        let embed = |texts: Vec<&str>| -> Result<Tensor> {
            let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t)).collect();
            let ids = Tensor::new(ids, &device)?;
            Ok(enc.forward(&ids)?.to_dtype(dtype)?)
        };
        Ok(PipelineInputs {
            prompt_embeds: Some(embed(prompts.iter().map(String::as_str).collect())?),
            negative_prompt_embeds: Some(embed(vec![negative_prompt; prompts.len()])?),
            ..Default::default()
        })
    }

    fn validate(&self, opts: &GenerateOptions) -> Result<()> {
        self.checked_solver(opts).map(drop)
    }

    fn generate(&mut self, inputs: &PipelineInputs, opts: &GenerateOptions, on_step: &mut dyn FnMut(usize, usize)) -> Result<(Tensor, Trace)> {
        let scale = self.vae_scale_factor();
        // the solver checks the step count before anything is allocated for it
        let mut solver = self.checked_solver(opts)?;
        let (cond, uncond, batch) = self.conditioning(inputs, opts)?;
        let shape = [batch, self.unet.config.in_channels, opts.height / scale, opts.width / scale];
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none_or(|n| n > MAX_LATENT_ELEMENTS) {
            return Err(Error::param("height/width", format!("{}x{} makes latents of {shape:?}, more than any run can hold", opts.width, opts.height)));
        }
        let noise = match &inputs.latents {
            Some(l) => {
                if l.dims() != shape {
                    return Err(Error::Shape { what: "latents".into(), expected: format!("{shape:?} (batch, channels, height/{scale}, width/{scale})"), got: format!("{:?}", l.dims()) });
                }
                l.clone()
            }
            None => Tensor::from_vec(crate::noise::normal_samples(shape.iter().product(), opts.seed), &shape[..], &self.device)?,
        };
        let latents = noise.affine(solver.init_noise_sigma(), 0.0)?.to_dtype(self.dtype)?;
        let guided = Guided::new(&self.unet, cond, uncond, opts.guidance_scale)?;
        let mut policy = opts.acceleration.policy();
        sample(&guided, solver.as_mut(), policy.as_mut(), latents, on_step)
    }

    fn decode(&self, latents: &Tensor) -> Result<Option<Tensor>> {
        match &self.vae {
            Some(v) => Ok(Some(v.decode(latents)?)),
            None if self.pixel_space => Ok(Some(latents.clone())),
            None => Ok(None),
        }
    }
}
