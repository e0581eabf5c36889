//! From what a user names to where a model's files are: a diffusers folder, a single-file
//! checkpoint, or a Hugging Face id looked up in the local cache (and downloaded unless
//! offline). The lists of files a download fetches live here too, one per kind of model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::hub::{self, HubOptions, Want};
use super::single_file::Checkpoint;
use super::source::ModelSource;
use crate::error::Result;

/// What a model argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// An existing folder.
    Dir(PathBuf),
    /// An existing file (a single-file checkpoint).
    File(PathBuf),
    /// A Hugging Face id (`org/name`).
    Hub(String),
}

impl ModelRef {
    /// An existing folder, else an existing file, else a Hugging Face id; None when `spec` is
    /// none of them.
    pub fn parse(spec: &str) -> Option<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            Some(ModelRef::Dir(path.to_path_buf()))
        } else if path.is_file() {
            Some(ModelRef::File(path.to_path_buf()))
        } else if hub::is_repo_id(spec) && !spec.starts_with('.') {
            Some(ModelRef::Hub(spec.to_owned()))
        } else {
            None
        }
    }

    /// Whether this names a Hugging Face id (rather than a local folder or file).
    pub fn is_hub(&self) -> bool {
        matches!(self, ModelRef::Hub(_))
    }

    /// A pipeline's files: the folder, the checkpoint opened as a folder, or the id's cached
    /// (or downloaded) snapshot.
    pub fn pipeline_source(&self, opts: &HubOptions) -> Result<ModelSource> {
        Ok(match self {
            ModelRef::Dir(d) => ModelSource::Dir(d.clone()),
            ModelRef::File(f) => ModelSource::SingleFile(Arc::new(Checkpoint::open(f)?)),
            ModelRef::Hub(id) => ModelSource::Dir(hub::resolve(id, opts, &pipeline_files, "model")?),
        })
    }

    /// [`ModelRef::pipeline_source`] with the denoiser (UNet or transformer) read from the single
    /// file `denoiser` (safetensors or GGUF) instead: a Hugging Face id then downloads
    /// everything but its own denoiser.
    pub fn pipeline_source_with_denoiser(&self, opts: &HubOptions, denoiser: &Path) -> Result<ModelSource> {
        let ck = Checkpoint::open(denoiser)?;
        let skip = if ck.family == crate::family::Architecture::Flux { "transformer/" } else { "unet/" };
        let base = match self {
            ModelRef::Hub(id) => {
                let wants = |snap: &Path| -> Vec<Want> {
                    pipeline_files(snap).into_iter().filter(|w| !w.any_of.iter().flatten().any(|f| f.starts_with(skip))).collect()
                };
                ModelSource::Dir(hub::resolve(id, opts, &wants, "model")?)
            }
            other => other.pipeline_source(opts)?,
        };
        ModelSource::with_denoiser(base, ck)
    }

    /// A ControlNet's folder or single file, or the id's cached (or downloaded) snapshot.
    pub fn controlnet_path(&self, opts: &HubOptions) -> Result<PathBuf> {
        match self {
            ModelRef::Dir(p) | ModelRef::File(p) => Ok(p.clone()),
            ModelRef::Hub(id) => hub::resolve(id, opts, &controlnet_files, "controlnet"),
        }
    }
}

/// The files of a diffusers pipeline repository the pipelines read, given its snapshot folder
/// (the components its `model_index.json` lists, or without one the component folders the
/// snapshot has, and the shards its weight indexes name).
pub fn pipeline_files(snapshot: &Path) -> Vec<Want> {
    let index: Option<serde_json::Value> = crate::files::read_text(&snapshot.join("model_index.json"), crate::files::MAX_TEXT_FILE)
        .ok()
        .and_then(|t| crate::config::parse_config(&t, Path::new("model_index.json")).ok());
    let components: Vec<String> = match &index {
        Some(v) => {
            v.as_object().into_iter().flatten().filter(|(_, v)| v.as_array().is_some_and(|a| a.iter().all(|x| !x.is_null()))).map(|(k, _)| k.clone()).collect()
        }
        None => std::fs::read_dir(snapshot).into_iter().flatten().filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
    };
    let mut wants = vec![if index.is_some() || components.is_empty() { Want::file("model_index.json") } else { Want::optional("model_index.json") }];
    for name in components.iter().filter(|n| is_plain_name(n)) {
        let f = |file: &str| format!("{name}/{file}");
        match name.as_str() {
            "scheduler" => wants.push(Want::file(f("scheduler_config.json"))),
            "unet" | "vae" | "transformer" => wants.extend(weights_of(name, "diffusion_pytorch_model")),
            n if n.starts_with("text_encoder") => wants.extend(weights_of(name, "model")),
            n if n.starts_with("tokenizer") => {
                wants.push(Want { any_of: vec![vec![f("vocab.json"), f("merges.txt")], vec![f("tokenizer.json")]], required: true });
                wants.push(Want::optional(f("special_tokens_map.json")));
                wants.push(Want::optional(f("tokenizer_config.json")));
            }
            _ => {}
        }
    }
    with_shards(snapshot, wants)
}

/// The files of a diffusers ControlNet repository.
pub fn controlnet_files(snapshot: &Path) -> Vec<Want> {
    let mut wants = weights_of("", "diffusion_pytorch_model");
    wants.extend(shard_wants(snapshot, "diffusion_pytorch_model.safetensors.index.json"));
    wants
}

/// A component's config and weights (one file, its fp16 variant, or an index of shards), and
/// the shards of an index the snapshot already has.
fn weights_of(component: &str, stem: &str) -> Vec<Want> {
    let f = |file: String| if component.is_empty() { file } else { format!("{component}/{file}") };
    vec![
        Want::file(f("config.json".to_owned())),
        Want::one_of([
            f(format!("{stem}.safetensors")),
            f(format!("{stem}.safetensors.index.json")),
            f(format!("{stem}.fp16.safetensors")),
            f(format!("{stem}.safetensors.fp16.index.json")),
        ]),
    ]
}

/// A component folder name from `model_index.json`: a plain name, never a path.
fn is_plain_name(n: &str) -> bool {
    !n.is_empty() && !n.starts_with('.') && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Every shard the index files among `wants` name, once those indexes are in the snapshot.
fn with_shards(snapshot: &Path, mut wants: Vec<Want>) -> Vec<Want> {
    let indexes: Vec<String> = wants.iter().flat_map(|w| w.any_of.iter().flatten()).filter(|f| f.ends_with(".index.json")).cloned().collect();
    for index in indexes {
        wants.extend(shard_wants(snapshot, &index));
    }
    wants
}

/// The files a sharded checkpoint's `index` lists, as required files of the snapshot.
fn shard_wants(snapshot: &Path, index: &str) -> Vec<Want> {
    let v: serde_json::Value =
        crate::files::read_text(&snapshot.join(index), crate::files::MAX_TEXT_FILE).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let dir = Path::new(index).parent().and_then(|p| p.to_str()).unwrap_or("");
    let mut names: Vec<String> = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .into_iter()
        .flatten()
        .filter_map(|(_, f)| f.as_str())
        .filter(|f| is_plain_name(f))
        .map(|f| if dir.is_empty() { f.to_owned() } else { format!("{dir}/{f}") })
        .collect();
    names.sort();
    names.dedup();
    names.into_iter().map(Want::file).collect()
}
