//! The conditioning vector every ResNet block reads: the timestep's sinusoidal embedding through
//! `time_embedding`, plus SDXL's `add_embedding` of the pooled text embedding and the size
//! conditioning (`text_time`). Shared by the UNet and its ControlNets, which embed the same way.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::config::{Resolved, UNet2DConditionConfig};
use crate::models::layers::timestep::{timestep_embedding, TimestepEmbedding};

/// The timestep's sinusoidal embedding through `time_embedding`, plus SDXL's `add_embedding` where
/// the config asks for `text_time`.
pub struct TimeTextEmbedding {
    time_embedding: TimestepEmbedding,
    /// SDXL: the projection and `addition_time_embed_dim`.
    add_embedding: Option<(TimestepEmbedding, usize)>,
    channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    dtype: DType,
}

impl TimeTextEmbedding {
    /// Load `time_embedding` (and `add_embedding`) from `vb`; the embedding is 4 x
    /// `block_out_channels[0]` wide.
    pub fn new(vb: &VarBuilder, config: &UNet2DConditionConfig, r: &Resolved) -> candle_core::Result<Self> {
        let ch = r.channels[0];
        let add_embedding = match r.text_time {
            Some((time_dim, proj_dim)) => Some((TimestepEmbedding::new(vb.pp("add_embedding"), proj_dim, ch * 4)?, time_dim)),
            None => None,
        };
        Ok(Self {
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), ch, ch * 4)?,
            add_embedding,
            channels: ch,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
            dtype: vb.dtype(),
        })
    }

    /// `[batch, 4 * channels]` for `timestep` (broadcast over the batch) and, for SDXL-style
    /// models, `(text_embeds, time_ids)`.
    pub fn forward(&self, batch: usize, timestep: f64, added: Option<(&Tensor, &Tensor)>, device: &candle_core::Device) -> candle_core::Result<Tensor> {
        let ts = Tensor::full(timestep as f32, batch, device)?;
        let t_emb = timestep_embedding(&ts, self.channels, self.flip_sin_to_cos, self.freq_shift)?.to_dtype(self.dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        if let (Some((add, time_dim)), Some((text_embeds, time_ids))) = (&self.add_embedding, added) {
            let flat = time_ids.flatten_all()?;
            let time_embeds = timestep_embedding(&flat, *time_dim, self.flip_sin_to_cos, self.freq_shift)?.reshape((batch, ()))?.to_dtype(self.dtype)?;
            let add_embeds = Tensor::cat(&[&text_embeds.to_dtype(self.dtype)?, &time_embeds], 1)?;
            emb = (emb + add.forward(&add_embeds)?)?;
        }
        Ok(emb)
    }

    /// Whether SDXL's `text_embeds` and `time_ids` are read.
    pub fn uses_text_time(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// `(addition_time_embed_dim, projection_class_embeddings_input_dim)` for SDXL-style models.
    pub fn text_time_dims(&self, r: &Resolved) -> Option<(usize, usize)> {
        self.add_embedding.as_ref().and(r.text_time)
    }
}
