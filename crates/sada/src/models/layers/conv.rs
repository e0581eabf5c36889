//! 2-D convolution as one large matrix product per image (im2col + GEMM, `kernels::im2col`).
//!
//! candle's CPU convolution re-flattens the kernel on every call and multiplies in 512-pixel
//! tiles; here the kernel is flattened once at load time and each image's patches go through
//! a single GEMM, which is where a UNet spends about half of its CPU time; 3x3 convolutions on
//! larger maps use Winograd's algorithm instead. Other devices and dtypes use candle's
//! convolution. The kernel may be held in a smaller type (`layers::weight`) and widened per call.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::models::kernels::{
    self,
    winograd::{self, Winograd},
};
use crate::models::layers::weight::Weight;

/// 3x3 stride-1 convolutions on large enough maps go through Winograd F(4x4, 3x3): a quarter
/// of im2col's multiplies (error bound in `kernels::winograd`'s tests).
static WINOGRAD: &Winograd = &winograd::F4;

/// A 2-D convolution (`weight` `[c_out, c_in, k, k]`, optional `bias`) that runs on the CPU kernels
/// where it can.
pub struct Conv {
    /// The kernel `[c_out, c_in, k, k]`, held in the [`at_rest`](crate::models::layers::weight::at_rest) type.
    weight: Weight,
    bias: Option<Tensor>,
    /// The bias, or zeros when the layer has none (made once here), for the CPU kernels.
    bias_or_zeros: Option<Tensor>,
    k: usize,
    stride: usize,
    padding: usize,
}

/// Load a `k x k` convolution (`weight`, `bias`) from `vb` with the given stride and padding.
pub fn conv2d(vb: VarBuilder, cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> candle_core::Result<Conv> {
    let inner = candle_nn::conv2d(cin, cout, k, Conv2dConfig { padding, stride, ..Default::default() }, vb)?;
    let w = inner.weight();
    // Trainable weights (variables) keep candle's convolution, which records the backward graph;
    // the GEMM path rebuilds tensors from raw data and would cut it.
    let bias_or_zeros = if matches!(w.device(), Device::Cpu) && w.dtype() == DType::F32 && !w.is_variable() {
        Some(match inner.bias() {
            Some(b) => b.clone(),
            None => Tensor::zeros(cout, DType::F32, w.device())?,
        })
    } else {
        None
    };
    Ok(Conv { weight: Weight::at_rest(w.contiguous()?)?, bias: inner.bias().cloned(), bias_or_zeros, k, stride, padding })
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _s = tracing::trace_span!("conv").entered();
        let (Some(bias_or_zeros), DType::F32) = (&self.bias_or_zeros, x.dtype()) else {
            let cfg = Conv2dConfig { padding: self.padding, stride: self.stride, ..Default::default() };
            return Conv2d::new(self.weight.f32()?, self.bias.clone(), cfg).forward(x);
        };
        let (_, _, h, w) = x.dims4()?;
        let (k, s, p) = (self.k, self.stride, self.padding);
        let x = x.contiguous()?;
        // rows: [c_out, c_in * k * k] in (c_in, kh, kw) order, the contiguous kernel's layout
        self.weight.with_rows(|rows| {
            if (k, s, p) == (3, 1, 1) && WINOGRAD.worthwhile(h, w) {
                return winograd::conv3x3(&x, rows, bias_or_zeros, self.bias.is_some(), WINOGRAD);
            }
            kernels::im2col::conv2d(&x, rows, bias_or_zeros, self.bias.is_some(), kernels::im2col::Geometry { k, stride: s, padding: p })
        })
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
            let reference = Conv2d::new(conv.weight.f32().unwrap(), conv.bias.clone(), Conv2dConfig { padding: p, stride: s, ..Default::default() });
            let theirs = reference.forward(&x).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let diff = (ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let mag = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // relative to the output's scale: Winograd's rounding grows with it (see its bound)
            assert!(diff < 1e-5 * mag, "k {k} s {s} p {p} {h}x{w}: max diff {diff} against max |y| {mag}");
        }
    }

    #[test]
    fn a_kernel_held_in_q8_0_convolves_as_its_widened_values() {
        let dev = Device::Cpu;
        // two images share each widened piece
        let (cin, cout) = (32, 40);
        let mut t = HashMap::new();
        t.insert("weight".to_string(), Tensor::from_vec(crate::noise::normal_samples(cout * cin * 9, 11), (cout, cin, 3, 3), &dev).unwrap());
        t.insert("bias".to_string(), Tensor::from_vec(crate::noise::normal_samples(cout, 12), cout, &dev).unwrap());
        let _g = crate::models::layers::weight::at_rest(crate::models::layers::weight::WeightType::Q8_0);
        // Winograd (31 x 33), im2col on a small map, and a strided im2col
        for (h, w, stride) in [(31, 33, 1), (9, 10, 1), (12, 12, 2)] {
            let conv = conv2d(VarBuilder::from_tensors(t.clone(), DType::F32, &dev), cin, cout, 3, stride, 1).unwrap();
            assert!(matches!(conv.weight, Weight::Packed(_)));
            let x = Tensor::from_vec(crate::noise::normal_samples(2 * cin * h * w, 13), (2, cin, h, w), &dev).unwrap();
            let reference = Conv2d::new(conv.weight.f32().unwrap(), conv.bias.clone(), Conv2dConfig { padding: 1, stride, ..Default::default() });
            let (ours, theirs) = (conv.forward(&x).unwrap(), reference.forward(&x).unwrap());
            assert_eq!(ours.dims(), theirs.dims());
            let diff = (ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let mag = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5 * mag, "{h}x{w} stride {stride}: {diff} against {mag}");
        }
        // im2col with a kernel of more pieces than one: a full panel of output channels and a
        // partial one, 1440-value rows widened in chunks, each accumulated into the product
        let (cin, cout) = (160, crate::models::kernels::rows::PANEL_ROWS + 6);
        let scale = 1.0 / ((cin * 9) as f64).sqrt();
        let mut t = HashMap::new();
        t.insert("weight".to_string(), (Tensor::from_vec(crate::noise::normal_samples(cout * cin * 9, 14), (cout, cin, 3, 3), &dev).unwrap() * scale).unwrap());
        t.insert("bias".to_string(), Tensor::from_vec(crate::noise::normal_samples(cout, 15), cout, &dev).unwrap());
        let conv = conv2d(VarBuilder::from_tensors(t, DType::F32, &dev), cin, cout, 3, 1, 1).unwrap();
        let pieces = conv.weight.with_rows(|r| {
            let mut n = 0;
            r.for_each_piece(|_| n += 1);
            Ok(n)
        });
        assert!(pieces.unwrap() > 3, "the kernel is more than one panel and chunk");
        let x = Tensor::from_vec(crate::noise::normal_samples(2 * cin * 9 * 10, 16), (2, cin, 9, 10), &dev).unwrap();
        let reference = Conv2d::new(conv.weight.f32().unwrap(), conv.bias.clone(), Conv2dConfig { padding: 1, stride: 1, ..Default::default() });
        let (ours, theirs) = (conv.forward(&x).unwrap(), reference.forward(&x).unwrap());
        let diff = (ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let mag = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5 * mag, "{cout} channels: {diff} against {mag}");
    }
}
