//! The word-level tokenizer, the CLIP text encoder and the image metrics against the Python
//! reference (transformers 4.53.3, scikit-image 0.24.0), on fixtures written by
//! `tools/gen_text_fixtures.py`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use sada::image::RgbImage;
use sada::metrics::{psnr_rgb, ssim};
use sada::models::ModelSource;
use sada::text::{ClipTextEncoder, WordLevelTokenizer};

#[path = "common/device.rs"]
mod test_device;
use test_device::device;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &device()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn prompts() -> Vec<String> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("text/prompts.json")).unwrap()).unwrap()
}

#[test]
fn tokenizer_matches_transformers() {
    let source = ModelSource::Dir(fixtures().join("text"));
    let tok = WordLevelTokenizer::load_from(&source, "tokenizer").unwrap();
    let want: Vec<Vec<i64>> = load(fixtures().join("text/expected.safetensors"))["input_ids"].to_vec2().unwrap();
    for (prompt, want) in prompts().iter().zip(want) {
        let got: Vec<i64> = tok.encode(prompt).into_iter().map(i64::from).collect();
        assert_eq!(got, want, "prompt {prompt:?}");
    }
    assert_eq!(tok.unknown_words("a purple dog at the top right"), vec!["dog"]);
}

#[test]
fn text_encoder_matches_transformers() {
    let source = ModelSource::Dir(fixtures().join("text"));
    let tok = WordLevelTokenizer::load_from(&source, "tokenizer").unwrap();
    let enc = ClipTextEncoder::load_from(&source, "text_encoder", DType::F32, &device()).unwrap();
    let ids: Vec<Vec<u32>> = prompts().iter().map(|p| tok.encode(p)).collect();
    let got = enc.forward(&Tensor::new(ids, &device()).unwrap()).unwrap();
    let want = &load(fixtures().join("text/expected.safetensors"))["last_hidden_state"];
    let err = (&got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    println!("text encoder: max abs error {err:.2e} (max |value| {scale:.2})");
    assert!(err <= 1e-5 * scale, "max abs error {err} vs scale {scale}");
}

#[test]
fn bpe_tokenizers_are_refused_by_name() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.join("tokenizer")).unwrap();
    std::fs::write(dir.join("tokenizer/tokenizer.json"), r#"{"model": {"type": "BPE", "vocab": {}}}"#).unwrap();
    std::fs::write(dir.join("tokenizer/tokenizer_config.json"), "{}").unwrap();
    let err = WordLevelTokenizer::load_from(&ModelSource::Dir(dir.clone()), "tokenizer").unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("BPE") && err.contains("WordLevel"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sada-text-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn ssim_and_psnr_match_scikit_image() {
    let f = load(fixtures().join("metrics/ssim.safetensors"));
    let (a, b): (Vec<u8>, Vec<u8>) = (f["a"].to_vec1().unwrap(), f["b"].to_vec1().unwrap());
    let sizes: Vec<Vec<i64>> = f["sizes"].to_vec2().unwrap();
    let (want_ssim, want_psnr): (Vec<f64>, Vec<f64>) = (f["ssim"].to_vec1().unwrap(), f["psnr"].to_vec1().unwrap());
    let mut offset = 0;
    for (i, hw) in sizes.iter().enumerate() {
        let (h, w) = (hw[0] as usize, hw[1] as usize);
        let n = h * w * 3;
        let img = |p: &[u8]| RgbImage { width: w, height: h, pixels: p[offset..offset + n].to_vec() };
        let (x, y) = (img(&a), img(&b));
        let s = ssim(&x, &y).unwrap();
        let p = psnr_rgb(&x, &y).unwrap();
        println!("pair {i} ({w}x{h}): ssim {s:.6} (skimage {:.6}), psnr {p:.4}", want_ssim[i]);
        assert!((s - want_ssim[i]).abs() < 1e-9, "ssim {s} vs {}", want_ssim[i]);
        assert!((p - want_psnr[i]).abs() < 1e-9, "psnr {p} vs {}", want_psnr[i]);
        assert!((ssim(&x, &x).unwrap() - 1.0).abs() < 1e-12);
        offset += n;
    }
}
