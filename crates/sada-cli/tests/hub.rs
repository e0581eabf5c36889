//! Models by Hugging Face id against a Hub of our own on 127.0.0.1 (`HF_ENDPOINT`): downloads
//! into the cache, a complete cache used without a request, a stalled network that times out
//! or falls back to the cache, a ControlNet repository (no model_index.json), and a token that
//! is never printed.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";
const PIPE: &str = "tiny-org/sd15";
const CN: &str = "tiny-org/canny";

/// A Hub serving `repos` (id -> folder) at COMMIT; `stall`: accept and never answer.
struct FakeHub {
    endpoint: String,
    requests: Arc<AtomicUsize>,
}

fn serve(repos: HashMap<String, PathBuf>, stall: bool) -> FakeHub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            if stall {
                held.push(stream);
                continue;
            }
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let body = answer(&repos, &path);
            let _ = match body {
                Some(b) => write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len()).and_then(|_| stream.write_all(&b)),
                None => write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            };
        }
    });
    FakeHub { endpoint, requests }
}

fn answer(repos: &HashMap<String, PathBuf>, path: &str) -> Option<Vec<u8>> {
    for (id, dir) in repos {
        if path == format!("/api/models/{id}/revision/main") {
            return Some(format!("{{\"id\": \"{id}\", \"sha\": \"{COMMIT}\"}}").into_bytes());
        }
        if let Some(file) = path.strip_prefix(&format!("/{id}/resolve/{COMMIT}/")) {
            return std::fs::read(dir.join(file)).ok();
        }
    }
    None
}

fn sada(cache: &Path, endpoint: &str, extra_env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sada"));
    cmd.args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_ETAG_TIMEOUT", "2")
        .env("HF_HUB_DOWNLOAD_TIMEOUT", "2")
        .env_remove("HF_HOME")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into())
}

fn generate<'a>(model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["generate", "--model", model, "--prompt", "a cat", "--steps", "2", "--accel", "none", "--output-type", "latent", "--output", out]
}

/// The SD-1.5 fixture with its vocabulary, as a repository folder.
fn sd15_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo-sd15");
    common::sd_fixture::sd_folder("sd15", &repo);
    repo
}

#[test]
fn an_id_downloads_once_then_the_complete_cache_is_used_without_asking() {
    let dir = common::tmp_dir("hub", "download");
    let cache = dir.join("cache");
    let hub = serve(HashMap::from([(PIPE.to_owned(), sd15_repo(&dir))]), false);
    let out = dir.join("a.safetensors");
    let (ok, err) = sada(&cache, &hub.endpoint, &[], &generate(PIPE, out.to_str().unwrap()));
    assert!(ok, "{err}");
    assert!(hub.requests.load(Ordering::SeqCst) > 5, "nothing was downloaded from HF_ENDPOINT");
    let repo = cache.join("models--tiny-org--sd15");
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap(), COMMIT);
    assert!(repo.join("snapshots").join(COMMIT).join("unet/diffusion_pytorch_model.fp16.safetensors").is_file());

    // complete: a second run asks nothing, not even for the optional files it lacks
    let before = hub.requests.load(Ordering::SeqCst);
    let again = dir.join("b.safetensors");
    let (ok, err) = sada(&cache, &hub.endpoint, &[], &generate(PIPE, again.to_str().unwrap()));
    assert!(ok, "{err}");
    assert_eq!(hub.requests.load(Ordering::SeqCst), before, "a complete cached snapshot went to the network");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());

    // and a stalled network cannot hold it up
    let stalled = serve(HashMap::new(), true);
    let (ok, err) = sada(&cache, &stalled.endpoint, &[], &generate(PIPE, again.to_str().unwrap()));
    assert!(ok, "{err}");
}

#[test]
fn a_stalled_hub_times_out_and_an_incomplete_cache_is_used_as_it_is() {
    let dir = common::tmp_dir("hub", "stall");
    let cache = dir.join("cache");
    let stalled = serve(HashMap::new(), true);
    let out = dir.join("a.safetensors");
    // (before the timeouts this call never returned)
    let (ok, err) = sada(&cache, &stalled.endpoint, &[], &generate(PIPE, out.to_str().unwrap()));
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(PIPE) && err.contains("no answer within"), "{err}");

    // a cached snapshot lacking an optional file and a required one: the Hub is asked, does
    // not answer, and the snapshot is used as it is (the loader names what is missing)
    let snap = cache.join("models--tiny-org--sd15/snapshots").join(COMMIT);
    common::sd_fixture::sd_folder("sd15", &snap);
    std::fs::create_dir_all(cache.join("models--tiny-org--sd15/refs")).unwrap();
    std::fs::write(cache.join("models--tiny-org--sd15/refs/main"), COMMIT).unwrap();
    std::fs::remove_file(snap.join("unet/config.json")).unwrap();
    let (ok, err) = sada(&cache, &stalled.endpoint, &[], &generate(PIPE, out.to_str().unwrap()));
    assert!(!ok);
    assert!(err.contains("using the cached snapshot") && err.contains("unet/config.json"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_controlnet_repository_downloads_without_a_model_index() {
    let dir = common::tmp_dir("hub", "controlnet");
    let cache = dir.join("cache");
    let cn = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/controlnet");
    let hub = serve(HashMap::from([(PIPE.to_owned(), sd15_repo(&dir)), (CN.to_owned(), cn.join("sd15_canny"))]), false);
    let out = dir.join("a.safetensors");
    let image = cn.join("control_circle.png");
    let args = [&generate(PIPE, out.to_str().unwrap())[..], &["--controlnet", CN, "--control-image", image.to_str().unwrap()]].concat();
    let (ok, err) = sada(&cache, &hub.endpoint, &[], &args);
    assert!(ok, "{err}");
    assert!(cache.join("models--tiny-org--canny/snapshots").join(COMMIT).join("config.json").is_file());
    // an id the Hub does not have is named with the flag that gave it
    let args = [&generate(PIPE, out.to_str().unwrap())[..], &["--controlnet", "tiny-org/nothing", "--control-image", image.to_str().unwrap()]].concat();
    let (ok, err) = sada(&cache, &hub.endpoint, &[], &args);
    assert!(!ok);
    assert!(err.contains("`controlnet`") && err.contains("tiny-org/nothing") && err.contains("not found"), "{err}");
}

#[test]
fn a_malformed_token_is_refused_without_being_printed() {
    let dir = common::tmp_dir("hub", "token");
    let hub = serve(HashMap::new(), false);
    let out = dir.join("a.safetensors");
    let secret = "hf_sEcReT\u{e9}tail";
    let (ok, err) = sada(&dir.join("cache"), &hub.endpoint, &[("HF_TOKEN", secret)], &generate(PIPE, out.to_str().unwrap()));
    assert!(!ok);
    assert!(err.contains("HF_TOKEN") && !err.contains("sEcReT"), "{err}");
    assert_eq!(hub.requests.load(Ordering::SeqCst), 0);
    // a token file that is a device is refused by name, not read
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::symlink("/dev/zero", home.join("token")).unwrap();
    let (ok, err) = sada(&dir.join("cache"), &hub.endpoint, &[("HF_HOME", home.to_str().unwrap())], &generate(PIPE, out.to_str().unwrap()));
    assert!(!ok);
    assert!(err.contains("token") && err.contains("is a device"), "{err}");
}

#[test]
fn an_id_with_a_denoiser_file_downloads_everything_but_its_own_denoiser() {
    let dir = common::tmp_dir("hub", "denoiser");
    let cache = dir.join("cache");
    let hub = serve(HashMap::from([(PIPE.to_owned(), sd15_repo(&dir))]), false);
    let unet = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd/sd15.safetensors");
    let out = dir.join("a.safetensors");
    let args = [&generate(PIPE, out.to_str().unwrap())[..], &["--denoiser", unet.to_str().unwrap()]].concat();
    let (ok, err) = sada(&cache, &hub.endpoint, &[], &args);
    assert!(ok, "{err}");
    let snap = cache.join("models--tiny-org--sd15/snapshots").join(COMMIT);
    assert!(snap.join("vae/config.json").is_file() && snap.join("text_encoder/config.json").is_file());
    assert!(!snap.join("unet").exists(), "the model's own UNet was downloaded");
}
