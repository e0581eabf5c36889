//! `timestep_spacing`: how N inference timesteps are picked from the training grid
//! (Table 2 of Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed").
//!
//! DPM-Solver and Euler spell the same three options slightly differently in diffusers
//! (integer vs float grids, N+1 vs N points); both variants live here side by side.

use super::round_half_even;

crate::config::config_enum! {
    /// diffusers' `timestep_spacing`: how inference timesteps are picked from the training grid.
    TimestepSpacing, "timestep_spacing" {
        /// Evenly spaced over the training grid, from its last timestep down to 0.
        Linspace = "linspace",
        /// Multiples of `num_train_timesteps / n` counted up from 0 (plus `steps_offset`).
        Leading = "leading",
        /// Steps of `num_train_timesteps / n` counted down from the last training timestep.
        Trailing = "trailing",
    }
}

/// Integer timesteps as `DPMSolverMultistepScheduler.set_timesteps` builds them.
/// `last_timestep` is `num_train_timesteps` minus the `lambda_min_clipped` cut.
pub fn dpm_timesteps(spacing: TimestepSpacing, n: usize, num_train_timesteps: usize, last_timestep: usize, steps_offset: usize) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = super::np_linspace(0.0, last_timestep as f64 - 1.0, n + 1).into_iter().map(round_half_even).collect();
            v.reverse();
            v.truncate(n);
            v
        }
        TimestepSpacing::Leading => {
            let ratio = last_timestep / (n + 1);
            let mut v: Vec<f64> = (0..=n).map(|i| (i * ratio + steps_offset) as f64).collect();
            v.reverse();
            v.truncate(n);
            v
        }
        TimestepSpacing::Trailing => {
            let ratio = num_train_timesteps as f64 / n as f64;
            np_arange_down(last_timestep as f64, ratio).into_iter().map(|t| round_half_even(t) - 1.0).collect()
        }
    }
}

/// Float timesteps as `EulerDiscreteScheduler.set_timesteps` builds them (float32 values).
pub fn euler_timesteps(spacing: TimestepSpacing, n: usize, num_train_timesteps: usize, steps_offset: usize) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            // np.linspace(..., dtype=float32): computed in float64, then rounded to float32
            let mut v: Vec<f64> = super::np_linspace(0.0, num_train_timesteps as f64 - 1.0, n).into_iter().map(|t| t as f32 as f64).collect();
            v.reverse();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = num_train_timesteps / n;
            (0..n).rev().map(|i| (i * ratio) as f64 + steps_offset as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = num_train_timesteps as f64 / n as f64;
            np_arange_down(num_train_timesteps as f64, ratio).into_iter().map(|t| (round_half_even(t) as f32 - 1.0) as f64).collect()
        }
    }
}

/// Integer timesteps as `DDIMScheduler.set_timesteps` builds them: Euler's `leading` and
/// `trailing` grids (whole numbers there too), and `linspace` rounded to integers.
pub fn ddim_timesteps(spacing: TimestepSpacing, n: usize, num_train_timesteps: usize, steps_offset: usize) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = super::np_linspace(0.0, num_train_timesteps as f64 - 1.0, n).into_iter().map(round_half_even).collect();
            v.reverse();
            v
        }
        TimestepSpacing::Leading | TimestepSpacing::Trailing => euler_timesteps(spacing, n, num_train_timesteps, steps_offset),
    }
}

/// `np.arange(start, 0, -step)`: `ceil(start / step)` values `start - i * step`.
fn np_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = (start / step).ceil() as usize;
    (0..len).map(|i| start + i as f64 * -step).collect()
}
