//! Multi-head attention (diffusers' `Attention` with the default processor), self or cross.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use crate::models::kernels;
use crate::models::layers::linear::{linear, linear_no_bias, Linear};

/// diffusers' `Attention` with the default processor: `to_q`, `to_k`, `to_v`, multi-head scaled
/// dot-product attention, `to_out.0`.
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    /// Without biases on `to_q`, `to_k` and `to_v` (the UNet's attention); `context_dim` None for
    /// self-attention.
    pub fn new(vb: VarBuilder, query_dim: usize, context_dim: Option<usize>, heads: usize, head_dim: usize) -> candle_core::Result<Self> {
        Self::with_bias(vb, query_dim, context_dim, heads, head_dim, false)
    }

    /// `qkv_bias`: whether to_q/to_k/to_v carry biases (the autoencoder's attention does).
    pub fn with_bias(vb: VarBuilder, query_dim: usize, context_dim: Option<usize>, heads: usize, head_dim: usize, qkv_bias: bool) -> candle_core::Result<Self> {
        let inner = heads * head_dim;
        let context_dim = context_dim.unwrap_or(query_dim);
        let proj = |cin: usize, name: &str| if qkv_bias { linear(cin, inner, vb.pp(name)) } else { linear_no_bias(cin, inner, vb.pp(name)) };
        Ok(Self {
            to_q: proj(query_dim, "to_q")?,
            to_k: proj(context_dim, "to_k")?,
            to_v: proj(context_dim, "to_v")?,
            to_out: linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// Attend from `x` `[B, N, query_dim]` to `context` (None: self-attention over `x`).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let context = context.unwrap_or(x);
        let (q, k, v) = (self.to_q.forward(x)?, self.to_k.forward(context)?, self.to_v.forward(context)?);
        self.to_out.forward(&multi_head_attention(&q, &k, &v, self.heads, self.scale)?)
    }
}

/// softmax(q k^T * scale) v per head, on `[B, N, heads * D]` projections (keys and values
/// `[B, M, heads * D]`), returning `[B, N, heads * D]`: the fused kernel on the CPU, the chunked
/// unfused form elsewhere; float32 inside either way.
pub fn multi_head_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> candle_core::Result<Tensor> {
    let _s = tracing::trace_span!("sdpa").entered();
    if q.device().is_cpu() {
        let f = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
        return kernels::attention::attention(&f(q)?, &f(k)?, &f(v)?, heads, scale as f32)?.to_dtype(q.dtype());
    }
    let split = |x: &Tensor| -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        x.reshape((b, n, heads, c / heads))?.transpose(1, 2)?.contiguous()
    };
    let out = scaled_dot_product_attention(&split(q)?, &split(k)?, &split(v)?, scale)?;
    let (b, h, n, d) = out.dims4()?;
    out.transpose(1, 2)?.reshape((b, n, h * d))
}

/// softmax(q k^T * scale) v over [B, H, N, D] tensors, in float32 (the unfused form: other devices, and
/// the reference the fused CPU kernel is tested against; diffusers' upcast_attention is
/// therefore always on), processed in query chunks so the score matrix stays bounded.
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let dtype = q.dtype();
    // scaling q (N x D) instead of the scores (N x N) saves a pass over the largest tensor
    let (q, k, v) = ((q.to_dtype(DType::F32)? * scale)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
    let kt = k.transpose(2, 3)?.contiguous()?;
    let n = q.dim(2)?;
    // keep each [B, H, chunk, Nk] score block around 16 MB: under the allocator's mmap threshold,
    // so the block is reused rather than freshly zeroed by the kernel on every chunk
    let nk = k.dim(2)?;
    let bh = q.dim(0)? * q.dim(1)?;
    let chunk = (4 * 1024 * 1024 / (bh * nk).max(1)).clamp(16, n.max(16));
    let mut outs = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let qc = q.narrow(2, start, len)?;
        let scores = qc.matmul(&kt)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        outs.push(probs.matmul(&v)?);
        start += len;
    }
    let out = if outs.len() == 1 { outs.pop().expect("one chunk") } else { Tensor::cat(&outs, 2)? };
    out.to_dtype(dtype)
}
