//! The transformer blocks' feed-forward network.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use super::linear::{linear, Linear};

/// GEGLU feed-forward (`FeedForward` with activation `geglu`). The input projection's two
/// halves (value and gate) are held as separate matrices, so each product comes out contiguous
/// instead of as two strided views of one.
pub struct FeedForward {
    value: Linear,
    gate: Linear,
    out: Linear,
}

impl FeedForward {
    /// Load from `vb`: `net.0.proj` (split into value and gate, each 4 x `dim` wide) and `net.2`.
    pub fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        let inner = dim * 4;
        let proj = candle_nn::linear(dim, inner * 2, vb.pp("net.0.proj"))?;
        let (w, b) = (proj.weight(), proj.bias().expect("linear() has a bias"));
        let half = |i: usize| -> candle_core::Result<Linear> {
            Linear::new(w.narrow(0, i * inner, inner)?.contiguous()?, Some(b.narrow(0, i * inner, inner)?.contiguous()?))
        };
        Ok(Self { value: half(0)?, gate: half(1)?, out: linear(inner, dim, vb.pp("net.2"))? })
    }

    /// value(x) * gelu(gate(x)), projected back to `dim`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (value, gate) = (self.value.forward(x)?, self.gate.forward(x)?);
        let h = if value.device().is_cpu() && value.dtype() == DType::F32 {
            crate::models::kernels::dense::geglu(&value.contiguous()?, &gate.contiguous()?)?
        } else {
            (value * gate.gelu_erf()?)?
        };
        self.out.forward(&h)
    }
}
