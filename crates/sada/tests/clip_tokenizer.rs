//! CLIP's BPE tokenizer against transformers' `CLIPTokenizer` (4.53.3, no ftfy, Python 3.11) on
//! 400 prompts with the real 49,408-token vocabulary, for both pad tokens Stable Diffusion uses
//! (`tools/gen_clip_tokenizer.py`): every id equal.

use std::path::PathBuf;

use candle_core::Device;
use sada::text::clip_tokenizer::ClipTokenizer;
use sada::text::clip_vocab::{MERGES_TXT, VOCAB_JSON};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip_tokenizer").join(name)
}

#[test]
fn ids_equal_transformers_on_400_prompts_with_both_pad_tokens() {
    let prompts: Vec<String> = serde_json::from_str(&std::fs::read_to_string(fixture("prompts.json")).unwrap()).unwrap();
    let want = candle_core::safetensors::load(fixture("ids.safetensors"), &Device::Cpu).unwrap();
    for (layout, pad) in [("pad_endoftext", "<|endoftext|>"), ("pad_bang", "!")] {
        let tok = ClipTokenizer::new(VOCAB_JSON, MERGES_TXT, pad, 77).unwrap();
        let rows: Vec<Vec<i64>> = want[layout].to_vec2().unwrap();
        let mut bad = Vec::new();
        for (p, row) in prompts.iter().zip(&rows) {
            let got: Vec<i64> = tok.encode(p).into_iter().map(i64::from).collect();
            if &got != row {
                bad.push(format!("{p:?}\n  ours {got:?}\n  want {row:?}"));
            }
        }
        assert!(bad.is_empty(), "{layout}: {} of {} prompts differ:\n{}", bad.len(), prompts.len(), bad.join("\n"));
    }
}

#[test]
fn truncation_keeps_the_end_token_and_the_pad_token_is_special() {
    let tok = ClipTokenizer::new(VOCAB_JSON, MERGES_TXT, "!", 77).unwrap();
    let ids = tok.encode(&"word ".repeat(100));
    assert_eq!((ids.len(), ids[0], ids[76]), (77, 49406, 49407));
    assert_eq!(tok.token_counts(&"word ".repeat(100)), (100, 75));
    // with "!" as the pad token, every "!" in the prompt is that special token (id 0)
    assert_eq!(&tok.encode("wow! great!!")[..7], &[49406, 2781, 0, 830, 0, 0, 49407]);
    let plain = ClipTokenizer::new(VOCAB_JSON, MERGES_TXT, "<|endoftext|>", 77).unwrap();
    assert_eq!(&plain.encode("wow! great!!")[..5], &[49406, 2781, 256, 830, 748]);
}
