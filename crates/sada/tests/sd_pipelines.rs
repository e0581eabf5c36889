//! Stable Diffusion 1.5-, 2- and XL-shaped pipelines from a prompt, against diffusers
//! (`tools/gen_sd_pipeline_fixtures.py`): tiny random weights, the real CLIP vocabulary, the
//! scheduler class each real checkpoint ships, fp16 files; the same weights as a single-file
//! checkpoint in the original LDM / SGM layout.
//!
//! Tolerances: prompt embeddings 1e-4 (absolute), 20-step final latents 1e-3 of their largest
//! magnitude, decoded images 1/255.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use sada::models::single_file::Checkpoint;
use sada::models::ModelSource;
use sada::pipelines::{GenerateOptions, Pipeline, PipelineInputs, PromptOptions, StableDiffusion};
use sada::policy::Acceleration;
use sada::solvers::SolverKind;
use sada::Family;

#[path = "common/sd_fixture.rs"]
mod sd_fixture;
use sd_fixture::{fixtures, sd_folder};

#[path = "common/device.rs"]
mod test_device;
use test_device::device;

/// A complete copy of fixture pipeline `fam`.
fn folder(fam: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    sd_folder(fam, tmp.path());
    tmp
}

fn expected(fam: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(format!("{fam}_expected.safetensors")), &device()).unwrap()
}

fn case(fam: &str) -> serde_json::Value {
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap()).unwrap();
    cases[fam].clone()
}

fn max_abs(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims());
    let d = (got.to_dtype(DType::F32).unwrap() - want).unwrap().abs().unwrap();
    d.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64
}

fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64;
    max_abs(got, want) / scale
}

fn options(fam: &str) -> GenerateOptions {
    let c = case(fam);
    GenerateOptions {
        steps: c["steps"].as_u64().unwrap() as usize,
        guidance_scale: c["guidance_scale"].as_f64().unwrap(),
        height: c["height"].as_u64().unwrap() as usize,
        width: c["width"].as_u64().unwrap() as usize,
        seed: c["seed"].as_u64().unwrap(),
        solver: match c["solver"].as_str().unwrap() {
            "dpm++" => SolverKind::DpmSolverMultistep,
            "euler" => SolverKind::EulerDiscrete,
            other => panic!("solver {other}"),
        },
        acceleration: Acceleration::default(),
        size_conditioning: Default::default(),
    }
}

fn encode(pipe: &mut StableDiffusion, fam: &str, clip_skip: Option<usize>) -> PipelineInputs {
    let c = case(fam);
    pipe.encode_prompts(
        &[c["prompt"].as_str().unwrap().to_string()],
        &PromptOptions { negative_prompt: c["negative_prompt"].as_str().map(str::to_owned), clip_skip, ..Default::default() },
    )
    .unwrap()
}

/// Final latents from the prompt, from the fixture's `latents` or (None) from the seed.
fn sample(pipe: &mut StableDiffusion, fam: &str, latents: Option<&Tensor>) -> Tensor {
    let mut inputs = encode(pipe, fam, None);
    inputs.latents = latents.cloned();
    pipe.generate(&inputs, &options(fam), &mut |_, _| {}).unwrap().0
}

fn check_family(fam: &str) {
    let dir = folder(fam);
    let want = expected(fam);
    let mut pipe = StableDiffusion::load(dir.path(), DType::F32, &device()).unwrap();
    assert_eq!(pipe.scheduler_class().as_deref(), case(fam)["scheduler_shipped"].as_str());

    let inputs = encode(&mut pipe, fam, None);
    let mut embeds = vec![("prompt_embeds", inputs.prompt_embeds.clone()), ("negative_prompt_embeds", inputs.negative_prompt_embeds.clone())];
    if fam == "sdxl" {
        embeds.push(("pooled_prompt_embeds", inputs.pooled_prompt_embeds.clone()));
        embeds.push(("negative_pooled_prompt_embeds", inputs.negative_pooled_prompt_embeds.clone()));
    } else {
        assert!(inputs.pooled_prompt_embeds.is_none());
    }
    embeds.push(("clip_skip_prompt_embeds", encode(&mut pipe, fam, Some(1)).prompt_embeds));
    for (name, got) in embeds {
        let e = max_abs(&got.unwrap(), &want[name]);
        println!("{fam} {name}: max |diff| {e:.2e}");
        assert!(e <= 1e-4, "{fam} {name}: max |diff| {e:.2e}");
    }

    let from_latents = sample(&mut pipe, fam, Some(&want["latents"]));
    let e = rel_err(&from_latents, &want["final_from_latents"]);
    println!("{fam} final latents from latents: relative {e:.2e}");
    assert!(e <= 1e-3, "{fam} from latents: {e:.2e}");
    let from_seed = sample(&mut pipe, fam, None);
    let e = rel_err(&from_seed, &want["final_from_seed"]);
    println!("{fam} final latents from the seed: relative {e:.2e}");
    assert!(e <= 1e-3, "{fam} from seed {}: {e:.2e}", case(fam)["seed"]);

    let image = pipe.decode(&from_latents).unwrap().unwrap();
    let image = ((image / 2.0).unwrap() + 0.5).unwrap().clamp(0f32, 1f32).unwrap();
    let e = max_abs(&image, &want["image_from_latents"]);
    println!("{fam} decoded image: max |diff| {e:.2e}");
    assert!(e <= 1.0 / 255.0, "{fam} decoded image: {e:.2e}");

    // the single-file checkpoint: same weights, renamed as it is read, architecture inferred
    let ck = Checkpoint::open(&fixtures().join(format!("{fam}.safetensors"))).unwrap();
    let mut single = StableDiffusion::load_from(ModelSource::SingleFile(Arc::new(ck)), DType::F32, &device()).unwrap();
    let got = sample(&mut single, fam, Some(&want["latents"]));
    let e = max_abs(&got, &from_latents);
    assert!(e <= 1e-5, "{fam}: single file and folder differ by {e:.2e}");

    // SADA end to end (its published settings need 50 steps)
    let family = if fam == "sdxl" { Family::Sdxl } else { Family::StableDiffusion };
    let opts = GenerateOptions { steps: 50, acceleration: Acceleration::parse("sada", family).unwrap(), ..options(fam) };
    let inputs = encode(&mut pipe, fam, None);
    let (latents, trace) = pipe.generate(&inputs, &opts, &mut |_, _| {}).unwrap();
    assert!(trace.evaluations < 50, "{fam}: SADA ran {} evaluations for 50 steps", trace.evaluations);
    let v: Vec<f32> = latents.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));

    // sada+ under a budget: exactly that many network calls, every skip an extrapolation, and
    // closer to the 50-step baseline than the plain solver with as many steps
    let run = |pipe: &mut StableDiffusion, accel: &str, steps: usize| {
        let opts = GenerateOptions { steps, acceleration: Acceleration::parse(accel, family).unwrap(), ..options(fam) };
        pipe.generate(&inputs, &opts, &mut |_, _| {}).unwrap()
    };
    let (base, _) = run(&mut pipe, "none", 50);
    let (plus, trace) = run(&mut pipe, "sada+:max_evals=25", 50);
    assert_eq!(trace.evaluations, 25, "{fam}: sada+ with a budget of 25");
    assert_eq!(trace.count(sada::policy::Decision::SkipExtrapolate), 25);
    let (plain, _) = run(&mut pipe, "none", 25);
    let (e_plus, e_plain) = (rel_err(&plus, &base), rel_err(&plain, &base));
    println!("{fam} sada+ at 25 of 50: relative {e_plus:.2e} from the baseline; plain 25 steps {e_plain:.2e}");
    assert!(e_plus < e_plain, "{fam}: sada+ {e_plus:.2e} vs plain {e_plain:.2e}");
}

#[test]
fn sd15_matches_diffusers_from_a_prompt() {
    check_family("sd15");
}

#[test]
fn sd2_matches_diffusers_from_a_prompt() {
    check_family("sd2");
}

#[test]
fn sdxl_matches_diffusers_from_a_prompt() {
    check_family("sdxl");
}

/// SDXL with no negative prompt: diffusers' force_zeros_for_empty_prompt.
#[test]
fn sdxl_without_negative_prompt_uses_zeros() {
    let dir = folder("sdxl");
    let mut pipe = StableDiffusion::load(dir.path(), DType::F32, &device()).unwrap();
    let inputs = pipe.encode_prompts(&["a cat".to_string()], &PromptOptions::default()).unwrap();
    for t in [inputs.negative_prompt_embeds.unwrap(), inputs.negative_pooled_prompt_embeds.unwrap()] {
        assert_eq!(t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}
