//! Flux against diffusers 0.34.0 (`tools/gen_flux_fixtures.py`): tiny random-weight
//! FluxTransformer2DModels (2 double + 2 single blocks; dev with guidance embedding from an fp16
//! variant, schnell in f32) and SADA's token pruning inside a DiT.
//!
//! Tolerances: one forward 1e-4 of the largest magnitude (the bound); the pruning
//! properties exactly (every token computed) or 1e-5 (a subset against the blocks run on it alone).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use sada::denoiser::token_cache::TokenCache;
use sada::denoiser::{Conditioning, Denoiser, ForwardContext, TokenPlan, TokenSelection};
use sada::models::flux::{pack_latents, unpack_latents, FluxTransformer2DModel};
use sada::models::ModelSource;
use sada::pipelines::{Flux, GenerateOptions, Pipeline, PipelineInputs, PromptOptions};
use sada::policy::Acceleration;
use sada::solvers::SolverKind;

#[path = "common/sd_fixture.rs"]
#[allow(dead_code)]
mod sd_fixture;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/flux")
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims());
    let max = |t: Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64;
    max((got.to_dtype(DType::F32).unwrap() - want).unwrap()) / max(want.clone())
}

fn transformer(variant: &str) -> FluxTransformer2DModel {
    FluxTransformer2DModel::load(&dir().join(variant).join("transformer"), DType::F32, &Device::Cpu).unwrap()
}

fn cond(want: &HashMap<String, Tensor>, dev: bool) -> Conditioning {
    let c = Conditioning::new().with("encoder_hidden_states", want["prompt_embeds"].clone()).with("pooled_projections", want["pooled_prompt_embeds"].clone());
    if dev {
        c.with("guidance", Tensor::new(&[3.5f32, 3.5], &Device::Cpu).unwrap())
    } else {
        c
    }
}

#[test]
fn packing_matches_diffusers_layout_and_round_trips() {
    // token (r, c) holds channel-major the 2x2 patch at rows 2r..2r+2, columns 2c..2c+2
    let x = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 6.0, &Device::Cpu).unwrap().reshape((2, 3, 4, 6)).unwrap();
    let p = pack_latents(&x).unwrap();
    assert_eq!(p.dims(), [2, 6, 12]);
    let token = p.get(1).unwrap().get(4).unwrap().to_vec1::<f32>().unwrap(); // image 1, row 1, column 1
    let at = |c: usize, y: usize, xx: usize| (((3 + c) * 4 + y) * 6 + xx) as f32;
    let want: Vec<f32> = (0..3).flat_map(|c| [at(c, 2, 2), at(c, 2, 3), at(c, 3, 2), at(c, 3, 3)]).collect();
    assert_eq!(token, want);
    let back = unpack_latents(&p, 4, 6).unwrap();
    assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), x.flatten_all().unwrap().to_vec1::<f32>().unwrap());
}

#[test]
fn forward_matches_diffusers_dev_and_schnell() {
    let want = expected();
    for (variant, dev) in [("dev", true), ("schnell", false)] {
        let t = transformer(variant);
        assert_eq!(t.guidance_embeds(), dev);
        let out = t.predict_full(&want["latents"], 700.0, &cond(&want, dev)).unwrap();
        let err = rel_err(&out, &want[&format!("{variant}_forward")]);
        eprintln!("{variant} forward: relative error {err:e}");
        assert!(err < 1e-4, "{variant}: {err}");
    }
}

#[test]
fn missing_or_misshapen_conditioning_is_an_error() {
    let want = expected();
    let t = transformer("dev");
    let no_guidance = cond(&want, false);
    let e = t.predict_full(&want["latents"], 700.0, &no_guidance).unwrap_err().to_string();
    assert!(e.contains("guidance"), "{e}");
    let odd = want["latents"].narrow(3, 0, 11).unwrap();
    let e = t.predict_full(&odd, 700.0, &cond(&want, true)).unwrap_err().to_string();
    assert!(e.contains("even height and width"), "{e}");
    let wrong = cond(&want, true).with("pooled_projections", Tensor::zeros((2, 23), DType::F32, &Device::Cpu).unwrap());
    let e = t.predict_full(&want["latents"], 700.0, &wrong).unwrap_err().to_string();
    assert!(e.contains("pooled_projections") && e.contains("[2, 8]"), "{e}");
}

/// A pruned evaluation at t = 700: the first call (on `x0`) fills every block cache, the second
/// (on `x1`) computes `mask`'s tokens of the packed `grid`.
fn pruned(t: &FluxTransformer2DModel, x0: &Tensor, x1: &Tensor, c: &Conditioning, mask: Vec<bool>, grid: (usize, usize)) -> Tensor {
    let mut cache = TokenCache::default();
    let full = TokenPlan::Refresh;
    t.predict(x0, 700.0, c, &mut ForwardContext::new(0, &full, &mut cache, None)).unwrap();
    let sel = TokenSelection { height: grid.0, width: grid.1, score: mask.clone(), mask, sy: 3, sx: 3, seed: 0, max_downsample: 1 };
    let plan = TokenPlan::Pruned(sel);
    t.predict(x1, 700.0, c, &mut ForwardContext::new(1, &plan, &mut cache, None)).unwrap()
}

#[test]
fn pruning_every_token_equals_the_full_network() {
    let want = expected();
    let t = transformer("dev");
    let c = cond(&want, true);
    let x1 = (&want["latents"] * 0.9).unwrap();
    let full = t.predict_full(&x1, 700.0, &c).unwrap();
    // the packed grid is 4 x 6 tokens
    let out = pruned(&t, &want["latents"], &x1, &c, vec![true; 24], (4, 6));
    assert_eq!(rel_err(&out, &full), 0.0);
}

/// With a subset computed, every block runs on the text and the computed image tokens alone, at
/// their own positions: for a band of whole token rows or columns starting at 0 that is exactly
/// the network run on the latent cropped to the band (same position ids, no pruning involved).
/// The pruned tokens' outputs are the first call's, read from the last block's cache.
#[test]
fn pruned_blocks_run_on_the_computed_tokens_alone_and_read_the_rest_from_the_cache() {
    let want = expected();
    let t = transformer("schnell");
    let c = cond(&want, false);
    let x0 = want["latents"].clone();
    let x1 = (x0.sin().unwrap() * 1.3).unwrap();
    let first = t.predict_full(&x0, 700.0, &c).unwrap();
    // (token rows, token columns) computed: the top two rows, then the left two columns
    for (rows, cols) in [(2, 6), (4, 2)] {
        let mask: Vec<bool> = (0..24).map(|i| i / 6 < rows && i % 6 < cols).collect();
        let out = pruned(&t, &x0, &x1, &c, mask, (4, 6));
        let crop = |x: &Tensor| x.narrow(2, 0, 2 * rows).unwrap().narrow(3, 0, 2 * cols).unwrap();
        let alone = t.predict_full(&crop(&x1).contiguous().unwrap(), 700.0, &c).unwrap();
        let err = rel_err(&crop(&out), &alone);
        assert!(err < 1e-5, "band {rows}x{cols}: computed tokens differ from the band alone by {err}");
        // outside the band: the cached outputs of the first call
        let (po, pf) = (pack_latents(&out).unwrap(), pack_latents(&first).unwrap());
        for i in (0..24).filter(|i| !(i / 6 < rows && i % 6 < cols)) {
            let e = rel_err(&po.narrow(1, i, 1).unwrap(), &pf.narrow(1, i, 1).unwrap());
            assert!(e < 1e-6, "band {rows}x{cols}: pruned token {i} is not the cached output ({e})");
        }
    }
}

fn pipeline(variant: &str) -> Flux {
    Flux::load_from(ModelSource::Dir(dir().join(variant)), DType::F32, &Device::Cpu).unwrap()
}

fn pipe_inputs(want: &HashMap<String, Tensor>) -> PipelineInputs {
    PipelineInputs {
        prompt_embeds: Some(want["pipe_prompt_embeds"].clone()),
        pooled_prompt_embeds: Some(want["pipe_pooled_prompt_embeds"].clone()),
        ..Default::default()
    }
}

fn options(steps: usize, guidance_scale: f64) -> GenerateOptions {
    GenerateOptions {
        steps,
        guidance_scale,
        height: 32,
        width: 48,
        seed: 7,
        solver: SolverKind::FlowMatchEulerDiscrete,
        acceleration: Acceleration::default(),
        size_conditioning: Default::default(),
    }
}

/// The whole FluxPipeline from precomputed embeddings: seeded noise as diffusers draws it, the
/// dynamically shifted sigma grid (dev) or the plain one (schnell), guidance fed to the network,
/// and the decoder with `shift_factor`. Final latents within 1e-3, images within 1/255 (of [0, 1]).
#[test]
fn pipeline_matches_diffusers_dev_50_steps_and_schnell_4_steps() {
    let want = expected();
    for (variant, steps, guidance) in [("dev", 50, 3.5), ("schnell", 4, 0.0)] {
        let mut pipe = pipeline(variant);
        assert_eq!(pipe.vae_scale_factor(), 2);
        let (latents, trace) = pipe.generate(&pipe_inputs(&want), &options(steps, guidance), &mut |_, _| {}).unwrap();
        assert_eq!(trace.evaluations, steps);
        let err = rel_err(&latents, &want[&format!("{variant}_final")]);
        eprintln!("{variant} {steps} steps: final latents relative error {err:e}");
        assert!(err < 1e-3, "{variant}: final latents off by {err}");
        let image = pipe.decode(&latents).unwrap().unwrap();
        let diff = (image - &want[&format!("{variant}_image")]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        eprintln!("{variant}: decoded image max error {diff:e} in [-1, 1]");
        assert!(diff / 2.0 < 1.0 / 255.0, "{variant}: image off by {diff} in [-1, 1]");
    }
}

#[test]
fn pipeline_refuses_what_flux_cannot_run() {
    let want = expected();
    let mut pipe = pipeline("dev");
    // not a multiple of 2 x the VAE factor
    let mut o = options(4, 3.5);
    o.width = 50;
    let e = pipe.generate(&pipe_inputs(&want), &o, &mut |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("multiples of 4"), "{e}");
    // an epsilon solver on a velocity model
    let mut o = options(4, 3.5);
    o.solver = SolverKind::DpmSolverMultistep;
    let e = pipe.validate(&o).unwrap_err().to_string();
    assert!(e.contains("flow-matching"), "{e}");
    // no pooled embedding
    let inputs = PipelineInputs { pooled_prompt_embeds: None, ..pipe_inputs(&want) };
    let e = pipe.generate(&inputs, &options(4, 3.5), &mut |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("pooled_prompt_embeds"), "{e}");
    // prompts need the text encoders, which the schnell fixture does not have
    let e = pipeline("schnell").encode_prompts(&["a cat".into()], &PromptOptions::default()).unwrap_err().to_string();
    assert!(e.contains("text_encoder_2") && e.contains("prompt_embeds"), "{e}");
    // a Flux pipeline that conditions on images is refused by name
    let tmp = tempfile::tempdir().unwrap();
    sd_fixture::with_clip_vocab(&dir().join("schnell"), &tmp.path().join("kontext"));
    let index = tmp.path().join("kontext/model_index.json");
    std::fs::write(&index, std::fs::read_to_string(&index).unwrap().replace("\"FluxPipeline\"", "\"FluxKontextPipeline\"")).unwrap();
    let e = Flux::load_from(ModelSource::Dir(tmp.path().join("kontext")), DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("FluxKontextPipeline") && e.contains("model_index.json"), "{e}");
    // latents given packed instead of unpacked
    let inputs = PipelineInputs { latents: Some(Tensor::zeros((2, 96, 64), DType::F32, &Device::Cpu).unwrap()), ..pipe_inputs(&want) };
    let e = pipe.generate(&inputs, &options(4, 3.5), &mut |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("unpacked"), "{e}");
}

/// The original single-file layout (fused projections, swapped final modulation) loads as the
/// same network: identical outputs, and the configuration read from the shapes.
#[test]
fn single_file_layout_gives_the_folders_output() {
    let want = expected();
    let ck = sada::models::single_file::Checkpoint::open(&dir().join("flux_dev_single.safetensors")).unwrap();
    let source = ModelSource::SingleFile(std::sync::Arc::new(ck));
    let single = FluxTransformer2DModel::load_from(&source, "transformer", DType::F32, &Device::Cpu).unwrap();
    assert_eq!(single.config, transformer("dev").config);
    let out = single.predict_full(&want["latents"], 700.0, &cond(&want, true)).unwrap();
    let folder = transformer("dev").predict_full(&want["latents"], 700.0, &cond(&want, true)).unwrap();
    assert_eq!(rel_err(&out, &folder), 0.0);
    // as a whole model: a Flux pipeline with the dev scheduler and no decoder
    let pipe = sada::pipelines::load_pipeline(source, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(pipe.family(), sada::Family::Flux);
    assert!(!pipe.can_decode());
}

/// A transformer from a single file (safetensors or GGUF), weights held as the file stores them.
fn single_file_transformer(path: PathBuf) -> FluxTransformer2DModel {
    let ck = sada::models::single_file::Checkpoint::open(&path).unwrap();
    let source = ModelSource::SingleFile(std::sync::Arc::new(ck));
    FluxTransformer2DModel::load_from(&source, "transformer", DType::F32, &Device::Cpu).unwrap()
}

/// diffusers 0.34's own GGUF loader (`from_single_file` with `GGUFQuantizationConfig`, float32
/// compute; tools/gen_gguf_fixtures.py) on the same files and inputs. With its dequantisers
/// computing in float32, as ggml and gguf-py do, our output of each quantised transformer (its
/// blocks kept and widened inside the products) equals diffusers' within 1e-4. As diffusers
/// ships them, its dequantisers round every scale x level product to float16, which moves the
/// output by up to a few 1e-3; that difference is bounded here too.
#[test]
fn gguf_files_give_diffusers_gguf_loader_s_output() {
    let want = expected();
    let theirs = candle_core::safetensors::load(dir().join("../gguf/flux_gguf_expected.safetensors"), &Device::Cpu).unwrap();
    let max_abs = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    for label in ["f16", "q8_0", "q4_0", "q4_k"] {
        let model = single_file_transformer(dir().join(format!("../gguf/flux_dev_{label}.gguf")));
        let ours = model.predict_full(&want["latents"], 700.0, &cond(&want, true)).unwrap();
        let (exact, shipped) = (max_abs(&ours, &theirs[&format!("{label}_forward")]), max_abs(&ours, &theirs[&format!("{label}_forward_f16_products")]));
        eprintln!("{label}: max |ours - diffusers| {exact:.2e} (float32 dequantisation), {shipped:.2e} (as shipped: float16 products)");
        assert!(exact <= 1e-4, "{label}: {exact:e}");
        assert!(shipped <= 2e-2, "{label}: {shipped:e} against diffusers as shipped");
    }
}

/// city96's GGUF layout of the same transformer (tools/gen_gguf_fixtures.py): all F16 gives the
/// safetensors file's output exactly; Q8_0 and Q4_0/Q5_1 (each tensor dequantised exactly as
/// gguf-py does, tests/gguf_fixtures.rs) stay within their quantisation error of it.
#[test]
fn gguf_files_load_as_the_single_file_does() {
    let want = expected();
    let load = single_file_transformer;
    let gguf = dir().join("../gguf");
    let reference = load(dir().join("flux_dev_single.safetensors"));
    let out = |m: &FluxTransformer2DModel| m.predict_full(&want["latents"], 700.0, &cond(&want, true)).unwrap();
    let base = out(&reference);
    // (max-abs relative errors of a random tiny network: measured 1.3e-2 at Q8_0, 2.2e-1 at Q4_0;
    // a transposed or misnamed tensor gives errors of order 1)
    let mut errors = Vec::new();
    for (file, tolerance) in [("flux_dev_f16.gguf", 0.0), ("flux_dev_q8_0.gguf", 0.05), ("flux_dev_q4_0.gguf", 0.5)] {
        let model = load(gguf.join(file));
        assert_eq!(model.config, reference.config, "{file}");
        let e = rel_err(&out(&model), &base);
        eprintln!("{file}: relative error {e:.2e} against the f16 safetensors file");
        assert!(e <= tolerance, "{file}: {e:e}");
        errors.push(e);
    }
    assert!(0.0 < errors[1] && errors[1] < errors[2], "fewer bits, more error: {errors:?}");

    // a block whose f16 scale is NaN is named when its tensor loads
    let path = gguf.join("flux_dev_q8_0.gguf");
    let file = sada::models::gguf::GgufFile::open(&path).unwrap();
    let info = file.tensors.iter().find(|t| t.dtype == sada::models::gguf::GgmlType::Q8_0).unwrap().clone();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[info.byte_range().start..][..2].copy_from_slice(&0x7e00u16.to_le_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("nan.gguf");
    std::fs::write(&bad, bytes).unwrap();
    let ck = sada::models::single_file::Checkpoint::open(&bad).unwrap();
    let source = ModelSource::SingleFile(std::sync::Arc::new(ck));
    let e = FluxTransformer2DModel::load_from(&source, "transformer", DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("nan.gguf") && e.contains(&format!("`{}` holds NaN", info.name)), "{e}");
}

/// The dev folder with its CLIP tokenizer's vocabulary put back (the fixtures leave it out).
fn dev_with_text() -> (tempfile::TempDir, Flux) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dev");
    sd_fixture::with_clip_vocab(&dir().join("dev"), &dest);
    let pipe = Flux::load_from(ModelSource::Dir(dest), DType::F32, &Device::Cpu).unwrap();
    (tmp, pipe)
}

fn prompts() -> Vec<String> {
    serde_json::from_str(&std::fs::read_to_string(dir().join("prompts.json")).unwrap()).unwrap()
}

/// Prompts through both tokenizers and text encoders as diffusers' FluxPipeline.encode_prompt:
/// T5's ids (SentencePiece Unigram from tokenizer.json, padded to 512, the long prompt truncated
/// with its end token kept) and CLIP's exactly; T5's last hidden state and CLIP's pooled output
/// within 1e-4; then 50 dev steps from those prompts within 1e-3.
#[test]
fn prompts_encode_as_diffusers_and_drive_the_pipeline() {
    let want = expected();
    let (_tmp, mut pipe) = dev_with_text();
    assert!(pipe.has_text_encoder());
    assert_eq!(pipe.max_sequence_length, 512);
    let texts = prompts();
    let t5 = sada::text::t5::T5Tokenizer::load_from(&ModelSource::Dir(_tmp.path().join("dev")), "tokenizer_2").unwrap();
    for (i, t) in texts.iter().enumerate() {
        let ids: Vec<f32> = t5.encode(t, 512).unwrap().into_iter().map(|i| i as f32).collect();
        assert_eq!(ids, want["t5_input_ids"].get(i).unwrap().to_vec1::<f32>().unwrap(), "T5 ids of prompt {i}");
        let clip = sada::text::Tokenizer::load_from(&ModelSource::Dir(_tmp.path().join("dev")), "tokenizer").unwrap();
        let ids: Vec<f32> = clip.encode(t).into_iter().map(|i| i as f32).collect();
        assert_eq!(ids, want["clip_input_ids"].get(i).unwrap().to_vec1::<f32>().unwrap(), "CLIP ids of prompt {i}");
    }
    let inputs = pipe.encode_prompts(&texts, &PromptOptions::default()).unwrap();
    let (pe, pooled) = (inputs.prompt_embeds.clone().unwrap(), inputs.pooled_prompt_embeds.clone().unwrap());
    let (e1, e2) = (rel_err(&pe, &want["prompt_t5_embeds"]), rel_err(&pooled, &want["prompt_pooled"]));
    eprintln!("T5 embeddings relative error {e1:e}, CLIP pooled {e2:e}");
    assert!(e1 < 1e-4 && e2 < 1e-4, "{e1} {e2}");
    // released text encoders load again for the next prompt, with the same result
    pipe.release_text_encoders();
    let again = pipe.encode_prompts(&texts, &PromptOptions::default()).unwrap();
    assert_eq!(rel_err(again.prompt_embeds.as_ref().unwrap(), &pe), 0.0);
    let (latents, _) = pipe.generate(&inputs, &options(50, 3.5), &mut |_, _| {}).unwrap();
    let err = rel_err(&latents, &want["dev_prompt_final"]);
    eprintln!("dev 50 steps from prompts: final latents relative error {err:e}");
    assert!(err < 1e-3, "{err}");
    // what Flux cannot take
    assert!(pipe
        .encode_prompts(&texts, &PromptOptions { negative_prompt: Some("blurry".into()), ..Default::default() })
        .unwrap_err()
        .to_string()
        .contains("negative"));
    assert!(pipe.encode_prompts(&texts, &PromptOptions { clip_skip: Some(1), ..Default::default() }).unwrap_err().to_string().contains("clip"));
}

/// TeaCache against the authors' algorithm written out around diffusers' forward
/// (`tools/gen_flux_teacache_fixtures.py`): the same steps computed and the same final latents
/// within 1e-3, at the authors' 1.5x and 2.0x thresholds. And it refuses a network that shows no
/// modulated input.
#[test]
fn teacache_matches_the_reference_on_flux() {
    let want = expected();
    let refs = candle_core::safetensors::load(dir().join("teacache.safetensors"), &Device::Cpu).unwrap();
    let mut pipe = pipeline("dev");
    for thr in ["0.25", "0.6"] {
        let accel = Acceleration::parse(&format!("teacache:threshold={thr}"), sada::Family::Flux).unwrap();
        let opts = GenerateOptions { acceleration: accel, ..options(50, 3.5) };
        let (latents, trace) = pipe.generate(&pipe_inputs(&want), &opts, &mut |_, _| {}).unwrap();
        let computed: Vec<f32> = trace.steps.iter().map(|s| if s.decision == sada::policy::Decision::Full { 1.0 } else { 0.0 }).collect();
        assert_eq!(computed, refs[&format!("t{thr}_mask")].to_vec1::<f32>().unwrap(), "threshold {thr}: steps computed");
        let err = rel_err(&latents, &refs[&format!("t{thr}_final")]);
        eprintln!("teacache {thr}: {} of 50 computed, final latents relative error {err:e}", computed.iter().sum::<f32>());
        assert!(err < 1e-3, "threshold {thr}: {err}");
    }
}
