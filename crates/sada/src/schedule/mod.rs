//! Noise schedules and timestep grids, computed the way diffusers computes them.
//!
//! diffusers mixes float32 (torch tensors) and float64 (numpy) arithmetic; each function here
//! follows the same precision at the same place, so that timesteps match exactly and sigmas to
//! the last bit or two.

pub mod betas;
pub mod flow;
pub mod timesteps;

pub use betas::{BetaSchedule, NoiseSchedule, TrainingSchedule};
pub use timesteps::TimestepSpacing;

/// numpy's `np.interp(x, arange(len(fp)), fp)` for `x` inside the table (the only use here).
pub fn interp_table(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let lo = x.floor() as usize;
    let w = x - lo as f64;
    let (a, b) = (fp[lo] as f64, fp[lo + 1] as f64);
    // numpy evaluates slope * (x - xp[j]) + fp[j]
    (b - a) * w + a
}

/// diffusers' `_sigma_to_t`: the (fractional) training timestep whose sigma is `sigma`,
/// interpolating linearly in log-sigma between neighbouring table entries.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // low_idx = (number of table entries with log_sigma >= entry) - 1, clipped to len-2
    let count = log_sigmas.iter().filter(|&&l| log_sigma - l as f64 >= 0.0).count();
    let low_idx = count.saturating_sub(1).min(log_sigmas.len() - 2);
    let low = log_sigmas[low_idx] as f64;
    let high = log_sigmas[low_idx + 1] as f64;
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
}

/// Karras et al. (2022) sigmas, rho = 7, from `sigma_max` down to `sigma_min` (diffusers' `_convert_to_karras`).
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n).into_iter().map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho)).collect()
}

/// `np.linspace(start, stop, n)` in float64 (numpy: start + i * step, last point exactly `stop`).
pub fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
            v[n - 1] = stop;
            v
        }
    }
}

/// numpy's `round` (half to even), which diffusers applies to timestep grids.
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}
