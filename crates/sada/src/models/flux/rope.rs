//! Flux's rotary position embedding (diffusers' `FluxPosEmbed`): every token has a 3-axis
//! position id (text tokens all zeros; image tokens (0, row, column) of the packed grid), each
//! axis rotates its own slice of the head dimension, and channel pairs (2j, 2j+1) rotate together.

use candle_core::{DType, Device, Tensor};

/// cos and sin tables `[tokens, head_dim]` (f32) for one sequence.
#[derive(Debug, Clone)]
pub struct Rope {
    /// cos of each token's angles, `[tokens, head_dim]`.
    pub cos: Tensor,
    /// sin of each token's angles, `[tokens, head_dim]`.
    pub sin: Tensor,
}

impl Rope {
    /// The tables for position ids `ids` (one `[usize; 3]` per token), with `axes_dims` summing
    /// to the head dimension and base `theta` (10000 in Flux). Angles are computed in float64 and
    /// rounded once, as diffusers does.
    pub fn new(ids: &[[usize; 3]], axes_dims: &[usize], theta: f64, device: &Device) -> candle_core::Result<Self> {
        let d: usize = axes_dims.iter().sum();
        let mut cos = Vec::with_capacity(ids.len() * d);
        let mut sin = Vec::with_capacity(ids.len() * d);
        let freqs: Vec<Vec<f64>> = axes_dims.iter().map(|&a| (0..a / 2).map(|j| 1.0 / theta.powf((2 * j) as f64 / a as f64)).collect()).collect();
        for id in ids {
            for (axis, f) in freqs.iter().enumerate() {
                for &w in f {
                    let angle = id[axis] as f64 * w;
                    let (s, c) = angle.sin_cos();
                    cos.extend([c as f32, c as f32]);
                    sin.extend([s as f32, s as f32]);
                }
            }
        }
        Ok(Self { cos: Tensor::from_vec(cos, (ids.len(), d), device)?, sin: Tensor::from_vec(sin, (ids.len(), d), device)? })
    }

    /// Flux's ids for `text_len` text tokens followed by an `h x w` packed image grid.
    pub fn flux(text_len: usize, h: usize, w: usize, axes_dims: &[usize], device: &Device) -> candle_core::Result<Self> {
        let ids: Vec<[usize; 3]> = std::iter::repeat_n([0, 0, 0], text_len).chain((0..h).flat_map(|r| (0..w).map(move |c| [0, r, c]))).collect();
        Self::new(&ids, axes_dims, 10000.0, device)
    }

    /// Number of tokens the tables cover.
    pub fn len(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// Whether the tables cover no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows for the text tokens and the image tokens `indices` (None: all), in that order:
    /// the positions of a pruned step's sequence.
    pub fn select(&self, text_len: usize, indices: Option<&Tensor>) -> candle_core::Result<Self> {
        let Some(idx) = indices else {
            return Ok(self.clone());
        };
        let n = self.len();
        let pick = |t: &Tensor| -> candle_core::Result<Tensor> {
            Tensor::cat(&[&t.narrow(0, 0, text_len)?, &t.narrow(0, text_len, n - text_len)?.index_select(idx, 0)?], 0)
        };
        Ok(Self { cos: pick(&self.cos)?, sin: pick(&self.sin)? })
    }

    /// Rotate `x` `[B, N, heads, head_dim]` (N = the table's tokens): `x cos + rot(x) sin` with
    /// rot(x)_{2j} = -x_{2j+1}, rot(x)_{2j+1} = x_{2j}; in float32, returned in x's dtype.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _s = tracing::trace_span!("rope").entered();
        let (b, n, h, d) = x.dims4()?;
        let xf = x.to_dtype(DType::F32)?;
        let pairs = xf.reshape((b, n, h, d / 2, 2))?;
        let (re, im) = (pairs.narrow(4, 0, 1)?, pairs.narrow(4, 1, 1)?);
        let rot = Tensor::cat(&[&im.neg()?, &re], 4)?.reshape((b, n, h, d))?;
        let cos = self.cos.reshape((1, n, 1, d))?;
        let sin = self.sin.reshape((1, n, 1, d))?;
        (xf.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?.to_dtype(x.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_by_zero_is_the_identity_and_pairs_rotate_by_their_angle() {
        let dev = Device::Cpu;
        let rope = Rope::new(&[[0, 0, 0], [0, 3, 1]], &[2, 2, 2], 10000.0, &dev).unwrap();
        let x = Tensor::from_vec((0..2 * 6).map(|i| i as f32 + 1.0).collect::<Vec<_>>(), (1, 2, 1, 6), &dev).unwrap();
        let y = rope.apply(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&y[..6], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        // token 1: axis 0 angle 0, axis 1 angle 3 (frequency 1), axis 2 angle 1
        let rotated = |a: f32, b: f32, t: f32| [a * t.cos() - b * t.sin(), b * t.cos() + a * t.sin()];
        let want: Vec<f32> = [[7.0, 8.0], rotated(9.0, 10.0, 3.0), rotated(11.0, 12.0, 1.0)].concat();
        for (a, b) in y[6..].iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{:?} vs {want:?}", &y[6..]);
        }
    }

    #[test]
    fn selecting_rows_keeps_text_then_chosen_image_tokens() {
        let dev = Device::Cpu;
        let rope = Rope::flux(2, 2, 3, &[2, 2, 2], &dev).unwrap();
        assert_eq!(rope.len(), 8);
        let idx = Tensor::new(&[1u32, 5], &dev).unwrap();
        let sel = rope.select(2, Some(&idx)).unwrap();
        let rows = |t: &Tensor, r: &[usize]| r.iter().map(|&i| t.get(i).unwrap().to_vec1::<f32>().unwrap()).collect::<Vec<_>>();
        assert_eq!(rows(&sel.cos, &[0, 1, 2, 3]), rows(&rope.cos, &[0, 1, 3, 7]));
        assert_eq!(rows(&sel.sin, &[0, 1, 2, 3]), rows(&rope.sin, &[0, 1, 3, 7]));
    }
}
