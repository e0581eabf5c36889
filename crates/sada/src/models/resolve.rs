//! From what a user names to where a model's files are: a diffusers folder, a single-file
//! checkpoint, or a Hugging Face id looked up in the local cache (and downloaded unless
//! offline). The lists of files a download fetches live here too, one per kind of model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::hub::{self, HubOptions};
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
            ModelRef::Hub(id) => ModelSource::Dir(hub::resolve(id, opts, &pipeline_files)?),
        })
    }

    /// A ControlNet's folder or single file, or the id's cached (or downloaded) snapshot.
    pub fn controlnet_path(&self, opts: &HubOptions) -> Result<PathBuf> {
        match self {
            ModelRef::Dir(p) | ModelRef::File(p) => Ok(p.clone()),
            ModelRef::Hub(id) => hub::resolve(id, opts, &controlnet_files),
        }
    }
}

/// The files of a diffusers pipeline repository the pipelines read, given its snapshot folder
/// (what its `model_index.json` lists, and the shards its weight indexes name).
pub fn pipeline_files(snapshot: &Path) -> Vec<String> {
    let index: serde_json::Value =
        std::fs::read_to_string(snapshot.join("model_index.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let mut files = vec!["model_index.json".to_owned()];
    for (name, v) in index.as_object().into_iter().flatten() {
        if !v.as_array().is_some_and(|a| a.iter().all(|x| !x.is_null())) {
            continue;
        }
        let add: &[&str] = match name.as_str() {
            "scheduler" => &["scheduler_config.json"],
            "unet" | "vae" | "transformer" => &["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"],
            n if n.starts_with("text_encoder") => &["config.json", "model.safetensors", "model.safetensors.index.json"],
            n if n.starts_with("tokenizer") => {
                &["vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "tokenizer.json", "spiece.model"]
            }
            _ => &[],
        };
        files.extend(add.iter().map(|f| format!("{name}/{f}")));
    }
    // the shards an index already in the snapshot lists (Flux's transformer and T5 are sharded)
    let shards: Vec<String> = files.iter().filter(|f| f.ends_with(".index.json")).flat_map(|f| shard_files(snapshot, f)).collect();
    files.extend(shards);
    files
}

/// The files of a diffusers ControlNet repository.
pub fn controlnet_files(_snapshot: &Path) -> Vec<String> {
    vec!["config.json".to_owned(), "diffusion_pytorch_model.safetensors".to_owned()]
}

/// The files a sharded checkpoint's `index` lists, as paths in the snapshot.
fn shard_files(snapshot: &Path, index: &str) -> Vec<String> {
    let v: serde_json::Value = std::fs::read_to_string(snapshot.join(index)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let dir = Path::new(index).parent().and_then(|p| p.to_str()).unwrap_or("");
    let mut names: Vec<String> = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .into_iter()
        .flatten()
        .filter_map(|(_, f)| f.as_str())
        .filter(|f| !f.contains('/') && !f.contains(".."))
        .map(|f| format!("{dir}/{f}"))
        .collect();
    names.sort();
    names.dedup();
    names
}
