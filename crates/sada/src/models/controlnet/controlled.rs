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

use super::ControlNetModel;
use crate::denoiser::{Capabilities, Conditioning, Denoiser, ForwardContext};
use crate::error::{Error, Result};
use crate::models::unet::{AdditionalResiduals, UNet2DConditionModel};

/// One ControlNet with its settings (diffusers' `controlnet_conditioning_scale`,
/// `control_guidance_start` and `control_guidance_end`, per net).
pub struct ControlUnit {
    pub model: ControlNetModel,
    pub scale: f64,
    /// The fraction of the steps after which it starts acting, and after which it stops.
    pub start: f64,
    pub end: f64,
}

impl ControlUnit {
    /// diffusers' `controlnet_keep`: whether it acts at step `i` of `n`.
    pub fn acts_at(&self, i: usize, n: usize) -> bool {
        let (i, n) = (i as f64, n.max(1) as f64);
        !(i / n < self.start || (i + 1.0) / n > self.end)
    }
}

pub struct ControlledUNet<'a> {
    pub unet: &'a UNet2DConditionModel,
    pub nets: &'a [ControlUnit],
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
        let kept: Vec<u32> = (0..b as u32).filter(|&i| weight[i as usize] != 0.0).collect();
        let all = kept.len() == b;
        let rows = Tensor::from_vec(kept.clone(), kept.len(), latents.device())?;
        let step = ctx.step();
        let mut total: Option<AdditionalResiduals> = None;
        if !kept.is_empty() {
            let x = rows_of(latents, &rows, all)?;
            let e = rows_of(ehs, &rows, all)?;
            let a = match added {
                Some((te, ti)) => Some((rows_of(te, &rows, all)?, rows_of(ti, &rows, all)?)),
                None => None,
            };
            for (i, unit) in self.nets.iter().enumerate() {
                // diffusers runs a ControlNet outside its window at scale 0: zeros, so nothing to add
                if !unit.acts_at(step, self.num_steps) || unit.scale == 0.0 {
                    continue;
                }
                let image = rows_of(cond.get(&format!("controlnet_cond.{i}"))?, &rows, all)?;
                let res = unit.model.forward(&x, timestep, &e, a.as_ref().map(|(p, q)| (p, q)), &image, unit.scale, self.guess_mode, ctx)?;
                total = Some(match total {
                    Some(t) => t.add(&res)?,
                    None => res,
                });
            }
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
        Ok(self.unet.forward(latents, timestep, ehs, added, total.as_ref(), ctx)?.to_dtype(latents.dtype())?)
    }
}
