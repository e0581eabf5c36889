//! The embedded default model: a small text-to-image model this project trained on its
//! procedural shapes set (`sada::data::shapes`), compiled into the library so `sada generate`
//! works offline with no download. It is an ordinary diffusers folder (see
//! `crates/sada/assets/default_model/`, with the training recipe in its `TRAINING.md`): a
//! CLIP-architecture text encoder with a word-level tokenizer, a pixel-space
//! `UNet2DConditionModel` (3 x 32 x 32, cross-attention at full resolution) and a
//! DPM-Solver++ scheduler config over the DDPM linear schedule.

use candle_core::{DType, Device};

use crate::error::Result;
use crate::models::ModelSource;
use crate::pipelines::StableDiffusion;

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
    asset!("scheduler/scheduler_config.json"),
    asset!("text_encoder/config.json"),
    asset!("text_encoder/model.safetensors"),
    asset!("tokenizer/tokenizer.json"),
    asset!("tokenizer/tokenizer_config.json"),
    asset!("tokenizer/special_tokens_map.json"),
    asset!("unet/config.json"),
    asset!("unet/diffusion_pytorch_model.safetensors"),
];

pub fn source() -> ModelSource {
    ModelSource::Embedded { name: NAME, files: FILES }
}

/// The embedded model, ready to sample (f32).
pub fn load(device: &Device) -> Result<StableDiffusion> {
    StableDiffusion::load_from(source(), DType::F32, device)
}
