//! The UNet's down, mid and up blocks (diffusers' `CrossAttnDownBlock2D`, `DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`, `UpBlock2D`), flattened into the layers
//! of the U: every down layer produces one skip connection and every up layer consumes one,
//! so the deep branch below any skip is one sub-network (see `SiteKind::Deep`).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::{Resolved, UNet2DConditionConfig};
use super::transformer::Transformer2DModel;
use crate::denoiser::ForwardContext;
use crate::models::layers::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};

/// Per-level settings shared by the blocks.
#[derive(Debug, Clone, Copy)]
pub struct LevelSpec {
    /// Attention heads of the level's transformers.
    pub heads: usize,
    /// `BasicTransformerBlock`s per transformer.
    pub transformer_layers: usize,
    /// Whether the level's blocks have transformers.
    pub cross_attn: bool,
    /// Width of the text embeddings cross-attention reads.
    pub context_dim: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// Epsilon of the ResNet blocks' GroupNorms (`norm_eps`).
    pub eps: f64,
    /// Whether the transformers project in and out with linear layers (`use_linear_projection`)
    /// rather than 1x1 convolutions.
    pub linear_projection: bool,
}

impl LevelSpec {
    /// Level `level`'s settings in a resolved configuration.
    pub fn of(config: &UNet2DConditionConfig, r: &Resolved, level: usize) -> Self {
        LevelSpec {
            heads: r.heads[level],
            transformer_layers: r.transformer_layers[level],
            cross_attn: r.cross_attn[level],
            context_dim: r.cross_attention_dim,
            groups: r.groups,
            eps: config.norm_eps,
            linear_projection: config.use_linear_projection,
        }
    }

    fn transformer(&self, vb: VarBuilder, channels: usize) -> candle_core::Result<Transformer2DModel> {
        Transformer2DModel::new(vb, channels, self.heads, self.transformer_layers, self.context_dim, self.groups, self.linear_projection)
    }
}

/// One layer of the down path; its output is a skip connection.
pub enum DownLayer {
    /// A ResNet block, then the level's transformer where the level has cross-attention.
    Block {
        /// The ResNet block (`resnets.i`).
        resnet: ResnetBlock2D,
        /// The transformer after it (`attentions.i`), at cross-attention levels.
        attention: Option<Transformer2DModel>,
    },
    /// The level's downsampler (`downsamplers.0`), at every level but the deepest.
    Downsample(Downsample2D),
}

impl DownLayer {
    /// See [`Transformer2DModel::tag_sites`].
    pub fn tag_sites(&mut self, tag: &str) {
        if let DownLayer::Block { attention: Some(a), .. } = self {
            a.tag_sites(tag);
        }
    }

    /// The layer on `x`, with the timestep embedding `temb` and the text embeddings `context`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, ctx: &mut ForwardContext) -> candle_core::Result<Tensor> {
        match self {
            DownLayer::Block { resnet, attention } => {
                let h = resnet.forward(x, Some(temb))?;
                match attention {
                    Some(attn) => attn.forward(&h, context, ctx),
                    None => Ok(h),
                }
            }
            DownLayer::Downsample(d) => d.forward(x),
        }
    }
}

/// The layers of down block `vb` (a level with `layers` ResNet blocks, and a downsampler
/// unless it is the deepest level).
#[allow(clippy::too_many_arguments)]
pub fn down_block(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    temb: usize,
    layers: usize,
    spec: LevelSpec,
    downsample: bool,
) -> candle_core::Result<Vec<DownLayer>> {
    let mut out = Vec::new();
    for i in 0..layers {
        let c = if i == 0 { cin } else { cout };
        out.push(DownLayer::Block {
            resnet: ResnetBlock2D::new(vb.pp("resnets").pp(i), c, cout, temb, spec.groups, spec.eps)?,
            attention: if spec.cross_attn { Some(spec.transformer(vb.pp("attentions").pp(i), cout)?) } else { None },
        });
    }
    if downsample {
        out.push(DownLayer::Downsample(Downsample2D::new(vb.pp("downsamplers").pp(0), cout)?));
    }
    Ok(out)
}

/// The down path (one layer per skip connection after `conv_in`'s) and the mid block: the
/// half of the U that a ControlNet copies.
pub fn encoder(vb: &VarBuilder, config: &UNet2DConditionConfig, r: &Resolved) -> candle_core::Result<(Vec<DownLayer>, MidBlock)> {
    let ch = &r.channels;
    let temb = ch[0] * 4;
    let mut down = Vec::new();
    for i in 0..r.levels {
        let cin = if i == 0 { ch[0] } else { ch[i - 1] };
        down.extend(down_block(vb.pp("down_blocks").pp(i), cin, ch[i], temb, r.layers_per_block[i], LevelSpec::of(config, r, i), i + 1 < r.levels)?);
    }
    let last = r.levels - 1;
    let mid = MidBlock::new(vb.pp("mid_block"), ch[last], temb, LevelSpec { cross_attn: true, ..LevelSpec::of(config, r, last) })?;
    Ok((down, mid))
}

/// diffusers' `UNetMidBlock2DCrossAttn`: ResNet, transformer, ResNet at the deepest level.
pub struct MidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Transformer2DModel,
}

impl MidBlock {
    /// See [`Transformer2DModel::tag_sites`].
    pub fn tag_sites(&mut self, tag: &str) {
        self.attention.tag_sites(tag);
    }

    /// Load from `vb` (`resnets.0`, `attentions.0`, `resnets.1`) at `channels` channels.
    pub fn new(vb: VarBuilder, channels: usize, temb: usize, spec: LevelSpec) -> candle_core::Result<Self> {
        Ok(Self {
            resnets: [
                ResnetBlock2D::new(vb.pp("resnets").pp(0), channels, channels, temb, spec.groups, spec.eps)?,
                ResnetBlock2D::new(vb.pp("resnets").pp(1), channels, channels, temb, spec.groups, spec.eps)?,
            ],
            attention: spec.transformer(vb.pp("attentions").pp(0), channels)?,
        })
    }

    /// The block on `x`, with the timestep embedding `temb` and the text embeddings `context`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, ctx: &mut ForwardContext) -> candle_core::Result<Tensor> {
        let h = self.resnets[0].forward(x, Some(temb))?;
        let h = self.attention.forward(&h, context, ctx)?;
        self.resnets[1].forward(&h, Some(temb))
    }
}

/// One layer of the up path: takes the state from below and one skip connection.
pub struct UpLayer {
    resnet: ResnetBlock2D,
    attention: Option<Transformer2DModel>,
    /// On the last layer of every up block but the final one.
    upsampler: Option<Upsample2D>,
}

impl UpLayer {
    /// `upsample_to`: the size of the skip connection the next up layer takes (diffusers'
    /// `upsample_size`, which also handles latents not divisible by the UNet's factor).
    pub fn forward(
        &self,
        x: &Tensor,
        skip: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        ctx: &mut ForwardContext,
        upsample_to: Option<(usize, usize)>,
    ) -> candle_core::Result<Tensor> {
        let mut h = self.resnet.forward(&Tensor::cat(&[x, skip], 1)?, Some(temb))?;
        if let Some(attn) = &self.attention {
            h = attn.forward(&h, context, ctx)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(&h, upsample_to),
            None => Ok(h),
        }
    }

    /// Whether this layer ends in an upsampler (the last layer of every up block but the final
    /// one).
    pub fn upsamples(&self) -> bool {
        self.upsampler.is_some()
    }
}

/// The layers of up block `vb`. `cin`: channels of the matching down level's input; `prev`:
/// channels coming from below.
#[allow(clippy::too_many_arguments)]
pub fn up_block(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    prev: usize,
    temb: usize,
    layers: usize,
    spec: LevelSpec,
    upsample: bool,
) -> candle_core::Result<Vec<UpLayer>> {
    let mut out = Vec::new();
    for i in 0..layers {
        let skip = if i == layers - 1 { cin } else { cout };
        let res_in = if i == 0 { prev } else { cout };
        out.push(UpLayer {
            resnet: ResnetBlock2D::new(vb.pp("resnets").pp(i), res_in + skip, cout, temb, spec.groups, spec.eps)?,
            attention: if spec.cross_attn { Some(spec.transformer(vb.pp("attentions").pp(i), cout)?) } else { None },
            upsampler: if upsample && i == layers - 1 { Some(Upsample2D::new(vb.pp("upsamplers").pp(0), cout)?) } else { None },
        });
    }
    Ok(out)
}
