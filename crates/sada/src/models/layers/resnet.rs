//! Convolutional blocks: `ResnetBlock2D`, `Downsample2D`, `Upsample2D` (UNet and autoencoder).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::linear::{linear, Linear};
use super::norm::{group_norm, GroupNorm};

pub use super::conv::{conv2d, Conv};

/// diffusers' `ResnetBlock2D`: GroupNorm, SiLU and 3x3 convolution twice, the projected timestep
/// embedding added between, plus the residual (through a 1x1 `conv_shortcut` when the width
/// changes).
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv,
    /// Absent in the autoencoder's blocks, which take no timestep.
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv,
    conv_shortcut: Option<Conv>,
}

impl ResnetBlock2D {
    /// `temb`: the timestep-embedding width, or 0 for a block without one.
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, temb: usize, groups: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, eps, vb.pp("norm1"))?,
            conv1: conv2d(vb.pp("conv1"), cin, cout, 3, 1, 1)?,
            time_emb_proj: if temb > 0 { Some(linear(temb, cout, vb.pp("time_emb_proj"))?) } else { None },
            norm2: group_norm(groups, cout, eps, vb.pp("norm2"))?,
            conv2: conv2d(vb.pp("conv2"), cout, cout, 3, 1, 1)?,
            conv_shortcut: if cin != cout { Some(conv2d(vb.pp("conv_shortcut"), cin, cout, 1, 1, 0)?) } else { None },
        })
    }

    /// The block on `x` `[B, C, H, W]`; `temb` `[B, temb]` is projected and added where the block
    /// has a `time_emb_proj`.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let _s = tracing::trace_span!("resnet").entered();
        let mut h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&temb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.conv_shortcut {
            Some(c) => c.forward(x)? + h,
            None => x + h,
        }
    }
}

/// diffusers' `Downsample2D`: a 3x3 convolution with stride 2 and padding 1.
pub struct Downsample2D {
    conv: Conv,
}

impl Downsample2D {
    /// Load `conv` from `vb`, `channels` in and out.
    pub fn new(vb: VarBuilder, channels: usize) -> candle_core::Result<Self> {
        Ok(Self { conv: conv2d(vb.pp("conv"), channels, channels, 3, 2, 1)? })
    }

    /// Halve the height and width (rounding up).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _s = tracing::trace_span!("resample").entered();
        self.conv.forward(x)
    }
}

/// diffusers' `Upsample2D`: nearest-neighbour upsampling, then a 3x3 convolution.
pub struct Upsample2D {
    conv: Conv,
}

impl Upsample2D {
    /// Load `conv` from `vb`, `channels` in and out.
    pub fn new(vb: VarBuilder, channels: usize) -> candle_core::Result<Self> {
        Ok(Self { conv: conv2d(vb.pp("conv"), channels, channels, 3, 1, 1)? })
    }

    /// Nearest-neighbour upsampling to `size` (the skip connection's size, for odd latents) or 2x.
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        let _s = tracing::trace_span!("resample").entered();
        self.conv.forward(&x.upsample_nearest2d(th, tw)?)
    }
}
