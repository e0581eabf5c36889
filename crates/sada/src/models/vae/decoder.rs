//! The AutoencoderKL decoder (diffusers' `post_quant_conv` + `Decoder`), latent -> image, on
//! the project's own convolution, GroupNorm and attention kernels. Every image of a batch is
//! computed by the same batched ops.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{MidBlock, EPS};
use super::AutoencoderKlConfig;
use crate::models::layers::conv::{conv2d, Conv};
use crate::models::layers::norm::{group_norm, GroupNorm};
use crate::models::layers::resnet::{ResnetBlock2D, Upsample2D};

/// diffusers' `post_quant_conv` + `Decoder`: latents to images.
pub struct VaeDecoder {
    post_quant_conv: Option<Conv>,
    conv_in: Conv,
    mid: MidBlock,
    /// Coarsest level first; every level but the last ends in a 2x upsampler.
    up_blocks: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    conv_norm_out: GroupNorm,
    conv_out: Conv,
}

impl VaeDecoder {
    /// Load from `vb` (the `vae/` weights: `decoder.*` and `post_quant_conv`).
    pub fn new(vb: VarBuilder, s: &AutoencoderKlConfig) -> candle_core::Result<Self> {
        let dec = vb.pp("decoder");
        let groups = s.norm_num_groups;
        let reversed: Vec<usize> = s.block_out_channels.iter().rev().copied().collect();
        let top = reversed[0];
        let mut up_blocks = Vec::with_capacity(reversed.len());
        let mut cin = top;
        for (i, &cout) in reversed.iter().enumerate() {
            let b = dec.pp("up_blocks").pp(i);
            // diffusers' UpDecoderBlock2D has one ResNet more than the encoder's levels
            let resnets = (0..=s.layers_per_block)
                .map(|j| ResnetBlock2D::new(b.pp("resnets").pp(j), if j == 0 { cin } else { cout }, cout, 0, groups, EPS))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let up = if i + 1 < reversed.len() { Some(Upsample2D::new(b.pp("upsamplers").pp(0), cout)?) } else { None };
            up_blocks.push((resnets, up));
            cin = cout;
        }
        let finest = s.block_out_channels[0];
        Ok(Self {
            post_quant_conv: if s.use_post_quant_conv { Some(conv2d(vb.pp("post_quant_conv"), s.latent_channels, s.latent_channels, 1, 1, 0)?) } else { None },
            conv_in: conv2d(dec.pp("conv_in"), s.latent_channels, top, 3, 1, 1)?,
            mid: MidBlock::new(dec.pp("mid_block"), top, groups, s.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: group_norm(groups, finest, EPS, dec.pp("conv_norm_out"))?,
            conv_out: conv2d(dec.pp("conv_out"), finest, s.out_channels, 3, 1, 1)?,
        })
    }

    /// Unscaled latents `[B, latent_channels, h, w]` -> images `[B, out_channels, H, W]`.
    pub fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let _s = tracing::trace_span!("vae_decode").entered();
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z)?,
            None => z.clone(),
        };
        let mut h = self.mid.forward(&self.conv_in.forward(&z)?)?;
        for (resnets, up) in &self.up_blocks {
            for r in resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(u) = up {
                h = u.forward(&h, None)?;
            }
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)
    }
}
