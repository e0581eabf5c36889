//! diffusers' `UNet2DConditionModel` (SD-1.x, SD-2.x, SDXL configurations).
//!
//! The forward pass follows the U's recursion: the input of the up layer that takes skip k is
//! the up layer that takes skip k+1 applied to the deep branch below k+1. Each such branch is
//! a [`SiteKind::Deep`] site, the network after its input layer and after its first block are
//! [`SiteKind::Rest`] sites, and every transformer block is a token site, so accelerators act
//! through the [`ForwardContext`] without the model knowing which one runs.

pub mod blocks;
pub mod config;
pub mod presets;
pub mod transformer;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::models::layers::norm::{group_norm, GroupNorm};

use self::blocks::{down_block, up_block, DownLayer, LevelSpec, MidBlock, UpLayer};
pub use self::config::UNet2DConditionConfig;
use self::config::Resolved;
use crate::denoiser::{Capabilities, Conditioning, Denoiser, ForwardContext, Site, SiteKind};
use crate::error::{Error, Result};
use crate::models::layers::conv::{conv2d, Conv};
use crate::models::layers::timestep::{timestep_embedding, TimestepEmbedding};
use crate::models::source::ModelSource;

pub struct UNet2DConditionModel {
    pub config: UNet2DConditionConfig,
    resolved: Resolved,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<(TimestepEmbedding, usize, usize)>,
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

    pub fn new(config: UNet2DConditionConfig, vb: VarBuilder) -> Result<Self> {
        let r = config.resolve()?;
        let ch = &r.channels;
        let temb = ch[0] * 4;
        let spec = |level: usize| LevelSpec {
            heads: r.heads[level],
            transformer_layers: r.transformer_layers[level],
            cross_attn: r.cross_attn[level],
            context_dim: r.cross_attention_dim,
            groups: r.groups,
            eps: config.norm_eps,
            linear_projection: config.use_linear_projection,
        };
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], temb)?;
        let add_embedding = match r.text_time {
            Some((time_dim, proj_dim)) => Some((TimestepEmbedding::new(vb.pp("add_embedding"), proj_dim, temb)?, time_dim, proj_dim)),
            None => None,
        };
        let conv_in = conv2d(vb.pp("conv_in"), config.in_channels, ch[0], 3, 1, 1)?;
        let mut down = Vec::new();
        for i in 0..r.levels {
            let cin = if i == 0 { ch[0] } else { ch[i - 1] };
            down.extend(down_block(vb.pp("down_blocks").pp(i), cin, ch[i], temb, r.layers_per_block[i], spec(i), i + 1 < r.levels)?);
        }
        let last = r.levels - 1;
        let mid = MidBlock::new(vb.pp("mid_block"), ch[last], temb, LevelSpec { cross_attn: true, ..spec(last) })?;
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
        Ok(Self { config, resolved: r, time_embedding, add_embedding, conv_in, down, mid, up, conv_norm_out, conv_out, dtype: vb.dtype() })
    }

    /// The raw UNet output for `sample` at `timestep` (broadcast over the batch).
    pub fn forward(&self, sample: &Tensor, timestep: f64, encoder_hidden_states: &Tensor, added: Option<(&Tensor, &Tensor)>, ctx: &mut ForwardContext) -> Result<Tensor> {
        let b = sample.dim(0)?;
        let device = sample.device();
        let ts = Tensor::full(timestep as f32, b, device)?;
        let t_emb = timestep_embedding(&ts, self.resolved.channels[0], self.config.flip_sin_to_cos, self.config.freq_shift)?.to_dtype(self.dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        if let (Some((add, time_dim, _)), Some((text_embeds, time_ids))) = (&self.add_embedding, added) {
            let flat = time_ids.flatten_all()?;
            let time_embeds = timestep_embedding(&flat, *time_dim, self.config.flip_sin_to_cos, self.config.freq_shift)?
                .reshape((b, ()))?
                .to_dtype(self.dtype)?;
            let add_embeds = Tensor::cat(&[&text_embeds.to_dtype(self.dtype)?, &time_embeds], 1)?;
            emb = (emb + add.forward(&add_embeds)?)?;
        }
        let context = encoder_hidden_states.to_dtype(self.dtype)?;
        let step = Step { temb: &emb, context: &context };
        let s0 = self.conv_in.forward(&sample.to_dtype(self.dtype)?)?;
        let h = ctx.branch(Site { kind: SiteKind::Rest(0), base: &s0, probe: None }, |ctx| {
            if ctx.uses(SiteKind::Rest(1)) {
                // the first block runs outside the site: its residual is the site's signal
                let s1 = self.down[0].forward(&s0, step.temb, step.context, ctx)?;
                let probe = (&s1 - &s0)?;
                ctx.branch(Site { kind: SiteKind::Rest(1), base: &s1, probe: Some(&probe) }, |ctx| {
                    let x = self.ascend(0, &s0, &s1, &step, ctx)?;
                    Ok(self.up[0].forward(&x, &s0, step.temb, step.context, ctx, None)?)
                })
            } else {
                let x = ctx.branch(Site { kind: SiteKind::Deep(0), base: &s0, probe: None }, |ctx| self.inner(0, &s0, &step, ctx))?;
                Ok(self.up[0].forward(&x, &s0, step.temb, step.context, ctx, None)?)
            }
        })?;
        Ok(self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)?)
    }

    /// The input of the up layer that takes skip k, from skip k's state `s_k`.
    fn inner(&self, k: usize, s_k: &Tensor, step: &Step, ctx: &mut ForwardContext) -> Result<Tensor> {
        match self.down.get(k) {
            None => Ok(self.mid.forward(s_k, step.temb, step.context, ctx)?),
            Some(layer) => {
                let s_next = layer.forward(s_k, step.temb, step.context, ctx)?;
                self.ascend(k, s_k, &s_next, step, ctx)
            }
        }
    }

    /// As [`Self::inner`], with skip k+1's state `s_next` already computed: the deep branch
    /// below skip k+1 (a cache site), then the up layer that takes skip k+1.
    fn ascend(&self, k: usize, s_k: &Tensor, s_next: &Tensor, step: &Step, ctx: &mut ForwardContext) -> Result<Tensor> {
        let deep = ctx.branch(Site { kind: SiteKind::Deep(k + 1), base: s_next, probe: None }, |ctx| self.inner(k + 1, s_next, step, ctx))?;
        let up = &self.up[k + 1];
        let size = if up.upsamples() { Some((s_k.dim(2)?, s_k.dim(3)?)) } else { None };
        Ok(up.forward(&deep, s_next, step.temb, step.context, ctx, size)?)
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
        self.add_embedding.is_some()
    }

    fn check_inputs(&self, latents: &Tensor, cond: &Conditioning) -> Result<()> {
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
            return Err(Error::Shape {
                what: "encoder_hidden_states".into(),
                expected: format!("[{b}, tokens, {d}]"),
                got: format!("{:?}", ehs.dims()),
            });
        }
        if let Some((_, time_dim, proj_dim)) = &self.add_embedding {
            let (te, ti) = (cond.get("text_embeds")?, cond.get("time_ids")?);
            let ok = te.rank() == 2 && ti.rank() == 2 && te.dim(0)? == b && ti.dim(0)? == b && te.dim(1)? + ti.dim(1)? * time_dim == *proj_dim;
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
}

impl Denoiser for UNet2DConditionModel {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            token_pruning: true,
            deep_branches: self.down.len() + 1,
            // Rest(1)'s output must live where its base does: the first layer keeps the size.
            residual_sites: matches!(self.down.first(), Some(DownLayer::Block { .. })),
        }
    }

    fn predict(&self, latents: &Tensor, timestep: f64, cond: &Conditioning, ctx: &mut ForwardContext) -> Result<Tensor> {
        self.check_inputs(latents, cond)?;
        let ehs = cond.get("encoder_hidden_states")?;
        let added = if self.uses_text_time() { Some((cond.get("text_embeds")?, cond.get("time_ids")?)) } else { None };
        Ok(self.forward(latents, timestep, ehs, added, ctx)?.to_dtype(latents.dtype())?)
    }
}
