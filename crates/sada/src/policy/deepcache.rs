//! DeepCache (Ma et al., CVPR 2024): the deep branch of a U-Net changes slowly from step to
//! step, so it is computed on full steps only; in between, the shallow layers run on fresh input
//! and take the deep branch's output from the last full step (`docs/rivals.md`).
//!
//! `branch` numbers the skip connection below which the network is cached, as the authors'
//! `DeepCacheSDHelper` numbers its `cache_branch_id` (0: everything below the input layer's skip;
//! b >= 1: the authors' pipeline arguments `cache_layer_id = (b-1)//3, cache_block_id = (b-1)%3` on
//! SD's UNet). Full steps come every `interval` steps, or, with `uniform = false`, from the
//! reference's schedule that packs them around step `center`.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::method::Method;
use super::plan::{PerImage, Policy};
use crate::denoiser::{Capabilities, Site, SiteHook, SiteKind};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::solvers::Solver;

/// DeepCache's settings (`deepcache:...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeepCacheConfig {
    /// A full step every `interval` steps (the reference's `cache_interval`).
    pub interval: usize,
    /// The skip connection below which the network is served from the cache.
    pub branch: usize,
    /// Full steps evenly spaced; false: the reference's non-uniform schedule.
    pub uniform: bool,
    /// Exponent of the non-uniform schedule (the reference's `pow`).
    pub pow: f64,
    /// Step the non-uniform schedule packs its full steps around (the reference's `center`).
    pub center: usize,
}

impl Default for DeepCacheConfig {
    /// The authors' `DeepCacheSDHelper` defaults (`cache_interval=3, cache_branch_id=0`).
    fn default() -> Self {
        Self { interval: 3, branch: 0, uniform: true, pow: 1.4, center: 15 }
    }
}

impl DeepCacheConfig {
    /// Whether each of `steps` steps computes the whole network.
    pub fn full_steps(&self, steps: usize) -> Vec<bool> {
        let mut full = vec![false; steps];
        if self.interval <= 1 {
            return vec![true; steps];
        }
        let indices: Vec<usize> = if self.uniform {
            (0..steps).step_by(self.interval).collect()
        } else {
            sample_from_quad_center(steps, steps.div_ceil(self.interval), self.center, self.pow)
        };
        for i in indices.into_iter().filter(|&i| i < steps) {
            full[i] = true;
        }
        full
    }
}

impl Method for DeepCacheConfig {
    fn preset(_: Family) -> Self {
        Self::default()
    }
    fn policy(&self, _seed: u64) -> Box<dyn Policy> {
        Box::new(DeepCache { cfg: self.clone(), full: Vec::new(), rows: PerImage::new() })
    }
    fn validate(&self, _: usize) -> Result<()> {
        if self.interval == 0 {
            return Err(Error::param("deepcache:interval", "must be at least 1"));
        }
        if !(self.uniform || self.pow > 1.0 && self.pow <= MAX_POW) {
            return Err(Error::param("deepcache:pow", format!("{} must be above 1 and at most {MAX_POW}", self.pow)));
        }
        Ok(())
    }
    fn sweep(_: Family) -> Vec<Self> {
        [(2, 1), (3, 1), (3, 0), (5, 0)].into_iter().map(|(interval, branch)| Self { interval, branch, ..Self::default() }).collect()
    }
}

/// Exponents above this are refused: the schedule search lowers `pow` by 0.02 per try, and the
/// reference uses 1.4.
pub const MAX_POW: f64 = 100.0;

/// The reference's `sample_from_quad_center`, step for step. Its first point is
/// `(-center) ** (1 / pow)`, a complex number in Python; numpy carries the complex values
/// through `linspace` and `** pow` and keeps the real part when casting to int32. This port
/// does the same arithmetic, so the schedule is the one the authors' code produces.
pub fn sample_from_quad_center(total: usize, n_samples: usize, center: usize, mut pow: f64) -> Vec<usize> {
    let mut indices = vec![0];
    // at most the tries from MAX_POW down to 1 (past ~1e14, subtracting 0.02 changes nothing)
    let mut tries = 0;
    while pow > 1.0 && tries <= (MAX_POW / 0.02) as usize {
        tries += 1;
        // principal complex powers, as Python and numpy take them
        let start = cpow((-(center as f64), 0.0), 1.0 / pow);
        let stop = cpow((total as f64 - center as f64, 0.0), 1.0 / pow);
        let n = n_samples + 1;
        let mut ints: Vec<i64> = (0..n)
            .map(|k| {
                // numpy's linspace: start + k * step, the last point exactly `stop`
                let x = if k + 1 == n && n > 1 {
                    stop
                } else {
                    let step = ((stop.0 - start.0) / (n - 1).max(1) as f64, (stop.1 - start.1) / (n - 1).max(1) as f64);
                    (start.0 + k as f64 * step.0, start.1 + k as f64 * step.1)
                };
                cpow(x, pow).0.trunc() as i64
            })
            .collect();
        ints.sort_unstable();
        ints.dedup();
        let inner = if ints.len() >= 2 { &ints[1..ints.len() - 1] } else { &[][..] };
        indices = std::iter::once(0).chain(inner.iter().map(|&x| (x + center as i64).max(0) as usize)).collect();
        if indices.len() == n_samples {
            break;
        }
        pow -= 0.02;
    }
    indices
}

/// z^p on the principal branch, for z = (re, im).
fn cpow((re, im): (f64, f64), p: f64) -> (f64, f64) {
    if re == 0.0 && im == 0.0 {
        return (0.0, 0.0);
    }
    let (r, theta) = (re.hypot(im), im.atan2(re));
    let (m, a) = (r.powf(p), theta * p);
    (m * a.cos(), m * a.sin())
}

/// The DeepCache policy: on the steps between full ones it serves the U-Net's deep branch
/// below skip `branch` from each image's last full step.
pub struct DeepCache {
    cfg: DeepCacheConfig,
    full: Vec<bool>,
    /// Each image's deep-branch output at the last full step (a row of the batch).
    rows: PerImage<Tensor>,
}

impl SiteHook for DeepCache {
    fn uses(&self, kind: SiteKind) -> bool {
        kind == SiteKind::Deep(self.cfg.branch)
    }
    /// The full steps are the same for every image; a cached step serves each image its row.
    fn replace(&self, step: usize, site: &Site) -> Result<Option<Tensor>> {
        if self.full.get(step).copied().unwrap_or(true) {
            return Ok(None);
        }
        Ok(self.rows.all(site.images.clone())?.map(|r| Tensor::cat(&r, 0)).transpose()?)
    }
    fn record(&self, _: usize, site: &Site, output: &Tensor) -> Result<()> {
        self.rows.update(site.images.clone(), |row, _| Ok(output.narrow(0, row, 1)?))
    }
}

impl Policy for DeepCache {
    fn hook(&self) -> Option<&dyn SiteHook> {
        Some(self)
    }

    fn begin(&mut self, solver: &dyn Solver, _: &[usize], caps: &Capabilities) -> Result<()> {
        if caps.deep_branches == 0 {
            return Err(Error::param("accel", "deepcache needs a U-Net (a denoiser with skip connections); this one has none"));
        }
        if self.cfg.branch >= caps.deep_branches {
            return Err(Error::param(
                "deepcache:branch",
                format!("{} is not a skip connection of this U-Net (it has {}: 0..{})", self.cfg.branch, caps.deep_branches, caps.deep_branches - 1),
            ));
        }
        self.cfg.validate(solver.num_steps())?;
        self.full = self.cfg.full_steps(solver.num_steps());
        self.rows = PerImage::new();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full steps the authors' `sample_from_quad_center` gives for 50 steps, center 15,
    /// pow 1.4 (numbers from running the reference code; `docs/rivals.md`).
    #[test]
    fn non_uniform_schedule_matches_the_reference() {
        let want: [(usize, &[usize]); 4] = [
            (2, &[0, 2, 4, 6, 7, 9, 11, 12, 14, 15, 17, 18, 20, 22, 24, 26, 28, 30, 32, 35, 37, 39, 42, 44, 47]),
            (3, &[0, 3, 6, 8, 11, 13, 15, 17, 20, 22, 25, 28, 32, 35, 38, 42, 46]),
            (4, &[0, 4, 7, 10, 14, 16, 19, 23, 27, 31, 35, 40, 45]),
            (5, &[0, 5, 9, 13, 17, 21, 26, 31, 37, 43]),
        ];
        for (interval, steps) in want {
            let cfg = DeepCacheConfig { interval, uniform: false, ..DeepCacheConfig::default() };
            let full = cfg.full_steps(50);
            let got: Vec<usize> = (0..50).filter(|&i| full[i]).collect();
            assert_eq!(got, steps, "interval {interval}");
        }
    }

    #[test]
    fn uniform_schedule_computes_every_interval_th_step() {
        let full = DeepCacheConfig { interval: 3, ..DeepCacheConfig::default() }.full_steps(10);
        assert_eq!(full, [true, false, false, true, false, false, true, false, false, true]);
        assert!(DeepCacheConfig { interval: 1, ..DeepCacheConfig::default() }.full_steps(4).iter().all(|&f| f));
    }
}
