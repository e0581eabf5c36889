//! Where a model's files come from: a diffusers folder on disk, a model compiled into the
//! binary (the embedded default), or a single-file checkpoint read as a folder. Loaders ask for
//! files by their path inside the model folder, so every source goes through the same code and
//! reports errors with the same paths.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::models::weights;

/// Where a model's files come from; loaders read every file through it by its path inside the model
/// folder.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A diffusers model folder on disk (component folders such as `unet/` and `vae/` inside).
    Dir(PathBuf),
    /// Files compiled in, by path inside the model folder (e.g. `unet/config.json`).
    Embedded {
        /// The model's name, shown in paths as `<embedded NAME>`.
        name: &'static str,
        /// Each file's path inside the model folder and its contents.
        files: &'static [(&'static str, &'static [u8])],
    },
    /// An original-layout checkpoint, renamed to diffusers' layout as it is read.
    SingleFile(std::sync::Arc<crate::models::single_file::Checkpoint>),
    /// A model whose denoiser (`unet/` or `transformer/`) comes from a single file, as ComfyUI
    /// loads a diffusion model on its own (a city96 FLUX.1 GGUF, say), and every other file from
    /// `base` (the model's folder or id: text encoders, tokenizers, VAE, scheduler).
    WithDenoiser {
        /// Everything but the denoiser.
        base: Box<ModelSource>,
        /// The denoiser's checkpoint.
        denoiser: std::sync::Arc<crate::models::single_file::Checkpoint>,
    },
}

impl ModelSource {
    /// `base` with its denoiser read from `denoiser` instead. Refused when the file's
    /// architecture is not the base model's (a FLUX.1 transformer for a Stable Diffusion folder,
    /// an SDXL UNet for an SD-1.5 one), as told by the base's `model_index.json`.
    pub fn with_denoiser(base: ModelSource, denoiser: crate::models::single_file::Checkpoint) -> Result<Self> {
        use crate::family::Architecture;
        let component = denoiser_component(&denoiser);
        let index: serde_json::Value = if base.exists("model_index.json") { base.read_json("model_index.json")? } else { serde_json::Value::Null };
        let class = index.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
        let base_is = if class.starts_with("Flux") {
            Some("a FLUX.1 model")
        } else if class.starts_with("StableDiffusionXL") {
            Some("an SDXL model")
        } else if class.starts_with("StableDiffusion") || base.exists("unet/config.json") {
            Some("a Stable Diffusion model")
        } else {
            None
        };
        let fits = match (denoiser.family, base_is) {
            (_, None) => false,
            (Architecture::Flux, Some(b)) => b == "a FLUX.1 model",
            (Architecture::Sdxl, Some(b)) => b == "an SDXL model",
            (Architecture::Sd1 | Architecture::Sd2, Some(b)) => b == "a Stable Diffusion model",
        };
        if !fits {
            return Err(Error::file(
                &denoiser.path,
                format!(
                    "a {:?} {component}, but the model it goes into ({}) is {}",
                    denoiser.family,
                    base.path("").display(),
                    base_is.unwrap_or("not a diffusers pipeline (no model_index.json naming one)")
                ),
            ));
        }
        Ok(ModelSource::WithDenoiser { base: Box::new(base), denoiser: std::sync::Arc::new(denoiser) })
    }

    /// Where `rel` is read from: the denoiser's file for its component, else the base.
    fn route(&self, rel: &str) -> Option<&ModelSource> {
        match self {
            ModelSource::WithDenoiser { base, denoiser } => {
                let c = denoiser_component(denoiser);
                (rel != c && !rel.starts_with(&format!("{c}/"))).then_some(base.as_ref())
            }
            _ => None,
        }
    }

    /// A component folder given on its own (e.g. `.../unet`): its parent as the model and its
    /// name as the component.
    pub fn component_dir(dir: &Path) -> (Self, String) {
        match (dir.parent(), dir.file_name().and_then(|n| n.to_str())) {
            (Some(p), Some(n)) => (ModelSource::Dir(p.to_path_buf()), n.to_string()),
            _ => (ModelSource::Dir(dir.to_path_buf()), String::new()),
        }
    }

    /// The path shown in messages for a file of this model.
    pub fn path(&self, rel: &str) -> PathBuf {
        match self {
            ModelSource::Dir(d) => d.join(rel),
            ModelSource::Embedded { name, .. } => Path::new(&format!("<embedded {name}>")).join(rel),
            ModelSource::SingleFile(ck) => PathBuf::from(format!("{} [{rel}]", ck.path.display())),
            ModelSource::WithDenoiser { denoiser, .. } => match self.route(rel) {
                Some(base) => base.path(rel),
                None => PathBuf::from(format!("{} [{rel}]", denoiser.path.display())),
            },
        }
    }

    fn embedded(&self, rel: &str) -> Option<&'static [u8]> {
        match self {
            ModelSource::Embedded { files, .. } => files.iter().find(|(p, _)| *p == rel).map(|(_, b)| *b),
            _ => None,
        }
    }

    /// Whether the model has `rel` (a file, or a folder with files in it).
    pub fn exists(&self, rel: &str) -> bool {
        match self {
            ModelSource::Dir(d) => d.join(rel).exists(),
            ModelSource::Embedded { files, .. } => files.iter().any(|(p, _)| *p == rel || p.starts_with(&format!("{rel}/"))),
            ModelSource::SingleFile(ck) => ck.exists(rel),
            ModelSource::WithDenoiser { denoiser, .. } => match self.route(rel) {
                Some(base) => base.exists(rel),
                None => denoiser.exists(rel),
            },
        }
    }

    /// The text of file `rel` (e.g. `unet/config.json`); errors name its path.
    pub fn read_to_string(&self, rel: &str) -> Result<String> {
        let path = self.path(rel);
        match self {
            ModelSource::Dir(_) => crate::files::read_text(&path, crate::files::MAX_TEXT_FILE),
            ModelSource::Embedded { .. } => {
                let bytes = self.embedded(rel).ok_or_else(|| Error::file(&path, "not part of the embedded model"))?;
                String::from_utf8(bytes.to_vec()).map_err(|_| Error::file(&path, "not UTF-8 text"))
            }
            ModelSource::SingleFile(ck) => ck.file(rel).map(str::to_owned).ok_or_else(|| Error::file(&path, "not part of this checkpoint")),
            ModelSource::WithDenoiser { denoiser, .. } => match self.route(rel) {
                Some(base) => base.read_to_string(rel),
                None => denoiser.file(rel).map(str::to_owned).ok_or_else(|| Error::file(&path, "not part of this checkpoint")),
            },
        }
    }

    /// Parse a JSON file (a component's config.json, scheduler_config.json, ...).
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, rel: &str) -> Result<T> {
        crate::config::parse_config(&self.read_to_string(rel)?, &self.path(rel))
    }

    /// The weights of `component` (e.g. `unet`, stem `diffusion_pytorch_model`) and the path to
    /// name in errors about them.
    pub fn var_builder(&self, component: &str, stem: &str, dtype: DType, device: &Device) -> Result<(VarBuilder<'static>, PathBuf)> {
        match self {
            ModelSource::Dir(d) => {
                let files = weights::weight_files(&d.join(component), stem)?;
                let vb = weights::var_builder(&files, dtype, device)?;
                Ok((vb, files[0].clone()))
            }
            ModelSource::Embedded { .. } => {
                let (bytes, st, path) = self.embedded_weights(component, stem)?;
                weights::check_tensors(st.tensors(), &path)?;
                let vb =
                    VarBuilder::from_slice_safetensors(bytes, dtype, device).map_err(|e| Error::file(&path, format!("not a valid safetensors file: {e}")))?;
                Ok((vb, path))
            }
            ModelSource::SingleFile(ck) => Ok((ck.var_builder(component, dtype, device)?, self.path(component))),
            ModelSource::WithDenoiser { denoiser, .. } => match self.route(component) {
                Some(base) => base.var_builder(component, stem, dtype, device),
                None => Ok((denoiser.var_builder(component, dtype, device)?, self.path(component))),
            },
        }
    }

    /// An embedded component's weights file: its bytes, parsed, and its path for messages.
    fn embedded_weights(&self, component: &str, stem: &str) -> Result<(&'static [u8], candle_core::safetensors::SliceSafetensors<'static>, PathBuf)> {
        let rel = format!("{component}/{stem}.safetensors");
        let path = self.path(&rel);
        let bytes = self.embedded(&rel).ok_or_else(|| Error::file(&path, "not part of the embedded model"))?;
        let st = candle_core::safetensors::SliceSafetensors::new(bytes).map_err(|e| Error::file(&path, format!("not a valid safetensors file: {e}")))?;
        Ok((bytes, st, path))
    }

    /// The names and shapes of `component`'s tensors (stem as for [`ModelSource::var_builder`]),
    /// read from the files' headers; nothing is loaded.
    pub fn tensor_shapes(&self, component: &str, stem: &str) -> Result<Vec<(String, Vec<usize>)>> {
        let from = |st: Vec<(String, safetensors::tensor::TensorView<'_>)>| st.into_iter().map(|(n, v)| (n, v.shape().to_vec())).collect::<Vec<_>>();
        match self {
            ModelSource::Dir(d) => {
                let mut out = Vec::new();
                for f in weights::weight_files(&d.join(component), stem)? {
                    out.extend(from(weights::open_safetensors(&f)?.tensors()));
                }
                Ok(out)
            }
            ModelSource::Embedded { .. } => Ok(from(self.embedded_weights(component, stem)?.1.tensors())),
            ModelSource::SingleFile(ck) => Ok(ck.tensor_shapes(component)),
            ModelSource::WithDenoiser { denoiser, .. } => match self.route(component) {
                Some(base) => base.tensor_shapes(component, stem),
                None => Ok(denoiser.tensor_shapes(component)),
            },
        }
    }
}

/// The component a checkpoint's denoiser is: FLUX.1's `transformer`, else `unet`.
fn denoiser_component(ck: &crate::models::single_file::Checkpoint) -> &'static str {
    if ck.family == crate::family::Architecture::Flux {
        "transformer"
    } else {
        "unet"
    }
}
