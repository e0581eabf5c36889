//! `sada generate` on the tiny Flux pipelines of tests/fixtures/flux, driven by precomputed
//! embeddings (`--inputs`): the folder is recognised as Flux, its flow solver and guidance are
//! used, SADA runs on it, and what Flux cannot do yet is refused clearly.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use common::sada;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/flux")
}

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("flux", name)
}

/// The fixture's pipeline embeddings as an --inputs file.
fn inputs(dir: &std::path::Path) -> PathBuf {
    let want = candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu).unwrap();
    let t: HashMap<String, Tensor> = [("prompt_embeds", "pipe_prompt_embeds"), ("pooled_prompt_embeds", "pipe_pooled_prompt_embeds")]
        .into_iter()
        .map(|(k, f)| (k.to_string(), want[f].clone()))
        .collect();
    let p = dir.join("inputs.safetensors");
    candle_core::safetensors::save(&t, &p).unwrap();
    p
}

fn latents(path: &std::path::Path) -> Tensor {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap().remove("latents").unwrap()
}

#[test]
fn generate_runs_flux_from_embeddings_baseline_matches_diffusers_and_sada_skips() {
    let dir = tmp("generate");
    let (model, inp) = (fixtures().join("dev"), inputs(&dir));
    let (model, inp) = (model.to_str().unwrap(), inp.to_str().unwrap());
    let base = dir.join("base.safetensors");
    let args = ["generate", "--model", model, "--inputs", inp, "--height", "32", "--width", "48", "--seed", "7", "--output-type", "latent"];
    let (ok, _, err) = sada(&[&args[..], &["--accel", "none", "--output", base.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    let want = candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu).unwrap();
    let got = latents(&base);
    let err_rel = ((&got - &want["dev_final"]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap())
        / want["dev_final"].abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(err_rel < 1e-3, "CLI baseline off diffusers by {err_rel}");

    let fast = dir.join("sada.safetensors");
    let trace = dir.join("trace.json");
    let (ok, out, err) = sada(&[&args[..], &["--output", fast.to_str().unwrap(), "--trace", trace.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let evals = t["evaluations"].as_u64().unwrap();
    assert!(evals < 40, "SADA on Flux computed {evals} of 50 steps\n{out}{err}");

    // a PNG with the settings embedded
    let png = dir.join("flux.png");
    let (ok, _, err) = sada(&[&args[..9], &["--steps", "4", "--accel", "none", "--output", png.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    assert!(png.is_file());
}

/// A GGUF transformer is a single file like any other: `--model FILE.gguf`. All-F16 gives the
/// safetensors file's latents byte for byte; quantised files stay near them (latent PSNR printed).
#[test]
fn generate_takes_a_gguf_transformer_as_the_model() {
    let dir = tmp("gguf");
    let inp = inputs(&dir);
    let gguf = fixtures().join("../gguf");
    let run = |model: PathBuf, name: &str| {
        let out = dir.join(name);
        let args = ["generate", "--model", model.to_str().unwrap(), "--inputs", inp.to_str().unwrap(), "--height", "32", "--width", "48"];
        let (ok, _, err) = sada(&[&args[..], &["--steps", "20", "--accel", "none", "--output-type", "latent", "--output", out.to_str().unwrap()]].concat());
        assert!(ok, "{name}: {err}");
        out
    };
    let base = run(fixtures().join("flux_dev_single.safetensors"), "base.safetensors");
    let f16 = run(gguf.join("flux_dev_f16.gguf"), "f16.safetensors");
    assert_eq!(std::fs::read(&base).unwrap(), std::fs::read(&f16).unwrap());
    let reference = latents(&base);
    let peak = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    for (file, min_db) in [("flux_dev_q8_0.gguf", 40.0), ("flux_dev_q4_0.gguf", 20.0), ("flux_dev_q4_k.gguf", 20.0)] {
        let got = latents(&run(gguf.join(file), &format!("{file}.safetensors")));
        let mse = (&got - &reference).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        let psnr = 10.0 * (peak * peak / mse).log10();
        eprintln!("{file}: latent PSNR {psnr:.1} dB against f16 (20 steps)");
        assert!(psnr >= min_db, "{file}: {psnr:.1} dB");
    }
}

/// `--denoiser FILE.gguf`: the transformer from a GGUF file, text encoders, VAE and scheduler
/// from the model folder, from a prompt to a PNG. The all-F16 file gives the folder's own
/// latents byte for byte; a transformer for another architecture is refused by name.
#[test]
fn a_gguf_denoiser_runs_inside_a_model_folder() {
    let dir = tmp("denoiser");
    let model = dev_with_vocab(&dir);
    let m = model.to_str().unwrap();
    let gguf = fixtures().join("../gguf");
    let args = ["generate", "--model", m, "--prompt", "a red square", "--height", "32", "--width", "32", "--steps", "4", "--accel", "none"];
    let run = |extra: &[&str], out: &str| {
        let out = dir.join(out);
        let (ok, _, err) = sada(&[&args[..], extra, &["--output", out.to_str().unwrap()]].concat());
        assert!(ok, "{extra:?}: {err}");
        out
    };
    let own = run(&["--output-type", "latent"], "own.safetensors");
    let f16 = gguf.join("flux_dev_f16.gguf");
    let swapped = run(&["--output-type", "latent", "--denoiser", f16.to_str().unwrap()], "f16.safetensors");
    assert_eq!(std::fs::read(&own).unwrap(), std::fs::read(&swapped).unwrap());
    let q8 = gguf.join("flux_dev_q8_0.gguf");
    let png = run(&["--denoiser", q8.to_str().unwrap(), "--weights", "q8_0"], "q8.png");
    assert!(png.is_file());

    let sd15 = dir.join("sd15");
    common::sd_fixture::sd_folder("sd15", &sd15);
    let (ok, _, err) = sada(&[
        "generate",
        "--model",
        sd15.to_str().unwrap(),
        "--denoiser",
        q8.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--output",
        dir.join("x.png").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("flux_dev_q8_0.gguf") && err.contains("a Stable Diffusion model") && err.trim().lines().count() == 1, "{err}");
    let (ok, _, err) = sada(&["generate", "--denoiser", q8.to_str().unwrap(), "--prompt", "a cat"]);
    assert!(!ok && err.contains("--model"), "{err}");
}

#[test]
fn flux_refuses_prompts_odd_sizes_and_diffusion_solvers() {
    let dir = tmp("refuse");
    // schnell's fixture folder has no text encoders
    let schnell = fixtures().join("schnell");
    let (ok, _, err) = sada(&["generate", "--model", schnell.to_str().unwrap(), "--prompt", "a cat", "--output", dir.join("a.png").to_str().unwrap()]);
    assert!(!ok && err.contains("text_encoder_2") && err.contains("prompt_embeds") && err.lines().count() <= 3, "{err}");
    let model = fixtures().join("dev");
    let model = model.to_str().unwrap();
    let inp = inputs(&dir);
    let inp = inp.to_str().unwrap();
    let (ok, _, err) =
        sada(&["generate", "--model", model, "--inputs", inp, "--height", "30", "--width", "48", "--output", dir.join("b.png").to_str().unwrap()]);
    assert!(!ok && err.contains("multiples of 4"), "{err}");
    let (ok, _, err) = sada(&["generate", "--model", model, "--inputs", inp, "--solver", "dpm++", "--output", dir.join("c.png").to_str().unwrap()]);
    assert!(!ok && err.contains("flow"), "{err}");
    // guidance is an input of Flux's network: NaN or 1e300 would reach it (schnell takes none, and still refuses NaN)
    for (m, g) in [(model.to_owned(), "nan"), (model.to_owned(), "1e300"), (schnell.to_str().unwrap().to_owned(), "nan")] {
        let (ok, _, err) = sada(&["generate", "--model", &m, "--inputs", inp, "--guidance-scale", g, "--output", dir.join("g.png").to_str().unwrap()]);
        assert!(!ok && err.contains("`guidance_scale`") && err.trim().lines().count() == 1, "{g}: {err}");
    }
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| e.unwrap().file_name() == "inputs.safetensors"), "a refused run left a file");

    // precomputed inputs Flux would ignore, or of a length the T5 path never makes
    let want = candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu).unwrap();
    let (pe, pooled) = (want["pipe_prompt_embeds"].clone(), want["pipe_pooled_prompt_embeds"].clone());
    let d = pe.dim(2).unwrap();
    let long = Tensor::zeros((1, 513, d), candle_core::DType::F32, &Device::Cpu).unwrap();
    let none = Tensor::zeros((1, 0, d), candle_core::DType::F32, &Device::Cpu).unwrap();
    for (extra, needle) in [
        (vec![("negative_prompt_embeds", pe.clone())], "negative_prompt_embeds"),
        (vec![("prompt_embeds", long)], "at most 512"),
        (vec![("prompt_embeds", none)], "is empty"),
    ] {
        let mut t: HashMap<String, Tensor> = HashMap::from([("prompt_embeds".to_owned(), pe.clone()), ("pooled_prompt_embeds".to_owned(), pooled.clone())]);
        t.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
        let p = dir.join("odd.safetensors");
        candle_core::safetensors::save(&t, &p).unwrap();
        let out = dir.join("d.png");
        let (ok, _, err) =
            sada(&["generate", "--model", model, "--inputs", p.to_str().unwrap(), "--steps", "2", "--accel", "none", "--output", out.to_str().unwrap()]);
        assert!(!ok && err.contains(needle) && err.trim().lines().count() == 1, "{needle}: {err}");
        assert!(!out.exists());
    }
}

/// The dev fixture with its CLIP vocabulary put back (the fixtures leave it out; the crate ships it).
fn dev_with_vocab(dir: &std::path::Path) -> PathBuf {
    let m = dir.join("dev");
    common::sd_fixture::with_clip_vocab(&fixtures().join("dev"), &m);
    m
}

#[test]
fn generate_from_a_prompt_matches_diffusers_and_refuses_negative_prompts() {
    let dir = tmp("prompt");
    let m = dev_with_vocab(&dir);
    let prompts: Vec<String> = serde_json::from_str(&std::fs::read_to_string(fixtures().join("prompts.json")).unwrap()).unwrap();
    let out = dir.join("cat.safetensors");
    let args = [
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        prompts[0].as_str(),
        "--height",
        "32",
        "--width",
        "48",
        "--seed",
        "7",
        "--accel",
        "none",
        "--output-type",
        "latent",
    ];
    let (ok, _, err) = sada(&[&args[..], &["--output", out.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    // diffusers drew seed 7's noise for two prompts; the first image's is the first half
    let want = candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu).unwrap();
    let want = want["dev_prompt_final"].narrow(0, 0, 1).unwrap();
    let got = latents(&out);
    let rel = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
        / want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(rel < 1e-3, "CLI from a prompt off diffusers by {rel}");
    let (ok, _, err) = sada(&[&args[..], &["--negative-prompt", "blurry", "--output", dir.join("n.png").to_str().unwrap()]].concat());
    assert!(!ok && err.contains("negative"), "{err}");
}

#[test]
fn max_sequence_length_and_teacache_apply_where_they_can() {
    let dir = tmp("seq");
    let m = dev_with_vocab(&dir);
    let m = m.to_str().unwrap();
    let run = |extra: &[&str], out: &str| {
        let p = dir.join(out);
        let args = [
            "generate",
            "--model",
            m,
            "--prompt",
            "a cat holding a sign",
            "--height",
            "32",
            "--width",
            "32",
            "--steps",
            "4",
            "--accel",
            "none",
            "--output-type",
            "latent",
            "--output",
            p.to_str().unwrap(),
        ];
        let r = sada(&[&args[..], extra].concat());
        (r, p)
    };
    let ((ok, _, err), a) = run(&[], "a.safetensors");
    assert!(ok, "{err}");
    let ((ok, _, err), b) = run(&["--max-sequence-length", "16"], "b.safetensors");
    assert!(ok, "{err}");
    // fewer T5 tokens (less padding attended) change the result
    let d = (latents(&a) - latents(&b)).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d > 1e-4, "max_sequence_length had no effect");
    let ((ok, _, err), _) = run(&["--max-sequence-length", "0"], "c.safetensors");
    assert!(!ok && err.contains("max_sequence_length"), "{err}");
    // TeaCache on Flux runs; on the embedded UNet it is refused by name
    let p = dir.join("t.safetensors");
    let (ok, _, err) = sada(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "a cat",
        "--height",
        "32",
        "--width",
        "32",
        "--accel",
        "teacache",
        "--output-type",
        "latent",
        "--output",
        p.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = sada(&["generate", "--prompt", "a red circle", "--accel", "teacache", "--steps", "8", "--output", dir.join("u.png").to_str().unwrap()]);
    assert!(!ok && err.contains("teacache"), "{err}");
    assert!(!dir.join("u.png").exists() && !dir.join("c.safetensors").exists());
}
