//! Linear layers with diffusers' key names (`weight` `[out, in]`, `bias` `[out]`). Frozen f32 CPU
//! weights run through the fused GEMM in `kernels::dense`;
//! trainable weights and other devices use candle's `Linear`, which records the backward graph.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::models::kernels::dense;
use crate::models::layers::weight::Weight;

/// A linear layer: the fused CPU GEMM for frozen f32 CPU weights, candle's `Linear` otherwise.
#[derive(Clone)]
pub enum Linear {
    /// The weight `[out, in]` (held in the [`at_rest`](crate::models::layers::weight::at_rest) type) and the bias (zeros when
    /// there is none).
    Fused {
        /// The weight `[out, in]`.
        w: Weight,
        /// The bias `[out]`, zeros when the layer has none.
        bias: Tensor,
        /// Whether the layer has a bias (else `bias` is not added).
        has_bias: bool,
    },
    /// candle's `Linear` (trainable weights, other devices and dtypes).
    Candle(candle_nn::Linear),
}

/// A linear layer with a bias, from `vb` (`weight` `[cout, cin]`, `bias` `[cout]`).
pub fn linear(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    Linear::from_candle(candle_nn::linear(cin, cout, vb)?)
}

/// A linear layer without a bias, from `vb` (`weight` `[cout, cin]`).
pub fn linear_no_bias(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    Linear::from_candle(candle_nn::linear_no_bias(cin, cout, vb)?)
}

impl Linear {
    /// Wrap a weight `[out, in]` and optional bias `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        Self::from_candle(candle_nn::Linear::new(weight, bias))
    }

    fn from_candle(inner: candle_nn::Linear) -> candle_core::Result<Self> {
        let w = inner.weight();
        if !(matches!(w.device(), Device::Cpu) && w.dtype() == DType::F32 && !w.is_variable()) {
            return Ok(Self::Candle(inner));
        }
        let (bias, has_bias) = match inner.bias() {
            Some(b) => (b.contiguous()?, true),
            None => (Tensor::zeros(w.dim(0)?, DType::F32, w.device())?, false),
        };
        Ok(Self::Fused { w: Weight::at_rest(w.contiguous()?)?, bias, has_bias })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _s = tracing::trace_span!("linear").entered();
        match self {
            Self::Fused { w, bias, has_bias } if x.dtype() == DType::F32 && x.device().is_cpu() => {
                let x = x.contiguous()?;
                w.with_rows(|rows| dense::dense(&x, rows, bias, *has_bias))
            }
            Self::Fused { w, bias, has_bias } => {
                let y = x.broadcast_matmul(&w.f32()?.to_dtype(x.dtype())?.to_device(x.device())?.t()?)?;
                if *has_bias {
                    y.broadcast_add(&bias.to_dtype(x.dtype())?.to_device(x.device())?)
                } else {
                    Ok(y)
                }
            }
            Self::Candle(l) => l.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn fused_linear_equals_candles() {
        let dev = Device::Cpu;
        for (shape, cin, cout, bias) in [(vec![2, 7, 5], 5, 3, true), (vec![1, 300, 64], 64, 130, false), (vec![4, 33], 33, 1, true), (vec![0, 8], 8, 2, true)]
        {
            let mut t = HashMap::new();
            t.insert("weight".to_string(), Tensor::from_vec(crate::noise::normal_samples(cin * cout, 1), (cout, cin), &dev).unwrap());
            if bias {
                t.insert("bias".to_string(), Tensor::from_vec(crate::noise::normal_samples(cout, 2), cout, &dev).unwrap());
            }
            let (vb_w, vb_b) = (t["weight"].clone(), t.get("bias").cloned().unwrap_or_else(|| Tensor::zeros(cout, DType::F32, &dev).unwrap()));
            let vb = VarBuilder::from_tensors(t, DType::F32, &dev);
            let l = if bias { linear(cin, cout, vb).unwrap() } else { linear_no_bias(cin, cout, vb).unwrap() };
            assert!(matches!(l, Linear::Fused { .. }));
            let reference = candle_nn::Linear::new(vb_w.clone(), if bias { Some(vb_b.clone()) } else { None });
            let n: usize = shape.iter().product();
            let x = Tensor::from_vec(crate::noise::normal_samples(n, 3), shape.as_slice(), &dev).unwrap();
            let (ours, theirs) = (l.forward(&x).unwrap(), reference.forward(&x).unwrap());
            assert_eq!(ours.dims(), theirs.dims());
            if n > 0 {
                let err = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let mag = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(err <= 1e-5 * mag.max(1.0), "{shape:?}: {err}");
            }
        }
        // a transposed (non-contiguous) input is made contiguous, not misread
        let w = Tensor::from_vec(crate::noise::normal_samples(12, 4), (3, 4), &dev).unwrap();
        let l = Linear::new(w.clone(), None).unwrap();
        let x = Tensor::from_vec(crate::noise::normal_samples(20, 5), (4, 5), &dev).unwrap().t().unwrap();
        let d = (l.forward(&x).unwrap() - candle_nn::Linear::new(w, None).forward(&x).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5);
    }

    #[test]
    fn weights_held_packed_give_the_product_of_their_widened_values() {
        let dev = Device::Cpu;
        // a full panel of rows and a partial one, 2048 inputs: each panel's rows are widened in
        // chunks along the inputs, each accumulated into the product (fan-in scaled, so the
        // outputs stay of order one)
        let (cout, cin) = (crate::models::kernels::rows::PANEL_ROWS + 76, 2048);
        let scale = 1.0 / (cin as f64).sqrt();
        let w = (Tensor::from_vec(crate::noise::normal_samples(cout * cin, 8), (cout, cin), &dev).unwrap() * scale).unwrap();
        let b = Tensor::from_vec(crate::noise::normal_samples(cout, 9), cout, &dev).unwrap();
        let x = Tensor::from_vec(crate::noise::normal_samples(5 * cin, 10), (5, cin), &dev).unwrap();
        let exact = Linear::new(w.clone(), Some(b.clone())).unwrap().forward(&x).unwrap();
        for ty in [crate::models::layers::weight::WeightType::F16, crate::models::layers::weight::WeightType::Q8_0] {
            let _g = crate::models::layers::weight::at_rest(ty);
            let l = Linear::new(w.clone(), Some(b.clone())).unwrap();
            let Linear::Fused { w: packed, .. } = &l else { panic!("not fused") };
            assert!(matches!(packed, Weight::Packed(_)), "{ty:?}");
            let pieces = packed.with_rows(|r| {
                let mut n = 0;
                r.for_each_piece(|_| n += 1);
                Ok(n)
            });
            // chunks of about PIECE_BYTES of f32 in whole 32-value blocks: 16 for the full
            // panel's 1024 rows, 2 for the partial panel's 76 (512 KB pieces)
            let chunks = |rows: usize| cin.div_ceil((crate::models::kernels::rows::PIECE_BYTES / 4 / rows / 32 * 32).clamp(32, cin));
            assert_eq!(pieces.unwrap(), chunks(crate::models::kernels::rows::PANEL_ROWS) + chunks(76), "{ty:?}");
            assert!(chunks(crate::models::kernels::rows::PANEL_ROWS) > 1, "the full panel is accumulated over several chunks");
            // the same product as an f32 layer of the widened weight
            let widened = packed.f32().unwrap();
            let want = candle_nn::Linear::new(widened, Some(b.clone())).forward(&x).unwrap();
            let got = l.forward(&x).unwrap();
            let d = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "{ty:?}: {d}");
            // and near the unpacked layer's
            let e = (&got - &exact).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let mag = exact.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(e > 0.0 && e < 0.02 * mag, "{ty:?}: {e} against {mag}");
        }
    }

    #[test]
    fn geglu_equals_value_times_gelu_erf() {
        let dev = Device::Cpu;
        let v = Tensor::from_vec(crate::noise::normal_samples(3 * 40_000, 6), (3, 40_000), &dev).unwrap();
        let g = (Tensor::from_vec(crate::noise::normal_samples(3 * 40_000, 7), (3, 40_000), &dev).unwrap() * 3.0).unwrap();
        let ours = dense::geglu(&v, &g).unwrap();
        let want = (&v * g.gelu_erf().unwrap()).unwrap();
        let err = (ours - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 2e-6, "{err}");
        assert!(dense::geglu(&v, &v.narrow(1, 0, 5).unwrap().contiguous().unwrap()).is_err());
    }
}
