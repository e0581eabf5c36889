//! The UNet's transformer blocks (diffusers' `Transformer2DModel` and `BasicTransformerBlock`).
//! Each block is a token site: SADA's pruning runs it on a token subset through the
//! [`ForwardContext`] (see `models/token_cache.rs`).

use candle_core::{Module, Tensor};
use candle_nn::{layer_norm, LayerNorm, VarBuilder};

use crate::denoiser::ForwardContext;
use crate::models::layers::attention::Attention;
use crate::models::layers::conv::{conv2d, Conv};
use crate::models::layers::feed_forward::FeedForward;
use crate::models::layers::linear::{linear, Linear};
use crate::models::layers::norm::{group_norm, GroupNorm};

/// diffusers' `BasicTransformerBlock`: self-attention, cross-attention and a GEGLU feed-forward,
/// each after a LayerNorm and with a residual.
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    /// Load from `vb`: width `dim`, `heads` heads of `head_dim`, cross-attention to
    /// `context_dim`-wide embeddings.
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, head_dim: usize, context_dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, None, heads, head_dim)?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, Some(context_dim), heads, head_dim)?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    /// Self-attention among the given tokens, cross-attention to `context`, feed-forward.
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let x = {
            let _s = tracing::trace_span!("self_attention").entered();
            (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?
        };
        let x = {
            let _s = tracing::trace_span!("cross_attention").entered();
            (self.attn2.forward(&self.norm2.forward(&x)?, Some(context))? + x)?
        };
        let _s = tracing::trace_span!("feed_forward").entered();
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

/// `Transformer2DModel` with continuous input: GroupNorm, projection in, blocks, projection out, residual.
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    /// Each block with the name of its token site (its weight prefix).
    blocks: Vec<(String, BasicTransformerBlock)>,
    proj_out: Projection,
}

enum Projection {
    Linear(Linear),
    Conv(Conv),
}

impl Transformer2DModel {
    /// Load from `vb`: `layers` blocks of `heads` heads over `channels` channels, cross-attending
    /// to `context_dim`-wide embeddings; `linear_projection` makes `proj_in` and `proj_out` linear
    /// layers instead of 1x1 convolutions.
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
                .map(|i| {
                    let vb = vb.pp("transformer_blocks").pp(i);
                    Ok((vb.prefix(), BasicTransformerBlock::new(vb, channels, heads, head_dim, context_dim)?))
                })
                .collect::<candle_core::Result<_>>()?,
            proj_out: proj("proj_out")?,
        })
    }

    /// Prefix the names of this model's token sites with `tag`, so a second network built
    /// from the same key names (a ControlNet's copy of the encoder) keeps its own caches.
    pub fn tag_sites(&mut self, tag: &str) {
        for (name, _) in &mut self.blocks {
            *name = format!("{tag}/{name}");
        }
    }

    /// The model on the feature map `x` `[B, C, H, W]`, each block run as a token site of `ctx`;
    /// `context` holds the text embeddings.
    pub fn forward(&self, x: &Tensor, context: &Tensor, ctx: &mut ForwardContext) -> candle_core::Result<Tensor> {
        let _s = tracing::trace_span!("transformer").entered();
        let (b, c, h, w) = x.dims4()?;
        let residual = x;
        let x = self.norm.forward(x)?;
        let to_tokens = |t: Tensor| -> candle_core::Result<Tensor> { t.permute((0, 2, 3, 1))?.reshape((b, h * w, c)) };
        let mut t = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&x)?)?,
            Projection::Linear(l) => l.forward(&to_tokens(x)?)?,
        };
        for (name, block) in &self.blocks {
            t = ctx.token_site(name, (h, w), &t, |t| block.forward(t, context))?;
        }
        let to_map = |t: Tensor| -> candle_core::Result<Tensor> { t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous() };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(t)?)?,
            Projection::Linear(l) => to_map(l.forward(&t)?)?,
        };
        out + residual
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use super::*;
    use crate::denoiser::token_cache::{BlockTokens, TokenCache};

    /// A block with seeded random weights (dim 8, 2 heads, context 6).
    fn block() -> BasicTransformerBlock {
        let dev = Device::Cpu;
        let mut seed = 1u64;
        let mut rnd = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            seed += 1;
            let v = crate::noise::normal_samples(n, seed).into_iter().map(|x| x * 0.3).collect::<Vec<_>>();
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
        let blk = block();
        let mut cache = TokenCache::default();
        let ctx = Tensor::from_vec(crate::noise::normal_samples(2 * 3 * 6, 9), (2, 3, 6), &dev).unwrap();
        let mut run = |x: &Tensor, tokens: &BlockTokens| cache.apply("block", tokens, x, |t| blk.forward(t, &ctx)).unwrap();
        let x1 = Tensor::from_vec(crate::noise::normal_samples(2 * 9 * 8, 7), (2, 9, 8), &dev).unwrap();
        let x2 = Tensor::from_vec(crate::noise::normal_samples(2 * 9 * 8, 8), (2, 9, 8), &dev).unwrap();
        let out1 = run(&x1, &BlockTokens::All);

        let computed = [1u32, 4, 8];
        let mut flags = vec![0u8; 9];
        computed.iter().for_each(|&i| flags[i as usize] = 1);
        let tokens = BlockTokens::Subset { indices: Tensor::new(&computed, &dev).unwrap(), mask: Tensor::from_vec(flags, (1, 9, 1), &dev).unwrap() };
        let out2 = run(&x2, &tokens);
        // what the block computes on the gathered tokens alone (self-attention among them)
        let gathered = x2.index_select(&Tensor::new(&computed, &dev).unwrap(), 1).unwrap();
        let expect = blk.forward(&gathered, &ctx).unwrap();
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
        let out3 = run(
            &x1,
            &BlockTokens::Subset {
                indices: Tensor::new(&[0u32], &dev).unwrap(),
                mask: Tensor::from_vec(vec![1u8, 0, 0, 0, 0, 0, 0, 0, 0], (1, 9, 1), &dev).unwrap(),
            },
        );
        assert_eq!(rows(&out3, 1)[4], rows(&out2, 1)[4]);
    }
}
