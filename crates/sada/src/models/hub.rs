//! Models by Hugging Face id, from the local cache that `huggingface_hub` (and so diffusers)
//! fills: `<cache>/models--<org>--<name>/snapshots/<commit>/...`, with `refs/<branch>` naming
//! the commit of each branch or tag. The cache folder is `HF_HUB_CACHE`, else `HF_HOME/hub`,
//! else `~/.cache/huggingface/hub`.
//!
//! A snapshot that holds every file a model needs is used as it is, without asking the network
//! (so a stalled network cannot hold up a cached model). Otherwise, unless offline (`--offline`
//! or `HF_HUB_OFFLINE=1`), the missing files are downloaded from `HF_ENDPOINT` (default
//! `https://huggingface.co`, through `HTTPS_PROXY` where set) with the token of `HF_TOKEN` or of
//! the file `huggingface-cli login` writes. Every request has a connect and a read timeout
//! (`HF_HUB_ETAG_TIMEOUT`, `HF_HUB_DOWNLOAD_TIMEOUT`: 10 s each, as huggingface_hub's); when the
//! Hub cannot be reached, a cached snapshot is used as it is, as huggingface_hub does.
//! Downloaded files are written into the snapshot as plain files (huggingface_hub reads those
//! the same as its own links into `blobs/`), each complete or not at all.

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

/// A file (or files) a model needs from its repository: any one of `any_of`, each a set of
/// files that must all be there (a tokenizer is `vocab.json` + `merges.txt`, or `tokenizer.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The alternatives, in the order a download tries them.
    pub any_of: Vec<Vec<String>>,
    /// Whether the model cannot load without it (optional files are fetched when other files
    /// are, but their absence never sends a cached model to the network).
    pub required: bool,
}

impl Want {
    /// One required file.
    pub fn file(f: impl Into<String>) -> Self {
        Want { any_of: vec![vec![f.into()]], required: true }
    }

    /// One file the model reads when it is there.
    pub fn optional(f: impl Into<String>) -> Self {
        Want { any_of: vec![vec![f.into()]], required: false }
    }

    /// Any one of several required files.
    pub fn one_of<S: Into<String>>(files: impl IntoIterator<Item = S>) -> Self {
        Want { any_of: files.into_iter().map(|f| vec![f.into()]).collect(), required: true }
    }

    /// Whether the snapshot `dir` has it.
    pub fn is_in(&self, dir: &Path) -> bool {
        self.any_of.iter().any(|alt| alt.iter().all(|f| dir.join(f).is_file()))
    }
}

/// The cached snapshot folder of `id` at the options' revision, if it is cached.
pub fn cached_snapshot(id: &str, opts: &HubOptions) -> Result<Option<PathBuf>> {
    let repo = repo_dir(id);
    let revision = opts.revision();
    check_revision(revision)?;
    let commit = if is_commit(revision) {
        revision.to_owned()
    } else {
        let r = repo.join("refs").join(revision);
        if std::fs::symlink_metadata(&r).is_err() {
            return Ok(None);
        }
        crate::files::read_text(&r, 1024)?.trim().to_owned()
    };
    if !is_commit(&commit) {
        return Err(Error::file(repo.join("refs").join(revision), format!("`{}` is not a commit hash", commit.chars().take(64).collect::<String>())));
    }
    let snap = repo.join("snapshots").join(&commit);
    Ok(snap.is_dir().then_some(snap))
}

fn repo_dir(id: &str) -> PathBuf {
    cache_dir().join(format!("models--{}", id.replace('/', "--")))
}

fn check_revision(revision: &str) -> Result<()> {
    let ok =
        !revision.is_empty() && revision.len() <= 256 && !revision.contains("..") && revision.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::param("revision", format!("`{revision}` is not a branch, tag or commit name")))
    }
}

/// The local folder of model `id`: the cached snapshot when it has every required file, else
/// one completed by downloading now. `wants` says which files a model of this kind needs, given
/// what the snapshot holds so far (a pipeline's `model_index.json` names its components);
/// `flag` names the argument in errors (`model`, `controlnet`).
pub fn resolve(id: &str, opts: &HubOptions, wants: &dyn Fn(&Path) -> Vec<Want>, flag: &str) -> Result<PathBuf> {
    if !is_repo_id(id) {
        return Err(Error::param(flag, format!("`{id}` is neither a folder, a file nor a Hugging Face id (org/name)")));
    }
    let cached = cached_snapshot(id, opts)?;
    if let Some(snap) = &cached {
        let complete = wants(snap).iter().all(|w| !w.required || w.is_in(snap));
        if complete || opts.offline() {
            return Ok(snap.clone());
        }
    }
    if opts.offline() {
        return Err(Error::param(
            flag,
            format!(
                "{id} (revision {}) is not in the Hugging Face cache at {}, and offline (--offline or HF_HUB_OFFLINE) nothing is downloaded",
                opts.revision(),
                cache_dir().display()
            ),
        ));
    }
    let hub = Hub::from_env().map_err(|e| Error::param(flag, e))?;
    let commit = match hub.commit(id, opts.revision()) {
        Ok(c) => c,
        Err(Failure::Network(e)) if cached.is_some() => {
            let snap = cached.expect("checked above");
            eprintln!("warning: {id}: {e}; using the cached snapshot {} as it is", snap.display());
            return Ok(snap);
        }
        Err(f) => return Err(Error::param(flag, f.to_string())),
    };
    hub.complete_snapshot(id, opts.revision(), &commit, wants).map_err(|e| Error::param(flag, e))
}

/// Why a request failed: the network (timeouts, refused connections: a cached snapshot can
/// stand in) or the Hub's answer.
#[derive(Debug)]
enum Failure {
    Network(String),
    Answer(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Network(m) | Failure::Answer(m) => f.write_str(m),
        }
    }
}

/// The Hub (or the mirror `HF_ENDPOINT` names), with the user's token and timeouts.
struct Hub {
    endpoint: String,
    token: Option<String>,
    agent: ureq::Agent,
    download_timeout: f64,
}

impl Hub {
    fn from_env() -> std::result::Result<Self, String> {
        let endpoint = std::env::var("HF_ENDPOINT").ok().map(|e| e.trim().trim_end_matches('/').to_owned()).filter(|e| !e.is_empty());
        let endpoint = endpoint.unwrap_or_else(|| "https://huggingface.co".to_owned());
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) || endpoint.contains(char::is_whitespace) {
            return Err(format!("HF_ENDPOINT `{endpoint}`: expected an http:// or https:// address"));
        }
        let seconds = |var: &str| -> std::result::Result<f64, String> {
            match std::env::var(var) {
                Err(_) => Ok(10.0),
                Ok(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86400.0)
                    .ok_or_else(|| format!("{var}={v}: expected seconds, e.g. 10")),
            }
        };
        let connect = seconds("HF_HUB_ETAG_TIMEOUT")?;
        let download_timeout = seconds("HF_HUB_DOWNLOAD_TIMEOUT")?;
        let agent = ureq::AgentBuilder::new()
            .try_proxy_from_env(true)
            .timeout_connect(std::time::Duration::from_secs_f64(connect))
            .timeout_read(std::time::Duration::from_secs_f64(download_timeout))
            .timeout_write(std::time::Duration::from_secs_f64(download_timeout))
            .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
            .build();
        Ok(Hub { endpoint, token: token()?, agent, download_timeout })
    }

    fn get(&self, url: &str) -> std::result::Result<ureq::Response, Box<ureq::Error>> {
        let req = self.agent.get(url).set("user-agent", concat!("sada/", env!("CARGO_PKG_VERSION")));
        match &self.token {
            Some(t) => req.set("authorization", &format!("Bearer {t}")).call().map_err(Box::new),
            None => req.call().map_err(Box::new),
        }
    }

    /// A failed request in words, never with the token in them.
    fn failure(&self, id: &str, what: &str, e: Box<ureq::Error>) -> Failure {
        let scrub = |m: String| match &self.token {
            Some(t) => m.replace(t.as_str(), "<HF_TOKEN>"),
            None => m,
        };
        match *e {
            ureq::Error::Status(401 | 403, _) => Failure::Answer(format!(
                "{id}: {what}: access denied by {}; the repository is gated or private: accept its terms on the Hub and set HF_TOKEN",
                self.endpoint
            )),
            ureq::Error::Status(404, _) => Failure::Answer(format!("{id}: {what}: not found on {} (a private repository needs HF_TOKEN)", self.endpoint)),
            ureq::Error::Status(code, _) => Failure::Answer(format!("{id}: {what}: {} answered HTTP {code}", self.endpoint)),
            ureq::Error::Transport(t) => {
                let timeout = t.kind() == ureq::ErrorKind::Io && t.to_string().contains("timed out");
                let reason = if timeout {
                    format!("no answer within {} s (HF_HUB_DOWNLOAD_TIMEOUT / HF_HUB_ETAG_TIMEOUT)", self.download_timeout)
                } else {
                    scrub(t.to_string().lines().next().unwrap_or("").to_owned())
                };
                Failure::Network(format!("{id}: {what}: cannot reach {}: {reason}", self.endpoint))
            }
        }
    }

    /// The commit `revision` of `id` names now.
    fn commit(&self, id: &str, revision: &str) -> std::result::Result<String, Failure> {
        let what = format!("revision {revision}");
        let url = format!("{}/api/models/{id}/revision/{revision}", self.endpoint);
        let resp = self.get(&url).map_err(|e| self.failure(id, &what, e))?;
        let mut text = String::new();
        use std::io::Read;
        resp.into_reader().take(16 << 20).read_to_string(&mut text).map_err(|e| Failure::Network(format!("{id}: {what}: reading the answer: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| Failure::Answer(format!("{id}: {what}: {} did not answer with the Hub's JSON", self.endpoint)))?;
        let sha = v.get("sha").and_then(|s| s.as_str()).unwrap_or_default();
        if !is_commit(sha) {
            return Err(Failure::Answer(format!("{id}: {what}: {} named no commit for it", self.endpoint)));
        }
        Ok(sha.to_owned())
    }

    /// Download into the snapshot of `commit` the files it lacks, until every required one is
    /// there (indexes name shards, so it takes a few rounds).
    fn complete_snapshot(&self, id: &str, revision: &str, commit: &str, wants: &dyn Fn(&Path) -> Vec<Want>) -> std::result::Result<PathBuf, String> {
        let repo = repo_dir(id);
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).map_err(|e| format!("cannot create {}: {e}", snap.display()))?;
        if revision != commit {
            let refs = repo.join("refs");
            std::fs::create_dir_all(&refs).map_err(|e| format!("cannot create {}: {e}", refs.display()))?;
            write_complete(&refs.join(revision), &mut commit.as_bytes(), None, None).map_err(|e| format!("writing {}: {e}", refs.join(revision).display()))?;
        }
        let mut absent: Vec<String> = Vec::new();
        for _round in 0..4 {
            let mut fetched = false;
            for want in wants(&snap) {
                if want.is_in(&snap) {
                    continue;
                }
                for alt in &want.any_of {
                    let mut have_all = true;
                    for f in alt {
                        if snap.join(f).is_file() {
                            continue;
                        }
                        if absent.contains(f) {
                            have_all = false;
                            break;
                        }
                        match self.fetch(id, commit, f, &snap) {
                            Ok(true) => fetched = true,
                            Ok(false) => {
                                absent.push(f.clone());
                                have_all = false;
                                break;
                            }
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    if have_all {
                        break;
                    }
                }
            }
            if !fetched {
                break;
            }
        }
        if let Some(w) = wants(&snap).into_iter().find(|w| w.required && !w.is_in(&snap)) {
            let alts: Vec<String> = w.any_of.iter().map(|a| a.join(" + ")).collect();
            return Err(format!("{id}: revision {revision} has no {} (the model needs it)", alts.join(" or ")));
        }
        Ok(snap)
    }

    /// Download `file` of `commit` into `snap`; false when the repository does not have it.
    fn fetch(&self, id: &str, commit: &str, file: &str, snap: &Path) -> std::result::Result<bool, Failure> {
        let url = format!("{}/{id}/resolve/{commit}/{file}", self.endpoint);
        let resp = match self.get(&url) {
            Ok(r) => r,
            Err(e) if matches!(*e, ureq::Error::Status(404, _)) => return Ok(false),
            Err(e) => return Err(self.failure(id, file, e)),
        };
        let size = resp.header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let target = snap.join(file);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Failure::Answer(format!("cannot create {}: {e}", dir.display())))?;
        }
        let bar = indicatif::ProgressBar::with_draw_target(size, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}").expect("static template").progress_chars("=> "),
        );
        bar.set_message(format!("{id} {file}"));
        let mut reader = bar.wrap_read(resp.into_reader());
        let written = write_complete(&target, &mut reader, size, Some(self.download_timeout));
        bar.finish_and_clear();
        written.map_err(|e| Failure::Network(format!("{id}: {file}: download failed: {e}")))?;
        Ok(true)
    }
}

/// Write what `from` yields to `path`, in full or not at all (a temporary file beside it, renamed
/// into place); with `size`, fewer or more bytes than that are an error.
fn write_complete(path: &Path, from: &mut dyn std::io::Read, size: Option<u64>, timeout: Option<f64>) -> std::result::Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".incomplete").tempfile_in(dir).map_err(|e| e.to_string())?;
    let copied = std::io::copy(&mut std::io::Read::take(from, size.map_or(u64::MAX, |s| s + 1)), tmp.as_file_mut()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock {
            format!("no data for {} s (HF_HUB_DOWNLOAD_TIMEOUT)", timeout.unwrap_or(0.0))
        } else {
            e.to_string()
        }
    })?;
    if let Some(s) = size.filter(|&s| s != copied) {
        return Err(format!("{copied} bytes received, {s} announced"));
    }
    tmp.as_file().sync_all().map_err(|e| e.to_string())?;
    tmp.persist(path).map_err(|e| e.error.to_string())?;
    Ok(())
}

/// The token: `HF_TOKEN`, else the file `huggingface-cli login` writes (`HF_TOKEN_PATH`, else
/// `HF_HOME/token`). Never printed: a token an HTTP header cannot carry is refused by name only.
fn token() -> std::result::Result<Option<String>, String> {
    let (t, from) = match std::env::var_os("HF_TOKEN") {
        Some(t) => (t.into_string().map_err(|_| "HF_TOKEN is not valid text (its value is not printed)".to_owned())?, "HF_TOKEN".to_owned()),
        None => {
            let path = std::env::var_os("HF_TOKEN_PATH").filter(|p| !p.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
                std::env::var_os("HF_HOME")
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| cache_dir().parent().map(Path::to_path_buf).unwrap_or_default())
                    .join("token")
            });
            if std::fs::symlink_metadata(&path).is_err() {
                return Ok(None);
            }
            let text = crate::files::read_bounded(&path, 4096).map_err(|e| e.to_string())?;
            let text = String::from_utf8(text).map_err(|_| format!("{}: the token is not valid text (not printed)", path.display()))?;
            (text, path.display().to_string())
        }
    };
    let t = t.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{from}: the token holds a character an HTTP header cannot carry (its value is not printed)"));
    }
    Ok(Some(t.to_owned()))
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
