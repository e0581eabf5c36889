//! `sada convert` from the command line: a folder written as one GGUF file that `generate` then
//! runs from, and every bad invocation a one-line error that leaves no file behind.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_flag_explained, sada, tmp_dir};

fn fixture(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel).display().to_string()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_folder_converts_to_a_gguf_file_that_generate_runs() {
    let dir = tmp_dir("convert", "roundtrip");
    let out = dir.join("sd2-q8_0.gguf");
    let (ok, _, err) = sada(&["convert", "--model", &fixture("sd/sd2"), "--all", "--weights", "q8_0", "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("Sd2") && err.contains("unet, vae, text_encoder") && err.contains("wrote"), "{err}");
    assert_eq!(files_in(&dir), ["sd2-q8_0.gguf"], "only the file itself is left");
    let latents = dir.join("latents.safetensors");
    let (ok, _, err) = sada(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "a red circle",
        "--steps",
        "2",
        "--height",
        "32",
        "--width",
        "32",
        "--accel",
        "none",
        "--output-type",
        "latent",
        "--output",
        latents.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(latents.is_file());
}

#[test]
fn bad_conversions_fail_with_one_line_and_write_nothing() {
    let dir = tmp_dir("convert", "hostile");
    let d = |name: &str| dir.join(name).display().to_string();
    let single = dir.join("in.safetensors");
    std::fs::copy(fixture("sd/sd15.safetensors"), &single).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--model".into(), fixture("sd/sd15"), "--out".into(), d("x.bin")], "expected a .gguf or .safetensors"),
        (vec!["--model".into(), fixture("sd/sd15"), "--out".into(), d("no/such/x.gguf")], "does not exist"),
        (vec!["--model".into(), fixture("sd/sd15"), "--weights".into(), "q8_0".into(), "--out".into(), d("x.safetensors")], "q8_0"),
        (vec!["--model".into(), fixture("sd/sd15"), "--weights".into(), "q3".into(), "--out".into(), d("x.gguf")], "q3"),
        (vec!["--out".into(), d("x.gguf")], "--model"),
        (vec!["--model".into(), single.display().to_string(), "--out".into(), single.display().to_string()], "is the model being read"),
        (vec!["--model".into(), fixture("flux/dev"), "--all".into(), "--out".into(), d("x.gguf")], "transformer alone"),
        (vec!["--model".into(), d("missing"), "--out".into(), d("x.gguf")], "missing"),
    ];
    for (args, want) in cases {
        let mut all = vec!["convert".to_string()];
        all.extend(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let (ok, _, err) = sada(&refs);
        assert!(!ok, "{refs:?} succeeded");
        assert_eq!(err.trim().lines().count(), 1, "{refs:?}: {err}");
        assert!(err.contains(want), "{refs:?}: expected `{want}` in: {err}");
        assert_eq!(files_in(&dir), ["in.safetensors"], "{refs:?} left a file");
    }
    assert_eq!(std::fs::read(&single).unwrap(), std::fs::read(fixture("sd/sd15.safetensors")).unwrap(), "the input is untouched");
}

#[test]
fn help_explains_the_convert_flags() {
    let (ok, out, _) = sada(&["convert", "-h"]);
    assert!(ok);
    for flag in ["--model", "--denoiser", "-o, --out", "--weights", "--all"] {
        assert_flag_explained(&out, flag);
    }
}
