//! The parts the autoencoder's encoder and decoder share: its single-head spatial attention
//! and the mid block around it (diffusers' `UNetMidBlock2D` without a timestep).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::models::layers::attention::Attention;
use crate::models::layers::norm::{group_norm, GroupNorm};
use crate::models::layers::resnet::ResnetBlock2D;

/// diffusers' autoencoder blocks use this epsilon in every GroupNorm.
pub(super) const EPS: f64 = 1e-6;

/// Single-head self-attention over the pixels, with its own GroupNorm and residual.
struct SpatialAttention {
    group_norm: GroupNorm,
    attn: Attention,
}

impl SpatialAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> candle_core::Result<Self> {
        Ok(Self { group_norm: group_norm(groups, channels, EPS, vb.pp("group_norm"))?, attn: Attention::with_bias(vb, channels, None, 1, channels, true)? })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self.group_norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let out = self.attn.forward(&t, None)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        out + x
    }
}

/// ResNet, optional attention, ResNet at the coarsest level.
pub(super) struct MidBlock {
    first: ResnetBlock2D,
    attention: Option<SpatialAttention>,
    second: ResnetBlock2D,
}

impl MidBlock {
    pub(super) fn new(vb: VarBuilder, channels: usize, groups: usize, attention: bool) -> candle_core::Result<Self> {
        Ok(Self {
            first: ResnetBlock2D::new(vb.pp("resnets").pp(0), channels, channels, 0, groups, EPS)?,
            attention: if attention { Some(SpatialAttention::new(vb.pp("attentions").pp(0), channels, groups)?) } else { None },
            second: ResnetBlock2D::new(vb.pp("resnets").pp(1), channels, channels, 0, groups, EPS)?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.first.forward(x, None)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.second.forward(&h, None)
    }
}
