//! Flux's second text encoder: T5 v1.1's encoder (transformers' `T5EncoderModel`, from
//! candle-transformers, which computes it as transformers does) and its SentencePiece tokenizer,
//! read from the `tokenizer.json` a `T5TokenizerFast` folder holds through the `tokenizers` crate.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::t5;

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

pub struct T5Encoder {
    inner: t5::T5EncoderModel,
    pub config: t5::Config,
}

impl T5Encoder {
    /// `component/config.json` and its weights (`model.safetensors`, the fp16 variant or shards).
    pub fn load_from(source: &ModelSource, component: &str, dtype: DType, device: &Device) -> Result<Self> {
        let rel = format!("{component}/config.json");
        let config: t5::Config = source.read_json(&rel)?;
        if config.d_model == 0 || config.num_heads == 0 || config.vocab_size == 0 {
            return Err(Error::file(source.path(&rel), "unsupported config: d_model, num_heads and vocab_size must be positive"));
        }
        let (vb, path) = source.var_builder(component, "model", dtype, device)?;
        let inner = t5::T5EncoderModel::load(vb, &config).map_err(|e| Error::file(&path, format!("weights do not match config.json: {e}")))?;
        Ok(Self { inner, config })
    }

    /// The last hidden state `[B, T, d_model]` for ids `[B, T]` (no attention mask: Flux's
    /// pipeline attends over the padding too).
    pub fn encode(&mut self, ids: &Tensor) -> Result<Tensor> {
        if let Some(bad) = ids.flatten_all()?.to_vec1::<u32>()?.into_iter().find(|&i| i as usize >= self.config.vocab_size) {
            return Err(Error::param("prompt", format!("token id {bad} is outside T5's vocabulary of {}: tokenizer and text encoder do not match", self.config.vocab_size)));
        }
        let out = self.inner.forward(ids)?;
        self.inner.clear_kv_cache();
        Ok(out)
    }
}
