//! Flux's transformer blocks with diffusers' key names: the double-stream block (text and image
//! tokens with their own weights, one joint attention) and the single-stream block (one sequence,
//! attention and MLP in parallel), each modulated by the conditioning vector (adaLN-Zero).
//!
//! Both take the image tokens they compute as a possibly pruned subset, with the rotary table of
//! exactly the tokens given; text tokens are always all there.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use super::rope::Rope;
use crate::models::layers::attention::multi_head_attention;
use crate::models::layers::linear::{linear, Linear};

const EPS: f64 = 1e-6;

/// LayerNorm over the last dimension without learned affine parameters.
#[derive(Clone)]
pub struct PlainLayerNorm {
    ones: Tensor,
    zeros: Tensor,
}

impl PlainLayerNorm {
    /// A norm over `dim` channels (epsilon 1e-6), in `dtype` on `device`.
    pub fn new(dim: usize, dtype: DType, device: &Device) -> candle_core::Result<Self> {
        Ok(Self { ones: Tensor::ones(dim, dtype, device)?, zeros: Tensor::zeros(dim, dtype, device)? })
    }

    /// `x` normalised over its last dimension.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.ones, &self.zeros, EPS as f32)
    }

    /// `norm(x) * (1 + scale) + shift` with `[B, 1, C]` modulation.
    pub fn modulate(&self, x: &Tensor, shift: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
        let _s = tracing::trace_span!("layer_norm_modulate").entered();
        self.forward(x)?.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
    }
}

/// SiLU -> linear -> `n` chunks of `[B, 1, C]`: the per-block modulation parameters
/// (`AdaLayerNormZero`'s, `AdaLayerNormZeroSingle`'s, `AdaLayerNormContinuous`'s `linear`).
pub struct Modulation {
    lin: Linear,
    n: usize,
}

impl Modulation {
    /// Load the linear layer (`dim` -> `n * dim`) at `vb`.
    pub fn new(vb: VarBuilder, dim: usize, n: usize) -> candle_core::Result<Self> {
        Ok(Self { lin: linear(dim, n * dim, vb)?, n })
    }

    /// The `n` chunks for the conditioning vector `temb` `[B, dim]`.
    pub fn forward(&self, temb: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        self.lin.forward(&temb.silu()?)?.unsqueeze(1)?.chunk(self.n, 2)
    }
}

/// Per-head RMSNorm with a learned scale (`norm_q`, `norm_k`, ...).
struct RmsNorm {
    weight: Tensor,
}

impl RmsNorm {
    fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")? })
    }

    /// `x`: `[B, N, heads * D]` -> normalised `[B, N, heads, D]`.
    fn forward(&self, x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
        let _s = tracing::trace_span!("rms_norm").entered();
        let (b, n, c) = x.dims3()?;
        let x = x.reshape((b, n, heads, c / heads))?;
        // in float32, as diffusers' RMSNorm computes the variance
        candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?.contiguous()?, &self.weight.to_dtype(DType::F32)?, EPS as f32)?.to_dtype(x.dtype())
    }
}

/// One stream's query, key and value projections with their norms.
struct Qkv {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
}

impl Qkv {
    fn new(vb: &VarBuilder, dim: usize, head_dim: usize, names: [&str; 5]) -> candle_core::Result<Self> {
        Ok(Self {
            q: linear(dim, dim, vb.pp(names[0]))?,
            k: linear(dim, dim, vb.pp(names[1]))?,
            v: linear(dim, dim, vb.pp(names[2]))?,
            norm_q: RmsNorm::new(vb.pp(names[3]), head_dim)?,
            norm_k: RmsNorm::new(vb.pp(names[4]), head_dim)?,
        })
    }

    /// (q, k) normalised `[B, N, heads, D]`, v `[B, N, heads * D]`.
    fn forward(&self, x: &Tensor, heads: usize) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        Ok((self.norm_q.forward(&self.q.forward(x)?, heads)?, self.norm_k.forward(&self.k.forward(x)?, heads)?, self.v.forward(x)?))
    }
}

/// Rotate the concatenated queries and keys and attend: `[B, N, heads * D]` out.
fn rotary_attention(q: &Tensor, k: &Tensor, v: &Tensor, rope: &Rope, heads: usize) -> candle_core::Result<Tensor> {
    let (b, n, h, d) = q.dims4()?;
    let (q, k) = (rope.apply(q)?.reshape((b, n, h * d))?, rope.apply(k)?.reshape((b, n, h * d))?);
    multi_head_attention(&q, &k, v, heads, (d as f64).powf(-0.5))
}

/// Feed-forward with the tanh-approximated GELU (`FeedForward(activation_fn="gelu-approximate")`).
struct GeluFeedForward {
    proj: Linear,
    out: Linear,
}

impl GeluFeedForward {
    fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        Ok(Self { proj: linear(dim, 4 * dim, vb.pp("net.0.proj"))?, out: linear(4 * dim, dim, vb.pp("net.2"))? })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.proj.forward(x)?;
        let _s = tracing::trace_span!("gelu").entered();
        let h = h.gelu()?;
        drop(_s);
        self.out.forward(&h)
    }
}

/// `FluxTransformerBlock`: text and image streams, each with its own modulation, projections and
/// feed-forward, sharing one attention over both.
pub struct DoubleStreamBlock {
    norm1: Modulation,
    norm1_context: Modulation,
    img: Qkv,
    txt: Qkv,
    to_out: Linear,
    to_add_out: Linear,
    ff: GeluFeedForward,
    ff_context: GeluFeedForward,
    norm: PlainLayerNorm,
    heads: usize,
}

impl DoubleStreamBlock {
    /// Load from `vb` (`transformer_blocks.i`): width `dim`, `heads` heads of `head_dim`.
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, head_dim: usize) -> candle_core::Result<Self> {
        let attn = vb.pp("attn");
        Ok(Self {
            norm1: Modulation::new(vb.pp("norm1").pp("linear"), dim, 6)?,
            norm1_context: Modulation::new(vb.pp("norm1_context").pp("linear"), dim, 6)?,
            img: Qkv::new(&attn, dim, head_dim, ["to_q", "to_k", "to_v", "norm_q", "norm_k"])?,
            txt: Qkv::new(&attn, dim, head_dim, ["add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k"])?,
            to_out: linear(dim, dim, attn.pp("to_out").pp("0"))?,
            to_add_out: linear(dim, dim, attn.pp("to_add_out"))?,
            ff: GeluFeedForward::new(vb.pp("ff"), dim)?,
            ff_context: GeluFeedForward::new(vb.pp("ff_context"), dim)?,
            norm: PlainLayerNorm::new(dim, vb.dtype(), vb.device())?,
            heads,
        })
    }

    /// The image stream's input as the attention sees it: normed, shifted and scaled by the
    /// conditioning (`norm1`'s output).
    pub fn modulated_input(&self, img: &Tensor, temb: &Tensor) -> candle_core::Result<Tensor> {
        let m = self.norm1.forward(temb)?;
        self.norm.modulate(img, &m[0], &m[1])
    }

    /// (text, image) after the block, for text `[B, T, C]` and image tokens `[B, N, C]`, with
    /// `rope` covering the T text tokens then the N image tokens.
    pub fn forward(&self, img: &Tensor, txt: &Tensor, temb: &Tensor, rope: &Rope) -> candle_core::Result<(Tensor, Tensor)> {
        let m = self.norm1.forward(temb)?;
        let c = self.norm1_context.forward(temb)?;
        let img_n = self.norm.modulate(img, &m[0], &m[1])?;
        let txt_n = self.norm.modulate(txt, &c[0], &c[1])?;
        let (iq, ik, iv) = self.img.forward(&img_n, self.heads)?;
        let (tq, tk, tv) = self.txt.forward(&txt_n, self.heads)?;
        let t = txt.dim(1)?;
        let cat = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 1);
        let o = rotary_attention(&cat(&tq, &iq)?, &cat(&tk, &ik)?, &cat(&tv, &iv)?, rope, self.heads)?;
        let (o_txt, o_img) = (o.narrow(1, 0, t)?, o.narrow(1, t, o.dim(1)? - t)?);

        let img = (img + self.to_out.forward(&o_img)?.broadcast_mul(&m[2])?)?;
        let ff = self.ff.forward(&self.norm.modulate(&img, &m[3], &m[4])?)?;
        let img = (img + ff.broadcast_mul(&m[5])?)?;

        let txt = (txt + self.to_add_out.forward(&o_txt)?.broadcast_mul(&c[2])?)?;
        let ff = self.ff_context.forward(&self.norm.modulate(&txt, &c[3], &c[4])?)?;
        let txt = (txt + ff.broadcast_mul(&c[5])?)?;
        Ok((txt, img))
    }
}

/// `FluxSingleTransformerBlock`: text and image tokens as one sequence; attention and an MLP
/// side by side from one modulated norm, merged by one output projection.
pub struct SingleStreamBlock {
    norm: Modulation,
    qkv: Qkv,
    proj_mlp: Linear,
    proj_out: Linear,
    layer_norm: PlainLayerNorm,
    heads: usize,
}

impl SingleStreamBlock {
    /// Load from `vb` (`single_transformer_blocks.i`): width `dim`, `heads` heads of `head_dim`, an
    /// MLP 4 x `dim` wide.
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, head_dim: usize) -> candle_core::Result<Self> {
        let mlp = 4 * dim;
        Ok(Self {
            norm: Modulation::new(vb.pp("norm").pp("linear"), dim, 3)?,
            qkv: Qkv::new(&vb.pp("attn"), dim, head_dim, ["to_q", "to_k", "to_v", "norm_q", "norm_k"])?,
            proj_mlp: linear(dim, mlp, vb.pp("proj_mlp"))?,
            proj_out: linear(dim + mlp, dim, vb.pp("proj_out"))?,
            layer_norm: PlainLayerNorm::new(dim, vb.dtype(), vb.device())?,
            heads,
        })
    }

    /// As [`DoubleStreamBlock::forward`].
    pub fn forward(&self, img: &Tensor, txt: &Tensor, temb: &Tensor, rope: &Rope) -> candle_core::Result<(Tensor, Tensor)> {
        let t = txt.dim(1)?;
        let x = Tensor::cat(&[txt, img], 1)?;
        let m = self.norm.forward(temb)?;
        let xn = self.layer_norm.modulate(&x, &m[0], &m[1])?;
        let mlp = self.proj_mlp.forward(&xn)?.gelu()?;
        let (q, k, v) = self.qkv.forward(&xn, self.heads)?;
        let attn = rotary_attention(&q, &k, &v, rope, self.heads)?;
        let out = self.proj_out.forward(&Tensor::cat(&[&attn, &mlp], 2)?)?;
        let x = (x + out.broadcast_mul(&m[2])?)?;
        Ok((x.narrow(1, 0, t)?, x.narrow(1, t, x.dim(1)? - t)?))
    }
}
