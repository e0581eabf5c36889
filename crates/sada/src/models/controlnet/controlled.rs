//! A UNet steered by one or more ControlNets, as one [`Denoiser`]: what diffusers'
//! `StableDiffusionControlNetPipeline` / `StableDiffusionXLControlNetPipeline` do inside their
//! denoising loop, so that every accelerator sees the pair as one network. A step an
//! accelerator skips skips the ControlNets with the UNet; their transformer blocks are token
//! sites of their own (see [`ControlNetModel::tag_sites`]), pruned by the same plan.
//!
//! Conditioning it reads besides the UNet's: `controlnet_cond.<i>` (ControlNet i's image,
//! `[B, C, H, W]` in [0, 1]) and `control_weight` (`[B]`: 1 where the ControlNets act, 0 on
//! the unconditional half in guess mode, where diffusers runs them on the conditional half
//! only and adds zeros to the other).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::ControlNetModel;
use crate::denoiser::{Capabilities, Conditioning, Denoiser, ForwardContext};
use crate::error::{Error, Result};
use crate::models::unet::{AdditionalResiduals, UNet2DConditionModel};

/// How one ControlNet steers a run: diffusers' `controlnet_conditioning_scale`,
/// `control_guidance_start` and `control_guidance_end`, per net.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ControlSettings {
    /// `controlnet_conditioning_scale`: the factor on its residuals.
    pub scale: f64,
    /// The fraction of the steps after which it starts acting, and after which it stops.
    pub start: f64,
    /// `control_guidance_end`: the fraction of the steps after which it stops acting.
    pub end: f64,
}

impl Default for ControlSettings {
    /// diffusers' defaults: full strength over every step.
    fn default() -> Self {
        Self { scale: 1.0, start: 0.0, end: 1.0 }
    }
}

/// ControlNet scales beyond this are refused (real use stays within 0..2).
pub const MAX_SCALE: f64 = 100.0;

impl ControlSettings {
    /// Refuse what diffusers refuses: a scale that is not a number, a guidance window outside
    /// [0, 1] or empty.
    pub fn validate(&self) -> Result<()> {
        // diffusers takes any float; beyond this the residuals overflow to inf inside the UNet
        if !self.scale.is_finite() || self.scale.abs() > MAX_SCALE {
            return Err(Error::param(
                "controlnet_conditioning_scale",
                format!("{} is not a scale; expected a finite number of at most {MAX_SCALE} in size", self.scale),
            ));
        }
        if !(0.0..=1.0).contains(&self.start) || !(0.0..=1.0).contains(&self.end) || self.start >= self.end {
            return Err(Error::param("control_guidance_start/end", format!("{} .. {}: expected 0 <= start < end <= 1", self.start, self.end)));
        }
        Ok(())
    }

    /// diffusers' `controlnet_keep`: whether it acts at step `i` of `n`.
    pub fn acts_at(&self, i: usize, n: usize) -> bool {
        let (i, n) = (i as f64, n.max(1) as f64);
        !(i / n < self.start || (i + 1.0) / n > self.end)
    }
}

/// One ControlNet of a run, with its settings.
#[derive(Clone, Copy)]
pub struct ControlUnit<'a> {
    /// The ControlNet.
    pub model: &'a ControlNetModel,
    /// Its scale and guidance window.
    pub settings: ControlSettings,
}

/// A UNet with the residuals of its ControlNets added to its skips and mid block: one
/// [`Denoiser`] (see the module docs for the conditioning it reads).
pub struct ControlledUNet<'a> {
    /// The UNet being steered.
    pub unet: &'a UNet2DConditionModel,
    /// The ControlNets, their residuals summed; `controlnet_cond.<i>` is net i's image.
    pub nets: &'a [ControlUnit<'a>],
    /// diffusers' `guess_mode`: the ControlNets' skip residuals are scaled down from the mid
    /// block's towards the shallow skips (and `control_weight` keeps them off the unconditional
    /// half).
    pub guess_mode: bool,
    /// The solver's step count: the guidance windows are fractions of it.
    pub num_steps: usize,
}

/// Rows `rows` of `t` (all of it when every row is kept).
fn rows_of(t: &Tensor, rows: &Tensor, all: bool) -> candle_core::Result<Tensor> {
    if all {
        Ok(t.clone())
    } else {
        t.index_select(rows, 0)
    }
}

impl Denoiser for ControlledUNet<'_> {
    fn capabilities(&self) -> Capabilities {
        self.unet.capabilities()
    }

    fn predict(&self, latents: &Tensor, timestep: f64, cond: &Conditioning, ctx: &mut ForwardContext) -> Result<Tensor> {
        self.unet.check_inputs(latents, cond)?;
        let b = latents.dim(0)?;
        let ehs = cond.get("encoder_hidden_states")?;
        let added = if self.unet.uses_text_time() { Some((cond.get("text_embeds")?, cond.get("time_ids")?)) } else { None };
        let weight: Vec<f32> = cond.get("control_weight")?.to_dtype(DType::F32)?.to_vec1()?;
        if weight.len() != b {
            return Err(Error::Shape { what: "control_weight".into(), expected: format!("[{b}]"), got: format!("[{}]", weight.len()) });
        }
        // diffusers runs a ControlNet outside its window at scale 0: zeros, so nothing to add
        let step = ctx.step();
        let mut acting = Vec::new();
        for (i, unit) in self.nets.iter().enumerate() {
            if unit.settings.acts_at(step, self.num_steps) && unit.settings.scale != 0.0 {
                acting.push((unit, cond.get(&format!("controlnet_cond.{i}"))?.clone()));
            }
        }
        let inputs = Inputs { latents: latents.clone(), ehs: ehs.clone(), added: added.map(|(te, ti)| (te.clone(), ti.clone())), acting, weight };
        Ok(self.controlled(&inputs, timestep, ctx)?.to_dtype(latents.dtype())?)
    }

    /// Not in guess mode, where the ControlNets skip the unconditional image: its token caches
    /// would hold other sites than the conditional image's.
    fn splits(&self, cond: &Conditioning) -> Result<bool> {
        let weight: Vec<f32> = cond.get("control_weight")?.to_dtype(DType::F32)?.to_vec1()?;
        Ok(weight.iter().all(|&w| w != 0.0))
    }
}

/// One evaluation's inputs: the batch's, or one image's.
struct Inputs<'u> {
    latents: Tensor,
    ehs: Tensor,
    added: Option<(Tensor, Tensor)>,
    /// The ControlNets acting at this step, each with its control image.
    acting: Vec<(&'u ControlUnit<'u>, Tensor)>,
    weight: Vec<f32>,
}

impl ControlledUNet<'_> {
    /// The acting ControlNets' summed residuals for every image of `inputs` (None when none
    /// acts).
    fn residuals(&self, inputs: &Inputs, timestep: f64, ctx: &mut ForwardContext) -> Result<Option<AdditionalResiduals>> {
        let mut total: Option<AdditionalResiduals> = None;
        for (unit, image) in &inputs.acting {
            let added = inputs.added.as_ref().map(|(p, q)| (p, q));
            let res = unit.model.forward(&inputs.latents, timestep, &inputs.ehs, added, image, unit.settings.scale, self.guess_mode, ctx)?;
            total = Some(match total {
                Some(t) => t.add(&res)?,
                None => res,
            });
        }
        Ok(total)
    }

    /// The ControlNets on the rows they act on, then the UNet with their summed residuals.
    fn controlled(&self, inputs: &Inputs, timestep: f64, ctx: &mut ForwardContext) -> Result<Tensor> {
        let Inputs { latents, ehs, added, acting, weight } = inputs;
        let b = latents.dim(0)?;
        let kept: Vec<u32> = (0..b as u32).filter(|&i| weight[i as usize] != 0.0).collect();
        let all = kept.len() == b;
        let rows = Tensor::from_vec(kept.clone(), kept.len(), latents.device())?;
        let mut total: Option<AdditionalResiduals> = None;
        if !kept.is_empty() {
            let x = rows_of(latents, &rows, all)?;
            let e = rows_of(ehs, &rows, all)?;
            let a = match added {
                Some((te, ti)) => Some((rows_of(te, &rows, all)?, rows_of(ti, &rows, all)?)),
                None => None,
            };
            let acting = acting.iter().map(|(unit, image)| Ok((*unit, rows_of(image, &rows, all)?))).collect::<candle_core::Result<_>>()?;
            let seen = Inputs { latents: x, ehs: e, added: a, acting, weight: vec![1.0; kept.len()] };
            total = self.residuals(&seen, timestep, ctx)?;
        }
        // rows the ControlNets did not see take zero residuals
        let total = match total {
            Some(t) if !all => {
                let scatter = |r: &Tensor| -> candle_core::Result<Tensor> {
                    let mut dims = r.dims().to_vec();
                    dims[0] = b;
                    Tensor::zeros(dims, r.dtype(), r.device())?.index_add(&rows, r, 0)
                };
                Some(AdditionalResiduals { down: t.down.iter().map(scatter).collect::<candle_core::Result<_>>()?, mid: scatter(&t.mid)? })
            }
            t => t,
        };
        let added = added.as_ref().map(|(te, ti)| (te, ti));
        self.unet.forward(latents, timestep, ehs, added, total.as_ref(), ctx)
    }
}
