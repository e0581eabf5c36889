//! First-Block-Cache (ParaAttention; also diffusers' `FirstBlockCacheConfig`): run the first
//! block, and when its residual has barely changed since the last full step, skip the rest of
//! the network and add the residual the rest produced then (`docs/rivals.md`).
//!
//! The change is rel = mean |r_ref - r| / mean |r_ref|, where r is the first block's residual now
//! and r_ref the one at the last full step (not accumulated: the reference stays fixed through
//! a run of cached steps). The first step is always full; nothing limits the cached run.

use std::sync::Mutex;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::method::Method;
use super::plan::{lock, Observation, Policy};
use crate::denoiser::{Capabilities, Site, SiteHook, SiteKind};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::solvers::Solver;

/// First-Block-Cache's settings (`fbcache:...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirstBlockCacheConfig {
    /// Skip the rest of the network while the relative change stays below this (0 disables).
    pub threshold: f64,
}

impl Default for FirstBlockCacheConfig {
    /// diffusers' `FirstBlockCacheConfig` default.
    fn default() -> Self {
        Self { threshold: 0.05 }
    }
}

impl Method for FirstBlockCacheConfig {
    fn preset(family: Family) -> Self {
        match family {
            // ParaAttention's recommended value for Flux
            Family::Flux => Self { threshold: 0.08 },
            _ => Self::default(),
        }
    }
    fn policy(&self, _seed: u64) -> Box<dyn Policy> {
        Box::new(FirstBlockCache { cfg: self.clone(), state: Mutex::new(FbState::default()) })
    }
    fn validate(&self, _: usize) -> Result<()> {
        if !(self.threshold >= 0.0 && self.threshold.is_finite()) {
            return Err(Error::param("fbcache:threshold", format!("{} must be a finite number >= 0", self.threshold)));
        }
        Ok(())
    }
    fn sweep(_: Family) -> Vec<Self> {
        [0.02, 0.05, 0.08, 0.12, 0.2].into_iter().map(|threshold| Self { threshold }).collect()
    }
}

/// The First-Block-Cache policy: after the first block, serves the rest of the network's
/// residual from the last full step while the first block's residual barely changes.
pub struct FirstBlockCache {
    cfg: FirstBlockCacheConfig,
    /// What it keeps between steps, for the whole batch (its test reads every image).
    state: Mutex<FbState>,
}

#[derive(Default)]
struct FbState {
    /// The first block's residual at the last full step.
    reference: Option<Tensor>,
    /// What the rest of the network added to the first block's output at the last full step.
    residual: Option<Tensor>,
    /// The relative change measured at the last evaluation (the trace's criterion).
    last_change: Option<f64>,
}

fn mean_abs(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?)
}

impl SiteHook for FirstBlockCache {
    fn uses(&self, kind: SiteKind) -> bool {
        kind == SiteKind::Rest(1)
    }

    /// As the reference: one test over the whole batch's residual.
    fn batch_wide(&self, kind: SiteKind) -> bool {
        kind == SiteKind::Rest(1)
    }

    fn replace(&self, _: usize, site: &Site) -> Result<Option<Tensor>> {
        let probe = site.probe.ok_or_else(|| Error::internal("the first-block site came without the first block's residual"))?;
        let mut s = lock(&self.state)?;
        let (Some(reference), Some(residual)) = (&s.reference, &s.residual) else { return Ok(None) };
        if reference.dims() != probe.dims() || self.cfg.threshold <= 0.0 {
            return Ok(None);
        }
        let change = mean_abs(&(reference - probe)?)? / mean_abs(reference)?;
        let served = (change < self.cfg.threshold).then(|| site.base + residual).transpose()?;
        s.last_change = Some(change);
        Ok(served)
    }

    fn record(&self, _: usize, site: &Site, output: &Tensor) -> Result<()> {
        let mut s = lock(&self.state)?;
        s.reference = site.probe.cloned();
        s.residual = Some((output - site.base)?);
        Ok(())
    }
}

impl Policy for FirstBlockCache {
    fn hook(&self) -> Option<&dyn SiteHook> {
        Some(self)
    }

    fn begin(&mut self, solver: &dyn Solver, _: &[usize], caps: &Capabilities) -> Result<()> {
        if !caps.residual_sites {
            return Err(Error::param("accel", "fbcache needs a denoiser that exposes its first block (the UNet); this one does not"));
        }
        self.cfg.validate(solver.num_steps())?;
        *lock(&self.state)? = FbState::default();
        Ok(())
    }
    fn observe(&mut self, _: usize, _: &Observation, _: &dyn Solver) -> Result<Option<f64>> {
        Ok(lock(&self.state)?.last_change.take())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    /// Against the reference state machine: the first call computes; a small change of the
    /// first block's residual serves base + stored residual; the reference stays the one of the
    /// last full step, so small changes add up until one computes again.
    #[test]
    fn caches_while_the_first_block_residual_stays_close_to_the_last_full_steps() {
        let p = FirstBlockCache { cfg: FirstBlockCacheConfig { threshold: 0.1 }, state: Mutex::new(FbState::default()) };
        let (base, out) = (t(&[1.0, 2.0]), t(&[4.0, 4.0]));
        let r0 = t(&[1.0, -1.0]);
        let site = |base: &'_ Tensor, probe: &'_ Tensor| -> (Tensor, Tensor) { (base.clone(), probe.clone()) };
        let (b, r) = site(&base, &r0);
        let s = Site::new(SiteKind::Rest(1), &b, Some(&r));
        assert!(p.replace(0, &s).unwrap().is_none(), "no reference yet: compute");
        p.record(0, &s, &out).unwrap();
        // 5% change: served as base + (out - base) of the full step
        let (b2, r2) = (t(&[0.0, 1.0]), t(&[1.05, -1.05]));
        let s2 = Site::new(SiteKind::Rest(1), &b2, Some(&r2));
        let got = p.replace(1, &s2).unwrap().expect("cached");
        assert_eq!(got.to_vec1::<f32>().unwrap(), vec![3.0, 3.0]);
        // 15% from the full step's residual (5% from the last call's): computes
        let r3 = t(&[1.15, -1.15]);
        let s3 = Site::new(SiteKind::Rest(1), &b2, Some(&r3));
        assert!(p.replace(2, &s3).unwrap().is_none());
        assert!((p.state.lock().unwrap().last_change.unwrap() - 0.15).abs() < 1e-6);
    }
}
