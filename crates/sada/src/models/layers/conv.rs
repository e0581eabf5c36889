//! 2-D convolution as one large matrix product per image (im2col + GEMM).
//!
//! candle's CPU convolution re-flattens the kernel on every call and multiplies in 512-pixel
//! tiles; here the kernel is flattened once at load time and each image's patches go through
//! a single GEMM, which is where a UNet spends about half of its CPU time; 3x3 convolutions on
//! larger maps use Winograd's algorithm instead. Other devices and
//! dtypes use candle's convolution.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use crate::models::kernels::winograd::{self, Winograd};

/// 3x3 stride-1 convolutions on large enough maps go through Winograd F(4x4, 3x3): a quarter
/// of im2col's multiplies (error bound in `kernels::winograd`'s tests).
static WINOGRAD: &Winograd = &winograd::F4;

pub struct Conv {
    inner: Conv2d,
    /// `[c_out, c_in * k * k]`, rows in (c_in, kh, kw) order, f32 CPU only.
    flat: Option<Tensor>,
    bias: Option<Tensor>,
    /// The Winograd kernel's bias: the layer's, or zeros when it has none (made once here).
    winograd_bias: Option<Tensor>,
    k: usize,
    stride: usize,
    padding: usize,
}

pub fn conv2d(vb: VarBuilder, cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> candle_core::Result<Conv> {
    let inner = candle_nn::conv2d(cin, cout, k, Conv2dConfig { padding, stride, ..Default::default() }, vb)?;
    let w = inner.weight();
    // Trainable weights (variables) keep candle's convolution, which records the backward graph;
    // the GEMM path rebuilds tensors from raw data and would cut it.
    let (flat, bias, winograd_bias) = if matches!(w.device(), Device::Cpu) && w.dtype() == DType::F32 && !w.is_variable() {
        let wb = match inner.bias() {
            Some(b) => b.clone(),
            None => Tensor::zeros(cout, DType::F32, w.device())?,
        };
        (Some(w.reshape((cout, cin * k * k))?.contiguous()?), inner.bias().map(|b| b.reshape((cout, 1))).transpose()?, Some(wb))
    } else {
        (None, None, None)
    };
    Ok(Conv { inner, flat, bias, winograd_bias, k, stride, padding })
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _s = tracing::trace_span!("conv").entered();
        let Some(flat) = &self.flat else { return self.inner.forward(x) };
        if x.dtype() != DType::F32 {
            return self.inner.forward(x);
        }
        let (b, c, h, w) = x.dims4()?;
        let (k, s, p) = (self.k, self.stride, self.padding);
        if let (true, Some(bias)) = ((k, s, p) == (3, 1, 1) && WINOGRAD.worthwhile(h, w), &self.winograd_bias) {
            return winograd::conv3x3(&x.contiguous()?, self.inner.weight(), bias, self.inner.bias().is_some(), WINOGRAD);
        }
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let x = x.contiguous()?;
        let n = oh * ow;
        // All images' patches side by side in one [C k k, B oh ow] matrix: one product reads the
        // kernel once (deep levels have large kernels and few pixels).
        let cols = if k == 1 && s == 1 && p == 0 {
            x.reshape((b, c, n))?.transpose(0, 1)?.reshape((c, b * n))?
        } else {
            let src: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let kk = c * k * k;
            let mut cols = vec![0f32; kk * b * n];
            // one input channel's k*k rows at a time, in parallel (the copy is memory-bound)
            cols.par_chunks_mut(k * k * b * n).enumerate().for_each(|(ci, rows)| {
                for i in 0..b {
                    let plane = &src[(i * c + ci) * h * w..(i * c + ci + 1) * h * w];
                    im2col(plane, (h, w), k, s, p, (oh, ow), rows, b * n, i * n);
                }
            });
            Tensor::from_vec(cols, (kk, b * n), x.device())?
        };
        let mut y = flat.matmul(&cols)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        let c_out = flat.dim(0)?;
        y.reshape((c_out, b, oh, ow))?.transpose(0, 1)?.contiguous()
    }
}

/// Write the patches of one `[H, W]` channel plane (zero padding) into the k*k rows `rows` of a
/// row-major matrix with `stride` columns, starting at column `col0`: row (kh, kw), column (oy, ox).
#[allow(clippy::too_many_arguments)]
fn im2col(plane: &[f32], (h, w): (usize, usize), k: usize, s: usize, p: usize, (oh, ow): (usize, usize), rows: &mut [f32], stride: usize, col0: usize) {
    for kh in 0..k {
        for kw in 0..k {
            let row = &mut rows[(kh * k + kw) * stride + col0..][..oh * ow];
            for oy in 0..oh {
                let iy = (oy * s + kh) as isize - p as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let src_row = &plane[iy as usize * w..(iy as usize + 1) * w];
                let dst = &mut row[oy * ow..(oy + 1) * ow];
                if s == 1 {
                    // contiguous run: output x maps to input x + kw - p
                    let lo = p.saturating_sub(kw);
                    let hi = ow.min((w + p).saturating_sub(kw));
                    if lo < hi {
                        dst[lo..hi].copy_from_slice(&src_row[lo + kw - p..hi + kw - p]);
                    }
                } else {
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = (ox * s + kw) as isize - p as isize;
                        if ix >= 0 && (ix as usize) < w {
                            *d = src_row[ix as usize];
                        }
                    }
                }
            }
        }
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
        for (cin, cout, k, s, p, h, w) in [(3, 5, 3, 1, 1, 7, 9), (8, 6, 3, 1, 1, 31, 33), (4, 6, 3, 2, 1, 8, 11), (6, 2, 1, 1, 0, 5, 4), (2, 3, 3, 2, 1, 9, 9)] {
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
