//! Pipelines: assemble a model's parts (text encoder, denoiser, scheduler config, decoder) with
//! a solver and an accelerator. No numerics here.
//!
//! [`Pipeline`] is what the command line drives, whatever the model family.

pub mod default_model;
pub mod flux;
pub mod inputs;
pub mod pipeline;
pub mod stable_diffusion;

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::models::ModelSource;
pub use flux::Flux;
pub use inputs::{ControlInput, PipelineInputs};
pub use pipeline::{validate_prompt, Decoder, GenerateOptions, Pipeline, PromptCheck, PromptOptions, SizeConditioning, MAX_PROMPT_CHARS};
pub use stable_diffusion::StableDiffusion;

/// The `_class_name`s a `model_index.json` may give: diffusers' Stable Diffusion 1.x / 2.x and
/// XL pipelines (text to image, image to image and ControlNet: the same components, read the
/// same way), `FluxPipeline`, and the embedded default model's own class.
pub const PIPELINE_CLASSES: &[&str] = &[
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionControlNetPipeline",
    "StableDiffusionControlNetImg2ImgPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLControlNetPipeline",
    "StableDiffusionXLControlNetImg2ImgPipeline",
    "FluxPipeline",
    "SadaPixelTextToImagePipeline",
];

/// Refuse a `model_index.json` that is not a JSON object, or whose `_class_name` is not one of
/// [`PIPELINE_CLASSES`] (SD-3, Kandinsky, inpainting, ...), before its files are read as a
/// family they are not. No `model_index.json`, or one without `_class_name`, passes.
pub fn check_model_index(source: &ModelSource) -> Result<()> {
    const INDEX: &str = "model_index.json";
    if !source.exists(INDEX) {
        return Ok(());
    }
    let index: serde_json::Value = source.read_json(INDEX)?;
    let path = source.path(INDEX);
    let found = match &index {
        serde_json::Value::Object(object) => match object.get("_class_name") {
            None => return Ok(()),
            Some(serde_json::Value::String(class)) if PIPELINE_CLASSES.contains(&class.as_str()) => return Ok(()),
            Some(serde_json::Value::String(class)) => format!("`_class_name` = {class}, a pipeline sada does not load"),
            Some(other) => format!("`_class_name` = {other}, not a pipeline's name"),
        },
        serde_json::Value::Array(_) => "an array, not a JSON object".to_owned(),
        other => format!("{other}, not a JSON object"),
    };
    Err(Error::file(path, format!("{found}: expected a diffusers pipeline's model index (an object) naming one of {}", PIPELINE_CLASSES.join(", "))))
}

/// The pipeline for the model in `source`: Flux when its files say so, Stable Diffusion (1.x,
/// 2.x, XL) otherwise. A `model_index.json` naming another pipeline is refused
/// ([`check_model_index`]).
pub fn load_pipeline(source: ModelSource, dtype: DType, device: &Device) -> Result<Box<dyn Pipeline>> {
    check_model_index(&source)?;
    if Flux::detect(&source) {
        return Ok(Box::new(Flux::load_from(source, dtype, device)?));
    }
    Ok(Box::new(StableDiffusion::load_from(source, dtype, device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model folder holding only `model_index.json` with `text`.
    fn folder(text: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("model_index.json"), text).unwrap();
        tmp
    }

    #[test]
    fn a_model_index_naming_another_pipeline_or_not_an_object_is_refused() {
        for (text, needle) in [
            (
                r#"{"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"]}"#,
                "`_class_name` = StableDiffusion3Pipeline",
            ),
            (r#"{"_class_name": "KandinskyPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}"#, "`_class_name` = KandinskyPipeline"),
            (r#"{"_class_name": "StableDiffusionInpaintPipeline"}"#, "`_class_name` = StableDiffusionInpaintPipeline"),
            (r#"{"_class_name": 3}"#, "`_class_name` = 3"),
            ("[]", "an array, not a JSON object"),
            ("3", "3, not a JSON object"),
            ("null", "null, not a JSON object"),
        ] {
            let tmp = folder(text);
            let e = match load_pipeline(ModelSource::Dir(tmp.path().to_path_buf()), DType::F32, &Device::Cpu) {
                Ok(_) => panic!("{text}: accepted"),
                Err(e) => e.to_string(),
            };
            assert!(
                e.contains("model_index.json") && e.contains(needle) && e.contains("StableDiffusionXLPipeline, ") && e.trim().lines().count() == 1,
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn the_fixtures_and_the_default_model_pass_the_model_index_check() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        for dir in ["sd/sd15", "sd/sd2", "sd/sdxl", "flux/dev", "flux/schnell"] {
            check_model_index(&ModelSource::Dir(fixtures.join(dir))).unwrap();
        }
        check_model_index(&default_model::source()).unwrap();
        // no _class_name, or no model_index.json at all: as before
        check_model_index(&ModelSource::Dir(folder(r#"{"unet": ["diffusers", "UNet2DConditionModel"]}"#).path().to_path_buf())).unwrap();
        check_model_index(&ModelSource::Dir(tempfile::tempdir().unwrap().path().to_path_buf())).unwrap();
    }
}
