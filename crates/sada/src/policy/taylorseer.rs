//! TaylorSeer (Liu et al., 2025): compute the network fully every `interval` steps and, in
//! between, forecast its features by a Taylor series whose derivatives are finite differences
//! of the features at the last full steps (`docs/rivals.md`).
//!
//! The forecast feature is what the network's body adds to its input layer's output (the
//! [`SiteKind::Rest`]`(0)` site): on a forecast step only the input layer, the timestep
//! embedding and the output head run. Schedule and derivatives follow the reference's FLUX
//! code: full steps are the first `first_enhance` and then every `interval`-th; at a full step
//! the k-th derivative is (the (k-1)-th now - the (k-1)-th at the last full step) / (the steps
//! between them), up to `max_order`, starting from step `first_enhance - 1`; a forecast `x`
//! steps after the last full one is sum_k F_k x^k / k!.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::method::Method;
use super::plan::{PerImage, Policy};
use crate::denoiser::{Capabilities, Site, SiteHook, SiteKind};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::solvers::Solver;

/// TaylorSeer's settings (`taylorseer:...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaylorSeerConfig {
    /// A full step every `interval` steps after the warm-up (the reference's `fresh_threshold`).
    pub interval: usize,
    /// Highest derivative order of the forecast.
    pub max_order: usize,
    /// Steps always computed at the start (the reference's `first_enhance`).
    pub first_enhance: usize,
}

impl Default for TaylorSeerConfig {
    /// The reference's FLUX settings.
    fn default() -> Self {
        Self { interval: 6, max_order: 1, first_enhance: 3 }
    }
}

impl TaylorSeerConfig {
    /// Whether each of `steps` steps computes the whole network: the first `first_enhance`, then
    /// one after every `interval - 1` forecasts.
    pub fn full_steps(&self, steps: usize) -> Vec<bool> {
        let mut counter = 0;
        (0..steps)
            .map(|s| {
                let full = s < self.first_enhance || counter + 1 >= self.interval;
                counter = if full { 0 } else { counter + 1 };
                full
            })
            .collect()
    }
}

impl Method for TaylorSeerConfig {
    fn preset(_: Family) -> Self {
        Self::default()
    }
    fn policy(&self, _seed: u64) -> Box<dyn Policy> {
        Box::new(TaylorSeer { cfg: self.clone(), full: Vec::new(), images: PerImage::new() })
    }
    fn validate(&self, _: usize) -> Result<()> {
        if self.interval == 0 {
            return Err(Error::param("taylorseer:interval", "must be at least 1"));
        }
        if self.max_order > 4 {
            return Err(Error::param("taylorseer:max_order", format!("{} is above 4, the highest order the reference uses", self.max_order)));
        }
        Ok(())
    }
    fn sweep(_: Family) -> Vec<Self> {
        [(3, 1), (4, 1), (4, 2), (6, 1), (8, 2)].into_iter().map(|(interval, max_order)| Self { interval, max_order, ..Self::default() }).collect()
    }
}

/// The TaylorSeer policy: computes the network on its full steps and forecasts the
/// `Rest(0)` feature by a Taylor expansion on the others.
pub struct TaylorSeer {
    cfg: TaylorSeerConfig,
    full: Vec<bool>,
    /// Each image's expansion from its last full step.
    images: PerImage<Expansion>,
}

/// F_0, F_1, ...: one image's feature and its derivative estimates at its last full step.
#[derive(Clone)]
struct Expansion {
    factors: Vec<Tensor>,
    last_full: usize,
}

impl Expansion {
    /// sum_k F_k x^k / k! at `x` steps after the last full step.
    fn forecast(&self, x: f64) -> Result<Tensor> {
        let mut out = self.factors[0].clone();
        let mut coef = 1.0;
        for (k, f) in self.factors.iter().enumerate().skip(1) {
            coef *= x / k as f64;
            out = (out + f.affine(coef, 0.0)?)?;
        }
        Ok(out)
    }
}

impl SiteHook for TaylorSeer {
    fn uses(&self, kind: SiteKind) -> bool {
        kind == SiteKind::Rest(0)
    }

    /// The full steps are the same for every image; a forecast step serves each image its own
    /// expansion.
    fn replace(&self, step: usize, site: &Site) -> Result<Option<Tensor>> {
        if self.full.get(step).copied().unwrap_or(true) {
            return Ok(None);
        }
        let Some(expansions) = self.images.all(site.images.clone())? else { return Ok(None) };
        let rows = expansions.iter().map(|e| e.forecast((step - e.last_full) as f64)).collect::<Result<Vec<_>>>()?;
        Ok(Some((site.base + Tensor::cat(&rows, 0)?)?))
    }

    fn record(&self, step: usize, site: &Site, output: &Tensor) -> Result<()> {
        let feature = (output - site.base)?;
        self.images.update(site.images.clone(), |row, old| {
            let mut factors = vec![feature.narrow(0, row, 1)?];
            // the reference starts differencing at step first_enhance - 1
            if let Some(old) = old.filter(|_| step + 1 >= self.cfg.first_enhance && step > 0) {
                let gap = (step - old.last_full) as f64;
                for (j, prev) in old.factors.iter().enumerate().take(self.cfg.max_order) {
                    let d = ((&factors[j] - prev)? / gap)?;
                    factors.push(d);
                }
            }
            Ok(Expansion { factors, last_full: step })
        })
    }
}

impl Policy for TaylorSeer {
    fn hook(&self) -> Option<&dyn SiteHook> {
        Some(self)
    }

    fn begin(&mut self, solver: &dyn Solver, _: &[usize], caps: &Capabilities) -> Result<()> {
        if !caps.residual_sites {
            return Err(Error::param("accel", "taylorseer needs a denoiser whose body can be forecast (the UNet); this one cannot"));
        }
        self.cfg.validate(solver.num_steps())?;
        self.full = self.cfg.full_steps(solver.num_steps());
        self.images = PerImage::new();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn flux_schedule_matches_the_reference() {
        // the reference's FLUX settings on 50 steps: full at 0, 1, 2, 8, 14, ..., 44
        let full = TaylorSeerConfig::default().full_steps(50);
        let got: Vec<usize> = (0..50).filter(|&i| full[i]).collect();
        assert_eq!(got, vec![0, 1, 2, 8, 14, 20, 26, 32, 38, 44]);
    }

    /// A feature that is a polynomial of the step index is forecast exactly by an expansion of
    /// its order, once enough full steps have set the derivatives (order 1: a line).
    #[test]
    fn forecast_is_exact_on_a_line_and_uses_step_distances() {
        let cfg = TaylorSeerConfig { interval: 4, max_order: 1, first_enhance: 2 };
        let p = TaylorSeer { cfg: cfg.clone(), full: cfg.full_steps(20), images: PerImage::new() };
        let base = Tensor::new(&[0f32, 0.0], &Device::Cpu).unwrap();
        let feature = |s: usize| Tensor::new(&[3.0 + 2.0 * s as f32, -(s as f32)], &Device::Cpu).unwrap();
        for step in 0..12 {
            let site = Site::new(SiteKind::Rest(0), &base, None);
            match p.replace(step, &site).unwrap() {
                Some(f) => {
                    assert!(!p.full[step]);
                    assert_eq!(f.to_vec1::<f32>().unwrap(), feature(step).to_vec1::<f32>().unwrap(), "step {step}");
                }
                None => {
                    assert!(p.full[step], "step {step} computed but not a full step");
                    p.record(step, &site, &feature(step)).unwrap();
                }
            }
        }
        // order 1: each row keeps the feature and one derivative
        assert!(p.images.all(0..2).unwrap().unwrap().iter().all(|e| e.factors.len() == 2));
    }
}
