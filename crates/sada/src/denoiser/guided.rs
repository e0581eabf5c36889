//! Classifier-free guidance: a denoiser with its conditioning fixed, the unconditional and
//! conditional halves run as one batch through the batch executor and combined.

use candle_core::Tensor;

use super::{batch, Capabilities, Conditioning, Denoiser, ForwardContext};
use crate::error::{Error, Result};

/// A denoiser with its conditioning fixed and classifier-free guidance applied: the unit the
/// sampling loop calls once per computed step.
pub struct Guided<'a> {
    denoiser: &'a dyn Denoiser,
    cond: Conditioning,
    guidance_scale: f64,
    batched: bool,
}

impl<'a> Guided<'a> {
    /// With `uncond` and `guidance_scale > 1`, the uncond and cond halves run as one batch and
    /// combine as `u + g (c - u)` (diffusers' order). Otherwise the cond pass alone.
    pub fn new(denoiser: &'a dyn Denoiser, cond: Conditioning, uncond: Option<Conditioning>, guidance_scale: f64) -> Result<Self> {
        if !guidance_scale.is_finite() {
            return Err(Error::param("guidance_scale", format!("{guidance_scale} is not a finite number")));
        }
        match uncond {
            Some(u) if guidance_scale > 1.0 => Ok(Self { denoiser, cond: Conditioning::concat(&u, &cond)?, guidance_scale, batched: true }),
            _ => Ok(Self { denoiser, cond, guidance_scale, batched: false }),
        }
    }

    /// The wrapped denoiser's capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.denoiser.capabilities()
    }

    /// The guided prediction for `latents` at `timestep`: the cond pass alone, or the uncond and
    /// cond passes as one batch combined with the guidance scale.
    pub fn predict(&self, latents: &Tensor, timestep: f64, ctx: &mut ForwardContext) -> Result<Tensor> {
        if !self.batched {
            return batch::predict(self.denoiser, latents, timestep, &self.cond, ctx);
        }
        let input = Tensor::cat(&[latents, latents], 0)?;
        let out = batch::predict(self.denoiser, &input, timestep, &self.cond, ctx)?;
        let b = latents.dim(0)?;
        let (u, c) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
        Ok((&u + (c - &u)?.affine(self.guidance_scale, 0.0)?)?)
    }
}
