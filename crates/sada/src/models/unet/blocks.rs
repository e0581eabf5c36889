//! The UNet's down, mid and up blocks (diffusers' `CrossAttnDownBlock2D`, `DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`, `UpBlock2D`), one struct each way.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::attention::{BlockTokens, Transformer2DModel};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};

/// Per-level settings shared by the blocks.
#[derive(Debug, Clone, Copy)]
pub struct LevelSpec {
    pub heads: usize,
    pub transformer_layers: usize,
    pub cross_attn: bool,
    pub context_dim: usize,
    pub groups: usize,
    pub eps: f64,
    pub linear_projection: bool,
}

impl LevelSpec {
    fn transformer(&self, vb: VarBuilder, channels: usize) -> candle_core::Result<Transformer2DModel> {
        Transformer2DModel::new(vb, channels, self.heads, self.transformer_layers, self.context_dim, self.groups, self.linear_projection)
    }
}

/// Looks up what the transformer blocks at a given token grid compute this step.
pub trait TokenRouter {
    fn tokens(&mut self, height: usize, width: usize) -> candle_core::Result<BlockTokens>;
}

pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, temb: usize, layers: usize, spec: LevelSpec, downsample: bool) -> candle_core::Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let c = if i == 0 { cin } else { cout };
            resnets.push(ResnetBlock2D::new(vb.pp("resnets").pp(i), c, cout, temb, spec.groups, spec.eps)?);
            if spec.cross_attn {
                attentions.push(spec.transformer(vb.pp("attentions").pp(i), cout)?);
            }
        }
        let downsampler = if downsample { Some(Downsample2D::new(vb.pp("downsamplers").pp(0), cout)?) } else { None };
        Ok(Self { resnets, attentions, downsampler })
    }

    /// Returns the block output and the states it hands to the up path.
    pub fn forward(&mut self, x: &Tensor, temb: &Tensor, context: &Tensor, router: &mut dyn TokenRouter) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut states = Vec::new();
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, Some(temb))?;
            if let Some(attn) = self.attentions.get_mut(i) {
                let (_, _, hh, ww) = h.dims4()?;
                h = attn.forward(&h, context, &router.tokens(hh, ww)?)?;
            }
            states.push(h.clone());
        }
        if let Some(d) = &self.downsampler {
            h = d.forward(&h)?;
            states.push(h.clone());
        }
        Ok((h, states))
    }

    pub fn reset(&mut self) {
        self.attentions.iter_mut().for_each(Transformer2DModel::reset);
    }
}

pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, channels: usize, temb: usize, spec: LevelSpec) -> candle_core::Result<Self> {
        Ok(Self {
            resnets: vec![
                ResnetBlock2D::new(vb.pp("resnets").pp(0), channels, channels, temb, spec.groups, spec.eps)?,
                ResnetBlock2D::new(vb.pp("resnets").pp(1), channels, channels, temb, spec.groups, spec.eps)?,
            ],
            attentions: vec![spec.transformer(vb.pp("attentions").pp(0), channels)?],
        })
    }

    pub fn forward(&mut self, x: &Tensor, temb: &Tensor, context: &Tensor, router: &mut dyn TokenRouter) -> candle_core::Result<Tensor> {
        let h = self.resnets[0].forward(x, Some(temb))?;
        let (_, _, hh, ww) = h.dims4()?;
        let h = self.attentions[0].forward(&h, context, &router.tokens(hh, ww)?)?;
        self.resnets[1].forward(&h, Some(temb))
    }

    pub fn reset(&mut self) {
        self.attentions.iter_mut().for_each(Transformer2DModel::reset);
    }
}

pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// `cin`: channels of the matching down level's input; `prev`: channels coming from below.
    #[allow(clippy::too_many_arguments)]
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, prev: usize, temb: usize, layers: usize, spec: LevelSpec, upsample: bool) -> candle_core::Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip = if i == layers - 1 { cin } else { cout };
            let res_in = if i == 0 { prev } else { cout };
            resnets.push(ResnetBlock2D::new(vb.pp("resnets").pp(i), res_in + skip, cout, temb, spec.groups, spec.eps)?);
            if spec.cross_attn {
                attentions.push(spec.transformer(vb.pp("attentions").pp(i), cout)?);
            }
        }
        let upsampler = if upsample { Some(Upsample2D::new(vb.pp("upsamplers").pp(0), cout)?) } else { None };
        Ok(Self { resnets, attentions, upsampler })
    }

    pub fn num_layers(&self) -> usize {
        self.resnets.len()
    }

    pub fn forward(
        &mut self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb: &Tensor,
        context: &Tensor,
        router: &mut dyn TokenRouter,
        upsample_size: Option<(usize, usize)>,
    ) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("the down path leaves one state per up-block layer");
            h = resnet.forward(&Tensor::cat(&[&h, &skip], 1)?, Some(temb))?;
            if let Some(attn) = self.attentions.get_mut(i) {
                let (_, _, hh, ww) = h.dims4()?;
                h = attn.forward(&h, context, &router.tokens(hh, ww)?)?;
            }
        }
        match &self.upsampler {
            Some(u) => u.forward(&h, upsample_size),
            None => Ok(h),
        }
    }

    pub fn reset(&mut self) {
        self.attentions.iter_mut().for_each(Transformer2DModel::reset);
    }
}
