//! Flux's second text encoder: T5's encoder stack (transformers' `T5EncoderModel`: RMS norms,
//! unscaled attention with bucketed relative positions shared by every layer, a gated or plain
//! feed-forward) and its SentencePiece tokenizer, read from the `tokenizer.json` a
//! `T5TokenizerFast` folder holds through the `tokenizers` crate.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::models::layers::linear::{linear_no_bias, Linear};

use crate::error::{Error, Result};
use crate::models::ModelSource;

/// T5's tokenizer, padding and truncating to a fixed length as diffusers' Flux pipeline asks
/// (`padding="max_length", truncation=True`): the end-of-sequence token stays last.
pub struct T5Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl T5Tokenizer {
    /// `component/tokenizer.json` (the slow tokenizer's `spiece.model` alone is not read).
    pub fn load_from(source: &ModelSource, component: &str) -> Result<Self> {
        let rel = format!("{component}/tokenizer.json");
        let path = source.path(&rel);
        if !source.exists(&rel) {
            return Err(Error::file(path, "not found: T5's tokenizer is read from tokenizer.json (save the tokenizer with T5TokenizerFast)"));
        }
        let text = source.read_to_string(&rel)?;
        let inner: tokenizers::Tokenizer = text.parse().map_err(|e| Error::file(&path, format!("not a tokenizer.json this reader understands: {e}")))?;
        if inner.get_vocab_size(true) == 0 {
            return Err(Error::file(&path, "the tokenizer has an empty vocabulary"));
        }
        Ok(Self { inner })
    }

    fn pad(&self) -> (u32, String) {
        for t in ["<pad>", "[PAD]"] {
            if let Some(id) = self.inner.token_to_id(t) {
                return (id, t.to_string());
            }
        }
        (0, "<pad>".into())
    }

    /// Ids of `text`, with the end-of-sequence token, truncated and padded to `max_length`.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<Vec<u32>> {
        let mut tok = self.inner.clone();
        let (pad_id, pad_token) = self.pad();
        tok.with_truncation(Some(tokenizers::TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| Error::param("max_sequence_length", format!("{max_length}: {e}")))?;
        tok.with_padding(Some(tokenizers::PaddingParams { strategy: tokenizers::PaddingStrategy::Fixed(max_length), pad_id, pad_token, ..Default::default() }));
        let enc = tok.encode(text, true).map_err(|e| Error::param("prompt", format!("T5's tokenizer failed on it: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// How many tokens `text` has (with the end-of-sequence token), before truncation.
    pub fn count(&self, text: &str) -> Result<usize> {
        let enc = self.inner.encode(text, true).map_err(|e| Error::param("prompt", format!("T5's tokenizer failed on it: {e}")))?;
        Ok(enc.get_ids().len())
    }
}

/// transformers' `T5Config`, the values the encoder reads (defaults as transformers' constructor).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct T5Config {
    /// Rows of the shared token embedding (32,128 for T5).
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub d_model: usize,
    /// Width of each attention head.
    pub d_kv: usize,
    /// Width of the feed-forward.
    pub d_ff: usize,
    /// Number of encoder blocks.
    pub num_layers: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// Buckets of the relative-position attention bias shared by every block.
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions fall in the last (logarithmic) bucket.
    pub relative_attention_max_distance: usize,
    /// Epsilon of the RMS norms.
    pub layer_norm_epsilon: f64,
    /// `relu`, `gelu`, `silu` or their `gated-` forms (T5 v1.1 and FLUX.1's encoder: `gated-gelu`).
    pub feed_forward_proj: String,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
        }
    }
}

/// The feed-forward's activation, as transformers reads `feed_forward_proj`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Activation {
    Relu,
    /// `gelu` alone is the exact (erf) GELU; `gated-gelu` is mapped to the tanh form (`gelu_new`).
    GeluErf,
    GeluTanh,
    Silu,
}

/// The `feed_forward_proj` values this encoder runs, as transformers reads them.
const FEED_FORWARD_PROJ: [&str; 6] = ["relu", "gated-relu", "gelu", "gated-gelu", "silu", "gated-silu"];

/// The smallest `layer_norm_epsilon` accepted: the norms add it in float32, where smaller
/// values vanish (T5 uses 1e-6).
const MIN_LAYER_NORM_EPSILON: f64 = 1e-30;

impl T5Config {
    /// The activation and whether the feed-forward is gated, or why this config cannot be run.
    fn feed_forward(&self) -> std::result::Result<(Activation, bool), String> {
        Ok(match self.feed_forward_proj.as_str() {
            "relu" => (Activation::Relu, false),
            "gated-relu" => (Activation::Relu, true),
            "gelu" => (Activation::GeluErf, false),
            "gated-gelu" => (Activation::GeluTanh, true),
            "silu" => (Activation::Silu, false),
            "gated-silu" => (Activation::Silu, true),
            other => return Err(format!("`feed_forward_proj` = {other:?}: expected one of {}", FEED_FORWARD_PROJ.join(", "))),
        })
    }

    /// Refuse values no T5 has: sizes of zero or far beyond T5-XXL's (d_model 4096, d_ff 10240,
    /// 64 heads, 24 layers; mT5's vocabulary of 250,112), which would only fail later or ask
    /// for absurd allocations, and norms whose epsilon is not a small positive number. Each
    /// message names the key and what it may hold.
    fn validate(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size, 1 << 20),
            ("d_model", self.d_model, 1 << 16),
            ("d_kv", self.d_kv, 1 << 12),
            ("d_ff", self.d_ff, 1 << 18),
            ("num_layers", self.num_layers, 1 << 10),
            ("num_heads", self.num_heads, 1 << 10),
            ("relative_attention_num_buckets", self.relative_attention_num_buckets, 1 << 12),
            ("relative_attention_max_distance", self.relative_attention_max_distance, 1 << 20),
        ];
        for (key, value, max) in sizes {
            if value == 0 || value > max {
                return Err(format!("`{key}` = {value}: expected a whole number from 1 to {max}"));
            }
        }
        if self.num_heads * self.d_kv > 1 << 16 {
            return Err(format!(
                "`num_heads` = {} times `d_kv` = {} is {}: expected at most {} (the attention's width)",
                self.num_heads,
                self.d_kv,
                self.num_heads * self.d_kv,
                1 << 16
            ));
        }
        if self.relative_attention_num_buckets < 4 {
            return Err(format!("`relative_attention_num_buckets` = {}: expected at least 4 (T5 uses 32)", self.relative_attention_num_buckets));
        }
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets / 4 {
            return Err(format!(
                "`relative_attention_max_distance` = {}: expected more than a quarter of `relative_attention_num_buckets` = {} (T5 uses 128)",
                self.relative_attention_max_distance, self.relative_attention_num_buckets
            ));
        }
        let eps = self.layer_norm_epsilon;
        if !(eps.is_finite() && (MIN_LAYER_NORM_EPSILON..=1.0).contains(&eps)) {
            return Err(format!("`layer_norm_epsilon` = {eps}: expected a positive number from {MIN_LAYER_NORM_EPSILON:e} to 1 (T5 uses 1e-6)"));
        }
        self.feed_forward().map(|_| ())
    }
}

/// T5's norm: x / rms(x) * weight, no mean subtracted, no bias; computed in float32.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(vb: VarBuilder, dim: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, eps })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x32.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(self.weight.dtype())?;
        normed.broadcast_mul(&self.weight)
    }
}

/// transformers' `_relative_position_bucket` for the encoder (bidirectional): half the buckets
/// for keys after the query; exact buckets for short distances, logarithmic ones up to
/// `max_distance`; computed in float32 and truncated as torch does.
fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let mut bucket = if relative > 0 { half } else { 0 };
    let distance = relative.unsigned_abs() as usize;
    let max_exact = half / 2;
    bucket += if distance < max_exact {
        distance
    } else {
        let log_ratio = (distance as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln();
        let large = max_exact + (log_ratio * (half - max_exact) as f32) as usize;
        large.min(half - 1)
    };
    bucket
}

struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    d_kv: usize,
}

struct FeedForward {
    wi: Linear,
    /// The gate's second projection (`wi_1`) of a gated feed-forward.
    wi_1: Option<Linear>,
    wo: Linear,
    act: Activation,
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.wi.forward(x)?;
        let h = match self.act {
            Activation::Relu => h.relu()?,
            Activation::GeluErf => h.gelu_erf()?,
            Activation::GeluTanh => h.gelu()?,
            Activation::Silu => h.silu()?,
        };
        let h = match &self.wi_1 {
            Some(g) => (h * g.forward(x)?)?,
            None => h,
        };
        self.wo.forward(&h)
    }
}

struct Block {
    attn_norm: RmsNorm,
    attn: SelfAttention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

/// transformers' `T5EncoderModel`: its last hidden state.
pub struct T5Encoder {
    embed_tokens: Tensor,
    /// `[num_buckets, heads]`, held by the first layer and shared by all.
    relative_attention_bias: Tensor,
    blocks: Vec<Block>,
    final_layer_norm: RmsNorm,
    /// The `config.json` it was built from.
    pub config: T5Config,
}

impl T5Encoder {
    /// `component/config.json` and its weights (`model.safetensors`, the fp16 variant or shards).
    pub fn load_from(source: &ModelSource, component: &str, dtype: DType, device: &Device) -> Result<Self> {
        let rel = format!("{component}/config.json");
        let config: T5Config = source.read_json(&rel)?;
        config.validate().map_err(|msg| Error::file(source.path(&rel), format!("unsupported config: {msg}")))?;
        let (vb, path) = source.var_builder(component, "model", dtype, device)?;
        Self::new(vb, config).map_err(|e| Error::file(&path, format!("weights do not match config.json: {e}")))
    }

    fn new(vb: VarBuilder, config: T5Config) -> candle_core::Result<Self> {
        let (d, inner) = (config.d_model, config.num_heads * config.d_kv);
        let (act, gated) = config.feed_forward().map_err(candle_core::Error::msg)?;
        // the shared embedding; some exports keep only the encoder's tied copy
        let embed_tokens = match vb.get((config.vocab_size, d), "shared.weight") {
            Ok(w) => w,
            Err(_) => vb.get((config.vocab_size, d), "encoder.embed_tokens.weight")?,
        };
        let enc = vb.pp("encoder");
        let eps = config.layer_norm_epsilon;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let b = enc.pp("block").pp(i).pp("layer");
            let (a, f) = (b.pp(0), b.pp(1));
            let sa = a.pp("SelfAttention");
            let ffn = f.pp("DenseReluDense");
            blocks.push(Block {
                attn_norm: RmsNorm::new(a.pp("layer_norm"), d, eps)?,
                attn: SelfAttention {
                    q: linear_no_bias(d, inner, sa.pp("q"))?,
                    k: linear_no_bias(d, inner, sa.pp("k"))?,
                    v: linear_no_bias(d, inner, sa.pp("v"))?,
                    o: linear_no_bias(inner, d, sa.pp("o"))?,
                    heads: config.num_heads,
                    d_kv: config.d_kv,
                },
                ff_norm: RmsNorm::new(f.pp("layer_norm"), d, eps)?,
                ff: FeedForward {
                    wi: linear_no_bias(d, config.d_ff, ffn.pp(if gated { "wi_0" } else { "wi" }))?,
                    wi_1: if gated { Some(linear_no_bias(d, config.d_ff, ffn.pp("wi_1"))?) } else { None },
                    wo: linear_no_bias(config.d_ff, d, ffn.pp("wo"))?,
                    act,
                },
            });
        }
        let relative_attention_bias =
            enc.pp("block.0.layer.0.SelfAttention.relative_attention_bias").get((config.relative_attention_num_buckets, config.num_heads), "weight")?;
        let final_layer_norm = RmsNorm::new(enc.pp("final_layer_norm"), d, eps)?;
        Ok(Self { embed_tokens, relative_attention_bias, blocks, final_layer_norm, config })
    }

    /// The additive attention bias `[1, heads, T, T]` of a `t`-token sequence.
    fn position_bias(&self, t: usize) -> candle_core::Result<Tensor> {
        let (buckets, max_distance) = (self.config.relative_attention_num_buckets, self.config.relative_attention_max_distance);
        let ids: Vec<u32> = (0..t as i64).flat_map(|q| (0..t as i64).map(move |k| relative_position_bucket(k - q, buckets, max_distance) as u32)).collect();
        let ids = Tensor::from_vec(ids, t * t, self.relative_attention_bias.device())?;
        let bias = self.relative_attention_bias.index_select(&ids, 0)?.to_dtype(DType::F32)?;
        bias.reshape((t, t, self.config.num_heads))?.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()
    }

    /// The last hidden state `[B, T, d_model]` for ids `[B, T]` (no attention mask: Flux's
    /// pipeline attends over the padding too).
    pub fn encode(&mut self, ids: &Tensor) -> Result<Tensor> {
        if let Some(bad) = ids.flatten_all()?.to_vec1::<u32>()?.into_iter().find(|&i| i as usize >= self.config.vocab_size) {
            return Err(Error::param(
                "prompt",
                format!("token id {bad} is outside T5's vocabulary of {}: tokenizer and text encoder do not match", self.config.vocab_size),
            ));
        }
        Ok(self.forward(ids)?)
    }

    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let _s = tracing::trace_span!("t5").entered();
        let (b, t) = ids.dims2()?;
        let mut h = self.embed_tokens.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, self.config.d_model))?;
        let bias = self.position_bias(t)?;
        for block in &self.blocks {
            let a = &block.attn;
            let x = block.attn_norm.forward(&h)?;
            let split = |p: &Linear| -> candle_core::Result<Tensor> {
                p.forward(&x)?.reshape((b, t, a.heads, a.d_kv))?.transpose(1, 2)?.to_dtype(DType::F32)?.contiguous()
            };
            let (q, k, v) = (split(&a.q)?, split(&a.k)?, split(&a.v)?);
            // T5 does not scale the scores: its initialisation folds 1/sqrt(d_kv) into q
            let scores = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, a.heads * a.d_kv))?.to_dtype(h.dtype())?;
            h = (h + a.o.forward(&ctx)?)?;
            h = (&h + block.ff.forward(&block.ff_norm.forward(&h)?)?)?;
        }
        self.final_layer_norm.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture's T5 config (FLUX.1's layout at toy size) with `changes` applied.
    fn config(changes: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": ["T5EncoderModel"], "d_ff": 64, "d_kv": 8, "d_model": 32, "feed_forward_proj": "gated-gelu",
            "layer_norm_epsilon": 1e-06, "model_type": "t5", "num_heads": 4, "num_layers": 2,
            "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32, "vocab_size": 116
        });
        let object = v.as_object_mut().expect("an object");
        for (k, x) in changes.as_object().expect("an object") {
            object.insert(k.clone(), x.clone());
        }
        v
    }

    /// Why `changes` make the config unusable (read and validated as `load_from` does).
    fn refusal(changes: serde_json::Value) -> String {
        let text = config(changes).to_string();
        match crate::config::parse_config::<T5Config>(&text, std::path::Path::new("text_encoder_2/config.json")) {
            Err(e) => e.to_string(),
            Ok(c) => c.validate().expect_err("accepted"),
        }
    }

    #[test]
    fn the_fixture_config_is_accepted() {
        let c: T5Config = crate::config::from_value(config(serde_json::json!({}))).unwrap();
        c.validate().unwrap();
        assert_eq!(c.feed_forward().unwrap(), (Activation::GeluTanh, true));
    }

    #[test]
    fn layer_norm_epsilon_must_be_a_small_positive_number() {
        for bad in [serde_json::json!(-1e-6), serde_json::json!(0.0), serde_json::json!(1e-40), serde_json::json!(2.0), serde_json::json!("1e-6")] {
            let e = refusal(serde_json::json!({ "layer_norm_epsilon": bad }));
            assert!(e.contains("`layer_norm_epsilon` = "), "{bad}: {e}");
        }
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let c = T5Config { layer_norm_epsilon: bad, ..Default::default() };
            let e = c.validate().unwrap_err();
            assert!(e.starts_with("`layer_norm_epsilon` = ") && e.contains("expected a positive number"), "{e}");
        }
        // NaN and Infinity as Python writes them
        let text = config(serde_json::json!({"layer_norm_epsilon": "EPS"})).to_string().replace("\"EPS\"", "NaN");
        let e = crate::config::parse_config::<T5Config>(&text, std::path::Path::new("config.json")).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("`layer_norm_epsilon` = null"), "{e}");
    }

    #[test]
    fn sizes_of_zero_or_far_beyond_any_t5_are_refused_by_key() {
        for key in ["vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets", "relative_attention_max_distance"] {
            for bad in [0u64, 1 << 40] {
                let e = refusal(serde_json::json!({ key: bad }));
                assert!(e.starts_with(&format!("`{key}` = {bad}: expected a whole number from 1 to ")), "{key} = {bad}: {e}");
            }
        }
        let e = refusal(serde_json::json!({"num_heads": 1024, "d_kv": 1024}));
        assert!(e.contains("`num_heads`") && e.contains("`d_kv`"), "{e}");
        let e = refusal(serde_json::json!({"relative_attention_num_buckets": 2}));
        assert!(e.starts_with("`relative_attention_num_buckets` = 2"), "{e}");
        let e = refusal(serde_json::json!({"relative_attention_num_buckets": 64, "relative_attention_max_distance": 16}));
        assert!(e.starts_with("`relative_attention_max_distance` = 16"), "{e}");
    }

    #[test]
    fn an_unknown_feed_forward_proj_is_named_with_the_supported_values() {
        let e = refusal(serde_json::json!({"feed_forward_proj": "swish"}));
        assert_eq!(e, "`feed_forward_proj` = \"swish\": expected one of relu, gated-relu, gelu, gated-gelu, silu, gated-silu");
        // through the loader: the file is named, and no other key is blamed
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("text_encoder_2")).unwrap();
        std::fs::write(tmp.path().join("text_encoder_2/config.json"), config(serde_json::json!({"feed_forward_proj": "swish"})).to_string()).unwrap();
        let source = ModelSource::Dir(tmp.path().to_path_buf());
        let e = T5Encoder::load_from(&source, "text_encoder_2", DType::F32, &Device::Cpu).err().expect("refused").to_string();
        assert!(e.contains("config.json") && e.contains("`feed_forward_proj` = \"swish\"") && !e.contains("vocab_size"), "{e}");
    }
}
