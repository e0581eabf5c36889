//! AutoencoderKL from a diffusers `vae/` folder: the decoder from candle-transformers (the
//! autoencoder is not where SADA acts), the encoder ours (`vae_encoder.rs`), both configured
//! from the folder's `config.json`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::ModelSource;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AutoencoderKlConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub force_upcast: Option<bool>,
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKlConfig {
    /// diffusers' `AutoencoderKL` constructor defaults.
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![64],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            force_upcast: None,
            mid_block_add_attention: true,
        }
    }
}

pub struct AutoencoderKl {
    pub config: AutoencoderKlConfig,
    inner: AutoEncoderKL,
    encoder: super::vae_encoder::VaeEncoder,
}

impl AutoencoderKl {
    /// Load from a diffusers `vae/` folder (config.json + safetensors weights).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (source, component) = ModelSource::component_dir(dir);
        Self::load_from(&source, &component, dtype, device)
    }

    /// Load the `component` folder (usually `vae`) of a model.
    pub fn load_from(source: &ModelSource, component: &str, dtype: DType, device: &Device) -> Result<Self> {
        let config_rel = format!("{component}/config.json");
        let config_path = source.path(&config_rel);
        let config: AutoencoderKlConfig = source.read_json(&config_rel)?;
        if config.in_channels != 3 || config.out_channels != 3 {
            return Err(Error::file(&config_path, "unsupported config: only 3-channel images (in_channels = out_channels = 3)"));
        }
        if config.shift_factor.is_some_and(|s| s != 0.0) {
            return Err(Error::file(&config_path, "unsupported config value `shift_factor`: only null or 0 is supported"));
        }
        let (vb, weights_path) = source.var_builder(component, "diffusion_pytorch_model", dtype, device)?;
        let cfg = AutoEncoderKLConfig {
            block_out_channels: config.block_out_channels.clone(),
            layers_per_block: config.layers_per_block,
            latent_channels: config.latent_channels,
            norm_num_groups: config.norm_num_groups,
            use_quant_conv: config.use_quant_conv,
            use_post_quant_conv: config.use_post_quant_conv,
        };
        if !config.mid_block_add_attention {
            return Err(Error::file(&config_path, "unsupported config value `mid_block_add_attention` = false"));
        }
        let mismatch = |e: candle_core::Error| Error::file(&weights_path, format!("weights do not match config.json: {e}"));
        let encoder = super::vae_encoder::VaeEncoder::new(
            vb.clone(),
            config.in_channels,
            &config.block_out_channels,
            config.layers_per_block,
            config.latent_channels,
            config.norm_num_groups,
            config.use_quant_conv,
            true,
        )
        .map_err(mismatch)?;
        let inner = AutoEncoderKL::new(vb, config.in_channels, config.out_channels, cfg).map_err(mismatch)?;
        Ok(Self { config, inner, encoder })
    }

    /// The sampler's final latents -> image, nominally in [-1, 1] (divides by `scaling_factor`).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let scaled = (latents / self.config.scaling_factor)?;
        Ok(self.inner.decode(&scaled)?)
    }

    /// Image in [-1, 1] -> mean and std of the latent distribution (unscaled, as diffusers'
    /// `latent_dist`; multiply a sample by `scaling_factor` for the sampler).
    pub fn encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(self.encoder.forward(image)?)
    }
}
