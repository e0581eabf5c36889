//! diffusers' `ControlNetModel`: a trainable copy of the UNet's encoder half (time embedding,
//! `conv_in`, down blocks, mid block; the same layer types as our UNet, built by the same code),
//! a small convolutional network that embeds the control image onto the latent grid, and a 1x1
//! "zero convolution" per skip connection and for the mid block. Its outputs are the residuals
//! the UNet adds to its skips ([`AdditionalResiduals`]).

pub mod controlled;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::denoiser::ForwardContext;
use crate::error::{Error, Result};
use crate::models::layers::conv::{conv2d, Conv};
use crate::models::source::ModelSource;
use crate::models::unet::blocks::{encoder, DownLayer, MidBlock};
use crate::models::unet::embedding::TimeTextEmbedding;
use crate::models::unet::{AdditionalResiduals, UNet2DConditionConfig};

pub use controlled::{ControlSettings, ControlUnit, ControlledUNet};

/// The keys of a ControlNet's `config.json` beyond the UNet's.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ControlNetExtra {
    /// Channels of the control image (3 for RGB).
    pub conditioning_channels: usize,
    /// Widths of the control image embedding's levels; each level after the first halves the
    /// grid.
    pub conditioning_embedding_out_channels: Vec<usize>,
    /// `rgb` or `bgr`: with `bgr` the control image's channels are reversed before embedding.
    pub controlnet_conditioning_channel_order: String,
    /// Whether the residuals are averaged over the spatial grid (shuffle-style ControlNets);
    /// forces guess mode.
    pub global_pool_conditions: bool,
}

impl Default for ControlNetExtra {
    /// diffusers' `ControlNetModel` constructor defaults.
    fn default() -> Self {
        Self {
            conditioning_channels: 3,
            conditioning_embedding_out_channels: vec![16, 32, 96, 256],
            controlnet_conditioning_channel_order: "rgb".into(),
            global_pool_conditions: false,
        }
    }
}

/// A ControlNet's `config.json`: the UNet keys it shares (read with the UNet's defaults, which
/// are `ControlNetModel`'s too) and its own.
#[derive(Debug, Clone)]
pub struct ControlNetConfig {
    /// The keys shared with the UNet (the encoder half is built from them).
    pub unet: UNet2DConditionConfig,
    /// The ControlNet's own keys.
    pub extra: ControlNetExtra,
}

impl ControlNetConfig {
    /// The UNet configuration the encoder half is built from: a ControlNet has no up path, so
    /// the up block types are set to mirror the down blocks for the UNet's checks.
    fn encoder_config(&self) -> UNet2DConditionConfig {
        let mut c = self.unet.clone();
        c.up_block_types = c.down_block_types.iter().rev().map(|t| t.replace("Down", "Up")).collect();
        c
    }

    fn check(&self) -> Result<()> {
        let e = &self.extra;
        if e.conditioning_channels == 0 {
            return Err(Error::unsupported("conditioning_channels", 0, "must be at least 1"));
        }
        if e.conditioning_embedding_out_channels.is_empty() || e.conditioning_embedding_out_channels.contains(&0) {
            return Err(Error::unsupported(
                "conditioning_embedding_out_channels",
                format!("{:?}", e.conditioning_embedding_out_channels),
                "expected one or more positive channel counts",
            ));
        }
        if !matches!(e.controlnet_conditioning_channel_order.as_str(), "rgb" | "bgr") {
            return Err(Error::unsupported("controlnet_conditioning_channel_order", &e.controlnet_conditioning_channel_order, "expected rgb or bgr"));
        }
        self.encoder_config().resolve().map(drop)
    }
}

/// diffusers' `ControlNetConditioningEmbedding`: conv + SiLU, then per level a conv and a
/// stride-2 conv (each + SiLU), then the zero-initialised `conv_out` to the UNet's width. The
/// control image is `2^(levels - 1)` times the latent grid (8x for SD's 4-level default).
struct ConditioningEmbedding {
    conv_in: Conv,
    blocks: Vec<Conv>,
    conv_out: Conv,
}

impl ConditioningEmbedding {
    fn new(vb: VarBuilder, cin: usize, channels: &[usize], cout: usize) -> candle_core::Result<Self> {
        let mut blocks = Vec::new();
        for (i, pair) in channels.windows(2).enumerate() {
            blocks.push(conv2d(vb.pp("blocks").pp(2 * i), pair[0], pair[0], 3, 1, 1)?);
            blocks.push(conv2d(vb.pp("blocks").pp(2 * i + 1), pair[0], pair[1], 3, 2, 1)?);
        }
        Ok(Self {
            conv_in: conv2d(vb.pp("conv_in"), cin, channels[0], 3, 1, 1)?,
            blocks,
            conv_out: conv2d(vb.pp("conv_out"), channels[channels.len() - 1], cout, 3, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?.silu()?;
        for b in &self.blocks {
            h = b.forward(&h)?.silu()?;
        }
        self.conv_out.forward(&h)
    }

    /// How many times smaller than the control image the embedding's grid is.
    fn factor(&self) -> usize {
        1 << (self.blocks.len() / 2)
    }
}

/// diffusers' `ControlNetModel`: turns the latents, timestep, text embeddings and a control image
/// into residuals for the UNet's skip connections and mid block.
pub struct ControlNetModel {
    /// The configuration it was built from.
    pub config: ControlNetConfig,
    embedding: TimeTextEmbedding,
    conv_in: Conv,
    cond_embedding: ConditioningEmbedding,
    down: Vec<DownLayer>,
    mid: MidBlock,
    /// One zero convolution per skip connection (`conv_in`'s output, then each down layer's).
    controlnet_down_blocks: Vec<Conv>,
    controlnet_mid_block: Conv,
    cross_attention_dim: usize,
    dtype: DType,
}

impl ControlNetModel {
    /// Load from a diffusers ControlNet folder (config.json + diffusion_pytorch_model weights)
    /// or an original-layout single file (`control_model.*` safetensors).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if dir.is_file() {
            return Self::load_single_file(dir, dtype, device);
        }
        if !dir.join("config.json").is_file() {
            return Err(Error::file(
                dir.join("config.json"),
                "not found: expected a diffusers ControlNet folder (config.json + diffusion_pytorch_model.safetensors)",
            ));
        }
        let (source, component) = ModelSource::component_dir(dir);
        Self::load_from(&source, &component, dtype, device)
    }

    /// Load from `component` (a subfolder, or empty for the root) of `source`: its config.json
    /// (`_class_name` must be ControlNetModel if given) and diffusion_pytorch_model weights.
    pub fn load_from(source: &ModelSource, component: &str, dtype: DType, device: &Device) -> Result<Self> {
        let rel = if component.is_empty() { "config.json".to_string() } else { format!("{component}/config.json") };
        let raw: serde_json::Value = source.read_json(&rel)?;
        let class = raw.get("_class_name").and_then(|v| v.as_str());
        if class.is_some_and(|c| c != "ControlNetModel") {
            return Err(Error::file(source.path(&rel), format!("a {} is not supported as a ControlNet (expected ControlNetModel)", class.unwrap_or_default())));
        }
        let parse = |e: String| Error::file(source.path(&rel), format!("invalid config: {e}"));
        let config = ControlNetConfig { unet: crate::config::from_value(raw.clone()).map_err(parse)?, extra: crate::config::from_value(raw).map_err(parse)? };
        config.check().map_err(|e| Error::file(source.path(&rel), e.to_string()))?;
        let (vb, weights_path) = source.var_builder(component, "diffusion_pytorch_model", dtype, device)?;
        Self::new(config, vb).map_err(|e| match e {
            Error::Candle(c) => Error::file(&weights_path, format!("weights do not match config.json: {c}")),
            other => other,
        })
    }

    /// An original-layout single-file ControlNet, its configuration inferred from the tensors.
    pub fn load_single_file(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (json, vb) = crate::models::single_file::open_controlnet(path, dtype, device)?;
        let parse = |e: String| Error::file(path, format!("inferred configuration: {e}"));
        let config = ControlNetConfig { unet: crate::config::from_value(json.clone()).map_err(parse)?, extra: crate::config::from_value(json).map_err(parse)? };
        config.check().map_err(|e| Error::file(path, e.to_string()))?;
        Self::new(config, vb).map_err(|e| match e {
            Error::Candle(c) => Error::file(path, format!("tensors do not fit the inferred architecture: {c}")),
            other => other,
        })
    }

    /// Build from a configuration and weights in diffusers' key layout.
    pub fn new(config: ControlNetConfig, vb: VarBuilder) -> Result<Self> {
        config.check()?;
        let unet = config.encoder_config();
        let r = unet.resolve()?;
        let ch = &r.channels;
        let embedding = TimeTextEmbedding::new(&vb, &unet, &r)?;
        let conv_in = conv2d(vb.pp("conv_in"), unet.in_channels, ch[0], 3, 1, 1)?;
        let e = &config.extra;
        let cond_embedding =
            ConditioningEmbedding::new(vb.pp("controlnet_cond_embedding"), e.conditioning_channels, &e.conditioning_embedding_out_channels, ch[0])?;
        let (down, mid) = encoder(&vb, &unet, &r)?;
        // the skips' widths: conv_in's, then every ResNet layer's and downsampler's of each level
        let mut widths = vec![ch[0]];
        for (level, &c) in ch.iter().enumerate() {
            let n = r.layers_per_block[level] + usize::from(level + 1 < r.levels);
            widths.extend(std::iter::repeat_n(c, n));
        }
        let zero =
            widths.iter().enumerate().map(|(i, &c)| conv2d(vb.pp("controlnet_down_blocks").pp(i), c, c, 1, 1, 0)).collect::<candle_core::Result<Vec<_>>>()?;
        let last = ch[r.levels - 1];
        let controlnet_mid_block = conv2d(vb.pp("controlnet_mid_block"), last, last, 1, 1, 0)?;
        Ok(Self {
            config,
            embedding,
            conv_in,
            cond_embedding,
            down,
            mid,
            controlnet_down_blocks: zero,
            controlnet_mid_block,
            cross_attention_dim: r.cross_attention_dim,
            dtype: vb.dtype(),
        })
    }

    /// Give this ControlNet's token sites their own names (`tag/...`): its blocks have the same
    /// key names as the UNet's, and token caches are kept by name.
    pub fn tag_sites(&mut self, tag: &str) {
        for l in &mut self.down {
            l.tag_sites(tag);
        }
        self.mid.tag_sites(tag);
    }

    /// How many skip connections it gives residuals for.
    pub fn skips(&self) -> usize {
        self.controlnet_down_blocks.len()
    }

    /// Channels of the latents it takes.
    pub fn in_channels(&self) -> usize {
        self.config.unet.in_channels
    }

    /// Channels of the control image it takes.
    pub fn conditioning_channels(&self) -> usize {
        self.config.extra.conditioning_channels
    }

    /// How many times larger than the latents the control image must be.
    pub fn image_factor(&self) -> usize {
        self.cond_embedding.factor()
    }

    /// Whether it reads SDXL's `text_embeds` and `time_ids`.
    pub fn uses_text_time(&self) -> bool {
        self.embedding.uses_text_time()
    }

    /// Width of the text embeddings its cross-attention expects.
    pub fn cross_attention_dim(&self) -> usize {
        self.cross_attention_dim
    }

    /// diffusers forces guess mode for ControlNets that pool their residuals (shuffle-style).
    pub fn global_pool_conditions(&self) -> bool {
        self.config.extra.global_pool_conditions
    }

    /// diffusers' `ControlNetModel.forward`: the residuals for `sample` under `controlnet_cond`
    /// (`[B, conditioning_channels, H, W]` in [0, 1], H x W = the latents' grid times
    /// [`Self::image_factor`]), scaled by `conditioning_scale`; in guess mode skip k of n is
    /// scaled by 10^(k/n - 1) more, so shallow skips are trusted less.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
        controlnet_cond: &Tensor,
        conditioning_scale: f64,
        guess_mode: bool,
        ctx: &mut ForwardContext,
    ) -> Result<AdditionalResiduals> {
        let b = sample.dim(0)?;
        let want = (b, self.conditioning_channels(), sample.dim(2)? * self.image_factor(), sample.dim(3)? * self.image_factor());
        if controlnet_cond.dims4().ok() != Some(want) {
            return Err(Error::Shape {
                what: "controlnet_cond (the control image)".into(),
                expected: format!("{want:?}"),
                got: format!("{:?}", controlnet_cond.dims()),
            });
        }
        let emb = self.embedding.forward(b, timestep, added, sample.device())?;
        let context = encoder_hidden_states.to_dtype(self.dtype)?;
        let mut cond = controlnet_cond.to_dtype(self.dtype)?;
        if self.config.extra.controlnet_conditioning_channel_order == "bgr" {
            let c = cond.dim(1)?;
            let idx = Tensor::from_vec((0..c as u32).rev().collect::<Vec<_>>(), c, cond.device())?;
            cond = cond.index_select(&idx, 1)?;
        }
        let mut s = (self.conv_in.forward(&sample.to_dtype(self.dtype)?)? + self.cond_embedding.forward(&cond)?)?;
        let mut skips = vec![s.clone()];
        for layer in &self.down {
            s = layer.forward(&s, &emb, &context, ctx)?;
            skips.push(s.clone());
        }
        let h = self.mid.forward(&s, &emb, &context, ctx)?;
        let n = skips.len();
        // guess mode: torch.logspace(-1, 0, n + 1) times the scale, the last one for the mid block
        let scale = |k: usize| {
            if guess_mode && !self.global_pool_conditions() {
                10f64.powf(k as f64 / n as f64 - 1.0) * conditioning_scale
            } else {
                conditioning_scale
            }
        };
        let finish = |t: Tensor, k: usize| -> candle_core::Result<Tensor> {
            let t = t.affine(scale(k), 0.0)?;
            if self.global_pool_conditions() {
                t.mean_keepdim(3)?.mean_keepdim(2)
            } else {
                Ok(t)
            }
        };
        let down = skips
            .iter()
            .zip(&self.controlnet_down_blocks)
            .enumerate()
            .map(|(k, (x, conv))| finish(conv.forward(x)?, k))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mid = finish(self.controlnet_mid_block.forward(&h)?, n)?;
        Ok(AdditionalResiduals { down, mid })
    }
}
