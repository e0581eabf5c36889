//! 2-D convolution as one large matrix product per image (im2col + GEMM, `kernels::im2col`).
//!
//! candle's CPU convolution re-flattens the kernel on every call and multiplies in 512-pixel
//! tiles; here the kernel is flattened once at load time and each image's patches go through
//! a single GEMM, which is where a UNet spends about half of its CPU time; 3x3 convolutions on
//! larger maps use Winograd's algorithm instead. Other devices and dtypes use candle's
//! convolution.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::models::kernels::{
    self,
    winograd::{self, Winograd},
};

/// 3x3 stride-1 convolutions on large enough maps go through Winograd F(4x4, 3x3): a quarter
/// of im2col's multiplies (error bound in `kernels::winograd`'s tests).
static WINOGRAD: &Winograd = &winograd::F4;

/// A 2-D convolution (`weight` `[c_out, c_in, k, k]`, optional `bias`) that runs on the CPU kernels
/// where it can.
pub struct Conv {
    inner: Conv2d,
    /// What the CPU kernels read (f32 CPU weights only; candle's convolution otherwise).
    cpu: Option<CpuKernel>,
    k: usize,
    stride: usize,
    padding: usize,
}

/// The kernel flattened to `[c_out, c_in * k * k]` (rows in (c_in, kh, kw) order) and the bias:
/// the layer's, or zeros when it has none (made once here).
struct CpuKernel {
    flat: Tensor,
    bias: Tensor,
}

/// Load a `k x k` convolution (`weight`, `bias`) from `vb` with the given stride and padding;
/// frozen f32 CPU weights are flattened once here for the CPU kernels.
pub fn conv2d(vb: VarBuilder, cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> candle_core::Result<Conv> {
    let inner = candle_nn::conv2d(cin, cout, k, Conv2dConfig { padding, stride, ..Default::default() }, vb)?;
    let w = inner.weight();
    // Trainable weights (variables) keep candle's convolution, which records the backward graph;
    // the GEMM path rebuilds tensors from raw data and would cut it.
    let cpu = if matches!(w.device(), Device::Cpu) && w.dtype() == DType::F32 && !w.is_variable() {
        let bias = match inner.bias() {
            Some(b) => b.clone(),
            None => Tensor::zeros(cout, DType::F32, w.device())?,
        };
        Some(CpuKernel { flat: w.reshape((cout, cin * k * k))?.contiguous()?, bias })
    } else {
        None
    };
    Ok(Conv { inner, cpu, k, stride, padding })
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _s = tracing::trace_span!("conv").entered();
        let (Some(CpuKernel { flat, bias: bias_or_zeros }), DType::F32) = (&self.cpu, x.dtype()) else { return self.inner.forward(x) };
        let (_, _, h, w) = x.dims4()?;
        let (k, s, p) = (self.k, self.stride, self.padding);
        if (k, s, p) == (3, 1, 1) && WINOGRAD.worthwhile(h, w) {
            return winograd::conv3x3(&x.contiguous()?, self.inner.weight(), bias_or_zeros, self.inner.bias().is_some(), WINOGRAD);
        }
        kernels::im2col::conv2d(&x.contiguous()?, flat, bias_or_zeros, self.inner.bias().is_some(), kernels::im2col::Geometry { k, stride: s, padding: p })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn gemm_convolution_equals_candles() {
        let dev = Device::Cpu;
        // the second case is large enough for the Winograd path
        for (cin, cout, k, s, p, h, w) in [(3, 5, 3, 1, 1, 7, 9), (8, 6, 3, 1, 1, 31, 33), (4, 6, 3, 2, 1, 8, 11), (6, 2, 1, 1, 0, 5, 4), (2, 3, 3, 2, 1, 9, 9)]
        {
            let mut t = HashMap::new();
            let n = cout * cin * k * k;
            t.insert("weight".to_string(), Tensor::from_vec(crate::noise::normal_samples(n, 1), (cout, cin, k, k), &dev).unwrap());
            t.insert("bias".to_string(), Tensor::from_vec(crate::noise::normal_samples(cout, 2), cout, &dev).unwrap());
            let conv = conv2d(VarBuilder::from_tensors(t, DType::F32, &dev), cin, cout, k, s, p).unwrap();
            let x = Tensor::from_vec(crate::noise::normal_samples(2 * cin * h * w, 3), (2, cin, h, w), &dev).unwrap();
            let ours = conv.forward(&x).unwrap();
            let theirs = conv.inner.forward(&x).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let diff = (ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let mag = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // relative to the output's scale: Winograd's rounding grows with it (see its bound)
            assert!(diff < 1e-5 * mag, "k {k} s {s} p {p} {h}x{w}: max diff {diff} against max |y| {mag}");
        }
    }
}
