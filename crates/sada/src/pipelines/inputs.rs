//! What a pipeline is given besides its settings: conditioning and starting noise, named as
//! diffusers names its pipeline arguments.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::models::controlnet::ControlSettings;

/// One ControlNet's part of a run: its control image (any size: it is resized to the run's as
/// diffusers' control image processor does) and its settings.
#[derive(Debug, Clone)]
pub struct ControlInput {
    /// The control image.
    pub image: RgbImage,
    /// Its scale and guidance window.
    pub settings: ControlSettings,
}

/// Conditioning and starting noise, as diffusers' pipeline arguments.
#[derive(Debug, Clone, Default)]
pub struct PipelineInputs {
    /// Text encoder hidden states `[B, tokens, dim]` (T5's for Flux).
    pub prompt_embeds: Option<Tensor>,
    /// The same for the negative prompt (the unconditional half of guidance).
    pub negative_prompt_embeds: Option<Tensor>,
    /// Pooled text embedding `[B, dim]` (SDXL's `text_embeds`, Flux's CLIP output).
    pub pooled_prompt_embeds: Option<Tensor>,
    /// The same for the negative prompt (SDXL with guidance).
    pub negative_pooled_prompt_embeds: Option<Tensor>,
    /// SDXL's `time_ids` `[B, 6]`; None: built from the size conditioning.
    pub add_time_ids: Option<Tensor>,
    /// Unscaled initial noise (the pipeline multiplies it by `init_noise_sigma`).
    pub latents: Option<Tensor>,
    /// One per ControlNet the pipeline has, in order (diffusers' `image`,
    /// `controlnet_conditioning_scale`, `control_guidance_start`, `control_guidance_end`).
    pub control: Vec<ControlInput>,
    /// diffusers' `guess_mode` for the ControlNets.
    pub guess_mode: bool,
}

const INPUT_NAMES: [&str; 6] = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds", "add_time_ids", "latents"];

/// Inputs larger than this many elements are refused before they are read: no pipeline input
/// of a real model comes near it (SDXL's 1024 px latents have 2^18), a corrupt or hostile file
/// can.
const MAX_INPUT_ELEMENTS: usize = 1 << 28;

impl PipelineInputs {
    /// Read a safetensors file of named tensors; other tensors in the file are ignored. Each
    /// input must be floating point, finite and of a sane size; errors name the tensor.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if !path.exists() {
            return Err(Error::file(path, "inputs file not found"));
        }
        let st = crate::models::weights::open_safetensors(path)?;
        let names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
        if !names.iter().any(|k| INPUT_NAMES.contains(&k.as_str())) {
            return Err(Error::file(path, format!("holds none of the pipeline inputs {INPUT_NAMES:?}")));
        }
        let get = |k: &str| -> Result<Option<Tensor>> {
            if !names.iter().any(|n| n == k) {
                return Ok(None);
            }
            let view = st.get(k).map_err(|e| Error::file(path, format!("tensor `{k}`: {e}")))?;
            use safetensors::Dtype;
            if !matches!(view.dtype(), Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64) {
                return Err(Error::file(path, format!("tensor `{k}` is {:?}; expected floating point", view.dtype())));
            }
            let n = view.shape().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if n == Some(0) {
                return Err(Error::file(path, format!("tensor `{k}` of shape {:?} is empty; every input holds at least one value", view.shape())));
            }
            if n.is_none_or(|n| n > MAX_INPUT_ELEMENTS) {
                return Err(Error::file(
                    path,
                    format!("tensor `{k}` of shape {:?} is larger than any pipeline input ({MAX_INPUT_ELEMENTS} elements at most)", view.shape()),
                ));
            }
            let t = st.load(k, device).and_then(|t| t.to_dtype(DType::F32)).map_err(|e| Error::file(path, format!("tensor `{k}`: {e}")))?;
            if !crate::finite::all_finite(&t)? {
                return Err(Error::file(path, format!("tensor `{k}` holds NaN or infinite values")));
            }
            Ok(Some(t))
        };
        Ok(Self {
            prompt_embeds: get("prompt_embeds")?,
            negative_prompt_embeds: get("negative_prompt_embeds")?,
            pooled_prompt_embeds: get("pooled_prompt_embeds")?,
            negative_pooled_prompt_embeds: get("negative_pooled_prompt_embeds")?,
            add_time_ids: get("add_time_ids")?,
            latents: get("latents")?,
            ..Default::default()
        })
    }
}
