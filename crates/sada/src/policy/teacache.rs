//! TeaCache (Liu et al., CVPR 2025; the authors' TeaCache4FLUX): watch how much the first block's
//! timestep-modulated input changes between steps, rescale that change with a polynomial fitted
//! to how much the network's output changes, and accumulate it; while the sum stays below a
//! threshold, skip every block and add the residual (output - input of the block stack) of the
//! last computed step (`docs/rivals.md`).
//!
//! Per step n: rel = mean |p_n - p_{n-1}| / mean |p_{n-1}| on the modulated inputs p, acc +=
//! poly(rel); the first and last steps always compute; otherwise a step computes (and resets acc
//! to 0) once acc reaches the threshold. p is remembered every step, computed or not.

use std::sync::Mutex;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::method::Method;
use super::plan::{lock, Observation, Policy};
use crate::denoiser::{Capabilities, Site, SiteHook, SiteKind};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::solvers::Solver;

/// The authors' rescaling polynomial for FLUX.1, highest power first.
pub const FLUX_COEFFICIENTS: [f64; 5] = [4.98651651e+02, -2.83781631e+02, 5.58554382e+01, -3.82021401e+00, 2.64230861e-01];

/// TeaCache's settings (`teacache:...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeaCacheConfig {
    /// Skip while the accumulated rescaled change stays below this (`rel_l1_thresh`; 0 never skips).
    pub threshold: f64,
    /// The rescaling polynomial, highest power first.
    pub coefficients: Vec<f64>,
}

impl Default for TeaCacheConfig {
    /// The authors' FLUX setting for 2.0x (the paper's Flux comparison).
    fn default() -> Self {
        Self { threshold: 0.6, coefficients: FLUX_COEFFICIENTS.to_vec() }
    }
}

impl Method for TeaCacheConfig {
    fn preset(_: Family) -> Self {
        Self::default()
    }
    fn policy(&self, _seed: u64) -> Box<dyn Policy> {
        Box::new(TeaCache { cfg: self.clone(), num_steps: 0, state: Mutex::new(TeaState::default()) })
    }
    fn validate(&self, _: usize) -> Result<()> {
        if !(self.threshold >= 0.0 && self.threshold.is_finite()) {
            return Err(Error::param("teacache:threshold", format!("{} must be a finite number >= 0", self.threshold)));
        }
        if self.coefficients.is_empty() || self.coefficients.len() > 16 || self.coefficients.iter().any(|c| !c.is_finite()) {
            return Err(Error::param("teacache:coefficients", "1 to 16 finite numbers, highest power first"));
        }
        Ok(())
    }
    /// The authors' settings for 1.5x, 1.8x, 2.0x and 2.25x on FLUX.1-dev.
    fn sweep(_: Family) -> Vec<Self> {
        [0.25, 0.4, 0.6, 0.8].into_iter().map(|threshold| Self { threshold, ..Self::default() }).collect()
    }
}

/// The TeaCache policy: skips the block stack, adding the last computed step's residual,
/// while the accumulated rescaled change of the modulated input stays below the threshold.
pub struct TeaCache {
    cfg: TeaCacheConfig,
    num_steps: usize,
    /// What it keeps between steps, for the whole batch (its test reads every image).
    state: Mutex<TeaState>,
}

#[derive(Default)]
struct TeaState {
    /// The modulated input of the previous step.
    previous: Option<Tensor>,
    accumulated: f64,
    /// What the block stack added to its input at the last computed step.
    residual: Option<Tensor>,
    /// The accumulated change after the last evaluation (the trace's criterion).
    last: Option<f64>,
}

fn mean_abs(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?)
}

/// Horner's rule, highest power first (numpy's `poly1d`).
fn poly(coefficients: &[f64], x: f64) -> f64 {
    coefficients.iter().fold(0.0, |acc, c| acc * x + c)
}

impl SiteHook for TeaCache {
    fn uses(&self, kind: SiteKind) -> bool {
        kind == SiteKind::Rest(0)
    }

    /// As the reference: one test over the whole batch's modulated input.
    fn batch_wide(&self, kind: SiteKind) -> bool {
        kind == SiteKind::Rest(0)
    }

    fn replace(&self, step: usize, site: &Site) -> Result<Option<Tensor>> {
        let probe = site.probe.ok_or_else(|| Error::internal("the block stack's site came without the first block's modulated input"))?;
        let mut s = lock(&self.state)?;
        let edge = step == 0 || step + 1 == self.num_steps;
        let compute = match (&s.previous, edge) {
            (Some(prev), false) if prev.dims() == probe.dims() => {
                let rel = mean_abs(&(probe - prev)?)? / mean_abs(prev)?;
                s.accumulated += poly(&self.cfg.coefficients, rel);
                s.accumulated >= self.cfg.threshold
            }
            _ => true,
        };
        s.previous = Some(probe.clone());
        s.last = Some(s.accumulated);
        match (&s.residual, compute) {
            (Some(r), false) if r.dims() == site.base.dims() => Ok(Some((site.base + r)?)),
            _ => {
                s.accumulated = 0.0;
                Ok(None)
            }
        }
    }

    fn record(&self, _: usize, site: &Site, output: &Tensor) -> Result<()> {
        lock(&self.state)?.residual = Some((output - site.base)?);
        Ok(())
    }
}

impl Policy for TeaCache {
    fn hook(&self) -> Option<&dyn SiteHook> {
        Some(self)
    }

    fn begin(&mut self, solver: &dyn Solver, _: &[usize], caps: &Capabilities) -> Result<()> {
        if !caps.input_probe {
            return Err(Error::param(
                "accel",
                "teacache needs a transformer that shows its first block's timestep-modulated input (Flux); this denoiser does not",
            ));
        }
        self.cfg.validate(solver.num_steps())?;
        self.num_steps = solver.num_steps();
        *lock(&self.state)? = TeaState::default();
        Ok(())
    }
    fn observe(&mut self, _: usize, _: &Observation, _: &dyn Solver) -> Result<Option<f64>> {
        Ok(lock(&self.state)?.last.take())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn polynomial_is_evaluated_highest_power_first() {
        assert_eq!(poly(&[2.0, 0.0, 1.0], 3.0), 19.0);
        let x: f64 = 0.05;
        let want: f64 = FLUX_COEFFICIENTS.iter().enumerate().map(|(i, c)| c * x.powi(4 - i as i32)).sum();
        assert!((poly(&FLUX_COEFFICIENTS, x) - want).abs() < 1e-12);
    }

    /// The state machine: the first step computes; small changes accumulate (rescaled by the
    /// polynomial, here the identity) and are served from the residual until the sum reaches the
    /// threshold; that step computes and restarts the sum; the last step always computes.
    #[test]
    fn accumulates_rescaled_change_and_serves_the_residual_below_the_threshold() {
        let p = TeaCache { cfg: TeaCacheConfig { threshold: 0.25, coefficients: vec![1.0, 0.0] }, num_steps: 5, state: Mutex::new(TeaState::default()) };
        let base = t(&[1.0, 1.0]);
        let probes = [t(&[1.0, 1.0]), t(&[1.1, 1.1]), t(&[1.21, 1.21]), t(&[1.331, 1.331]), t(&[1.4641, 1.4641])];
        let site = |i: usize| Site::new(SiteKind::Rest(0), &base, Some(&probes[i]));
        assert!(p.replace(0, &site(0)).unwrap().is_none(), "the first step computes");
        p.record(0, &site(0), &t(&[3.0, 5.0])).unwrap();
        // +10%: 0.1 < 0.25, served as base + (3, 5) - base
        assert_eq!(p.replace(1, &site(1)).unwrap().unwrap().to_vec1::<f32>().unwrap(), vec![3.0, 5.0]);
        // +10% again: 0.2 < 0.25, served
        assert!(p.replace(2, &site(2)).unwrap().is_some());
        // +10%: 0.3 >= 0.25, computes and restarts the sum
        assert!(p.replace(3, &site(3)).unwrap().is_none());
        assert!((p.state.lock().unwrap().last.unwrap() - 0.3).abs() < 1e-6);
        assert_eq!(p.state.lock().unwrap().accumulated, 0.0);
        // the last step computes whatever the sum
        assert!(p.replace(4, &site(4)).unwrap().is_none());
    }
}
