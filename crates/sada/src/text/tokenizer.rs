//! Hugging Face `tokenizer.json` with a word-level model, as the embedded default model uses.
//! Only the pieces that model uses are read (Lowercase normalizer, WhitespaceSplit
//! pre-tokenizer, WordLevel vocabulary, TemplateProcessing special tokens); any other kind is
//! refused by name rather than tokenised differently from Python. Encoding follows how
//! diffusers calls a tokenizer: `padding="max_length", max_length=model_max_length,
//! truncation=True`.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::models::ModelSource;

/// No text encoder reads more tokens than this; a bound on what a config can make us allocate.
const MAX_LENGTH: usize = 1 << 16;

/// A word-level `tokenizer.json` (see the module docs), encoding as diffusers calls a tokenizer.
#[derive(Debug, Clone)]
pub struct WordLevelTokenizer {
    vocab: HashMap<String, u32>,
    unk_id: u32,
    lowercase: bool,
    /// Special tokens around the words (TemplateProcessing's `single`), split at `$A`.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    pad_id: u32,
    /// `model_max_length`: every encoding is this many ids.
    pub max_length: usize,
}

impl WordLevelTokenizer {
    /// Read `{component}/tokenizer.json` and `{component}/tokenizer_config.json`.
    pub fn load_from(source: &ModelSource, component: &str) -> Result<Self> {
        let rel = format!("{component}/tokenizer.json");
        let json: Value = source.read_json(&rel)?;
        let config: Value = source.read_json(&format!("{component}/tokenizer_config.json"))?;
        Self::from_json(&json, &config).map_err(|e| match e {
            Error::UnsupportedConfig { key, value, expected } => Error::file(source.path(&rel), format!("unsupported `{key}` = {value}: {expected}")),
            Error::InvalidParameter { name, message } => Error::file(source.path(&rel), format!("`{name}`: {message}")),
            other => other,
        })
    }

    /// Build from a parsed `tokenizer.json` and `tokenizer_config.json`, refusing any piece this
    /// reader does not implement.
    pub fn from_json(json: &Value, config: &Value) -> Result<Self> {
        let model = &json["model"];
        let kind = model["type"].as_str().unwrap_or("none");
        if kind != "WordLevel" {
            return Err(Error::unsupported(
                "model.type",
                kind,
                "only WordLevel tokenizers are supported (pass precomputed prompt_embeds for BPE/CLIP tokenizers)",
            ));
        }
        let vocab: HashMap<String, u32> = model["vocab"]
            .as_object()
            .ok_or_else(|| Error::param("model.vocab", "expected an object of token -> id"))?
            .iter()
            .map(|(k, v)| v.as_u64().map(|id| (k.clone(), id as u32)).ok_or_else(|| Error::param("model.vocab", format!("id of `{k}` is not an integer"))))
            .collect::<Result<_>>()?;
        let id_of = |what: &str, token: &str| {
            vocab.get(token).copied().ok_or_else(|| Error::param(what.to_string(), format!("token `{token}` is not in the vocabulary")))
        };
        let unk_id = id_of("model.unk_token", model["unk_token"].as_str().unwrap_or(""))?;
        let lowercase = match json["normalizer"]["type"].as_str() {
            None => false,
            Some("Lowercase") => true,
            Some(other) => return Err(Error::unsupported("normalizer.type", other, "Lowercase or none")),
        };
        match json["pre_tokenizer"]["type"].as_str() {
            Some("WhitespaceSplit") => {}
            other => return Err(Error::unsupported("pre_tokenizer.type", other.unwrap_or("none"), "WhitespaceSplit")),
        }
        let (mut prefix, mut suffix, mut seen_a) = (Vec::new(), Vec::new(), false);
        match json["post_processor"]["type"].as_str() {
            None => {}
            Some("TemplateProcessing") => {
                for piece in json["post_processor"]["single"].as_array().into_iter().flatten() {
                    if let Some(tok) = piece["SpecialToken"]["id"].as_str() {
                        let id = id_of("post_processor.single", tok)?;
                        if seen_a {
                            suffix.push(id)
                        } else {
                            prefix.push(id)
                        }
                    } else if piece["Sequence"]["id"].as_str() == Some("A") {
                        seen_a = true;
                    } else {
                        return Err(Error::unsupported("post_processor.single", piece, "SpecialToken or Sequence A"));
                    }
                }
            }
            Some(other) => return Err(Error::unsupported("post_processor.type", other, "TemplateProcessing or none")),
        }
        let pad_token = config["pad_token"]
            .as_str()
            .or_else(|| json["padding"]["pad_token"].as_str())
            .ok_or_else(|| Error::param("pad_token", "missing from tokenizer_config.json"))?;
        let pad_id = id_of("pad_token", pad_token)?;
        let max_length = config["model_max_length"].as_u64().ok_or_else(|| Error::param("model_max_length", "missing from tokenizer_config.json"))? as usize;
        if max_length > MAX_LENGTH {
            return Err(Error::param("model_max_length", format!("{max_length} is more than any text encoder reads (at most {MAX_LENGTH})")));
        }
        if max_length <= prefix.len() + suffix.len() {
            return Err(Error::param("model_max_length", format!("{max_length} leaves no room between the special tokens")));
        }
        Ok(Self { vocab, unk_id, lowercase, prefix, suffix, pad_id, max_length })
    }

    /// Token ids, exactly `max_length` long: special tokens around the (truncated) words,
    /// then padding.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = if self.lowercase { text.to_lowercase() } else { text.to_string() };
        let room = self.max_length - self.prefix.len() - self.suffix.len();
        let words = text.split_whitespace().take(room).map(|w| self.vocab.get(w).copied().unwrap_or(self.unk_id));
        let mut ids: Vec<u32> = self.prefix.iter().copied().chain(words).chain(self.suffix.iter().copied()).collect();
        ids.resize(self.max_length, self.pad_id);
        ids
    }

    /// How many words `text` has, and how many fit between the special tokens (the rest are
    /// dropped by [`Self::encode`]).
    pub fn word_counts(&self, text: &str) -> (usize, usize) {
        (text.split_whitespace().count(), self.max_length - self.prefix.len() - self.suffix.len())
    }

    /// Whether every word of `text` is in the vocabulary (a prompt the model can read).
    pub fn unknown_words(&self, text: &str) -> Vec<String> {
        let text = if self.lowercase { text.to_lowercase() } else { text.to_string() };
        text.split_whitespace().filter(|w| !self.vocab.contains_key(*w)).map(str::to_owned).collect()
    }
}
