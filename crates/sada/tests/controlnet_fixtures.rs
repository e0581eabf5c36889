//! ControlNet against diffusers 0.34.0 (`tools/gen_controlnet_fixtures.py`): tiny random-weight
//! ControlNets made with `ControlNetModel.from_unet` for the SD-1.5, SD-2 and SDXL fixture
//! pipelines of tests/fixtures/sd, fp16 files.
//!
//! Tolerances: residuals and the UNet given them 1e-4 of the largest magnitude; 20-step final
//! latents 1e-3 of theirs (as the plain pipelines); the control image resize bit for bit.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use sada::denoiser::token_cache::TokenCache;
use sada::denoiser::{batch, Conditioning, Denoiser, ForwardContext, SiteHook, SiteKind, TokenPlan, TokenSelection};
use sada::image::{read_png, to_unit_tensor};
use sada::models::controlnet::{ControlNetModel, ControlSettings, ControlUnit, ControlledUNet};
use sada::models::{AdditionalResiduals, UNet2DConditionModel};
use sada::pipelines::{ControlInput, GenerateOptions, Pipeline, PipelineInputs, StableDiffusion};
use sada::policy::Acceleration;
use sada::resample::resize_lanczos;
use sada::solvers::SolverKind;
use sada::Family;

#[path = "common/sd_fixture.rs"]
mod sd_fixture;
use sd_fixture::sd_folder;

#[path = "common/device.rs"]
mod test_device;
use test_device::device;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/controlnet")
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("expected.safetensors"), &device()).unwrap()
}

fn sd_expected(fam: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(sd_fixture::fixtures().join(format!("{fam}_expected.safetensors")), &device()).unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims());
    let max = |t: Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64;
    max((got.to_dtype(DType::F32).unwrap() - want).unwrap()) / max(want.clone())
}

fn controlnet(name: &str) -> ControlNetModel {
    ControlNetModel::load(&dir().join(name), DType::F32, &device()).unwrap()
}

fn residuals(guess_mode: bool) -> (AdditionalResiduals, HashMap<String, Tensor>) {
    let want = expected();
    let cn = controlnet("sd15_canny");
    let mut cache = TokenCache::default();
    let mut ctx = ForwardContext::full(&mut cache);
    let r = cn.forward(&want["sample"], 500.0, &want["encoder_hidden_states"], None, &want["controlnet_cond"], 0.8, guess_mode, &mut ctx).unwrap();
    (r, want)
}

#[test]
fn residuals_match_diffusers() {
    for (guess, prefix) in [(false, "res"), (true, "guess")] {
        let (r, want) = residuals(guess);
        assert_eq!(r.down.len(), 4);
        for (i, d) in r.down.iter().enumerate() {
            let e = rel_err(d, &want[&format!("{prefix}_down_{i}")]);
            println!("{prefix} down {i}: relative {e:.2e}");
            assert!(e <= 1e-4, "{prefix} down residual {i}: {e:.2e}");
        }
        let e = rel_err(&r.mid, &want[&format!("{prefix}_mid")]);
        println!("{prefix} mid: relative {e:.2e}");
        assert!(e <= 1e-4, "{prefix} mid residual: {e:.2e}");
    }
}

#[test]
fn unet_adds_the_residuals_where_diffusers_does() {
    let (r, want) = residuals(false);
    let unet = UNet2DConditionModel::load(&sd_fixture::fixtures().join("sd15/unet"), DType::F32, &device()).unwrap();
    let mut cache = TokenCache::default();
    let mut ctx = ForwardContext::full(&mut cache);
    let got = unet.forward(&want["sample"], 500.0, &want["encoder_hidden_states"], None, Some(&r), &mut ctx).unwrap();
    let e = rel_err(&got, &want["unet_with_residuals"]);
    println!("UNet with residuals: relative {e:.2e}");
    assert!(e <= 1e-4, "UNet with residuals: {e:.2e}");
    // and they matter: without them the output is far off
    let mut ctx = ForwardContext::full(&mut cache);
    let plain = unet.forward(&want["sample"], 500.0, &want["encoder_hidden_states"], None, None, &mut ctx).unwrap();
    assert!(rel_err(&plain, &want["unet_with_residuals"]) > 1e-2);
    // a residual list of the wrong length is refused
    let short = AdditionalResiduals { down: r.down[..3].to_vec(), mid: r.mid.clone() };
    let mut ctx = ForwardContext::full(&mut cache);
    let err = unet.forward(&want["sample"], 500.0, &want["encoder_hidden_states"], None, Some(&short), &mut ctx).unwrap_err();
    assert!(err.to_string().contains("down_block_additional_residuals"), "{err}");
}

#[test]
fn control_image_resize_matches_pil() {
    let img = read_png(&dir().join("control_wide.png")).unwrap();
    assert_eq!((img.width, img.height), (40, 24));
    let got = to_unit_tensor(&resize_lanczos(&img, 32, 32), &device()).unwrap();
    let want = &expected()["control_wide_processed"];
    assert_eq!(got.dims(), want.dims());
    let d = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-6, "resized control image differs from PIL's by {d}");
}

fn cases() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap()
}

/// Fixture pipeline `base` with the ControlNets of `case`, and the case's inputs with their
/// control images and settings.
fn controlled(case: &serde_json::Value) -> (tempfile::TempDir, StableDiffusion, PipelineInputs) {
    let tmp = tempfile::tempdir().unwrap();
    sd_folder(case["base"].as_str().unwrap(), tmp.path());
    let mut pipe = StableDiffusion::load(tmp.path(), DType::F32, &device()).unwrap();
    let mut inputs = inputs(case["base"].as_str().unwrap());
    let f = |k: &str, i: usize| case[k][i].as_f64().unwrap();
    for (i, name) in case["nets"].as_array().unwrap().iter().enumerate() {
        let image = read_png(&dir().join(case["images"][i].as_str().unwrap())).unwrap();
        pipe.add_controlnet(controlnet(name.as_str().unwrap())).unwrap();
        inputs.control.push(ControlInput { image, settings: ControlSettings { scale: f("scale", i), start: f("start", i), end: f("end", i) } });
    }
    inputs.guess_mode = case["guess_mode"].as_bool().unwrap();
    (tmp, pipe, inputs)
}

/// The pipeline's ControlNets with the settings `inputs` gives them.
fn units<'a>(pipe: &'a StableDiffusion, inputs: &PipelineInputs) -> Vec<ControlUnit<'a>> {
    pipe.controlnets().iter().zip(&inputs.control).map(|(model, c)| ControlUnit { model, settings: c.settings }).collect()
}

fn inputs(base: &str) -> PipelineInputs {
    let e = sd_expected(base);
    PipelineInputs {
        prompt_embeds: Some(e["prompt_embeds"].clone()),
        negative_prompt_embeds: Some(e["negative_prompt_embeds"].clone()),
        pooled_prompt_embeds: e.get("pooled_prompt_embeds").cloned(),
        negative_pooled_prompt_embeds: e.get("negative_pooled_prompt_embeds").cloned(),
        latents: Some(e["latents"].clone()),
        ..Default::default()
    }
}

fn options(case: &serde_json::Value) -> GenerateOptions {
    GenerateOptions {
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance_scale"].as_f64().unwrap(),
        height: case["height"].as_u64().unwrap() as usize,
        width: case["width"].as_u64().unwrap() as usize,
        seed: 0,
        solver: if case["solver"] == "euler" { SolverKind::EulerDiscrete } else { SolverKind::DpmSolverMultistep },
        acceleration: Acceleration::default(),
        size_conditioning: Default::default(),
    }
}

fn check_case(name: &str) {
    let case = cases()[name].clone();
    let (_tmp, mut pipe, inputs) = controlled(&case);
    let (got, trace) = pipe.generate(&inputs, &options(&case), &mut |_, _| {}).unwrap();
    assert_eq!(trace.evaluations, 20);
    let e = rel_err(&got, &expected()[&format!("{name}_final")]);
    println!("{name}: final latents relative {e:.2e}");
    assert!(e <= 1e-3, "{name}: {e:.2e}");
}

#[test]
fn sd15_one_controlnet_matches_diffusers() {
    check_case("sd15_single");
}

#[test]
fn sd15_guess_mode_matches_diffusers() {
    check_case("sd15_guess");
}

#[test]
fn sd2_two_controlnets_with_windows_match_diffusers() {
    check_case("sd2_multi");
}

#[test]
fn sdxl_controlnet_matches_diffusers() {
    check_case("sdxl_single");
}

#[test]
fn accelerated_runs_skip_the_controlnet_with_the_unet() {
    let case = cases()["sd15_single"].clone();
    let (_tmp, mut pipe, inputs) = controlled(&case);
    let base = options(&case);
    let baseline = pipe.generate(&inputs, &GenerateOptions { steps: 50, ..base.clone() }, &mut |_, _| {}).unwrap().0;
    for accel in ["sada", "sada+:max_evals=25"] {
        let opts = GenerateOptions { steps: 50, acceleration: Acceleration::parse(accel, Family::StableDiffusion).unwrap(), ..base.clone() };
        let (got, trace) = pipe.generate(&inputs, &opts, &mut |_, _| {}).unwrap();
        assert!(trace.evaluations < 50, "{accel}: {} evaluations", trace.evaluations);
        let e = rel_err(&got, &baseline);
        println!("{accel}: {} evaluations, relative {e:.2e} from the 50-step baseline", trace.evaluations);
        assert!(e.is_finite() && e < 0.5, "{accel}: {e}");
    }
}

#[test]
fn controlnet_blocks_are_token_sites_of_their_own() {
    let case = cases()["sd15_single"].clone();
    let (_tmp, pipe, inputs) = controlled(&case);
    let want = expected();
    let (x, ehs) = (&want["sample"], &want["encoder_hidden_states"]);
    let cond = Conditioning::new()
        .with("encoder_hidden_states", ehs.clone())
        .with("controlnet_cond.0", want["controlnet_cond"].clone())
        .with("control_weight", Tensor::ones(2, DType::F32, &device()).unwrap());
    let nets = units(&pipe, &inputs);
    let model = ControlledUNet { unet: &pipe.unet, nets: &nets, guess_mode: false, num_steps: 10 };
    let mut cache = TokenCache::default();
    let full = model.predict(x, 500.0, &cond, &mut ForwardContext::new(0, &TokenPlan::Refresh, &mut cache, None)).unwrap();
    let sites: Vec<&str> = cache.sites().collect();
    assert!(sites.contains(&"down_blocks.0.attentions.0.transformer_blocks.0"), "{sites:?}");
    assert!(sites.contains(&"controlnet.0/down_blocks.0.attentions.0.transformer_blocks.0"), "{sites:?}");
    assert_eq!(sites.iter().filter(|s| s.starts_with("controlnet.0/")).count(), 2, "{sites:?}");
    // every token selected: the same as computing them all
    let all = TokenSelection::new(vec![true; 256], 16, 16, 2, 2, 0, 1);
    let pruned_all = model.predict(x, 500.0, &cond, &mut ForwardContext::new(1, &TokenPlan::Pruned(all), &mut cache, None)).unwrap();
    assert!(rel_err(&pruned_all, &full) < 1e-6);
    // a quarter of the tokens: the rest come from the caches, ControlNet's included
    let some = TokenSelection::new(vec![false; 256], 16, 16, 2, 2, 0, 1);
    assert!(some.num_computed() < 256);
    let x2 = (x * 1.1).unwrap();
    let pruned = model.predict(&x2, 500.0, &cond, &mut ForwardContext::new(2, &TokenPlan::Pruned(some), &mut cache, None)).unwrap();
    assert!(pruned.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
    let exact = model.predict_full(&x2, 500.0, &cond).unwrap();
    assert!(rel_err(&pruned, &exact) > 1e-5, "pruning changed nothing");
}

#[test]
fn one_image_per_core_equals_the_batched_controlled_forward() {
    // on two threads a guided batch runs one image per core, ControlNets included; on one it
    // runs whole. A full step, then a pruned step reading the caches the full step left (the
    // ControlNets' blocks too, split per image and merged back). Guess mode keeps the batch whole.
    let case = cases()["sd15_single"].clone();
    let (_tmp, mut pipe, mut inputs) = controlled(&case);
    // a second ControlNet, so the residuals of two are summed per image
    pipe.add_controlnet(controlnet("sd15_canny")).unwrap();
    let square = read_png(&dir().join("control_square.png")).unwrap();
    inputs.control.push(ControlInput { image: square, settings: ControlSettings { scale: 0.6, start: 0.0, end: 1.0 } });
    let want = expected();
    let (x, ehs) = (&want["sample"], &want["encoder_hidden_states"]);
    assert_eq!(x.dim(0).unwrap(), 2);
    let cond = Conditioning::new()
        .with("encoder_hidden_states", ehs.clone())
        .with("controlnet_cond.0", want["controlnet_cond"].clone())
        // each image its own control image, so a mix-up between images shows
        .with(
            "controlnet_cond.1",
            Tensor::cat(
                &[(want["controlnet_cond"].narrow(0, 0, 1).unwrap() * 0.5).unwrap(), (want["controlnet_cond"].narrow(0, 1, 1).unwrap() * 0.2).unwrap()],
                0,
            )
            .unwrap(),
        )
        .with("control_weight", Tensor::ones(2, DType::F32, &device()).unwrap());
    let nets = units(&pipe, &inputs);
    let model = ControlledUNet { unet: &pipe.unet, nets: &nets, guess_mode: false, num_steps: 10 };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let some = TokenSelection::new(vec![false; 256], 16, 16, 2, 2, 0, 1);
    let plans = [TokenPlan::Refresh, TokenPlan::Pruned(some)];
    let (mut split_cache, mut batch_cache) = (TokenCache::default(), TokenCache::default());
    for (step, (plan, x)) in plans.iter().zip([x.clone(), (x * 1.1).unwrap()]).enumerate() {
        let split = two.install(|| batch::predict(&model, &x, 500.0, &cond, &mut ForwardContext::new(step, plan, &mut split_cache, None))).unwrap();
        let batched = one.install(|| batch::predict(&model, &x, 500.0, &cond, &mut ForwardContext::new(step, plan, &mut batch_cache, None))).unwrap();
        let e = rel_err(&split, &batched);
        println!("step {step}: per-image vs batched relative difference {e:e}");
        assert!(e <= 1e-5, "step {step}: per-image vs batched differ by {e:e}");
    }
    let sites = |c: &TokenCache| {
        let mut s: Vec<String> = c.sites().map(str::to_owned).collect();
        s.sort();
        s
    };
    assert_eq!(sites(&split_cache), sites(&batch_cache), "the merged cache lost sites");
    assert!(sites(&split_cache).iter().any(|s| s.starts_with("controlnet.1/")), "{:?}", sites(&split_cache));
    // a hook acting at Rest(1), per image
    struct AtRest1;
    impl SiteHook for AtRest1 {
        fn uses(&self, kind: SiteKind) -> bool {
            kind == SiteKind::Rest(1)
        }
    }
    let (mut c1, mut c2) = (TokenCache::default(), TokenCache::default());
    let (h1, h2) = (AtRest1, AtRest1);
    let a = two.install(|| batch::predict(&model, x, 500.0, &cond, &mut ForwardContext::new(0, &TokenPlan::Refresh, &mut c1, Some(&h1)))).unwrap();
    let b = one.install(|| batch::predict(&model, x, 500.0, &cond, &mut ForwardContext::new(0, &TokenPlan::Refresh, &mut c2, Some(&h2)))).unwrap();
    let e = rel_err(&a, &b);
    assert!(e <= 1e-5, "with a hook at Rest(1): per-image vs batched differ by {e:e}");
    // guess mode's unconditional image skips the ControlNets: the batch stays whole, same result
    let guess = ControlledUNet { guess_mode: true, ..model };
    let cond = cond.with("control_weight", Tensor::new(&[0f32, 1.0], &device()).unwrap());
    let mut c1 = TokenCache::default();
    let mut c2 = TokenCache::default();
    let a = two.install(|| batch::predict(&guess, x, 500.0, &cond, &mut ForwardContext::new(0, &TokenPlan::Refresh, &mut c1, None))).unwrap();
    let b = one.install(|| batch::predict(&guess, x, 500.0, &cond, &mut ForwardContext::new(0, &TokenPlan::Refresh, &mut c2, None))).unwrap();
    assert_eq!(rel_err(&a, &b), 0.0, "guess mode ran split");
}

#[test]
fn controlnet_for_another_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    sd_folder("sd15", tmp.path());
    let mut pipe = StableDiffusion::load(tmp.path(), DType::F32, &device()).unwrap();
    let image = read_png(&dir().join("control_circle.png")).unwrap();
    let err = pipe.add_controlnet(controlnet("sdxl_canny")).unwrap_err().to_string();
    assert!(err.contains("controlnet") && err.contains("another model"), "{err}");
    assert!(pipe.controlnets().is_empty());
    // settings diffusers refuses are refused by the run, before it samples
    pipe.add_controlnet(controlnet("sd15_canny")).unwrap();
    let case = cases()["sd15_single"].clone();
    for (settings, want) in [
        (ControlSettings { scale: f64::NAN, ..Default::default() }, "controlnet_conditioning_scale"),
        (ControlSettings { start: 0.6, end: 0.4, ..Default::default() }, "control_guidance_start/end"),
    ] {
        let run = PipelineInputs { control: vec![ControlInput { image: image.clone(), settings }], ..inputs("sd15") };
        let err = pipe.generate(&run, &options(&case), &mut |_, _| {}).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    // one control input per ControlNet
    let err = pipe.generate(&inputs("sd15"), &options(&case), &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("0 given for 1 ControlNets"), "{err}");

    // a folder without config.json, and weights that do not fit their config
    let err = ControlNetModel::load(tmp.path(), DType::F32, &device()).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");
    let bad = tempfile::tempdir().unwrap();
    std::fs::copy(dir().join("sd15_canny/config.json"), bad.path().join("config.json")).unwrap();
    std::fs::copy(dir().join("sdxl_canny/diffusion_pytorch_model.fp16.safetensors"), bad.path().join("diffusion_pytorch_model.fp16.safetensors")).unwrap();
    let err = ControlNetModel::load(bad.path(), DType::F32, &device()).err().unwrap().to_string();
    assert!(err.contains("diffusion_pytorch_model") && err.contains("do not match"), "{err}");
    std::fs::write(bad.path().join("diffusion_pytorch_model.fp16.safetensors"), b"not a safetensors file").unwrap();
    let err = ControlNetModel::load(bad.path(), DType::F32, &device()).err().unwrap().to_string();
    assert!(err.contains("diffusion_pytorch_model"), "{err}");
}

#[test]
fn single_file_controlnet_gives_what_the_folder_gives() {
    let want = expected();
    let folder = controlnet("sd15_canny");
    let single = ControlNetModel::load(&dir().join("sd15_canny.safetensors"), DType::F32, &device()).unwrap();
    assert_eq!(single.config.extra.conditioning_embedding_out_channels, folder.config.extra.conditioning_embedding_out_channels);
    let run = |cn: &ControlNetModel| {
        let mut cache = TokenCache::default();
        let mut ctx = ForwardContext::full(&mut cache);
        cn.forward(&want["sample"], 500.0, &want["encoder_hidden_states"], None, &want["controlnet_cond"], 0.8, false, &mut ctx).unwrap()
    };
    let (a, b) = (run(&folder), run(&single));
    for (x, y) in a.down.iter().chain([&a.mid]).zip(b.down.iter().chain([&b.mid])) {
        assert_eq!(rel_err(y, x), 0.0);
    }
    // a Stable Diffusion checkpoint is not a ControlNet, and a pickle is not read
    let err = ControlNetModel::load(&sd_fixture::fixtures().join("sd15.safetensors"), DType::F32, &device()).err().unwrap().to_string();
    assert!(err.contains("not a ControlNet checkpoint"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let pth = tmp.path().join("control_sd15_canny.pth");
    std::fs::write(&pth, b"pickle").unwrap();
    let err = ControlNetModel::load(&pth, DType::F32, &device()).err().unwrap().to_string();
    assert!(err.contains("pickled"), "{err}");
}
