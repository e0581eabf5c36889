//! Stable Diffusion (1.x, 2.x, XL) from a diffusers folder: `unet/`, `scheduler/`, optional `vae/`.
//! Text encoders are not loaded here: conditioning comes as precomputed embeddings named as
//! diffusers names the pipeline arguments.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::denoiser::{Conditioning, Guided};
use crate::error::{Error, Result};
use crate::models::{AutoencoderKl, UNet2DConditionModel};
use crate::policy::{NoAcceleration, Policy, Sada, SadaConfig};
use crate::sampling::{sample, Trace};
use crate::solvers::{build_solver, load_scheduler_config, FlowTimesteps, Solver, SolverKind};

pub struct StableDiffusion {
    pub dir: PathBuf,
    pub unet: UNet2DConditionModel,
    pub vae: Option<AutoencoderKl>,
    scheduler_config: serde_json::Map<String, serde_json::Value>,
    device: Device,
    dtype: DType,
}

/// Conditioning and starting noise, as diffusers' pipeline arguments.
#[derive(Debug, Clone, Default)]
pub struct PipelineInputs {
    pub prompt_embeds: Option<Tensor>,
    pub negative_prompt_embeds: Option<Tensor>,
    pub pooled_prompt_embeds: Option<Tensor>,
    pub negative_pooled_prompt_embeds: Option<Tensor>,
    pub add_time_ids: Option<Tensor>,
    /// Unscaled initial noise (the pipeline multiplies it by `init_noise_sigma`).
    pub latents: Option<Tensor>,
}

const INPUT_NAMES: [&str; 6] = [
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
    "add_time_ids",
    "latents",
];

impl PipelineInputs {
    /// Read a safetensors file of named tensors; other tensors in the file are ignored.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::file(path, "inputs file not found"));
        }
        let map: HashMap<String, Tensor> = candle_core::safetensors::load(path, device)
            .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
        if !map.keys().any(|k| INPUT_NAMES.contains(&k.as_str())) {
            return Err(Error::file(path, format!("holds none of the pipeline inputs {INPUT_NAMES:?}")));
        }
        let get = |k: &str| -> Result<Option<Tensor>> {
            map.get(k).map(|t| t.to_dtype(DType::F32)).transpose().map_err(|e| Error::file(path, format!("tensor `{k}`: {e}")))
        };
        Ok(Self {
            prompt_embeds: get("prompt_embeds")?,
            negative_prompt_embeds: get("negative_prompt_embeds")?,
            pooled_prompt_embeds: get("pooled_prompt_embeds")?,
            negative_pooled_prompt_embeds: get("negative_pooled_prompt_embeds")?,
            add_time_ids: get("add_time_ids")?,
            latents: get("latents")?,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerateOptions {
    pub steps: usize,
    pub guidance_scale: f64,
    pub height: usize,
    pub width: usize,
    pub seed: u64,
    pub solver: &'static str,
    /// None: the unaccelerated baseline.
    pub sada: Option<SadaConfig>,
}

impl StableDiffusion {
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::file(dir, "model folder not found"));
        }
        let unet = UNet2DConditionModel::load(&dir.join("unet"), dtype, device)?;
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let scheduler_config = load_scheduler_config(&scheduler_path)?;
        let vae_dir = dir.join("vae");
        let vae = if vae_dir.is_dir() { Some(AutoencoderKl::load(&vae_dir, dtype, device)?) } else { None };
        Ok(Self { dir: dir.to_path_buf(), unet, vae, scheduler_config, device: device.clone(), dtype })
    }

    /// Latent pixels per image pixel: 2^(levels - 1) of the VAE (8 for every SD model).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.as_ref().map(|v| 1 << (v.config.block_out_channels.len() - 1)).unwrap_or(8)
    }

    /// diffusers' default image size: `unet.config.sample_size * vae_scale_factor`.
    pub fn default_size(&self) -> usize {
        let s = self.unet.config.sample_size.as_ref().and_then(|v| v.as_u64()).unwrap_or(64) as usize;
        s * self.vae_scale_factor()
    }

    /// SDXL-style models (text_time conditioning) default to guidance 5.0, others 7.5.
    pub fn default_guidance(&self) -> f64 {
        if self.unet.uses_text_time() {
            5.0
        } else {
            7.5
        }
    }

    /// The published SADA settings for this family (SDXL's for text_time models, SD-2's otherwise).
    pub fn default_sada(&self) -> SadaConfig {
        if self.unet.uses_text_time() {
            SadaConfig::sdxl()
        } else {
            SadaConfig::sd2()
        }
    }

    pub fn solver(&self, kind: SolverKind, steps: usize) -> Result<Box<dyn Solver>> {
        build_solver(kind, &self.scheduler_config, &Default::default(), steps, &FlowTimesteps::default())
            .map_err(|e| Error::file(self.dir.join("scheduler").join("scheduler_config.json"), e.to_string()))
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

    /// Sample latents. `on_step(done, total)` after every step.
    pub fn generate(
        &mut self,
        inputs: &PipelineInputs,
        opts: &GenerateOptions,
        kind: SolverKind,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<(Tensor, Trace)> {
        let scale = self.vae_scale_factor();
        if opts.height % scale != 0 || opts.width % scale != 0 || opts.height == 0 || opts.width == 0 {
            return Err(Error::param("height/width", format!("{}x{} must be positive multiples of {scale}", opts.width, opts.height)));
        }
        let (cond, uncond, batch) = self.conditioning(inputs, opts)?;
        let mut solver = self.solver(kind, opts.steps)?;
        let shape = [batch, self.unet.config.in_channels, opts.height / scale, opts.width / scale];
        let noise = match &inputs.latents {
            Some(l) => {
                if l.dims() != shape {
                    return Err(Error::Shape { what: "latents".into(), expected: format!("{shape:?} (batch, channels, height/{scale}, width/{scale})"), got: format!("{:?}", l.dims()) });
                }
                l.clone()
            }
            None => Tensor::from_vec(crate::gmm::normal_samples(shape.iter().product(), opts.seed), &shape[..], &self.device)?,
        };
        let latents = noise.affine(solver.init_noise_sigma(), 0.0)?.to_dtype(self.dtype)?;
        let mut guided = Guided::new(&mut self.unet, cond, uncond, opts.guidance_scale)?;
        let mut policy: Box<dyn Policy> = match &opts.sada {
            Some(cfg) => Box::new(Sada::new(cfg.clone())),
            None => Box::new(NoAcceleration),
        };
        sample(&mut guided, solver.as_mut(), policy.as_mut(), latents, on_step)
    }

    /// Decode latents to an image tensor in [-1, 1], if the folder has a VAE.
    pub fn decode(&self, latents: &Tensor) -> Result<Option<Tensor>> {
        match &self.vae {
            Some(v) => Ok(Some(v.decode(latents)?)),
            None => Ok(None),
        }
    }
}
