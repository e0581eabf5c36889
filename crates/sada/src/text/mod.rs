//! Prompts to conditioning: a tokenizer and a CLIP text encoder, loaded from a diffusers
//! folder's `tokenizer/` and `text_encoder/`.

pub mod clip;
pub mod tokenizer;

pub use clip::ClipTextEncoder;
pub use tokenizer::WordLevelTokenizer;
