//! Transformer blocks of the UNet (diffusers' `Transformer2DModel` and `BasicTransformerBlock`),
//! where SADA's token-wise cache-assisted pruning happens.
//!
//! A pruned block, in one place: gather the computed tokens -> run the block on them only ->
//! scatter their outputs into the block's cache -> read every other token from the cache.

use candle_core::{DType, Module, Tensor};
use candle_nn::{group_norm, layer_norm, linear, linear_no_bias, GroupNorm, LayerNorm, Linear, VarBuilder};

use super::resnet::{conv2d, Conv};

/// What one transformer block computes this step.
#[derive(Debug, Clone)]
pub enum BlockTokens {
    /// Every token; the block's cache is overwritten with its output.
    All,
    /// Only `indices` (u32, ascending) of the N tokens; `mask` ([1, N, 1], u8) flags them.
    Subset { indices: Tensor, mask: Tensor },
}

pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
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

    fn split_heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        x.reshape((b, n, self.heads, c / self.heads))?.transpose(1, 2)?.contiguous()
    }

    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let context = context.unwrap_or(x);
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let out = scaled_dot_product_attention(&q, &k, &v, self.scale)?;
        let (b, h, n, d) = out.dims4()?;
        let out = out.transpose(1, 2)?.reshape((b, n, h * d))?;
        self.to_out.forward(&out)
    }
}

/// softmax(q k^T * scale) v over [B, H, N, D] tensors, in float32 (diffusers' upcast_attention
/// is therefore always on), processed in query chunks so the score matrix stays bounded.
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

/// GEGLU feed-forward (`FeedForward` with activation `geglu`). The input projection's two
/// halves (value and gate) are held as separate matrices, so each product comes out contiguous
/// instead of as two strided views of one.
pub struct FeedForward {
    value: Linear,
    gate: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        let inner = dim * 4;
        let proj = linear(dim, inner * 2, vb.pp("net.0.proj"))?;
        let (w, b) = (proj.weight(), proj.bias().expect("linear() has a bias"));
        let half = |i: usize| -> candle_core::Result<Linear> {
            Ok(Linear::new(w.narrow(0, i * inner, inner)?.contiguous()?, Some(b.narrow(0, i * inner, inner)?.contiguous()?)))
        };
        Ok(Self { value: half(0)?, gate: half(1)?, out: linear(inner, dim, vb.pp("net.2"))? })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = (self.value.forward(x)? * self.gate.forward(x)?.gelu_erf()?)?;
        self.out.forward(&h)
    }
}

pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
    /// The block's output for every token at the last step it was computed (SADA §7).
    cache: Option<Tensor>,
}

impl BasicTransformerBlock {
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, head_dim: usize, context_dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, None, heads, head_dim)?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, Some(context_dim), heads, head_dim)?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
            cache: None,
        })
    }

    fn compute(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        use super::profile::{timed, Part};
        let x = (timed(Part::SelfAttention, || self.attn1.forward(&self.norm1.forward(x)?, None))? + x)?;
        let x = (timed(Part::CrossAttention, || self.attn2.forward(&self.norm2.forward(&x)?, Some(context)))? + x)?;
        timed(Part::FeedForward, || self.ff.forward(&self.norm3.forward(&x)?))? + x
    }

    pub fn forward(&mut self, x: &Tensor, context: &Tensor, tokens: &BlockTokens) -> candle_core::Result<Tensor> {
        let out = match (tokens, &self.cache) {
            (BlockTokens::Subset { indices, mask }, Some(cache)) if cache.dims() == x.dims() => {
                let computed = self.compute(&x.index_select(indices, 1)?, context)?;
                let scattered = x.zeros_like()?.index_add(indices, &computed, 1)?;
                mask.broadcast_as(x.shape())?.where_cond(&scattered, cache)?
            }
            // No usable cache (first step, or a new image size): compute everything.
            _ => self.compute(x, context)?,
        };
        self.cache = Some(out.clone());
        Ok(out)
    }

    pub fn reset(&mut self) {
        self.cache = None;
    }
}

/// `Transformer2DModel` with continuous input: GroupNorm, projection in, blocks, projection out, residual.
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

enum Projection {
    Linear(Linear),
    Conv(Conv),
}

impl Transformer2DModel {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        layers: usize,
        context_dim: usize,
        groups: usize,
        linear_projection: bool,
    ) -> candle_core::Result<Self> {
        let head_dim = channels / heads;
        let proj = |name: &str| -> candle_core::Result<Projection> {
            Ok(if linear_projection {
                Projection::Linear(linear(channels, channels, vb.pp(name))?)
            } else {
                Projection::Conv(conv2d(vb.pp(name), channels, channels, 1, 1, 0)?)
            })
        };
        Ok(Self {
            norm: group_norm(groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: proj("proj_in")?,
            blocks: (0..layers)
                .map(|i| BasicTransformerBlock::new(vb.pp("transformer_blocks").pp(i), channels, heads, head_dim, context_dim))
                .collect::<candle_core::Result<_>>()?,
            proj_out: proj("proj_out")?,
        })
    }

    pub fn forward(&mut self, x: &Tensor, context: &Tensor, tokens: &BlockTokens) -> candle_core::Result<Tensor> {
        let start = std::time::Instant::now();
        let out = self.forward_inner(x, context, tokens);
        super::profile::add(super::profile::Part::Transformer, start.elapsed());
        out
    }

    fn forward_inner(&mut self, x: &Tensor, context: &Tensor, tokens: &BlockTokens) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let residual = x;
        let x = self.norm.forward(x)?;
        let to_tokens = |t: Tensor| -> candle_core::Result<Tensor> { t.permute((0, 2, 3, 1))?.reshape((b, h * w, c)) };
        let mut t = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&x)?)?,
            Projection::Linear(l) => l.forward(&to_tokens(x)?)?,
        };
        for block in self.blocks.iter_mut() {
            t = block.forward(&t, context, tokens)?;
        }
        let to_map = |t: Tensor| -> candle_core::Result<Tensor> { t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous() };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(t)?)?,
            Projection::Linear(l) => to_map(l.forward(&t)?)?,
        };
        out + residual
    }

    pub fn reset(&mut self) {
        self.blocks.iter_mut().for_each(BasicTransformerBlock::reset);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor};
    use candle_nn::VarBuilder;

    use super::*;

    /// A block with seeded random weights (dim 8, 2 heads, context 6).
    fn block() -> BasicTransformerBlock {
        let dev = Device::Cpu;
        let mut seed = 1u64;
        let mut rnd = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            seed += 1;
            let v = crate::gmm::normal_samples(n, seed).into_iter().map(|x| x * 0.3).collect::<Vec<_>>();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let mut t = HashMap::new();
        for n in ["norm1", "norm2", "norm3"] {
            t.insert(format!("{n}.weight"), (rnd(&[8]) + 1.0).unwrap());
            t.insert(format!("{n}.bias"), rnd(&[8]));
        }
        for (a, ctx) in [("attn1", 8), ("attn2", 6)] {
            t.insert(format!("{a}.to_q.weight"), rnd(&[8, 8]));
            t.insert(format!("{a}.to_k.weight"), rnd(&[8, ctx]));
            t.insert(format!("{a}.to_v.weight"), rnd(&[8, ctx]));
            t.insert(format!("{a}.to_out.0.weight"), rnd(&[8, 8]));
            t.insert(format!("{a}.to_out.0.bias"), rnd(&[8]));
        }
        t.insert("ff.net.0.proj.weight".into(), rnd(&[64, 8]));
        t.insert("ff.net.0.proj.bias".into(), rnd(&[64]));
        t.insert("ff.net.2.weight".into(), rnd(&[8, 32]));
        t.insert("ff.net.2.bias".into(), rnd(&[8]));
        let vb = VarBuilder::from_tensors(t, DType::F32, &dev);
        BasicTransformerBlock::new(vb, 8, 2, 4, 6).unwrap()
    }

    fn rows(t: &Tensor, b: usize) -> Vec<Vec<f32>> {
        t.get(b).unwrap().to_vec2().unwrap()
    }

    #[test]
    fn computed_tokens_are_recomputed_and_pruned_tokens_come_from_the_cache() {
        let dev = Device::Cpu;
        let mut blk = block();
        let x1 = Tensor::from_vec(crate::gmm::normal_samples(2 * 9 * 8, 7), (2, 9, 8), &dev).unwrap();
        let x2 = Tensor::from_vec(crate::gmm::normal_samples(2 * 9 * 8, 8), (2, 9, 8), &dev).unwrap();
        let ctx = Tensor::from_vec(crate::gmm::normal_samples(2 * 3 * 6, 9), (2, 3, 6), &dev).unwrap();
        let out1 = blk.forward(&x1, &ctx, &BlockTokens::All).unwrap();

        let computed = [1u32, 4, 8];
        let mut flags = vec![0u8; 9];
        computed.iter().for_each(|&i| flags[i as usize] = 1);
        let tokens = BlockTokens::Subset {
            indices: Tensor::new(&computed, &dev).unwrap(),
            mask: Tensor::from_vec(flags, (1, 9, 1), &dev).unwrap(),
        };
        let out2 = blk.forward(&x2, &ctx, &tokens).unwrap();
        // what the block computes on the gathered tokens alone (self-attention among them)
        let gathered = x2.index_select(&Tensor::new(&computed, &dev).unwrap(), 1).unwrap();
        let expect = blk.compute(&gathered, &ctx).unwrap();
        for b in 0..2 {
            let (o1, o2, e) = (rows(&out1, b), rows(&out2, b), rows(&expect, b));
            for tok in 0..9 {
                match computed.iter().position(|&c| c as usize == tok) {
                    Some(j) => assert_eq!(o2[tok], e[j], "computed token {tok}"),
                    None => assert_eq!(o2[tok], o1[tok], "pruned token {tok} must come from the cache"),
                }
            }
        }
        // the cache now holds the step-2 values of the computed tokens
        let out3 = blk.forward(&x1, &ctx, &BlockTokens::Subset {
            indices: Tensor::new(&[0u32], &dev).unwrap(),
            mask: Tensor::from_vec(vec![1u8, 0, 0, 0, 0, 0, 0, 0, 0], (1, 9, 1), &dev).unwrap(),
        }).unwrap();
        assert_eq!(rows(&out3, 1)[4], rows(&out2, 1)[4]);
    }
}
