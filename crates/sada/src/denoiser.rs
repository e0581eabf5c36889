//! The one trait every network implements, and classifier-free guidance on top of it.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::policy::TokenPlan;

/// Named conditioning tensors, batch-first, named as diffusers names the pipeline arguments
/// (`encoder_hidden_states`, `text_embeds`, `time_ids`, ...).
#[derive(Debug, Clone, Default)]
pub struct Conditioning {
    tensors: BTreeMap<String, Tensor>,
}

impl Conditioning {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, name: impl Into<String>, t: Tensor) -> Self {
        self.tensors.insert(name.into(), t);
        self
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::param("conditioning", format!("missing tensor `{name}`")))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|k| k.as_str())
    }

    /// Stack `first` and `second` along the batch dimension, tensor by tensor (same names required).
    pub fn concat(first: &Conditioning, second: &Conditioning) -> Result<Conditioning> {
        let a: Vec<&str> = first.names().collect();
        let b: Vec<&str> = second.names().collect();
        if a != b {
            return Err(Error::Shape {
                what: "conditioning".into(),
                expected: format!("{a:?}"),
                got: format!("{b:?}"),
            });
        }
        let mut out = Conditioning::new();
        for (name, t) in &first.tensors {
            let u = &second.tensors[name];
            if t.dims()[1..] != u.dims()[1..] {
                return Err(Error::Shape {
                    what: format!("conditioning tensor `{name}`"),
                    expected: format!("{:?}", t.dims()),
                    got: format!("{:?}", u.dims()),
                });
            }
            out.tensors.insert(name.clone(), Tensor::cat(&[t, u], 0)?);
        }
        Ok(out)
    }
}

/// A denoising network: given a batch of (scaled) latents at a timestep, return the raw
/// prediction (epsilon, v or velocity, per its `prediction_type`), computing the tokens the
/// step's plan asks for.
pub trait Denoiser {
    fn predict(&mut self, latents: &Tensor, timestep: f64, cond: &Conditioning, plan: &TokenPlan) -> Result<Tensor>;

    /// Whether pruned plans really prune; if not, the policy plans every computed step as full.
    fn supports_token_pruning(&self) -> bool {
        false
    }

    /// Drop per-image state (block caches) before sampling a new image.
    fn reset(&mut self) {}
}

/// A denoiser with its conditioning fixed and classifier-free guidance applied: the unit the
/// sampling loop calls once per computed step.
pub struct Guided<'a> {
    denoiser: &'a mut dyn Denoiser,
    cond: Conditioning,
    guidance_scale: f64,
    batched: bool,
}

impl<'a> Guided<'a> {
    /// With `uncond` and `guidance_scale > 1`, the uncond and cond halves run as one batch and
    /// combine as `u + g (c - u)` (diffusers' order). Otherwise the cond pass alone.
    pub fn new(denoiser: &'a mut dyn Denoiser, cond: Conditioning, uncond: Option<Conditioning>, guidance_scale: f64) -> Result<Self> {
        if !guidance_scale.is_finite() {
            return Err(Error::param("guidance_scale", format!("{guidance_scale} is not a finite number")));
        }
        match uncond {
            Some(u) if guidance_scale > 1.0 => Ok(Self {
                denoiser,
                cond: Conditioning::concat(&u, &cond)?,
                guidance_scale,
                batched: true,
            }),
            _ => Ok(Self { denoiser, cond, guidance_scale, batched: false }),
        }
    }

    pub fn denoiser(&mut self) -> &mut dyn Denoiser {
        self.denoiser
    }

    pub fn predict(&mut self, latents: &Tensor, timestep: f64, plan: &TokenPlan) -> Result<Tensor> {
        if !self.batched {
            return self.denoiser.predict(latents, timestep, &self.cond, plan);
        }
        let input = Tensor::cat(&[latents, latents], 0)?;
        let out = self.denoiser.predict(&input, timestep, &self.cond, plan)?;
        let b = latents.dim(0)?;
        let (u, c) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
        Ok((&u + (c - &u)?.affine(self.guidance_scale, 0.0)?)?)
    }
}
