//! Models by Hugging Face id, from the local cache that `huggingface_hub` (and so diffusers)
//! fills: `<cache>/models--<org>--<name>/snapshots/<commit>/...`, with `refs/<branch>` naming
//! the commit of each branch or tag. The cache folder is `HF_HUB_CACHE`, else `HF_HOME/hub`,
//! else `~/.cache/huggingface/hub`. Files not cached are downloaded with the `hf-hub` crate
//! unless offline (`--offline` or `HF_HUB_OFFLINE=1`); the token comes from `HF_TOKEN` or the
//! token file `huggingface-cli login` writes.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where and how to look a model up.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Branch, tag or commit (default `main`).
    pub revision: Option<String>,
    /// Never touch the network.
    pub offline: bool,
}

impl HubOptions {
    /// Offline when asked or when `HF_HUB_OFFLINE` is set to a true value, as huggingface_hub reads it.
    pub fn offline(&self) -> bool {
        self.offline || std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
    }

    /// The revision to look up: the one asked for, else `main`.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

/// The cache folder, as huggingface_hub chooses it.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    cache.join("huggingface").join("hub")
}

/// Whether `s` has the shape of a model id (`org/name`).
pub fn is_repo_id(s: &str) -> bool {
    let ok = |p: &str| !p.is_empty() && p.len() <= 96 && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !p.starts_with('.');
    matches!(s.split('/').collect::<Vec<_>>()[..], [org, name] if ok(org) && ok(name))
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The cached snapshot folder of `id` at the options' revision, if it is cached.
pub fn cached_snapshot(id: &str, opts: &HubOptions) -> Result<Option<PathBuf>> {
    let repo = cache_dir().join(format!("models--{}", id.replace('/', "--")));
    let revision = opts.revision();
    if revision.contains(['/', '\\']) || revision.contains("..") {
        return Err(Error::param("revision", format!("`{revision}` is not a branch, tag or commit name")));
    }
    let commit = if is_commit(revision) {
        revision.to_owned()
    } else {
        match std::fs::read_to_string(repo.join("refs").join(revision)) {
            Ok(c) => c.trim().to_owned(),
            Err(_) => return Ok(None),
        }
    };
    if !is_commit(&commit) {
        return Err(Error::file(repo.join("refs").join(revision), format!("`{commit}` is not a commit hash")));
    }
    let snap = repo.join("snapshots").join(&commit);
    Ok(snap.is_dir().then_some(snap))
}

/// The local folder of model `id`: the cached snapshot, or one downloaded now. `files` says
/// which files a model of this layout needs (given the folder's `model_index.json`).
pub fn resolve(id: &str, opts: &HubOptions, files: &dyn Fn(&Path) -> Vec<String>) -> Result<PathBuf> {
    if !is_repo_id(id) {
        return Err(Error::param("model", format!("`{id}` is neither a folder, a file nor a Hugging Face id (org/name)")));
    }
    let cached = cached_snapshot(id, opts)?;
    if let Some(snap) = &cached {
        let missing: Vec<String> = files(snap).into_iter().filter(|f| !snap.join(f).exists()).collect();
        if missing.is_empty() || opts.offline() {
            return Ok(snap.clone());
        }
    }
    if opts.offline() {
        return Err(Error::param(
            "model",
            format!(
                "{id} (revision {}) is not in the Hugging Face cache at {}, and offline (--offline or HF_HUB_OFFLINE) nothing is downloaded",
                opts.revision(),
                cache_dir().display()
            ),
        ));
    }
    download(id, opts, files)
}

/// Download what `id` needs into the cache (with a progress bar per file).
fn download(id: &str, opts: &HubOptions, files: &dyn Fn(&Path) -> Vec<String>) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let net = |e: hf_hub::api::sync::ApiError| Error::param("model", format!("{id}: cannot download from the Hugging Face Hub: {e}"));
    let api = ApiBuilder::new().with_cache_dir(cache_dir()).with_progress(true).with_token(token()).build().map_err(net)?;
    let repo = api.repo(Repo::with_revision(id.to_owned(), RepoType::Model, opts.revision().to_owned()));
    let index = repo.get("model_index.json").map_err(net)?;
    let snap = index.parent().map(Path::to_path_buf).ok_or_else(|| Error::internal("a downloaded file without a folder"))?;
    let fetch = |f: &String| {
        if !snap.join(f).exists() {
            // optional files (a variant, a tokenizer file a model does not have) may be absent
            let _ = repo.get(f);
        }
    };
    let listed = files(&snap);
    listed.iter().for_each(fetch);
    // then the shards that the indexes just fetched name
    files(&snap).iter().filter(|f| !listed.contains(f)).for_each(fetch);
    Ok(snap)
}

/// `HF_TOKEN`, else the token file of `huggingface-cli login`.
fn token() -> Option<String> {
    if let Ok(t) = std::env::var("HF_TOKEN") {
        return Some(t.trim().to_owned()).filter(|t| !t.is_empty());
    }
    let home = std::env::var_os("HF_HOME").map(PathBuf::from).unwrap_or_else(|| cache_dir().parent().map(Path::to_path_buf).unwrap_or_default());
    std::fs::read_to_string(home.join("token")).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_told_from_paths() {
        assert!(is_repo_id("stabilityai/stable-diffusion-2-1"));
        assert!(is_repo_id("runwayml/stable-diffusion-v1-5"));
        for s in ["model", "./a/b", "a/b/c", "/abs/path", "a/..", "../x", "a b/c", ""] {
            assert!(!is_repo_id(s), "{s}");
        }
    }
}
