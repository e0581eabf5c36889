//! transformers' `CLIPTextModel` and `CLIPTextModelWithProjection`, configured from a
//! `CLIPTextConfig` `config.json`: OpenAI CLIP (`quick_gelu`, SD-1.x and SDXL's first encoder)
//! and OpenCLIP (`gelu`, SD-2.x and SDXL's second). Ours rather than candle-transformers'
//! because Stable Diffusion reads intermediate hidden states (SDXL's penultimate layer,
//! `--clip-skip`) and SDXL the projected pooled output.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};

use crate::models::layers::linear::{linear, linear_no_bias, Linear};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::ModelSource;

/// transformers' `CLIPTextConfig`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextEncoderConfig {
    /// Rows of the token embedding (49,408 for CLIP).
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of each layer's MLP.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// The longest token sequence the position embedding covers (77).
    pub max_position_embeddings: usize,
    /// `quick_gelu` (OpenAI CLIP) or `gelu` (OpenCLIP).
    pub hidden_act: String,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
    /// Output width of `text_projection` (`CLIPTextModelWithProjection`).
    pub projection_dim: usize,
    /// The end-of-text token; 2 is transformers' legacy value, for which the pooled output is
    /// taken at the highest id instead (see [`ClipTextEncoder::encode`]).
    pub eos_token_id: u32,
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
            eos_token_id: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Activation::Gelu => x.gelu_erf(),
        }
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, c: &TextEncoderConfig) -> candle_core::Result<Self> {
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let attn = vb.pp("self_attn");
        Ok(Self {
            layer_norm1: layer_norm(h, eps, vb.pp("layer_norm1"))?,
            q_proj: linear(h, h, attn.pp("q_proj"))?,
            k_proj: linear(h, h, attn.pp("k_proj"))?,
            v_proj: linear(h, h, attn.pp("v_proj"))?,
            out_proj: linear(h, h, attn.pp("out_proj"))?,
            layer_norm2: layer_norm(h, eps, vb.pp("layer_norm2"))?,
            fc1: linear(h, c.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(c.intermediate_size, h, vb.pp("mlp").pp("fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, heads: usize, act: Activation) -> candle_core::Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let d = c / heads;
        let h = self.layer_norm1.forward(x)?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> { t.reshape((b, n, heads, d))?.transpose(1, 2)?.contiguous() };
        let q = split((self.q_proj.forward(&h)? * (d as f64).powf(-0.5))?)?;
        let k = split(self.k_proj.forward(&h)?)?;
        let v = split(self.v_proj.forward(&h)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        let x = (x + self.out_proj.forward(&attn)?)?;
        let h = self.fc2.forward(&act.apply(&self.fc1.forward(&self.layer_norm2.forward(&x)?)?)?)?;
        x + h
    }
}

/// The text transformer's outputs for a batch of token ids.
pub struct TextOutput {
    /// The embeddings, then every layer's output ([B, N, hidden] each): transformers'
    /// `hidden_states`, without the final layer norm.
    pub hidden_states: Vec<Tensor>,
    /// `final_layer_norm` of the last layer: transformers' `last_hidden_state`.
    pub last_hidden_state: Tensor,
    /// `last_hidden_state` at each sequence's end token ([B, hidden]).
    pub pooled: Tensor,
}

/// CLIP's text transformer: `CLIPTextModel`, or `CLIPTextModelWithProjection` when the weights
/// carry `text_projection`.
pub struct ClipTextEncoder {
    /// The `config.json` it was built from.
    pub config: TextEncoderConfig,
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    /// `CLIPTextModelWithProjection`'s `text_projection` (no bias), when the weights have it.
    text_projection: Option<Linear>,
    activation: Activation,
    device: Device,
}

impl ClipTextEncoder {
    /// Load `{component}/config.json` and its weights (e.g. `text_encoder`, `text_encoder_2`) in
    /// `dtype` on `device`.
    pub fn load_from(source: &ModelSource, component: &str, dtype: DType, device: &Device) -> Result<Self> {
        let config_rel = format!("{component}/config.json");
        let config: TextEncoderConfig = source.read_json(&config_rel)?;
        let at = |e: Error| Error::file(source.path(&config_rel), e.to_string());
        let activation = match config.hidden_act.as_str() {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            other => return Err(at(Error::unsupported("hidden_act", other, "quick_gelu or gelu"))),
        };
        if !(config.layer_norm_eps.is_finite() && config.layer_norm_eps > 0.0) {
            return Err(at(Error::unsupported("layer_norm_eps", config.layer_norm_eps, "a positive number")));
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(at(Error::unsupported("num_attention_heads", config.num_attention_heads, "a divisor of hidden_size")));
        }
        for (k, v) in [("vocab_size", config.vocab_size), ("hidden_size", config.hidden_size), ("max_position_embeddings", config.max_position_embeddings)] {
            if v == 0 {
                return Err(at(Error::unsupported(k, 0, "must be at least 1")));
            }
        }
        let (vb, weights_path) = source.var_builder(component, "model", dtype, device)?;
        let mismatch = |e: candle_core::Error| Error::file(&weights_path, format!("weights do not match config.json: {e}"));
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let h = config.hidden_size;
        let token_embedding = embedding(config.vocab_size, h, emb.pp("token_embedding")).map_err(mismatch)?;
        let position_embedding = embedding(config.max_position_embeddings, h, emb.pp("position_embedding")).map_err(mismatch)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(tm.pp("encoder").pp("layers").pp(i), &config))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(mismatch)?;
        let final_layer_norm = layer_norm(h, config.layer_norm_eps, tm.pp("final_layer_norm")).map_err(mismatch)?;
        let text_projection = if vb.contains_tensor("text_projection.weight") {
            Some(linear_no_bias(h, config.projection_dim, vb.pp("text_projection")).map_err(mismatch)?)
        } else {
            None
        };
        Ok(Self { config, token_embedding, position_embedding, layers, final_layer_norm, text_projection, activation, device: device.clone() })
    }

    /// Whether the weights carry `text_projection` (`CLIPTextModelWithProjection`).
    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// Run `[batch, tokens]` ids through the text transformer.
    pub fn encode(&self, ids: &Tensor) -> Result<TextOutput> {
        let (b, len) = ids.dims2()?;
        if len > self.config.max_position_embeddings {
            return Err(Error::Shape {
                what: "token ids".into(),
                expected: format!("at most {} tokens", self.config.max_position_embeddings),
                got: format!("{len}"),
            });
        }
        let flat: Vec<u32> = ids.flatten_all()?.to_vec1::<u32>()?;
        if let Some(&bad) = flat.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(Error::Shape { what: "token ids".into(), expected: format!("ids below vocab_size {}", self.config.vocab_size), got: format!("{bad}") });
        }
        let positions = Tensor::arange(0u32, len as u32, &self.device)?;
        let mut x = self.token_embedding.forward(ids)?.broadcast_add(&self.position_embedding.forward(&positions)?)?;
        // causal: each token attends to itself and those before it
        let mask: Vec<f32> = (0..len).flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
        let mask = Tensor::from_vec(mask, (1, 1, len, len), &self.device)?.to_dtype(x.dtype())?;
        let mut hidden_states = vec![x.clone()];
        for layer in &self.layers {
            x = layer.forward(&x, &mask, self.config.num_attention_heads, self.activation)?;
            hidden_states.push(x.clone());
        }
        let last_hidden_state = self.final_layer_norm.forward(&x)?;
        // transformers 4.53: the legacy eos id 2 means "the highest id" (CLIP's end token is the
        // last in its vocabulary); otherwise the first occurrence of eos_token_id
        let eos: Vec<u32> = flat
            .chunks(len)
            .map(|row| {
                let pos = if self.config.eos_token_id == 2 {
                    row.iter().enumerate().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0))).map(|(i, _)| i)
                } else {
                    row.iter().position(|&t| t == self.config.eos_token_id)
                };
                pos.unwrap_or(0) as u32
            })
            .collect();
        let idx = Tensor::from_vec(eos, b, &self.device)?;
        let pooled = last_hidden_state.gather(&idx.reshape((b, 1, 1))?.broadcast_as((b, 1, self.config.hidden_size))?.contiguous()?, 1)?.squeeze(1)?;
        Ok(TextOutput { hidden_states, last_hidden_state, pooled })
    }

    /// `[batch, tokens]` ids -> `[batch, tokens, hidden_size]` last hidden state.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.encode(ids)?.last_hidden_state)
    }

    /// `final_layer_norm` of a hidden state (SD's `clip_skip`).
    pub fn final_layer_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.final_layer_norm.forward(hidden)?)
    }

    /// The projected pooled output (`text_embeds` of `CLIPTextModelWithProjection`).
    pub fn project(&self, pooled: &Tensor) -> Result<Tensor> {
        match &self.text_projection {
            Some(p) => Ok(p.forward(pooled)?),
            None => Err(Error::param("text_projection", "this text encoder has no projection (a CLIPTextModel, not CLIPTextModelWithProjection)")),
        }
    }
}
