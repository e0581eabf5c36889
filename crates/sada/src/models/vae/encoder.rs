//! The AutoencoderKL encoder (diffusers' `Encoder` + `quant_conv`), image -> latent
//! distribution, sharing its mid block with the decoder.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{MidBlock, EPS};
use super::AutoencoderKlConfig;
use crate::models::layers::conv::{conv2d, Conv};
use crate::models::layers::norm::{group_norm, GroupNorm};
use crate::models::layers::resnet::ResnetBlock2D;

/// diffusers' `Encoder` + `quant_conv`: images to the latent distribution.
pub struct VaeEncoder {
    conv_in: Conv,
    blocks: Vec<(Vec<ResnetBlock2D>, Option<Conv>)>,
    mid: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv,
    quant_conv: Option<Conv>,
}

impl VaeEncoder {
    /// Load from `vb` (the `vae/` weights: `encoder.*` and `quant_conv`) as `config` shapes it:
    /// `layers_per_block` ResNet blocks at each level of `block_out_channels`,
    /// `2 * latent_channels` outputs (mean and log-variance).
    pub fn new(vb: VarBuilder, config: &AutoencoderKlConfig) -> candle_core::Result<Self> {
        let (in_channels, channels, layers) = (config.in_channels, &config.block_out_channels, config.layers_per_block);
        let (latent_channels, groups) = (config.latent_channels, config.norm_num_groups);
        let (use_quant_conv, mid_attention) = (config.use_quant_conv, config.mid_block_add_attention);
        let enc = vb.pp("encoder");
        let conv_in = conv2d(enc.pp("conv_in"), in_channels, channels[0], 3, 1, 1)?;
        let mut blocks = Vec::new();
        let mut cin = channels[0];
        for (i, &cout) in channels.iter().enumerate() {
            let b = enc.pp("down_blocks").pp(i);
            let resnets = (0..layers)
                .map(|j| ResnetBlock2D::new(b.pp("resnets").pp(j), if j == 0 { cin } else { cout }, cout, 0, groups, EPS))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let down = if i + 1 < channels.len() { Some(conv2d(b.pp("downsamplers").pp(0).pp("conv"), cout, cout, 3, 2, 0)?) } else { None };
            blocks.push((resnets, down));
            cin = cout;
        }
        let last = *channels.last().expect("at least one level");
        let mid = MidBlock::new(enc.pp("mid_block"), last, groups, mid_attention)?;
        Ok(Self {
            conv_in,
            blocks,
            mid,
            conv_norm_out: group_norm(groups, last, EPS, enc.pp("conv_norm_out"))?,
            conv_out: conv2d(enc.pp("conv_out"), last, 2 * latent_channels, 3, 1, 1)?,
            quant_conv: if use_quant_conv { Some(conv2d(vb.pp("quant_conv"), 2 * latent_channels, 2 * latent_channels, 1, 1, 0)?) } else { None },
        })
    }

    /// Mean and standard deviation of the latent distribution (logvar clamped to [-30, 20]).
    pub fn forward(&self, image: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        mean_std(&self.moments(image)?)
    }

    /// The distribution's parameters as the network outputs them: mean and log-variance stacked
    /// on the channel axis (what tiled encoding blends).
    pub fn moments(&self, image: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(image)?;
        for (resnets, down) in &self.blocks {
            for r in resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(d) = down {
                // diffusers pads right and bottom by one, then convolves with stride 2, no padding
                h = d.forward(&h.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)?;
            }
        }
        h = self.mid.forward(&h)?;
        let p = self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)?;
        match &self.quant_conv {
            Some(q) => q.forward(&p),
            None => Ok(p),
        }
    }
}

/// diffusers' `DiagonalGaussianDistribution`: mean and std from the moments (logvar clamped to
/// [-30, 20]).
pub fn mean_std(moments: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let c = moments.dim(1)? / 2;
    let mean = moments.narrow(1, 0, c)?;
    let logvar = moments.narrow(1, c, c)?.clamp(-30f32, 20f32)?;
    let std = (logvar * 0.5)?.exp()?;
    Ok((mean, std))
}
