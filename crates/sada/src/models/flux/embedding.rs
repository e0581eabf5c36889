//! Flux's conditioning vector (diffusers' `CombinedTimestepTextProjEmbeddings`, and
//! `CombinedTimestepGuidanceTextProjEmbeddings` for FLUX.1-dev): sinusoidal timestep (and
//! guidance) embeddings through their MLPs plus CLIP's pooled embedding through its projection.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use crate::models::layers::linear::{linear, Linear};
use crate::models::layers::timestep::{timestep_embedding, TimestepEmbedding};

/// Width of the sinusoidal embedding before its MLP.
const SINUSOID_DIM: usize = 256;

/// The conditioning vector: the embedded timestep (plus the embedded guidance scale for FLUX.1-dev)
/// plus the projected pooled text embedding.
pub struct TimeTextEmbedding {
    timestep_embedder: TimestepEmbedding,
    guidance_embedder: Option<TimestepEmbedding>,
    /// `PixArtAlphaTextProjection`: linear -> SiLU -> linear.
    text_1: Linear,
    text_2: Linear,
    /// The weights' dtype, which inputs are cast to.
    dtype: DType,
}

impl TimeTextEmbedding {
    /// Load from `vb` (`time_text_embed`): width `dim`, pooled text width `pooled_dim`, and
    /// `guidance_embedder` when `guidance`.
    pub fn new(vb: VarBuilder, dim: usize, pooled_dim: usize, guidance: bool) -> candle_core::Result<Self> {
        Ok(Self {
            timestep_embedder: TimestepEmbedding::new(vb.pp("timestep_embedder"), SINUSOID_DIM, dim)?,
            guidance_embedder: if guidance { Some(TimestepEmbedding::new(vb.pp("guidance_embedder"), SINUSOID_DIM, dim)?) } else { None },
            text_1: linear(pooled_dim, dim, vb.pp("text_embedder").pp("linear_1"))?,
            text_2: linear(dim, dim, vb.pp("text_embedder").pp("linear_2"))?,
            dtype: vb.dtype(),
        })
    }

    /// `timestep` and `guidance` `[B]` already scaled to [0, 1000] (f32); `pooled` `[B, P]`.
    pub fn forward(&self, timestep: &Tensor, guidance: Option<&Tensor>, pooled: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = self.dtype;
        let embed = |mlp: &TimestepEmbedding, t: &Tensor| mlp.forward(&timestep_embedding(t, SINUSOID_DIM, true, 0.0)?.to_dtype(dtype)?);
        let mut emb = embed(&self.timestep_embedder, timestep)?;
        match (&self.guidance_embedder, guidance) {
            (Some(mlp), Some(g)) => emb = (emb + embed(mlp, g)?)?,
            (Some(_), None) => candle_core::bail!("this Flux transformer embeds the guidance scale (FLUX.1-dev): a `guidance` input is needed"),
            _ => {}
        }
        let text = self.text_2.forward(&self.text_1.forward(&pooled.to_dtype(dtype)?)?.silu()?)?;
        emb + text
    }
}
