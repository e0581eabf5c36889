//! Flux (diffusers' `FluxPipeline`) from a diffusers folder or a Hugging Face cache snapshot:
//! `transformer/`, `scheduler/` (FlowMatchEulerDiscreteScheduler) and `vae/` (16 latent channels,
//! `shift_factor`). Sampling is flow-matching Euler on the sigma grid `linspace(1, 1/N, N)`,
//! shifted by `mu` from the image's token count when the scheduler asks for dynamic shifting
//! (FLUX.1-dev), with the guidance scale fed to the network for models that embed it (no
//! classifier-free guidance batch).
//!
//! Prompts are encoded as diffusers' `encode_prompt` does: T5's last hidden state over
//! `max_sequence_length` tokens (`text_encoder_2`, padded, no attention mask) and CLIP's pooled
//! output (`text_encoder`); or the embeddings come precomputed (`prompt_embeds`,
//! `pooled_prompt_embeds`).

use candle_core::{DType, Device, Tensor};

use super::inputs::PipelineInputs;
use super::pipeline::{Decoder, GenerateOptions, Pipeline, PromptCheck, PromptOptions};
use crate::denoiser::{Conditioning, Guided};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::models::flux::FluxTransformerConfig;
use crate::models::{AutoencoderKl, FluxTransformer2DModel, ModelSource};
use crate::policy::Policy;
use crate::sampling::{sample, Trace};
use crate::schedule::flow::flux_default_sigmas;
use crate::solvers::flow_match_euler::FlowMatchEulerDiscreteConfig;
use crate::solvers::{build_solver, scheduler_config_object, FlowTimesteps, Solver, SolverKind};
use crate::text::t5::{T5Encoder, T5Tokenizer};
use crate::text::{ClipTextEncoder, Tokenizer};

/// Latents larger than this are refused before they are allocated (as for Stable Diffusion).
const MAX_LATENT_ELEMENTS: usize = 1 << 31;

/// T5 tokens a prompt may have at most (`max_sequence_length`; FLUX.1-dev's default).
const MAX_SEQUENCE_LENGTH: usize = 512;

/// Flux's text encoders, loaded on the first prompt.
struct FluxText {
    clip_tokenizer: Tokenizer,
    clip: ClipTextEncoder,
    t5_tokenizer: T5Tokenizer,
    t5: T5Encoder,
}

/// diffusers' `FluxPipeline`: the transformer and scheduler config, with the VAE and text
/// encoders when the folder has them (the text encoders load on the first prompt).
pub struct Flux {
    /// Where the model's files are read from.
    pub source: ModelSource,
    /// The denoiser's configuration.
    pub config: FluxTransformerConfig,
    /// The denoiser, loaded by [`Pipeline::load_denoiser`] (on the first run at the latest):
    /// after the prompt is encoded, so that T5-XXL and the transformer are never held together.
    pub transformer: Option<FluxTransformer2DModel>,
    /// The decoder, when the folder has `vae/`.
    pub vae: Option<AutoencoderKl>,
    scheduler_config: serde_json::Map<String, serde_json::Value>,
    text: Option<FluxText>,
    /// T5 tokens each prompt is padded or truncated to: 512, or 256 for schnell (what it was
    /// trained with; diffusers leaves 512 to the caller).
    pub max_sequence_length: usize,
    device: Device,
    dtype: DType,
}

impl Flux {
    /// Whether `source` holds a Flux pipeline (a `transformer/` whose config names
    /// `FluxTransformer2DModel`, or a `model_index.json` naming a Flux pipeline).
    pub fn detect(source: &ModelSource) -> bool {
        let class = |rel: &str| -> Option<String> {
            let v: serde_json::Value = source.read_json(rel).ok()?;
            v.get("_class_name")?.as_str().map(str::to_owned)
        };
        class("model_index.json").is_some_and(|c| c.starts_with("Flux")) || class("transformer/config.json").is_some_and(|c| c == "FluxTransformer2DModel")
    }

    /// Load the transformer, scheduler config and (if present) VAE of a `FluxPipeline`; other
    /// Flux pipelines (Fill, Kontext, ...) are refused.
    pub fn load_from(source: ModelSource, dtype: DType, device: &Device) -> Result<Self> {
        // Fill, Kontext, Control and Redux pipelines condition on images in ways this text-to-image
        // pipeline does not: refuse them by name rather than run them wrongly
        if source.exists("model_index.json") {
            let index: serde_json::Value = source.read_json("model_index.json")?;
            if let Some(class) = index.get("_class_name").and_then(|c| c.as_str()).filter(|c| *c != "FluxPipeline") {
                return Err(Error::file(source.path("model_index.json"), format!("names {class}: only FluxPipeline (text to image) is supported for Flux")));
            }
        }
        let config = FluxTransformer2DModel::read_config(&source, "transformer")?;
        // the weights load later; their files are found and their headers checked now
        source.tensor_shapes("transformer", "diffusion_pytorch_model")?;
        const SCHEDULER: &str = "scheduler/scheduler_config.json";
        let scheduler_config = scheduler_config_object(source.read_json(SCHEDULER)?, &source.path(SCHEDULER))?;
        let vae = if source.exists("vae/config.json") {
            let vae = AutoencoderKl::load_from(&source, "vae", dtype, device)?;
            if vae.config.latent_channels != config.latent_channels() {
                return Err(Error::file(
                    source.path("vae/config.json"),
                    format!(
                        "latent_channels is {} but the transformer's tokens hold {} (in_channels {} / 4)",
                        vae.config.latent_channels,
                        config.latent_channels(),
                        config.in_channels
                    ),
                ));
            }
            Some(vae)
        } else {
            None
        };
        let max_sequence_length = if config.guidance_embeds { 512 } else { 256 };
        Ok(Self { source, config, transformer: None, vae, scheduler_config, text: None, max_sequence_length, device: device.clone(), dtype })
    }

    /// Whether the folder has both text encoders and their tokenizers.
    fn has_text(&self) -> bool {
        ["text_encoder/config.json", "tokenizer", "text_encoder_2/config.json", "tokenizer_2"].iter().all(|f| self.source.exists(f))
    }

    /// The tokenizers and text encoders, loaded on first use; each must fit the transformer.
    fn text(&mut self) -> Result<&mut FluxText> {
        if self.text.is_none() {
            if !self.has_text() {
                return Err(self.no_text_encoder());
            }
            // the cheap parts first, and each encoder checked before the next (T5-XXL is 19 GB) loads
            let (clip_tokenizer, t5_tokenizer) = (Tokenizer::load_from(&self.source, "tokenizer")?, T5Tokenizer::load_from(&self.source, "tokenizer_2")?);
            let cfg = &self.config;
            let clip = ClipTextEncoder::load_from(&self.source, "text_encoder", DType::F32, &self.device)?;
            if clip.config.hidden_size != cfg.pooled_projection_dim {
                return Err(Error::file(
                    self.source.path("text_encoder/config.json"),
                    format!("hidden_size is {} but the transformer's pooled_projection_dim is {}", clip.config.hidden_size, cfg.pooled_projection_dim),
                ));
            }
            let t5 = T5Encoder::load_from(&self.source, "text_encoder_2", self.dtype, &self.device)?;
            if t5.config.d_model != cfg.joint_attention_dim {
                return Err(Error::file(
                    self.source.path("text_encoder_2/config.json"),
                    format!("d_model is {} but the transformer's joint_attention_dim is {}", t5.config.d_model, cfg.joint_attention_dim),
                ));
            }
            let text = FluxText { clip_tokenizer, clip, t5_tokenizer, t5 };
            self.text = Some(text);
        }
        Ok(self.text.as_mut().expect("loaded above"))
    }

    /// The flow-matching Euler solver for `steps` on an image of `image_seq_len` packed tokens,
    /// with the sigmas and `mu` diffusers' FluxPipeline passes to `set_timesteps`.
    pub fn solver(&self, kind: SolverKind, steps: usize, image_seq_len: usize) -> Result<Box<dyn Solver>> {
        if kind != SolverKind::FlowMatchEulerDiscrete {
            return Err(Error::param(
                "solver",
                format!("{} does not apply to Flux, a flow-matching model: use FlowMatchEulerDiscreteScheduler", kind.class_name()),
            ));
        }
        let path = self.source.path("scheduler/scheduler_config.json");
        let config: FlowMatchEulerDiscreteConfig = crate::config::from_value(serde_json::Value::Object(self.scheduler_config.clone()))
            .map_err(|e| Error::file(&path, format!("invalid config: {e}")))?;
        let flow = FlowTimesteps { sigmas: Some(flux_default_sigmas(steps)), mu: config.use_dynamic_shifting.then(|| config.mu(image_seq_len)) };
        build_solver(kind, &self.scheduler_config, &Default::default(), steps, &flow).map_err(|e| match e {
            e @ Error::InvalidParameter { .. } => e,
            e => Error::file(&path, e.to_string()),
        })
    }

    /// Latent size for an image; both sides must be multiples of twice the VAE's factor (one
    /// token per 2 x 2 latent patch). diffusers rounds other sizes down with a warning; we refuse.
    fn latent_size(&self, opts: &GenerateOptions) -> Result<(usize, usize)> {
        let m = 2 * self.vae_scale_factor();
        if !opts.height.is_multiple_of(m) || !opts.width.is_multiple_of(m) || opts.height == 0 || opts.width == 0 {
            return Err(Error::param(
                "height/width",
                format!("{}x{} must be positive multiples of {m} (the VAE's factor times Flux's 2 x 2 patches)", opts.width, opts.height),
            ));
        }
        Ok((opts.height / self.vae_scale_factor(), opts.width / self.vae_scale_factor()))
    }

    /// The solver for `opts` once everything [`Pipeline::validate`] checks has been checked.
    fn checked_solver(&self, opts: &GenerateOptions) -> Result<Box<dyn Solver>> {
        let (h, w) = self.latent_size(opts)?;
        let steps = opts.acceleration.steps(opts.steps);
        let solver = self.solver(opts.solver, steps, (h / 2) * (w / 2))?;
        opts.acceleration.check(opts.steps)?;
        let shape = [1, self.config.latent_channels(), h, w];
        super::pipeline::check_run(opts, false, solver.as_ref(), &shape, &self.config.capabilities())?;
        Ok(solver)
    }

    fn conditioning(&self, inputs: &PipelineInputs, opts: &GenerateOptions) -> Result<(Conditioning, usize)> {
        let pe = inputs.prompt_embeds.as_ref().ok_or_else(|| {
            Error::param("prompt_embeds", "required: give a prompt, or prompt_embeds (T5) and pooled_prompt_embeds (CLIP) among the precomputed inputs")
        })?;
        let d = self.config.joint_attention_dim;
        if pe.rank() != 3 || pe.dim(2)? != d || pe.dim(1)? == 0 || pe.dim(0)? == 0 {
            return Err(Error::Shape {
                what: "prompt_embeds".into(),
                expected: format!("[batch, tokens, {d}] with tokens >= 1"),
                got: format!("{:?}", pe.dims()),
            });
        }
        // the T5 path pads or truncates to max_sequence_length; precomputed inputs may not exceed it
        if pe.dim(1)? > MAX_SEQUENCE_LENGTH {
            return Err(Error::param("prompt_embeds", format!("{} text tokens; Flux reads at most {MAX_SEQUENCE_LENGTH} (max_sequence_length)", pe.dim(1)?)));
        }
        for (name, given) in [
            ("negative_prompt_embeds", inputs.negative_prompt_embeds.is_some()),
            ("negative_pooled_prompt_embeds", inputs.negative_pooled_prompt_embeds.is_some()),
            ("add_time_ids", inputs.add_time_ids.is_some()),
        ] {
            if given {
                return Err(Error::param(
                    name,
                    "Flux takes prompt_embeds and pooled_prompt_embeds only (it is guidance-distilled: no unconditional branch, no SDXL size conditioning)",
                ));
            }
        }
        let batch = pe.dim(0)?;
        let pooled = inputs.pooled_prompt_embeds.as_ref().ok_or_else(|| Error::param("pooled_prompt_embeds", "required by Flux (CLIP's pooled embedding)"))?;
        let p = self.config.pooled_projection_dim;
        if pooled.dims() != [batch, p] {
            return Err(Error::Shape { what: "pooled_prompt_embeds".into(), expected: format!("[{batch}, {p}]"), got: format!("{:?}", pooled.dims()) });
        }
        let mut cond = Conditioning::new().with("encoder_hidden_states", pe.to_dtype(self.dtype)?).with("pooled_projections", pooled.to_dtype(self.dtype)?);
        if self.config.guidance_embeds {
            cond = cond.with("guidance", Tensor::full(opts.guidance_scale as f32, batch, &self.device)?);
        }
        Ok((cond, batch))
    }
}

impl Pipeline for Flux {
    fn family(&self) -> Family {
        Family::Flux
    }

    /// diffusers' FluxPipeline: `default_sample_size` 128 latent pixels (1024 px for FLUX.1).
    fn default_size(&self) -> (usize, usize) {
        let s = 128 * self.vae_scale_factor();
        (s, s)
    }

    /// diffusers' FluxPipeline default (used only by models that embed guidance).
    fn default_guidance(&self) -> f64 {
        3.5
    }

    fn vae_scale_factor(&self) -> usize {
        self.vae.as_ref().map(|v| 1 << (v.config.block_out_channels.len() - 1)).unwrap_or(8)
    }

    fn release_text_encoders(&mut self) {
        self.text = None;
    }

    fn load_denoiser(&mut self) -> Result<()> {
        if self.transformer.is_none() {
            self.transformer = Some(FluxTransformer2DModel::load_from(&self.source, "transformer", self.dtype, &self.device)?);
        }
        Ok(())
    }

    fn has_text_encoder(&self) -> bool {
        self.has_text()
    }

    fn can_decode(&self) -> bool {
        self.vae.is_some()
    }

    /// T5's count: it reads the most (`max_sequence_length` tokens; CLIP's pooled embedding
    /// sees the first 77).
    fn check_prompt(&mut self, prompt: &str, opts: &PromptOptions) -> Result<PromptCheck> {
        let window = opts.max_sequence_length.unwrap_or(self.max_sequence_length);
        let tokens = self.text()?.t5_tokenizer.count(prompt)?;
        Ok(PromptCheck { unknown: Vec::new(), tokens, window })
    }

    fn estimate_memory(&self, opts: &GenerateOptions, batch: usize) -> u128 {
        let scale = self.vae_scale_factor().max(1);
        let (h, w) = (opts.height.div_ceil(scale), opts.width.div_ceil(scale));
        let net = self.config.activation_bytes(batch, h, w, MAX_SEQUENCE_LENGTH);
        let decode = self.vae.as_ref().map(|v| v.decode_bytes(batch, h, w)).unwrap_or(0);
        net.max(decode)
    }

    fn encode_prompts(&mut self, prompts: &[String], opts: &PromptOptions) -> Result<PipelineInputs> {
        if opts.negative_prompt.is_some() {
            return Err(Error::param(
                "negative_prompt",
                "Flux is guidance-distilled: it runs no unconditional branch, so a negative prompt has nothing to act on",
            ));
        }
        if opts.clip_skip.is_some() {
            return Err(Error::param("clip_skip", "Flux reads CLIP's pooled output only; clip skip does not apply"));
        }
        let n = opts.max_sequence_length.unwrap_or(self.max_sequence_length);
        if !(1..=MAX_SEQUENCE_LENGTH).contains(&n) {
            return Err(Error::param("max_sequence_length", format!("{n} is outside 1..={MAX_SEQUENCE_LENGTH} (T5 tokens)")));
        }
        let device = self.device.clone();
        let text = self.text()?;
        let clip_ids: Vec<Vec<u32>> = prompts.iter().map(|p| text.clip_tokenizer.encode(p)).collect();
        let pooled = text.clip.encode(&Tensor::new(clip_ids, &device)?)?.pooled;
        let t5_ids = prompts.iter().map(|p| text.t5_tokenizer.encode(p, n)).collect::<Result<Vec<_>>>()?;
        let embeds = text.t5.encode(&Tensor::new(t5_ids, &device)?)?;
        Ok(PipelineInputs { prompt_embeds: Some(embeds.to_dtype(self.dtype)?), pooled_prompt_embeds: Some(pooled.to_dtype(self.dtype)?), ..Default::default() })
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
        let mut solver = self.checked_solver(opts)?;
        if !inputs.control.is_empty() {
            return Err(Error::param("control image", "this model has no ControlNet"));
        }
        let (h, w) = self.latent_size(opts)?;
        let (cond, batch) = self.conditioning(inputs, opts)?;
        let shape = [batch, self.config.latent_channels(), h, w];
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none_or(|n| n > MAX_LATENT_ELEMENTS) {
            return Err(Error::param("height/width", format!("{}x{} makes latents of {shape:?}, more than any run can hold", opts.width, opts.height)));
        }
        let noise = match &inputs.latents {
            Some(l) if l.dims() != shape => {
                return Err(Error::Shape {
                    what: "latents".into(),
                    expected: format!("{shape:?} (batch, channels, height/{0}, width/{0}), unpacked", self.vae_scale_factor()),
                    got: format!("{:?}", l.dims()),
                });
            }
            Some(l) => l.clone(),
            // diffusers draws Flux's noise in this unpacked shape from torch's CPU generator, then packs it
            None => Tensor::from_vec(crate::torch_rng::TorchGenerator::new(opts.seed).randn(shape.iter().product()), &shape[..], &self.device)?,
        };
        let latents = noise.affine(solver.init_noise_sigma(), 0.0)?.to_dtype(self.dtype)?;
        // the guidance scale is an input of the network, not a second batch
        self.load_denoiser()?;
        let transformer = self.transformer.as_ref().ok_or_else(|| Error::internal("the transformer was not loaded"))?;
        let guided = Guided::new(transformer, cond, None, 1.0)?;
        sample(&guided, solver.as_mut(), policy, latents, on_step)
    }

    fn scheduler_class(&self) -> Option<String> {
        self.scheduler_config.get("_class_name").and_then(|v| v.as_str()).map(str::to_owned)
    }

    fn set_vae_tiling(&mut self, on: bool) -> Result<()> {
        super::pipeline::tile_vae(self.vae.as_mut(), on)
    }

    fn decode(&self, latents: &Tensor) -> Result<Option<Tensor>> {
        super::pipeline::decode_latents(self.vae.as_ref(), false, latents)
    }

    fn into_decoder(self: Box<Self>) -> Decoder {
        Decoder { vae: self.vae, pixel_space: false }
    }
}

impl Flux {
    fn no_text_encoder(&self) -> Error {
        Error::file(
            self.source.path("text_encoder_2"),
            "this Flux model has no text encoders (text_encoder/ + tokenizer/ for CLIP, text_encoder_2/ + tokenizer_2/ for T5): pass --inputs with prompt_embeds [batch, tokens, joint_attention_dim] and pooled_prompt_embeds [batch, pooled_projection_dim]",
        )
    }
}
