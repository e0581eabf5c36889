//! The embedded default model: our pipeline reproduces diffusers on the shipped weights, and
//! the model is really trained (it draws the background a held-out caption names).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use sada::data::shapes::{border_colour, Scene, COLOURS};
use sada::image::to_rgb;
use sada::models::UNet2DConditionModel;
use sada::pipelines::{default_model, GenerateOptions, Pipeline, PipelineInputs, StableDiffusion};
use sada::policy::Acceleration;
use sada::solvers::SolverKind;

#[path = "common/device.rs"]
mod test_device;
use test_device::device;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/default_model").join(name)
}

fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let d = (got - want).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let n = want.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    (d / n).sqrt()
}

#[test]
fn pipeline_matches_diffusers_on_the_shipped_weights() {
    let f = candle_core::safetensors::load(fixture("pipeline.safetensors"), &device()).unwrap();
    let settings: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("settings.json")).unwrap()).unwrap();
    let prompts: Vec<String> = serde_json::from_value(settings["prompts"].clone()).unwrap();
    let mut pipe = default_model::load(&device()).unwrap();
    assert!(pipe.pixel_space && pipe.vae_scale_factor() == 1);
    let mut inputs = pipe.encode_prompts(&prompts, &empty_negative()).unwrap();
    let embeds_err = rel_err(inputs.prompt_embeds.as_ref().unwrap(), &f["prompt_embeds"])
        .max(rel_err(inputs.negative_prompt_embeds.as_ref().unwrap(), &f["negative_prompt_embeds"]));
    inputs.latents = Some(f["noise"].clone());
    let opts = GenerateOptions {
        steps: settings["steps"].as_u64().unwrap() as usize,
        guidance_scale: settings["guidance_scale"].as_f64().unwrap(),
        height: 32,
        width: 32,
        seed: 0,
        solver: SolverKind::DpmSolverMultistep,
        acceleration: Acceleration::default(),
        size_conditioning: Default::default(),
    };
    let (images, _) = pipe.generate(&inputs, &opts, &mut |_, _| {}).unwrap();
    let err = rel_err(&images, &f["images"]);
    println!("default model vs diffusers: prompt embeddings {embeds_err:.2e}, {} guided steps {err:.2e} (relative L2)", opts.steps);
    assert!(embeds_err < 1e-5, "{embeds_err}");
    assert!(err < 1e-3, "{err}");
}

/// Weights held in q8_0 and widened per use: a batch of 5 prompts (10 guided images on a pool
/// of 2 threads, so images queue behind each other while layers are being widened) finishes,
/// and the images stay near the f32 model's.
#[test]
fn weights_held_in_q8_0_give_the_f32_images_closely() {
    use sada::models::layers::weight::{at_rest, WeightType};
    let prompts: Vec<String> = held_out(5).iter().map(Scene::caption).collect();
    let run = |ty: WeightType| {
        let _g = at_rest(ty);
        let mut pipe = default_model::load(&device()).unwrap();
        let inputs = pipe.encode_prompts(&prompts, &empty_negative()).unwrap();
        let opts = GenerateOptions {
            steps: 20,
            guidance_scale: pipe.default_guidance(),
            height: 32,
            width: 32,
            seed: 3,
            solver: SolverKind::DpmSolverMultistep,
            acceleration: Acceleration::default(),
            size_conditioning: Default::default(),
        };
        pipe.generate(&inputs, &opts, &mut |_, _| {}).unwrap().0
    };
    let (exact, packed) = (run(WeightType::F32), run(WeightType::Q8_0));
    let err = rel_err(&packed, &exact);
    println!("q8_0 weights: {err:.2e} relative L2 against f32 over 20 guided steps");
    assert!(err > 0.0 && err < 0.05, "{err}");
}

/// Held-out captions (never trained on), evenly spread over the split.
fn held_out(n: usize) -> Vec<Scene> {
    let held: Vec<Scene> = Scene::all().into_iter().filter(|s| s.is_held_out()).collect();
    (0..n).map(|i| held[i * held.len() / n]).collect()
}

/// Share of images whose border is nearest to the palette colour the caption names.
fn background_accuracy(pipe: &mut StableDiffusion, scenes: &[Scene], steps: usize) -> f64 {
    let mut hits = 0;
    for (chunk_idx, chunk) in scenes.chunks(40).enumerate() {
        let prompts: Vec<String> = chunk.iter().map(|s| s.caption()).collect();
        let inputs: PipelineInputs = pipe.encode_prompts(&prompts, &empty_negative()).unwrap();
        let opts = GenerateOptions {
            steps,
            guidance_scale: default_model::GUIDANCE_SCALE,
            height: 32,
            width: 32,
            seed: chunk_idx as u64,
            solver: SolverKind::DpmSolverMultistep,
            acceleration: Acceleration::default(),
            size_conditioning: Default::default(),
        };
        let (images, _) = pipe.generate(&inputs, &opts, &mut |_, _| {}).unwrap();
        for (i, scene) in chunk.iter().enumerate() {
            let img = to_rgb(&images.get(i).unwrap()).unwrap();
            let got = border_colour(&img);
            if got == scene.background {
                hits += 1;
            } else {
                println!("miss: {:?} drew {}", scene.caption(), COLOURS[got].0);
            }
        }
    }
    hits as f64 / scenes.len() as f64
}

/// Held-out captions with every background colour `per_colour` times, so a model that draws
/// one colour whatever the caption says scores 1/8 and not the share of its colour in the subset.
fn balanced(scenes: &[Scene], per_colour: usize) -> Vec<Scene> {
    (0..COLOURS.len()).flat_map(|b| scenes.iter().filter(move |s| s.background == b).take(per_colour).copied()).collect()
}

/// The trained UNet with every tensor's values shuffled by a seeded permutation: the same
/// architecture and weight statistics with the learned structure destroyed. Seeded, so the
/// control is the same on every machine (candle's CPU initialisers cannot be seeded).
fn shuffled_unet(pipe: &StableDiffusion, seed: u64) -> UNet2DConditionModel {
    use rand::{seq::SliceRandom, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/default_model/unet/diffusion_pytorch_model.safetensors");
    let weights = candle_core::safetensors::load(path, &device()).unwrap();
    // a fixed order, so the permutations do not depend on the map's iteration order
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for name in names {
        let t = &weights[name];
        let mut v: Vec<f32> = t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
        v.shuffle(&mut rng);
        tensors.insert(name.clone(), Tensor::from_vec(v, t.shape(), &device()).unwrap());
    }
    UNet2DConditionModel::new(pipe.unet.config.clone(), VarBuilder::from_tensors(tensors, DType::F32, &device())).unwrap()
}

/// Threshold 90% over 120 held-out captions (chance is 1/8). The same check on the same
/// architecture with its weights shuffled (no training left in them) must stay below 50%, so it
/// measures training and not the check itself.
#[test]
fn trained_model_draws_the_named_background_on_held_out_captions() {
    const STEPS: usize = 15;
    let scenes = held_out(120);
    let mut pipe = default_model::load(&device()).unwrap();
    let acc = background_accuracy(&mut pipe, &scenes, STEPS);
    println!("background accuracy on {} held-out captions: {:.1}%", scenes.len(), acc * 100.0);

    let control_scenes = balanced(&scenes, 2);
    assert_eq!(control_scenes.len(), 2 * COLOURS.len());
    pipe.unet = shuffled_unet(&pipe, 0);
    let control = background_accuracy(&mut pipe, &control_scenes, STEPS);
    println!("shuffled-weight control on {} captions: {:.1}%", control_scenes.len(), control * 100.0);

    assert!(control < 0.5, "the check passes a UNet with shuffled weights ({control})");
    assert!(acc >= 0.9, "background accuracy {acc} below 0.9");
}

/// The shipped ControlNet through our controlled pipeline against diffusers' ControlNetModel +
/// UNet loop on the same weights (`tools/gen_default_controlnet_fixture.py`): pixel space and a
/// one-level conditioning embedding, which the tiny SD fixtures do not cover.
#[test]
fn embedded_controlnet_matches_diffusers() {
    let f = candle_core::safetensors::load(fixture("controlnet.safetensors"), &device()).unwrap();
    let settings: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("settings.json")).unwrap()).unwrap();
    let mut pipe = default_model::load(&device()).unwrap();
    let cn = pipe.bundled_controlnet(DType::F32, &device()).unwrap().unwrap();
    let image = sada::image::read_png(&fixture("controlnet_image.png")).unwrap();
    pipe.add_controlnet(cn).unwrap();
    let inputs = PipelineInputs {
        prompt_embeds: Some(f["prompt_embeds"].clone()),
        negative_prompt_embeds: Some(f["negative_prompt_embeds"].clone()),
        latents: Some(f["noise"].clone()),
        control: vec![sada::pipelines::ControlInput { image, settings: Default::default() }],
        ..Default::default()
    };
    let opts = GenerateOptions {
        steps: settings["steps"].as_u64().unwrap() as usize,
        guidance_scale: settings["guidance_scale"].as_f64().unwrap(),
        height: 32,
        width: 32,
        seed: 0,
        solver: SolverKind::DpmSolverMultistep,
        acceleration: Acceleration::default(),
        size_conditioning: Default::default(),
    };
    let (images, _) = pipe.generate(&inputs, &opts, &mut |_, _| {}).unwrap();
    let err = rel_err(&images, &f["images"]);
    println!("embedded ControlNet vs diffusers: {} guided steps {err:.2e} (relative L2)", opts.steps);
    assert!(err < 1e-3, "{err}");
}

/// The embedded ControlNet (docs/default-model/CONTROLNET.md) makes the shape follow its
/// outline where the caption puts it elsewhere: on 8 held-out captions, each with the outline
/// of its shape moved two positions along, the drawn shape's overlap (IoU) with the outline's
/// region against the same runs without the ControlNet, which is what an untrained one gives
/// (its zero convolutions add nothing).
#[test]
fn embedded_controlnet_moves_the_shape_to_its_outline() {
    const STEPS: usize = 15;
    let cases: Vec<(String, Scene, Scene)> = held_out(8).iter().map(|s| (s.caption(), *s, s.moved())).collect();
    let mut plain = default_model::load(&device()).unwrap();
    let mut pipe = default_model::load(&device()).unwrap();
    let cn = pipe.bundled_controlnet(DType::F32, &device()).unwrap().expect("the embedded model ships a ControlNet");
    pipe.add_controlnet(cn).unwrap();
    let mean = |v: &[(f64, f64)]| v.iter().map(|x| x.0).sum::<f64>() / v.len() as f64;
    let with = mean(&default_model::outline_overlap(&mut pipe, &cases, STEPS).unwrap());
    let without = mean(&default_model::outline_overlap(&mut plain, &cases, STEPS).unwrap());
    println!("IoU of the drawn shape with a moved outline: {with:.3} with the ControlNet, {without:.3} without");
    assert!(without < 0.2, "without a ControlNet the shape already sits on the moved outline ({without})");
    assert!(with > 0.5, "with the ControlNet the shape does not follow its outline ({with})");
}

/// The prompt options these tests encode with: an empty negative prompt, as the model was trained.
fn empty_negative() -> sada::pipelines::PromptOptions {
    sada::pipelines::PromptOptions { negative_prompt: Some(String::new()), ..Default::default() }
}
