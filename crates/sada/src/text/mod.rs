//! Prompts to conditioning: a tokenizer and a CLIP text encoder, loaded from a diffusers
//! folder's `tokenizer/` and `text_encoder/` (and SDXL's `tokenizer_2/`, `text_encoder_2/`).

pub mod clip;
pub mod clip_tokenizer;
pub mod clip_vocab;
pub mod t5;
pub mod tokenizer;
mod unicode_tables;

pub use clip::ClipTextEncoder;
pub use clip_tokenizer::ClipTokenizer;
pub use tokenizer::WordLevelTokenizer;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::models::ModelSource;

/// A tokenizer folder of either kind this project reads.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// A word-level `tokenizer.json` (the embedded default model).
    WordLevel(WordLevelTokenizer),
    /// CLIP's BPE (`vocab.json` + `merges.txt`, or a BPE `tokenizer.json`): every Stable Diffusion.
    Clip(ClipTokenizer),
}

/// What a prompt becomes: unknown words (word-level vocabularies only), and its tokens against
/// the room between the start and end tokens.
pub struct TokenCount {
    /// Words not in a word-level vocabulary (always empty for CLIP's BPE, which has no unknown words).
    pub unknown: Vec<String>,
    /// How many tokens (words, for a word-level tokenizer) the prompt has, before truncation.
    pub tokens: usize,
    /// How many of them fit between the start and end tokens; the rest are truncated.
    pub window: usize,
}

fn token_text(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v["content"].as_str())
}

impl Tokenizer {
    /// Read `{component}/` of a model.
    pub fn load_from(source: &ModelSource, component: &str) -> Result<Self> {
        let rel = |f: &str| format!("{component}/{f}");
        let json: Option<Value> = if source.exists(&rel("tokenizer.json")) { Some(source.read_json(&rel("tokenizer.json"))?) } else { None };
        if json.as_ref().is_some_and(|j| j["model"]["type"] == "WordLevel") {
            return Ok(Tokenizer::WordLevel(WordLevelTokenizer::load_from(source, component)?));
        }
        let config: Value = if source.exists(&rel("tokenizer_config.json")) { source.read_json(&rel("tokenizer_config.json"))? } else { Value::Null };
        let specials: Value = if source.exists(&rel("special_tokens_map.json")) { source.read_json(&rel("special_tokens_map.json"))? } else { Value::Null };
        // transformers: in a legacy config (no added_tokens_decoder) special_tokens_map.json wins
        let legacy = config.get("added_tokens_decoder").is_none();
        let (first, second) = if legacy { (&specials, &config) } else { (&config, &specials) };
        let pad = token_text(&first["pad_token"]).or_else(|| token_text(&second["pad_token"])).unwrap_or("<|endoftext|>").to_owned();
        let max_length = match config.get("model_max_length") {
            None | Some(Value::Null) => 77,
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| Error::file(source.path(&rel("tokenizer_config.json")), format!("`model_max_length` = {v} is not a token count")))?,
        };
        let at = |f: &str, e: Error| Error::file(source.path(&rel(f)), e.to_string());
        if source.exists(&rel("vocab.json")) && source.exists(&rel("merges.txt")) {
            let (vocab, merges) = (source.read_to_string(&rel("vocab.json"))?, source.read_to_string(&rel("merges.txt"))?);
            return ClipTokenizer::new(&vocab, &merges, &pad, max_length).map(Tokenizer::Clip).map_err(|e| at("vocab.json", e));
        }
        match json {
            Some(j) if j["model"]["type"] == "BPE" => {
                // a fast tokenizer's file carries the same vocabulary and merges
                let vocab = j["model"]["vocab"].to_string();
                let merges: Vec<String> = j["model"]["merges"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .filter_map(|x| {
                                x.as_str().map(str::to_owned).or_else(|| x.as_array().map(|p| p.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ClipTokenizer::new(&vocab, &merges.join("\n"), &pad, max_length).map(Tokenizer::Clip).map_err(|e| at("tokenizer.json", e))
            }
            Some(j) => Err(Error::file(
                source.path(&rel("tokenizer.json")),
                format!("unsupported tokenizer model `{}`: expected WordLevel or CLIP's BPE", j["model"]["type"]),
            )),
            None => Err(Error::file(source.path(component), "no tokenizer: expected vocab.json + merges.txt or tokenizer.json")),
        }
    }

    /// `max_length` token ids, padded, as diffusers tokenizes a prompt.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            Tokenizer::WordLevel(t) => t.encode(text),
            Tokenizer::Clip(t) => t.encode(text),
        }
    }

    /// The fixed length every encoding is padded or truncated to (`model_max_length`).
    pub fn max_length(&self) -> usize {
        match self {
            Tokenizer::WordLevel(t) => t.max_length,
            Tokenizer::Clip(t) => t.max_length,
        }
    }

    /// Count `text`'s tokens against the room between the special tokens, and its unknown words.
    pub fn count(&self, text: &str) -> TokenCount {
        match self {
            Tokenizer::WordLevel(t) => {
                let (tokens, window) = t.word_counts(text);
                TokenCount { unknown: t.unknown_words(text), tokens, window }
            }
            Tokenizer::Clip(t) => {
                let (tokens, window) = t.token_counts(text);
                TokenCount { unknown: Vec::new(), tokens, window }
            }
        }
    }
}
