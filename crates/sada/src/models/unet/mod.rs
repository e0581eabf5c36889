//! diffusers' `UNet2DConditionModel` (SD-1.x, SD-2.x, SDXL configurations).
//!
//! The forward pass follows the U's recursion: the input of the up layer that takes skip k is
//! the up layer that takes skip k+1 applied to the deep branch below k+1. Each such branch is
//! a [`SiteKind::Deep`] site, the network after its input layer and after its first block are
//! [`SiteKind::Rest`] sites, and every transformer block is a token site, so accelerators act
//! through the [`ForwardContext`] without the model knowing which one runs.

pub mod blocks;
pub mod config;
pub mod embedding;
pub mod presets;
pub mod transformer;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::models::layers::norm::{group_norm, GroupNorm};

use self::blocks::{encoder, up_block, DownLayer, LevelSpec, MidBlock, UpLayer};
use self::config::Resolved;
pub use self::config::UNet2DConditionConfig;
use self::embedding::TimeTextEmbedding;
use crate::denoiser::{Capabilities, Conditioning, Denoiser, ForwardContext, Site, SiteKind};
use crate::error::{Error, Result};
use crate::models::layers::conv::{conv2d, Conv};
use crate::models::source::ModelSource;

/// What a ControlNet adds to the UNet (diffusers' `down_block_additional_residuals` and
/// `mid_block_additional_residual`): one tensor per skip connection, added to the skip where
/// the up path reads it (the down path itself is unchanged), and one added to the mid block's
/// output.
#[derive(Debug, Clone)]
pub struct AdditionalResiduals {
    /// One residual per skip connection, in skip order (`conv_in`'s output first).
    pub down: Vec<Tensor>,
    /// Added to the mid block's output.
    pub mid: Tensor,
}

impl AdditionalResiduals {
    /// The sum of two ControlNets' residuals (diffusers' `MultiControlNetModel`).
    pub fn add(&self, other: &AdditionalResiduals) -> Result<AdditionalResiduals> {
        if self.down.len() != other.down.len() {
            return Err(Error::Shape {
                what: "ControlNet residuals".into(),
                expected: format!("{} skips", self.down.len()),
                got: format!("{}", other.down.len()),
            });
        }
        let down = self.down.iter().zip(&other.down).map(|(a, b)| a + b).collect::<candle_core::Result<_>>()?;
        Ok(AdditionalResiduals { down, mid: (&self.mid + &other.mid)? })
    }
}

/// diffusers' `UNet2DConditionModel` (SD 1.x/2.x, SDXL): predicts epsilon or v (the
/// scheduler's `prediction_type`) for latents at a timestep under text embeddings.
pub struct UNet2DConditionModel {
    /// The configuration it was built from.
    pub config: UNet2DConditionConfig,
    resolved: Resolved,
    embedding: TimeTextEmbedding,
    conv_in: Conv,
    /// `down[k]` turns skip k into skip k+1 (skip 0 is `conv_in`'s output).
    down: Vec<DownLayer>,
    mid: MidBlock,
    /// `up[k]` takes skip k.
    up: Vec<UpLayer>,
    conv_norm_out: GroupNorm,
    conv_out: Conv,
    dtype: DType,
}

impl UNet2DConditionModel {
    /// Load from a diffusers `unet/` folder (config.json + safetensors weights).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (source, component) = ModelSource::component_dir(dir);
        Self::load_from(&source, &component, dtype, device)
    }

    /// Load the `component` folder (usually `unet`) of a model.
    pub fn load_from(source: &ModelSource, component: &str, dtype: DType, device: &Device) -> Result<Self> {
        let config_rel = format!("{component}/config.json");
        let config: UNet2DConditionConfig = source.read_json(&config_rel)?;
        config.resolve().map_err(|e| Error::file(source.path(&config_rel), e.to_string()))?;
        let (vb, weights_path) = source.var_builder(component, "diffusion_pytorch_model", dtype, device)?;
        Self::new(config, vb).map_err(|e| match e {
            Error::Candle(c) => Error::file(&weights_path, format!("weights do not match config.json: {c}")),
            other => other,
        })
    }

    /// Build from a configuration and weights in diffusers' key layout.
    pub fn new(config: UNet2DConditionConfig, vb: VarBuilder) -> Result<Self> {
        let r = config.resolve()?;
        let ch = &r.channels;
        let temb = ch[0] * 4;
        let spec = |level: usize| LevelSpec::of(&config, &r, level);
        let embedding = TimeTextEmbedding::new(&vb, &config, &r)?;
        let conv_in = conv2d(vb.pp("conv_in"), config.in_channels, ch[0], 3, 1, 1)?;
        let (down, mid) = encoder(&vb, &config, &r)?;
        let last = r.levels - 1;
        let mut up = Vec::new();
        let mut out_ch = ch[last];
        for i in 0..r.levels {
            let level = last - i;
            let prev = out_ch;
            out_ch = ch[level];
            let cin = ch[level.saturating_sub(1)];
            up.extend(up_block(vb.pp("up_blocks").pp(i), cin, out_ch, prev, temb, r.layers_per_block[level] + 1, spec(level), i < last)?);
        }
        // up layers run from the deepest skip to skip 0; index them by the skip they take
        up.reverse();
        if up.len() != down.len() + 1 {
            return Err(Error::internal(format!("the UNet has {} skip connections but {} up layers", down.len() + 1, up.len())));
        }
        let conv_norm_out = group_norm(r.groups, ch[0], config.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = conv2d(vb.pp("conv_out"), ch[0], config.out_channels, 3, 1, 1)?;
        Ok(Self { config, resolved: r, embedding, conv_in, down, mid, up, conv_norm_out, conv_out, dtype: vb.dtype() })
    }

    /// The raw UNet output for `sample` at `timestep` (broadcast over the batch), with a
    /// ControlNet's `residuals` if given.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
        residuals: Option<&AdditionalResiduals>,
        ctx: &mut ForwardContext,
    ) -> Result<Tensor> {
        if let Some(r) = residuals {
            if r.down.len() != self.down.len() + 1 {
                return Err(Error::Shape {
                    what: "down_block_additional_residuals".into(),
                    expected: format!("{} tensors (one per skip connection)", self.down.len() + 1),
                    got: format!("{}", r.down.len()),
                });
            }
        }
        let emb = self.embedding.forward(sample.dim(0)?, timestep, added, sample.device())?;
        let context = encoder_hidden_states.to_dtype(self.dtype)?;
        let step = Step { temb: &emb, context: &context, residuals };
        let s0 = self.conv_in.forward(&sample.to_dtype(self.dtype)?)?;
        let h = ctx.branch(Site::new(SiteKind::Rest(0), &s0, None), |ctx| {
            if ctx.uses(SiteKind::Rest(1)) {
                // the first block runs outside the site: its residual is the site's signal
                let s1 = self.down[0].forward(&s0, step.temb, step.context, ctx)?;
                let probe = (&s1 - &s0)?;
                ctx.branch(Site::new(SiteKind::Rest(1), &s1, Some(&probe)), |ctx| {
                    let x = self.ascend(0, &s0, &s1, &step, ctx)?;
                    Ok(self.up[0].forward(&x, &step.skip(0, &s0)?, step.temb, step.context, ctx, None)?)
                })
            } else {
                let x = ctx.branch(Site::new(SiteKind::Deep(0), &s0, None), |ctx| self.inner(0, &s0, &step, ctx))?;
                Ok(self.up[0].forward(&x, &step.skip(0, &s0)?, step.temb, step.context, ctx, None)?)
            }
        })?;
        Ok(self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)?)
    }

    /// The input of the up layer that takes skip k, from skip k's state `s_k`.
    fn inner(&self, k: usize, s_k: &Tensor, step: &Step, ctx: &mut ForwardContext) -> Result<Tensor> {
        match self.down.get(k) {
            None => {
                let h = self.mid.forward(s_k, step.temb, step.context, ctx)?;
                Ok(match step.residuals {
                    Some(r) => h.broadcast_add(&r.mid)?,
                    None => h,
                })
            }
            Some(layer) => {
                let s_next = layer.forward(s_k, step.temb, step.context, ctx)?;
                self.ascend(k, s_k, &s_next, step, ctx)
            }
        }
    }

    /// As [`Self::inner`], with skip k+1's state `s_next` already computed: the deep branch
    /// below skip k+1 (a cache site), then the up layer that takes skip k+1.
    fn ascend(&self, k: usize, s_k: &Tensor, s_next: &Tensor, step: &Step, ctx: &mut ForwardContext) -> Result<Tensor> {
        let deep = ctx.branch(Site::new(SiteKind::Deep(k + 1), s_next, None), |ctx| self.inner(k + 1, s_next, step, ctx))?;
        let up = &self.up[k + 1];
        let size = if up.upsamples() { Some((s_k.dim(2)?, s_k.dim(3)?)) } else { None };
        Ok(up.forward(&deep, &step.skip(k + 1, s_next)?, step.temb, step.context, ctx, size)?)
    }

    /// A generous estimate of one forward pass's activation memory in bytes for `batch` latents
    /// of `h x w`: every skip connection kept for the up path, plus twice the largest layer's
    /// working set (a 3 x 3 convolution's patch matrix over the concatenated up-path input, or a
    /// transformer level's projections, feed-forward and 16 MB attention score blocks).
    /// Saturates instead of overflowing for absurd sizes.
    pub fn activation_bytes(&self, batch: usize, h: usize, w: usize) -> u128 {
        let r = &self.resolved;
        let (mut skips, mut work) = (0u128, 0u128);
        for (i, &c) in r.channels.iter().enumerate() {
            let px = (h as u128).div_ceil(1 << i) * (w as u128).div_ceil(1 << i);
            let c = c as u128;
            skips = skips.saturating_add((r.layers_per_block[i] as u128 + 1).saturating_mul(c).saturating_mul(px));
            let conv = c.saturating_mul(px).saturating_mul(9 * 2 + 2);
            let attn = if r.cross_attn[i] { c.saturating_mul(px).saturating_mul(16) + (4 << 20) } else { 0 };
            work = work.max(conv.max(attn));
        }
        skips.saturating_add(work.saturating_mul(2)).saturating_mul(batch as u128).saturating_mul(4)
    }

    /// Width of the text embeddings the cross-attention expects.
    pub fn cross_attention_dim(&self) -> usize {
        self.resolved.cross_attention_dim
    }

    /// Whether the model takes SDXL's `text_embeds` and `time_ids`.
    pub fn uses_text_time(&self) -> bool {
        self.embedding.uses_text_time()
    }

    /// How many skip connections (so ControlNet down residuals) the U has.
    pub fn skips(&self) -> usize {
        self.down.len() + 1
    }

    pub(crate) fn check_inputs(&self, latents: &Tensor, cond: &Conditioning) -> Result<()> {
        let dims = latents.dims();
        let b = dims[0];
        if dims.len() != 4 || dims[1] != self.config.in_channels {
            return Err(Error::Shape {
                what: "UNet latents".into(),
                expected: format!("[batch, {}, height, width]", self.config.in_channels),
                got: format!("{dims:?}"),
            });
        }
        let ehs = cond.get("encoder_hidden_states")?;
        let d = self.resolved.cross_attention_dim;
        if ehs.rank() != 3 || ehs.dim(0)? != b || ehs.dim(2)? != d {
            return Err(Error::Shape { what: "encoder_hidden_states".into(), expected: format!("[{b}, tokens, {d}]"), got: format!("{:?}", ehs.dims()) });
        }
        if let Some((time_dim, proj_dim)) = self.embedding.text_time_dims(&self.resolved) {
            let (te, ti) = (cond.get("text_embeds")?, cond.get("time_ids")?);
            let ok = te.rank() == 2 && ti.rank() == 2 && te.dim(0)? == b && ti.dim(0)? == b && te.dim(1)? + ti.dim(1)? * time_dim == proj_dim;
            if !ok {
                return Err(Error::Shape {
                    what: "text_embeds / time_ids".into(),
                    expected: format!("[{b}, P] and [{b}, K] with P + K * {time_dim} = {proj_dim}"),
                    got: format!("{:?} and {:?}", te.dims(), ti.dims()),
                });
            }
        }
        Ok(())
    }
}

/// What every layer of one forward pass reads besides its input.
struct Step<'a> {
    temb: &'a Tensor,
    context: &'a Tensor,
    residuals: Option<&'a AdditionalResiduals>,
}

impl Step<'_> {
    /// Skip connection k as the up path reads it: with the ControlNet's residual added.
    fn skip(&self, k: usize, s_k: &Tensor) -> candle_core::Result<Tensor> {
        match self.residuals {
            Some(r) => s_k.broadcast_add(&r.down[k]),
            None => Ok(s_k.clone()),
        }
    }
}

impl Denoiser for UNet2DConditionModel {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            token_pruning: true,
            deep_branches: self.down.len() + 1,
            // Rest(1)'s output must live where its base does: the first layer keeps the size.
            residual_sites: matches!(self.down.first(), Some(DownLayer::Block { .. })),
            token_patch: 1,
            input_probe: false,
        }
    }

    fn predict(&self, latents: &Tensor, timestep: f64, cond: &Conditioning, ctx: &mut ForwardContext) -> Result<Tensor> {
        self.check_inputs(latents, cond)?;
        let ehs = cond.get("encoder_hidden_states")?;
        let added = if self.uses_text_time() { Some((cond.get("text_embeds")?, cond.get("time_ids")?)) } else { None };
        Ok(self.forward(latents, timestep, ehs, added, None, ctx)?.to_dtype(latents.dtype())?)
    }
}
