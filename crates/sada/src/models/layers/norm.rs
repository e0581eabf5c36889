//! GroupNorm with diffusers' key names (`weight`, `bias`), fused with the SiLU that usually
//! follows it on frozen f32 CPU weights (`kernels::group_norm`); candle's GroupNorm otherwise
//! (trainable weights record the backward graph, other devices).

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use crate::models::kernels;

/// GroupNorm with a learned per-channel `weight` and `bias`, run by the fused CPU kernel where it
/// can.
#[derive(Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

/// Load a GroupNorm of `groups` groups over `channels` channels (`weight`, `bias`) from `vb`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<GroupNorm> {
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
    let inner = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
    Ok(GroupNorm { inner, weight, bias, groups, eps })
}

impl GroupNorm {
    fn fused(&self, x: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == DType::F32 && self.weight.dtype() == DType::F32 && !self.weight.is_variable()
    }

    /// silu(group_norm(x)) in one pass where possible.
    pub fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.fused(x) {
            kernels::group_norm::group_norm(&x.contiguous()?, &self.weight, &self.bias, self.groups, self.eps, true)
        } else {
            self.inner.forward(x)?.silu()
        }
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.fused(x) {
            kernels::group_norm::group_norm(&x.contiguous()?, &self.weight, &self.bias, self.groups, self.eps, false)
        } else {
            self.inner.forward(x)
        }
    }
}
