//! CLIP's BPE vocabulary (OpenAI's, 49,408 tokens), compiled in: single-file checkpoints carry
//! no tokenizer, and every Stable Diffusion text encoder reads this one.

/// `vocab.json` and `merges.txt` in the Hugging Face CLIP layout (`tools/gen_clip_tokenizer.py`).
pub static VOCAB_JSON: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/clip/vocab.json"));
/// The BPE merges (`merges.txt`) of the same vocabulary, one `a b` pair per line in rank order.
pub static MERGES_TXT: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/clip/merges.txt"));

/// A tokenizer folder's files for this vocabulary with `pad_token` (`<|endoftext|>` for SD-1.x
/// and SDXL's first tokenizer, `!` for SD-2.x and SDXL's second).
pub fn tokenizer_files(pad_token: &str) -> Vec<(&'static str, String)> {
    let specials = serde_json::json!({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad_token});
    let config = serde_json::json!({"model_max_length": 77, "pad_token": pad_token, "tokenizer_class": "CLIPTokenizer"});
    vec![
        ("vocab.json", VOCAB_JSON.to_owned()),
        ("merges.txt", MERGES_TXT.to_owned()),
        ("special_tokens_map.json", specials.to_string()),
        ("tokenizer_config.json", config.to_string()),
    ]
}
