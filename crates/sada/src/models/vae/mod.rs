//! AutoencoderKL from a diffusers `vae/` folder: the encoder (`encoder.rs`) and decoder
//! (`decoder.rs`) sharing their blocks (`blocks.rs`), configured from the folder's
//! `config.json`.

mod blocks;
pub mod decoder;
pub mod encoder;
pub mod presets;
pub mod tiling;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::ModelSource;

/// `vae/config.json` of diffusers' `AutoencoderKL`; keys the file leaves out take diffusers'
/// defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AutoencoderKlConfig {
    /// Image channels in; only 3 (the default) is supported.
    pub in_channels: usize,
    /// Image channels out; only 3 (the default) is supported.
    pub out_channels: usize,
    /// Channels per level, finest first; every level but the last halves the resolution (default
    /// `[64]`).
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per encoder level; the decoder's levels have one more (default 1).
    pub layers_per_block: usize,
    /// Channels of the latent (default 4; 16 in Flux's autoencoder).
    pub latent_channels: usize,
    /// GroupNorm groups, dividing every entry of `block_out_channels` (default 32).
    pub norm_num_groups: usize,
    /// Factor the latents are multiplied by for the sampler (default 0.18215, SD-1.x and SD-2.x).
    pub scaling_factor: f64,
    /// Offset subtracted from the latents before scaling (Flux's autoencoder; default null).
    pub shift_factor: Option<f64>,
    /// Whether a 1x1 `quant_conv` follows the encoder (default true).
    pub use_quant_conv: bool,
    /// Whether a 1x1 `post_quant_conv` precedes the decoder (default true).
    pub use_post_quant_conv: bool,
    /// Whether the autoencoder runs in float32 even when the pipeline runs in half precision
    /// (SDXL's; default null).
    pub force_upcast: Option<bool>,
    /// Whether the mid blocks have attention; only true (the default) is supported.
    pub mid_block_add_attention: bool,
    /// The image size the autoencoder was trained at: tiled decoding and encoding use tiles of
    /// this side in pixels (default 32; a list takes its first entry, as diffusers does).
    pub sample_size: serde_json::Value,
}

impl AutoencoderKlConfig {
    /// What this implementation can build: every value it divides by or allocates from
    /// positive, and the options it has no code for off.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(format!("`scaling_factor` = {} must be a positive number", self.scaling_factor));
        }
        if self.block_out_channels.is_empty() || self.block_out_channels.contains(&0) {
            return Err(format!("`block_out_channels` = {:?} needs at least one level, each with channels", self.block_out_channels));
        }
        if self.block_out_channels.len() > 8 {
            return Err(format!("`block_out_channels` has {} levels; at most 8 are supported", self.block_out_channels.len()));
        }
        if self.norm_num_groups == 0 || self.block_out_channels.iter().any(|c| c % self.norm_num_groups != 0) {
            return Err(format!("`norm_num_groups` = {} must be at least 1 and divide every block_out_channels entry", self.norm_num_groups));
        }
        if self.latent_channels == 0 || self.layers_per_block == 0 {
            return Err("`latent_channels` and `layers_per_block` must be at least 1".into());
        }
        if self.in_channels != 3 || self.out_channels != 3 {
            return Err("only 3-channel images (in_channels = out_channels = 3)".into());
        }
        if self.shift_factor.is_some_and(|s| !s.is_finite()) {
            return Err("`shift_factor` must be a finite number or null".into());
        }
        if !self.mid_block_add_attention {
            return Err("`mid_block_add_attention` = false".into());
        }
        if self.tile_sizes().is_none() {
            return Err(format!("`sample_size` = {} must be a positive integer (or a list of them) of at least 2^(levels - 1)", self.sample_size));
        }
        Ok(())
    }

    /// Tiled decoding's (image tile, latent tile) sides: `sample_size`, and that over the
    /// autoencoder's downsampling factor (diffusers' `tile_sample_min_size`,
    /// `tile_latent_min_size`).
    pub fn tile_sizes(&self) -> Option<(usize, usize)> {
        let first = match &self.sample_size {
            serde_json::Value::Array(a) => a.first()?,
            v => v,
        };
        let sample = usize::try_from(first.as_u64()?).ok().filter(|&s| (1..=1 << 20).contains(&s))?;
        let latent = sample >> (self.block_out_channels.len().max(1) - 1);
        (latent > 0).then_some((sample, latent))
    }
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
            sample_size: serde_json::Value::from(32),
        }
    }
}

/// diffusers' `AutoencoderKL`: images to latents and back.
pub struct AutoencoderKl {
    /// The configuration it was built from.
    pub config: AutoencoderKlConfig,
    decoder: decoder::VaeDecoder,
    encoder: encoder::VaeEncoder,
    /// The dtype the weights were loaded in (latents are cast to it).
    dtype: DType,
    /// Whether large inputs are decoded and encoded in tiles ([`AutoencoderKl::set_tiling`]).
    tiling: bool,
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
        config.validate().map_err(|msg| Error::file(&config_path, format!("unsupported config: {msg}")))?;
        let (vb, weights_path) = source.var_builder(component, "diffusion_pytorch_model", dtype, device)?;
        Self::new(config, vb).map_err(|e| Error::file(&weights_path, format!("weights do not match config.json: {e}")))
    }

    /// Build from `vb` (diffusers' `vae/` key names) as a validated `config` shapes it.
    pub fn new(config: AutoencoderKlConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let dtype = vb.dtype();
        let encoder = encoder::VaeEncoder::new(vb.clone(), &config)?;
        let decoder = decoder::VaeDecoder::new(vb, &config)?;
        Ok(Self { config, decoder, encoder, dtype, tiling: false })
    }

    /// diffusers' `enable_tiling` / `disable_tiling`: with tiling on, latents larger than the
    /// latent tile (images larger than `sample_size`) are decoded (encoded) a tile at a time,
    /// overlapping by a quarter and blended, which bounds the activation memory by one tile's.
    pub fn set_tiling(&mut self, on: bool) {
        self.tiling = on;
    }

    /// Whether tiling is on.
    pub fn tiling(&self) -> bool {
        self.tiling
    }

    /// (decoding's, encoding's) tiles, when tiling is on.
    fn tiles(&self) -> Option<(tiling::Tiles, tiling::Tiles)> {
        let (sample, latent) = self.config.tile_sizes().filter(|_| self.tiling)?;
        Some((tiling::Tiles::new(latent, sample, 0.25), tiling::Tiles::new(sample, latent, 0.25)))
    }

    /// A generous estimate of decoding's activation memory in bytes for `batch` latents of
    /// `h x w`: the largest level's convolution patches, or the mid block's attention: its
    /// q, k, v and output at the latent size plus one block of scores (both attention paths take
    /// the scores a tile or a ~16 MB chunk at a time; counting the whole N x N matrix put a 512 px
    /// image of a factor-2 VAE at 16 GiB, 35 times its measured peak). With tiling on and more
    /// than one tile, one tile's, plus the image being assembled and a row of decoded tiles.
    pub fn decode_bytes(&self, batch: usize, h: usize, w: usize) -> u128 {
        if let Some((tiles, _)) = self.tiles().filter(|(t, _)| t.applies(h, w)) {
            // one tile's activations, the image being assembled and a row of decoded tiles
            let scale = 1u128 << (self.config.block_out_channels.len() - 1);
            let image = (batch as u128 * 12).saturating_mul(h as u128 * scale).saturating_mul(w as u128 * scale);
            let tile_px = (tiles.tile as u128 * scale).pow(2);
            let row = (batch as u128 * 12).saturating_mul(tile_px).saturating_mul(w.div_ceil(tiles.stride) as u128);
            return self.untiled_decode_bytes(batch, tiles.tile, tiles.tile).saturating_add(image.saturating_mul(2)).saturating_add(row);
        }
        self.untiled_decode_bytes(batch, h, w)
    }

    fn untiled_decode_bytes(&self, batch: usize, h: usize, w: usize) -> u128 {
        let levels = self.config.block_out_channels.len();
        let lat_px = h as u128 * w as u128;
        let c_mid = self.config.block_out_channels.last().copied().unwrap_or(0) as u128;
        // elements: q, k, v, out and the residual at the latent size; a 16-row score block
        let mut work = lat_px.saturating_mul(c_mid.saturating_mul(5)).saturating_add(lat_px.saturating_mul(16).max(4 << 20));
        for (i, &c) in self.config.block_out_channels.iter().enumerate() {
            let scale = 1u128 << (2 * (levels - 1 - i));
            work = work.max((c as u128).saturating_mul(lat_px).saturating_mul(scale).saturating_mul(9 + 4));
        }
        work.saturating_mul(batch as u128).saturating_mul(4)
    }

    /// The sampler's final latents -> image, nominally in [-1, 1]: divided by `scaling_factor`
    /// and shifted by `shift_factor` (Flux's autoencoder), as diffusers' pipelines do.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let mut scaled = (latents.to_dtype(self.dtype)? / self.config.scaling_factor)?;
        if let Some(shift) = self.config.shift_factor.filter(|&s| s != 0.0) {
            scaled = (scaled + shift)?;
        }
        let (_, _, h, w) = scaled.dims4()?;
        match self.tiles().filter(|(t, _)| t.applies(h, w)) {
            Some((tiles, _)) => Ok(tiles.run(&scaled, |t| self.decoder.forward(t))?),
            None => Ok(self.decoder.forward(&scaled)?),
        }
    }

    /// Image in [-1, 1] -> mean and std of the latent distribution (unscaled, as diffusers'
    /// `latent_dist`; a sample z becomes `(z - shift_factor) * scaling_factor` for the sampler).
    pub fn encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, _, h, w) = image.dims4()?;
        let moments = match self.tiles().filter(|(_, t)| t.applies(h, w)) {
            Some((_, tiles)) => tiles.run(image, |t| self.encoder.moments(t))?,
            None => self.encoder.moments(image)?,
        };
        Ok(encoder::mean_std(&moments)?)
    }
}
