//! UNet2DConditionModel and AutoencoderKL against diffusers 0.34.0 on tiny random-weight models
//! (fixtures from `tools/gen_unet_fixtures.py`): SD-1.5-like (conv projections), SD-2-like
//! (linear projections, per-level heads, upcast attention, v-prediction, non-square latents)
//! and SDXL-like (text_time added conditioning, two transformer layers per block).
//!
//! Tolerances: one forward pass within 1e-4 relative (max |diff| / max |diffusers|); 50 guided
//! DPM-Solver++ and Euler steps within 1e-3 relative on the final latents.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use sada::denoiser::token_cache::TokenCache;
use sada::denoiser::{batch, Conditioning, Denoiser, ForwardContext, Guided, TokenPlan, TokenSelection};
use sada::models::{AutoencoderKl, UNet2DConditionModel};
use sada::policy::NoAcceleration;
use sada::sampling::sample;
use sada::solvers::{build_solver, load_scheduler_config, FlowTimesteps, SolverKind};

#[path = "common/device.rs"]
mod test_device;
use test_device::device;

fn dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(case)
}

fn load(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &device()).unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims());
    let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let scale = w.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
    g.iter().zip(&w).fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs())) / scale
}

fn unet(case: &str) -> UNet2DConditionModel {
    UNet2DConditionModel::load(&dir(&format!("unet/{case}/unet")), DType::F32, &device()).unwrap()
}

/// The conditioning stored with a forward-pass fixture (SDXL cases add text_embeds/time_ids).
fn forward_cond(f: &HashMap<String, Tensor>) -> Conditioning {
    let mut cond = Conditioning::new().with("encoder_hidden_states", f["encoder_hidden_states"].clone());
    if let (Some(te), Some(ti)) = (f.get("text_embeds"), f.get("time_ids")) {
        cond = cond.with("text_embeds", te.clone()).with("time_ids", ti.clone());
    }
    cond
}

fn forward_matches(case: &str) {
    let model = unet(case);
    let f = load(dir(&format!("unet/{case}/forward.safetensors")));
    let cond = forward_cond(&f);
    for (t, out) in [("timestep", "output"), ("timestep_b", "output_b")] {
        let ts = f[t].to_vec1::<f32>().unwrap()[0] as f64;
        let got = model.predict_full(&f["sample"], ts, &cond).unwrap();
        let e = rel_err(&got, &f[out]);
        eprintln!("{case} forward at t = {ts}: relative error {e:e}");
        assert!(e <= 1e-4, "{case} forward at t = {ts}: relative error {e:e} > 1e-4");
    }
}

#[test]
fn sd15_tiny_forward_matches_diffusers() {
    forward_matches("sd15_tiny");
}

#[test]
fn sd2_tiny_forward_matches_diffusers() {
    forward_matches("sd2_tiny");
}

#[test]
fn sdxl_tiny_forward_matches_diffusers() {
    forward_matches("sdxl_tiny");
}

fn pipeline_matches(case: &str) {
    let p = load(dir(&format!("unet/{case}/pipeline.safetensors")));
    let config = load_scheduler_config(&dir(&format!("unet/{case}/scheduler/scheduler_config.json"))).unwrap();
    let model = unet(case);
    let mut cond = Conditioning::new().with("encoder_hidden_states", p["prompt_embeds"].clone());
    let mut uncond = Conditioning::new().with("encoder_hidden_states", p["negative_prompt_embeds"].clone());
    if let Some(pooled) = p.get("pooled_prompt_embeds") {
        cond = cond.with("text_embeds", pooled.clone()).with("time_ids", p["add_time_ids"].clone());
        uncond = uncond.with("text_embeds", p["negative_pooled_prompt_embeds"].clone()).with("time_ids", p["add_time_ids"].clone());
    }
    for (kind, key) in [(SolverKind::DpmSolverMultistep, "final_dpm"), (SolverKind::EulerDiscrete, "final_euler")] {
        let mut solver = build_solver(kind, &config, &Default::default(), 50, &FlowTimesteps::default()).unwrap();
        let latents = p["latents"].affine(solver.init_noise_sigma(), 0.0).unwrap();
        let guided = Guided::new(&model, cond.clone(), Some(uncond.clone()), 7.5).unwrap();
        let (x, trace) = sample(&guided, solver.as_mut(), &mut NoAcceleration, latents, &mut |_, _| {}).unwrap();
        assert_eq!(trace.evaluations, 50);
        let e = rel_err(&x, &p[key]);
        eprintln!("{case} {kind:?} 50 steps: relative error {e:e}");
        assert!(e <= 1e-3, "{case} {kind:?}: final latents relative error {e:e} > 1e-3");
    }
}

#[test]
fn sd15_tiny_50_guided_steps_match_diffusers() {
    pipeline_matches("sd15_tiny");
}

#[test]
fn sd2_tiny_50_guided_steps_match_diffusers() {
    pipeline_matches("sd2_tiny");
}

#[test]
fn sdxl_tiny_50_guided_steps_match_diffusers() {
    pipeline_matches("sdxl_tiny");
}

#[test]
fn vae_decode_matches_diffusers() {
    let vae = AutoencoderKl::load(&dir("vae/tiny/vae"), DType::F32, &device()).unwrap();
    let io = load(dir("vae/tiny/io.safetensors"));
    let e = rel_err(&vae.decode(&io["latents"]).unwrap(), &io["decoded"]);
    eprintln!("vae decode: relative error {e:e}");
    assert!(e <= 1e-4, "relative error {e:e}");
}

#[test]
fn vae_decode_memory_estimate_grows_with_the_pixels_not_their_square() {
    let vae = AutoencoderKl::load(&dir("vae/tiny/vae"), DType::F32, &device()).unwrap();
    // a 512 px image of this factor-2 VAE (256 x 256 latents) peaked at 474 MB of RSS, weights
    // and all; counting the attention's N x N scores whole claimed 16 GiB
    let (small, large) = (vae.decode_bytes(1, 128, 128), vae.decode_bytes(1, 256, 256));
    assert!(large < 1 << 30, "{large} bytes for a 256 x 256 latent");
    assert!(large <= 5 * small, "{small} -> {large}: more than linear in the pixels");
}

#[test]
fn vae_encode_matches_diffusers() {
    let vae = AutoencoderKl::load(&dir("vae/tiny/vae"), DType::F32, &device()).unwrap();
    let io = load(dir("vae/tiny/io.safetensors"));
    let (mean, std) = vae.encode(&io["image"]).unwrap();
    let (em, es) = (rel_err(&mean, &io["encoded_mean"]), rel_err(&std, &io["encoded_std"]));
    eprintln!("vae encode: mean relative error {em:e}, std {es:e}");
    assert!(em <= 1e-4 && es <= 1e-4, "mean {em:e}, std {es:e}");
}

/// diffusers' `enable_tiling` (16-pixel image tiles, 8-latent tiles, a quarter overlapped and
/// blended) on a batch of two: decode and encode give diffusers' tiled outputs within 1e-3,
/// the tiled decode differs from the untiled one (the seams are blended, not equal), and the
/// memory estimate is one tile's.
#[test]
fn vae_tiled_decode_and_encode_match_diffusers() {
    let mut vae = AutoencoderKl::load(&dir("vae/tiny/vae"), DType::F32, &device()).unwrap();
    let io = load(dir("vae/tiny/tiled.safetensors"));
    let max_abs = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let untiled = vae.decode(&io["latents"]).unwrap();
    assert!(max_abs(&untiled, &io["untiled_decoded"]) < 1e-3);
    let untiled_bytes = vae.decode_bytes(2, 140, 200);
    vae.set_tiling(true);
    let decoded = vae.decode(&io["latents"]).unwrap();
    assert_eq!(decoded.dims(), [2, 3, 28, 40]);
    let (d, seams) = (max_abs(&decoded, &io["decoded"]), max_abs(&decoded, &untiled));
    let (mean, std) = vae.encode(&io["image"]).unwrap();
    let (m, s) = (max_abs(&mean, &io["encoded_mean"]), max_abs(&std, &io["encoded_std"]));
    eprintln!("tiled vae: decode {d:e} (untiled differs by {seams:e}), encode mean {m:e}, std {s:e}");
    assert!(d <= 1e-3 && m <= 1e-3 && s <= 1e-3, "decode {d:e}, mean {m:e}, std {s:e}");
    assert!(seams > 1e-2, "tiling changed nothing: {seams:e}");
    // smaller than the tile: one tile, the plain decode
    let small = io["latents"].narrow(2, 0, 8).unwrap().narrow(3, 0, 8).unwrap();
    vae.set_tiling(false);
    let plain = vae.decode(&small).unwrap();
    vae.set_tiling(true);
    assert_eq!(max_abs(&vae.decode(&small).unwrap(), &plain), 0.0);
    let tiled_bytes = vae.decode_bytes(2, 140, 200);
    assert!(tiled_bytes * 4 < untiled_bytes, "{tiled_bytes} tiled against {untiled_bytes} whole");
}

/// One evaluation under `plan`, with `cache` holding the token caches of the image so far.
fn run(model: &UNet2DConditionModel, x: &Tensor, cond: &Conditioning, plan: &TokenPlan, cache: &mut TokenCache) -> Tensor {
    model.predict(x, 377.0, cond, &mut ForwardContext::new(0, plan, cache, None)).unwrap()
}

fn full_selection(h: usize, w: usize, max_downsample: usize) -> TokenSelection {
    TokenSelection::new(vec![true; h * w], h, w, 3, 3, 0, max_downsample)
}

#[test]
fn pruning_with_every_token_computed_equals_the_full_model_exactly() {
    for case in ["sd15_tiny", "sd2_tiny", "sdxl_tiny"] {
        let model = unet(case);
        let f = load(dir(&format!("unet/{case}/forward.safetensors")));
        let cond = forward_cond(&f);
        let (_, _, h, w) = f["sample"].dims4().unwrap();
        let mut cache = TokenCache::default();
        let full = run(&model, &f["sample"], &cond, &TokenPlan::Full, &mut cache);
        let pruned = run(&model, &f["sample"], &cond, &TokenPlan::Pruned(full_selection(h, w, 2)), &mut cache);
        let a: Vec<f32> = full.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = pruned.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "{case}");
    }
}

#[test]
fn pruned_steps_differ_from_full_steps_only_through_the_pruned_tokens() {
    // A real plan on sd15_tiny (8 x 8 latent, cross-attention at full resolution): the output
    // changes, stays finite, and an identical second pruned call reproduces it exactly.
    let model = unet("sd15_tiny");
    let f = load(dir("unet/sd15_tiny/forward.safetensors"));
    let cond = Conditioning::new().with("encoder_hidden_states", f["encoder_hidden_states"].clone());
    let mut score = vec![false; 64];
    score[9] = true;
    let sel = TokenSelection::new(score, 8, 8, 3, 3, 5, 1);
    assert!(sel.num_computed() < 64);
    let mut cache = TokenCache::default();
    let full = run(&model, &f["sample"], &cond, &TokenPlan::Full, &mut cache);
    let x2 = (&f["sample"] * 0.9).unwrap();
    let pruned = run(&model, &x2, &cond, &TokenPlan::Pruned(sel.clone()), &mut cache);
    let exact = run(&model, &x2, &cond, &TokenPlan::Full, &mut cache);
    assert!(rel_err(&pruned, &exact) > 0.0, "pruning changed nothing");
    assert!(rel_err(&pruned, &full) > 0.0);
    // a new image: a fresh cache
    let mut cache = TokenCache::default();
    run(&model, &f["sample"], &cond, &TokenPlan::Full, &mut cache);
    let again = run(&model, &x2, &cond, &TokenPlan::Pruned(sel), &mut cache);
    assert_eq!(rel_err(&again, &pruned), 0.0);
}

/// Copy a fixture UNet folder into a temp dir, rewriting its weights with `write`.
fn rewritten(case: &str, tag: &str, write: impl Fn(&HashMap<String, Tensor>, &std::path::Path)) -> PathBuf {
    let src = dir(&format!("unet/{case}/unet"));
    let dst = std::env::temp_dir().join(format!("sada-unet-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    write(&load(src.join("diffusion_pytorch_model.safetensors")), &dst);
    dst
}

fn forward_with(model_dir: &std::path::Path, case: &str) -> Tensor {
    let m = UNet2DConditionModel::load(model_dir, DType::F32, &device()).unwrap();
    let f = load(dir(&format!("unet/{case}/forward.safetensors")));
    let cond = Conditioning::new().with("encoder_hidden_states", f["encoder_hidden_states"].clone());
    m.predict_full(&f["sample"], 377.0, &cond).unwrap()
}

#[test]
fn sharded_weights_with_an_index_load_like_a_single_file() {
    let d = rewritten("sd15_tiny", "sharded", |w, d| {
        let mut names: Vec<&String> = w.keys().collect();
        names.sort();
        let (a, b) = names.split_at(names.len() / 2);
        let mut index = serde_json::Map::new();
        for (part, file) in [(a, "diffusion_pytorch_model-00001-of-00002.safetensors"), (b, "diffusion_pytorch_model-00002-of-00002.safetensors")] {
            let shard: HashMap<String, Tensor> = part.iter().map(|k| ((*k).clone(), w[*k].clone())).collect();
            candle_core::safetensors::save(&shard, d.join(file)).unwrap();
            part.iter().for_each(|k| {
                index.insert((*k).clone(), serde_json::Value::String(file.into()));
            });
        }
        let idx = serde_json::json!({"metadata": {}, "weight_map": index});
        std::fs::write(d.join("diffusion_pytorch_model.safetensors.index.json"), idx.to_string()).unwrap();
    });
    let want = load(dir("unet/sd15_tiny/forward.safetensors"))["output"].clone();
    assert!(rel_err(&forward_with(&d, "sd15_tiny"), &want) <= 1e-4);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn fp16_variant_loads_and_computes_in_f32() {
    let d = rewritten("sd15_tiny", "fp16", |w, d| {
        let half: HashMap<String, Tensor> = w.iter().map(|(k, v)| (k.clone(), v.to_dtype(DType::F16).unwrap())).collect();
        candle_core::safetensors::save(&half, d.join("diffusion_pytorch_model.fp16.safetensors")).unwrap();
    });
    let want = load(dir("unet/sd15_tiny/forward.safetensors"))["output"].clone();
    let e = rel_err(&forward_with(&d, "sd15_tiny"), &want);
    // half-precision weights: agreement to about 1e-3, not 1e-6
    assert!(e <= 1e-2, "relative error {e:e}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn weights_that_do_not_match_the_config_name_the_file() {
    let d = rewritten("sd15_tiny", "mismatch", |w, d| {
        let mut w = w.clone();
        w.remove("conv_in.weight");
        candle_core::safetensors::save(&w, d.join("diffusion_pytorch_model.safetensors")).unwrap();
    });
    let err = UNet2DConditionModel::load(&d, DType::F32, &device()).err().unwrap().to_string();
    assert!(err.contains("diffusion_pytorch_model.safetensors") && err.contains("conv_in.weight"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn partial_pruning_works_on_non_square_latents_batches_and_coarser_levels() {
    // sd2_tiny: 8 x 12 latents, batch 2, cross-attention at the full and half resolution levels;
    // sdxl_tiny: attention only at half resolution. max_downsample 2 prunes both kinds of level.
    for case in ["sd2_tiny", "sdxl_tiny"] {
        let model = unet(case);
        let f = load(dir(&format!("unet/{case}/forward.safetensors")));
        let cond = forward_cond(&f);
        let (_, _, h, w) = f["sample"].dims4().unwrap();
        let mut score = vec![false; h * w];
        score[w + 1] = true;
        score[w + 2] = true;
        let sel = TokenSelection::new(score, h, w, 3, 3, 11, 2);
        assert!(sel.mask_at(h / 2, w / 2).is_some(), "{case}: the half-resolution level must prune");
        let mut cache = TokenCache::default();
        let full = run(&model, &f["sample"], &cond, &TokenPlan::Full, &mut cache);
        let x2 = (&f["sample"] * 0.95).unwrap();
        let pruned = run(&model, &x2, &cond, &TokenPlan::Pruned(sel.clone()), &mut cache);
        let exact = run(&model, &x2, &cond, &TokenPlan::Full, &mut cache);
        assert_eq!(pruned.dims(), full.dims());
        let e = rel_err(&pruned, &exact);
        assert!(e > 0.0 && e.is_finite(), "{case}: pruning changed nothing or broke ({e})");
        // reproducible: same cache state and plan, same output
        let mut cache = TokenCache::default();
        run(&model, &f["sample"], &cond, &TokenPlan::Full, &mut cache);
        let again = run(&model, &x2, &cond, &TokenPlan::Pruned(sel), &mut cache);
        assert_eq!(rel_err(&again, &pruned), 0.0, "{case}");
    }
}

#[test]
fn one_image_per_core_equals_the_batched_forward_with_and_without_pruning() {
    // the batch executor runs a batch's images on separate threads on a multi-core CPU
    // (denoiser::batch::predict), `forward` runs the batch as one; a full step then a pruned
    // step reading the token cache the full step left (split per image, merged back).
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut batched_cases = 0;
    for case in ["sd15_tiny", "sd2_tiny", "sdxl_tiny"] {
        let model = unet(case);
        let f = load(dir(&format!("unet/{case}/forward.safetensors")));
        let cond = forward_cond(&f);
        let (b, _, h, w) = f["sample"].dims4().unwrap();
        if b < 2 {
            continue;
        }
        batched_cases += 1;
        let mut score = vec![false; h * w];
        score[w + 1] = true;
        let plans = [TokenPlan::Full, TokenPlan::Pruned(TokenSelection::new(score, h, w, 3, 3, 11, 2))];
        let x2 = (&f["sample"] * 0.95).unwrap();
        let added = f.get("text_embeds").map(|te| (te, &f["time_ids"]));
        let (mut split_cache, mut batch_cache) = (TokenCache::default(), TokenCache::default());
        for (plan, x) in plans.iter().zip([&f["sample"], &x2]) {
            let split = pool.install(|| batch::predict(&model, x, 377.0, &cond, &mut ForwardContext::new(0, plan, &mut split_cache, None))).unwrap();
            let batched = model.forward(x, 377.0, &f["encoder_hidden_states"], added, None, &mut ForwardContext::new(0, plan, &mut batch_cache, None)).unwrap();
            let e = rel_err(&split, &batched);
            eprintln!("{case}, {}: per-image vs batched relative difference {e:e}", if matches!(plan, TokenPlan::Full) { "full" } else { "pruned" });
            assert!(e <= 1e-5, "{case}: per-image vs batched differ by {e:e}");
        }
        assert_eq!(split_cache.sites().count(), batch_cache.sites().count(), "{case}: the merged cache lost sites");
    }
    assert!(batched_cases > 0, "no fixture has a batch to split");
}
