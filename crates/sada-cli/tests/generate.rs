//! `sada generate` on diffusers-layout folders assembled from the tiny fixtures, and its errors.

mod common;

use std::path::{Path, PathBuf};

use common::sada;
use common::sd_fixture::copy_dir;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A model folder: sd2_tiny's unet and scheduler plus the tiny VAE.
fn model(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("sada-gen-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let f = fixtures();
    copy_dir(&f.join("unet/sd2_tiny/unet"), &root.join("unet"));
    copy_dir(&f.join("unet/sd2_tiny/scheduler"), &root.join("scheduler"));
    copy_dir(&f.join("vae/tiny/vae"), &root.join("vae"));
    root
}

fn inputs() -> String {
    fixtures().join("unet/sd2_tiny/pipeline.safetensors").to_string_lossy().into_owned()
}

fn gen(model: &Path, extra: &[&str]) -> (bool, String, String) {
    let m = model.to_string_lossy().into_owned();
    let i = inputs();
    let mut args = vec!["generate", "--model", m.as_str(), "--inputs", i.as_str()];
    args.extend_from_slice(extra);
    sada(&args)
}

#[test]
fn writes_a_png_with_settings_and_a_trace() {
    let m = model("png");
    let out = m.join("out.png");
    let trace = m.join("trace.json");
    let (ok, stdout, err) = gen(&m, &["--output", out.to_str().unwrap(), "--trace", trace.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(stdout.starts_with("SADA: ") && stdout.contains(" evaluations") && stdout.contains("for 50 steps"), "{stdout}");
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("parameters") && text.contains("\"guidance_scale\":7.5"), "settings missing from PNG");
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert!(t["evaluations"].as_u64().unwrap() < 50);
    std::fs::remove_dir_all(&m).ok();
}

#[test]
fn latent_output_of_the_baseline_matches_diffusers() {
    let m = model("latent");
    let out = m.join("latents.safetensors");
    let (ok, _, err) = gen(&m, &["--accel", "none", "--output-type", "latent", "--output", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let got = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    let want = candle_core::safetensors::load(inputs(), &candle_core::Device::Cpu).unwrap();
    let (g, w) = (&got["latents"], &want["final_dpm"]);
    let diff = (g - w).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff / scale < 1e-3, "relative error {}", diff / scale);
    std::fs::remove_dir_all(&m).ok();
}

fn fails_with(m: &Path, extra: &[&str], needle: &str) {
    let out = m.join("never.png");
    let mut args: Vec<&str> = extra.to_vec();
    let o = out.to_string_lossy().into_owned();
    args.extend_from_slice(&["--output", o.as_str()]);
    let (ok, _, err) = gen(m, &args);
    assert!(!ok, "expected failure for {extra:?}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(!out.exists(), "half-written output left behind");
}

#[test]
fn bad_inputs_fail_with_one_clear_line_and_no_output() {
    let m = model("errors");
    // impossible SADA parameters for the step count
    fails_with(&m, &["--steps", "20"], "acc_range");
    // image size that does not fit the given latents
    fails_with(&m, &["--height", "64", "--width", "64"], "latents");
    // no vae/ for a PNG
    let no_vae = model("novae");
    std::fs::remove_dir_all(no_vae.join("vae")).unwrap();
    fails_with(&no_vae, &[], "--output-type latent");
    std::fs::remove_dir_all(&no_vae).ok();
    std::fs::remove_dir_all(&m).ok();
}

#[test]
fn broken_model_folders_are_named_in_the_error() {
    // missing folder
    let (ok, _, err) = sada(&["generate", "--model", "/nonexistent/model", "--inputs", &inputs(), "--output", "/tmp/x.png"]);
    assert!(!ok && err.contains("/nonexistent/model") && err.contains("no such folder or file"), "{err}");

    // corrupt weights
    let m = model("corrupt");
    std::fs::write(m.join("unet/diffusion_pytorch_model.safetensors"), b"not safetensors at all").unwrap();
    fails_with(&m, &[], "diffusion_pytorch_model.safetensors: not a valid safetensors file");
    std::fs::remove_dir_all(&m).ok();

    // missing weights
    let m = model("noweights");
    std::fs::remove_file(m.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    fails_with(&m, &[], "no weights");
    std::fs::remove_dir_all(&m).ok();

    // unsupported config value, named by key
    let m = model("badcfg");
    let cfg = std::fs::read_to_string(m.join("unet/config.json")).unwrap();
    std::fs::write(m.join("unet/config.json"), cfg.replace("\"resnet_time_scale_shift\": \"default\"", "\"resnet_time_scale_shift\": \"scale_shift\""))
        .unwrap();
    fails_with(&m, &[], "`resnet_time_scale_shift` = scale_shift");
    std::fs::remove_dir_all(&m).ok();

    // unsupported scheduler value
    let m = model("badsched");
    std::fs::write(m.join("scheduler/scheduler_config.json"), r#"{"beta_schedule": "sigmoid"}"#).unwrap();
    fails_with(&m, &[], "`beta_schedule` = sigmoid");
    std::fs::remove_dir_all(&m).ok();
}

#[test]
fn wrong_tensor_shapes_in_inputs_are_named() {
    let m = model("shapes");
    let dev = candle_core::Device::Cpu;
    let mut t = candle_core::safetensors::load(inputs(), &dev).unwrap();
    // embeddings of the wrong width for the UNet's cross_attention_dim (32)
    t.insert("prompt_embeds".into(), candle_core::Tensor::zeros((1, 7, 16), candle_core::DType::F32, &dev).unwrap());
    t.insert("negative_prompt_embeds".into(), candle_core::Tensor::zeros((1, 7, 16), candle_core::DType::F32, &dev).unwrap());
    let bad = m.join("bad.safetensors");
    candle_core::safetensors::save(&t, &bad).unwrap();
    let out = m.join("never.png");
    let (ok, _, err) = sada(&["generate", "--model", m.to_str().unwrap(), "--inputs", bad.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert!(!ok && err.contains("prompt_embeds") && err.contains("[batch, tokens, 32]"), "{err}");
    assert!(!out.exists());
    // an inputs file that is not safetensors
    std::fs::write(&bad, b"garbage").unwrap();
    let (ok, _, err) = sada(&["generate", "--model", m.to_str().unwrap(), "--inputs", bad.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert!(!ok && err.contains("bad.safetensors: not a valid safetensors file"), "{err}");
    std::fs::remove_dir_all(&m).ok();
}
