//! Timestep embeddings: diffusers' sinusoidal `get_timestep_embedding` and `TimestepEmbedding`.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use super::linear::{linear, Linear};

/// diffusers' `get_timestep_embedding` (sinusoidal, max_period 10000).
pub fn timestep_embedding(timesteps: &Tensor, dim: usize, flip_sin_to_cos: bool, freq_shift: f64) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let exponent: Vec<f32> = (0..half).map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - freq_shift)) as f32).map(f32::exp).collect();
    let freqs = Tensor::new(exponent, timesteps.device())?;
    let args = timesteps.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs.unsqueeze(0)?)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos { Tensor::cat(&[cos, sin], 1)? } else { Tensor::cat(&[sin, cos], 1)? };
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// `TimestepEmbedding`: linear -> SiLU -> linear.
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    /// Load `linear_1` (`cin` -> `dim`) and `linear_2` (`dim` -> `dim`) from `vb`.
    pub fn new(vb: VarBuilder, cin: usize, dim: usize) -> candle_core::Result<Self> {
        Ok(Self { linear_1: linear(cin, dim, vb.pp("linear_1"))?, linear_2: linear(dim, dim, vb.pp("linear_2"))? })
    }

    /// linear_2(silu(linear_1(x))).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}
