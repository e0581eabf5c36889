//! The exact denoiser of a Gaussian mixture: the posterior mean E[x0 | x_t] when
//! x0 ~ sum_k w_k N(mu_k, s_k^2 I). It is the best possible network for that data, so
//! trajectories are smooth and meaningful without training anything: the test and benchmark
//! stand-in for a real model.
//!
//! Conditioning: an optional tensor `class_weights` (batch x K) sets the mixture weights per
//! sample, so classifier-free guidance has something to amplify; without it the prior is uniform.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::denoiser::{Conditioning, Denoiser, ForwardContext};
use crate::error::{Error, Result};
use crate::schedule::NoiseSchedule;
use crate::solvers::PredictionType;

/// How the timestep maps to a noise level.
#[derive(Debug, Clone)]
pub enum GmmSchedule {
    /// A discrete VP training schedule (as diffusion UNets): x_t = alpha x0 + sigma eps.
    Discrete(NoiseSchedule),
    /// Flow matching: sigma = t / num_train_timesteps, x = (1 - sigma) x0 + sigma eps.
    Flow {
        /// The timestep at which sigma reaches 1.
        num_train_timesteps: usize,
    },
}

/// A Gaussian mixture and its exact denoiser, a [`Denoiser`] that needs no weights (see the
/// module docs).
pub struct GaussianMixture {
    /// Per-sample shape (C, H, W) or any shape; the batch dimension comes first at call time.
    pub shape: Vec<usize>,
    /// Component means mu_k, each flattened from `shape`.
    pub means: Vec<Vec<f32>>,
    /// Component standard deviations s_k (isotropic: s_k^2 I).
    pub stds: Vec<f32>,
    /// How the timestep maps to a noise level.
    pub schedule: GmmSchedule,
    /// What the denoiser returns, derived from the posterior mean of x0.
    pub prediction_type: PredictionType,
}

impl GaussianMixture {
    /// `classes * variants` components with smooth, image-like means drawn from `seed`: each
    /// class is a sum of sinusoidal patterns per channel, and its variants add a finer pattern
    /// of amplitude `detail`. Classes separate early in sampling, variants late, so the
    /// posterior keeps changing along the whole trajectory, as with real images.
    pub fn image_like(
        shape: &[usize],
        classes: usize,
        variants: usize,
        detail: f32,
        seed: u64,
        schedule: GmmSchedule,
        prediction_type: PredictionType,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (c, h, w) = match shape {
            [c, h, w] => (*c, *h, *w),
            _ => (1, 1, shape.iter().product()),
        };
        let pattern = |rng: &mut ChaCha8Rng, max_freq: f32, amplitude: f32| -> Vec<f32> {
            let mut m = vec![0f32; c * h * w];
            for ch in 0..c {
                let waves: Vec<(f32, f32, f32, f32)> = (0..3)
                    .map(|_| {
                        (
                            rng.gen_range(0.3..1.0),
                            rng.gen_range(-max_freq..max_freq),
                            rng.gen_range(-max_freq..max_freq),
                            rng.gen_range(0.0..std::f32::consts::TAU),
                        )
                    })
                    .collect();
                let offset: f32 = rng.gen_range(-0.5..0.5);
                for y in 0..h {
                    for x in 0..w {
                        let (u, v) = (y as f32 / h as f32, x as f32 / w as f32);
                        let val: f32 = waves.iter().map(|(a, fy, fx, p)| a * (std::f32::consts::TAU * (fy * u + fx * v) + p).sin()).sum();
                        m[(ch * h + y) * w + x] = amplitude * (offset + 0.5 * val);
                    }
                }
            }
            m
        };
        let mut means = Vec::with_capacity(classes * variants);
        for _ in 0..classes {
            let base = pattern(&mut rng, 3.0, 1.0);
            for _ in 0..variants {
                let fine = pattern(&mut rng, 8.0, detail);
                means.push(base.iter().zip(&fine).map(|(a, b)| a + b).collect());
            }
        }
        let stds = (0..classes * variants).map(|_| rng.gen_range(0.05..0.15)).collect();
        Self { shape: shape.to_vec(), means, stds, schedule, prediction_type }
    }

    /// K, the number of mixture components.
    pub fn num_components(&self) -> usize {
        self.means.len()
    }

    /// (alpha, sigma) of x_t = alpha x0 + sigma eps at a (possibly fractional) timestep.
    fn noise_level(&self, t: f64) -> (f64, f64) {
        match &self.schedule {
            GmmSchedule::Flow { num_train_timesteps } => {
                let s = t / *num_train_timesteps as f64;
                (1.0 - s, s)
            }
            GmmSchedule::Discrete(sched) => {
                // log-sigma interpolation: the inverse of diffusers' `_sigma_to_t`
                let ls = sched.log_sigmas();
                let t = t.clamp(0.0, (ls.len() - 1) as f64);
                let lo = (t.floor() as usize).min(ls.len() - 2);
                let w = t - lo as f64;
                let sigma = ((1.0 - w) * ls[lo] as f64 + w * ls[lo + 1] as f64).exp();
                let alpha = 1.0 / (1.0 + sigma * sigma).sqrt();
                (alpha, sigma * alpha)
            }
        }
    }

    /// The posterior mean of x0 for one sample.
    fn posterior_mean(&self, x: &[f32], alpha: f64, sigma: f64, weights: &[f64]) -> Vec<f64> {
        let d = x.len() as f64;
        let logits: Vec<f64> = self
            .means
            .iter()
            .zip(&self.stds)
            .zip(weights)
            .map(|((mu, &s), &w)| {
                let var = alpha * alpha * (s as f64).powi(2) + sigma * sigma;
                let dist: f64 = x.iter().zip(mu).map(|(&xi, &mi)| (xi as f64 - alpha * mi as f64).powi(2)).sum();
                w.max(1e-300).ln() - 0.5 * dist / var - 0.5 * d * var.ln()
            })
            .collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let r: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = r.iter().sum();
        let mut x0 = vec![0f64; x.len()];
        for ((mu, &s), rk) in self.means.iter().zip(&self.stds).zip(&r) {
            let rk = rk / total;
            let var = alpha * alpha * (s as f64).powi(2) + sigma * sigma;
            let gain = alpha * (s as f64).powi(2) / var;
            for i in 0..x.len() {
                let m = mu[i] as f64;
                x0[i] += rk * (m + gain * (x[i] as f64 - alpha * m));
            }
        }
        x0
    }
}

impl Denoiser for GaussianMixture {
    fn predict(&self, latents: &Tensor, timestep: f64, cond: &Conditioning, _ctx: &mut ForwardContext) -> Result<Tensor> {
        let dims = latents.dims().to_vec();
        if dims.len() != self.shape.len() + 1 || dims[1..] != self.shape[..] {
            return Err(Error::Shape { what: "Gaussian-mixture latents".into(), expected: format!("[batch, {:?}]", self.shape), got: format!("{dims:?}") });
        }
        let batch = dims[0];
        let k = self.num_components();
        let weights: Vec<Vec<f64>> = match cond.get("class_weights") {
            Ok(t) => {
                if t.dims() != [batch, k] {
                    return Err(Error::Shape { what: "class_weights".into(), expected: format!("[{batch}, {k}]"), got: format!("{:?}", t.dims()) });
                }
                t.to_dtype(candle_core::DType::F64)?.to_vec2()?
            }
            Err(_) => vec![vec![1.0 / k as f64; k]; batch],
        };
        let (alpha, sigma) = self.noise_level(timestep);
        let flat: Vec<f32> = latents.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
        let per = flat.len() / batch;
        let mut out = Vec::with_capacity(flat.len());
        for b in 0..batch {
            let x = &flat[b * per..(b + 1) * per];
            let x0 = self.posterior_mean(x, alpha, sigma, &weights[b]);
            for (&xi, x0i) in x.iter().zip(x0) {
                let xi = xi as f64;
                let eps = (xi - alpha * x0i) / sigma;
                out.push(match self.prediction_type {
                    PredictionType::Epsilon => eps,
                    PredictionType::VPrediction => alpha * eps - sigma * x0i,
                    PredictionType::Sample => x0i,
                    PredictionType::FlowVelocity => eps - x0i,
                } as f32);
            }
        }
        Ok(Tensor::from_vec(out, dims, &Device::Cpu)?.to_dtype(latents.dtype())?)
    }
}

/// One-hot-ish class weights for `class` (the rest share `1 - p`), a CFG conditioning tensor.
pub fn class_weights(k: usize, class: usize, p: f64, batch: usize) -> Result<Tensor> {
    if class >= k {
        return Err(Error::param("class", format!("{class} is not below the {k} mixture components")));
    }
    let rest = (1.0 - p) / (k - 1).max(1) as f64;
    let row: Vec<f32> = (0..k).map(|i| if i == class { p } else { rest } as f32).collect();
    let data: Vec<f32> = (0..batch).flat_map(|_| row.clone()).collect();
    Ok(Tensor::from_vec(data, (batch, k), &Device::Cpu)?)
}

/// Uniform weights: the unconditional branch.
pub fn uniform_weights(k: usize, batch: usize) -> Result<Tensor> {
    Ok(Tensor::full(1.0f32 / k as f32, (batch, k), &Device::Cpu)?)
}
