//! The CLIP text transformer (candle-transformers' implementation), configured from a
//! transformers `CLIPTextConfig` `config.json`. Stable Diffusion conditions on its last hidden
//! state (after the final layer norm), which is what [`ClipTextEncoder::forward`] returns.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig, ClipTextTransformer};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::ModelSource;

/// transformers' `CLIPTextConfig`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextEncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub projection_dim: usize,
}

impl Default for TextEncoderConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: 512,
        }
    }
}

pub struct ClipTextEncoder {
    pub config: TextEncoderConfig,
    model: ClipTextTransformer,
}

impl ClipTextEncoder {
    pub fn load_from(source: &ModelSource, component: &str, dtype: DType, device: &Device) -> Result<Self> {
        let config_rel = format!("{component}/config.json");
        let config: TextEncoderConfig = source.read_json(&config_rel)?;
        let at = |e: Error| Error::file(source.path(&config_rel), e.to_string());
        // candle's CLIP text model implements quick_gelu with layer-norm eps 1e-5 only.
        if config.hidden_act != "quick_gelu" {
            return Err(at(Error::unsupported("hidden_act", &config.hidden_act, "quick_gelu")));
        }
        if config.layer_norm_eps != 1e-5 {
            return Err(at(Error::unsupported("layer_norm_eps", config.layer_norm_eps, "1e-5")));
        }
        if config.num_attention_heads == 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(at(Error::unsupported("num_attention_heads", config.num_attention_heads, "a divisor of hidden_size")));
        }
        let (vb, weights_path) = source.var_builder(component, "model", dtype, device)?;
        let c = ClipTextConfig {
            vocab_size: config.vocab_size,
            embed_dim: config.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: config.intermediate_size,
            max_position_embeddings: config.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: config.num_hidden_layers,
            num_attention_heads: config.num_attention_heads,
            projection_dim: config.projection_dim,
        };
        let model = ClipTextTransformer::new(vb.pp("text_model"), &c)
            .map_err(|e| Error::file(&weights_path, format!("weights do not match config.json: {e}")))?;
        Ok(Self { config, model })
    }

    /// `[batch, tokens]` ids -> `[batch, tokens, hidden_size]` last hidden state.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, len) = ids.dims2()?;
        if len > self.config.max_position_embeddings {
            return Err(Error::Shape { what: "token ids".into(), expected: format!("at most {} tokens", self.config.max_position_embeddings), got: format!("{len}") });
        }
        if let Some(&bad) = ids.flatten_all()?.to_vec1::<u32>()?.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(Error::Shape { what: "token ids".into(), expected: format!("ids below vocab_size {}", self.config.vocab_size), got: format!("{bad}") });
        }
        Ok(self.model.forward_with_mask(ids, usize::MAX)?)
    }
}
