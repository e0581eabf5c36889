//! What a pipeline is given besides its settings: conditioning and starting noise, named as
//! diffusers names its pipeline arguments.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

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
