//! The embedded default model: a small text-to-image model this project trained on its
//! procedural shapes set (`sada::data::shapes`), compiled into the library so `sada generate`
//! works offline with no download. It is an ordinary diffusers folder (see
//! `crates/sada/assets/default_model/`, with the training recipe in its `TRAINING.md`): a
//! CLIP-architecture text encoder with a word-level tokenizer, a pixel-space
//! `UNet2DConditionModel` (3 x 32 x 32, cross-attention at full resolution) and a
//! DPM-Solver++ scheduler config over the DDPM linear schedule; and a ControlNet that reads
//! the shape's outline (`controlnet/`, docs/default-model/CONTROLNET.md).

use candle_core::{DType, Device};

use crate::data::shapes::{self, Scene};
use crate::error::Result;
use crate::image::to_rgb;
use crate::models::ModelSource;
use crate::pipelines::{ControlInput, GenerateOptions, Pipeline, PromptOptions, StableDiffusion};
use crate::policy::Acceleration;
use crate::solvers::SolverKind;

/// The embedded model's name.
pub const NAME: &str = "sada-shapes-32";

/// Guidance scale the default model was tuned for (the held-out background check and the
/// sample grids in TRAINING.md use it).
pub const GUIDANCE_SCALE: f64 = 4.0;

macro_rules! asset {
    ($rel:literal) => {
        ($rel, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/default_model/", $rel)) as &[u8])
    };
}

static FILES: &[(&str, &[u8])] = &[
    asset!("model_index.json"),
    asset!("controlnet/config.json"),
    asset!("controlnet/diffusion_pytorch_model.safetensors"),
    asset!("scheduler/scheduler_config.json"),
    asset!("text_encoder/config.json"),
    asset!("text_encoder/model.safetensors"),
    asset!("tokenizer/tokenizer.json"),
    asset!("tokenizer/tokenizer_config.json"),
    asset!("tokenizer/special_tokens_map.json"),
    asset!("unet/config.json"),
    asset!("unet/diffusion_pytorch_model.safetensors"),
];

/// The embedded model's files, as a model source (no disk access).
pub fn source() -> ModelSource {
    ModelSource::Embedded { name: NAME, files: FILES }
}

/// The embedded model, ready to sample (f32).
pub fn load(device: &Device) -> Result<StableDiffusion> {
    load_in(DType::F32, device)
}

/// The embedded model computing in `dtype`, with the guidance scale it was tuned for as its
/// default.
pub fn load_in(dtype: DType, device: &Device) -> Result<StableDiffusion> {
    let mut pipe = StableDiffusion::load_from(source(), dtype, device)?;
    pipe.guidance_scale = Some(GUIDANCE_SCALE);
    Ok(pipe)
}

/// How closely the drawn shape follows a control outline. Each case is a prompt and the scene
/// whose outline is the control image (`Scene::outline`); with no ControlNet attached (the same
/// as an untrained one, whose zero convolutions add nothing) the outline is ignored. Returns,
/// per case, the intersection over union of the drawn shape (`shapes::foreground`) with the
/// outline's region and with `caption_scene`'s region, from guided DPM-Solver++ runs of
/// `steps` steps seeded by the case index.
pub fn outline_overlap(pipe: &mut StableDiffusion, cases: &[(String, Scene, Scene)], steps: usize) -> Result<Vec<(f64, f64)>> {
    let (h, w) = pipe.default_size();
    let mut out = Vec::with_capacity(cases.len());
    for (i, (prompt, caption_scene, control_scene)) in cases.iter().enumerate() {
        let mut inputs = pipe.encode_prompts(std::slice::from_ref(prompt), &PromptOptions { negative_prompt: Some(String::new()), ..Default::default() })?;
        let outline = ControlInput { image: control_scene.outline(w), settings: Default::default() };
        inputs.control = vec![outline; pipe.controlnets().len()];
        let opts = GenerateOptions {
            steps,
            guidance_scale: GUIDANCE_SCALE,
            height: h,
            width: w,
            seed: i as u64,
            solver: SolverKind::DpmSolverMultistep,
            acceleration: Acceleration::default(),
            size_conditioning: Default::default(),
        };
        let (image, _) = pipe.generate(&inputs, &opts, &mut |_, _| {})?;
        let drawn = shapes::foreground(&to_rgb(&image)?);
        out.push((shapes::iou(&drawn, &control_scene.region(w)), shapes::iou(&drawn, &caption_scene.region(w))));
    }
    Ok(out)
}
