//! `sada generate` on Stable Diffusion-shaped models from a prompt: a folder placed in a Hugging
//! Face cache layout and found by id offline, a single-file checkpoint, and the one-line errors
//! of a missing file, an uncached id and a bad revision. The models are the tiny fp16 pipelines
//! of tests/fixtures/sd (tools/gen_sd_pipeline_fixtures.py); the expected latents are diffusers'.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

#[path = "../../sada/tests/common/sd_fixture.rs"]
mod sd_fixture;
use sd_fixture::{fixtures, sd_folder};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const ID: &str = "tiny-org/sd2-tiny";

/// A Hugging Face cache holding the SD-2-shaped fixture as `ID` at `COMMIT` (refs/main), with
/// the CLIP vocabulary the fixture leaves out.
fn hub_cache(tmp: &Path) -> PathBuf {
    let cache = tmp.join("hub");
    let repo = cache.join(format!("models--{}", ID.replace('/', "--")));
    let snap = repo.join("snapshots").join(COMMIT);
    sd_folder("sd2", &snap);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    cache
}

/// Run `sada` with HF_HUB_CACHE set (and HF_HUB_OFFLINE when asked): (success, stdout, stderr).
fn sada_with_cache(cache: &Path, offline_env: bool, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sada"));
    cmd.args(args).env("HF_HUB_CACHE", cache).env_remove("HF_HOME").env_remove("HF_HUB_OFFLINE");
    if offline_env {
        cmd.env("HF_HUB_OFFLINE", "1");
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn expected(fam: &str, name: &str) -> Tensor {
    let t = candle_core::safetensors::load(fixtures().join(format!("{fam}_expected.safetensors")), &Device::Cpu).unwrap();
    t[name].clone()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let d = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    d / want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn latents(path: &Path) -> Tensor {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()["latents"].clone()
}

const PROMPT: &str = "a photograph of an astronaut riding a horse on Mars, highly detailed, 8k!";
const NEGATIVE: &str = "blurry, low quality";

/// The fixture's run: seed 42, 20 steps, 32 px, the family's default solver and guidance.
fn run_args<'a>(model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "--model",
        model,
        "--prompt",
        PROMPT,
        "--negative-prompt",
        NEGATIVE,
        "--seed",
        "42",
        "--steps",
        "20",
        "--height",
        "32",
        "--width",
        "32",
        "--accel",
        "none",
        "--output-type",
        "latent",
        "--output",
        out,
    ]
}

#[test]
fn a_cached_id_resolves_offline_and_gives_diffusers_latents_for_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = hub_cache(tmp.path());
    let out = tmp.path().join("lat.safetensors");
    let mut args = run_args(ID, out.to_str().unwrap());
    args.push("--offline");
    let (ok, _, err) = sada_with_cache(&cache, false, &args);
    assert!(ok, "{err}");
    let e = rel_err(&latents(&out), &expected("sd2", "final_from_seed"));
    assert!(e <= 1e-3, "sd2 by id: {e:.2e}");

    // HF_HUB_OFFLINE=1 instead of the flag, the commit given as the revision, and a PNG with SADA
    let png = tmp.path().join("img.png");
    let (ok, stdout, err) = sada_with_cache(
        &cache,
        true,
        &["generate", "--model", ID, "--revision", COMMIT, "--prompt", PROMPT, "--height", "32", "--width", "32", "--output", png.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(stdout.starts_with("SADA: "), "{stdout}");
    let text = String::from_utf8_lossy(&std::fs::read(&png).unwrap()).into_owned();
    assert!(text.contains("DDIMScheduler") && text.contains("DPMSolverMultistepScheduler") && text.contains(ID), "settings missing from the PNG");
}

#[test]
fn a_single_file_checkpoint_takes_its_family_defaults_and_gives_diffusers_latents() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lat.safetensors");
    // SDXL: Euler and guidance 5.0 without being asked, as diffusers' pipeline runs it
    let file = fixtures().join("sdxl.safetensors");
    let (ok, _, err) = sada(&run_args(file.to_str().unwrap(), out.to_str().unwrap()));
    assert!(ok, "{err}");
    let e = rel_err(&latents(&out), &expected("sdxl", "final_from_seed"));
    assert!(e <= 1e-3, "sdxl single file: {e:.2e}");
}

fn sada(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sada")).args(args).env("HF_HUB_OFFLINE", "1").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn missing_files_uncached_ids_and_bad_revisions_are_one_line_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = hub_cache(tmp.path());
    let out = tmp.path().join("never.safetensors");
    let o = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (run_args("tiny-org/not-cached", o), &["tiny-org/not-cached", "not in the Hugging Face cache"]),
        ([run_args(ID, o), vec!["--revision", "v9"]].concat(), &[ID, "v9"]),
        ([run_args(ID, o), vec!["--revision", "../../etc"]].concat(), &["revision", "../../etc"]),
        ([run_args(ID, o), vec!["--revision", "feedfacefeedfacefeedfacefeedfacefeedface"]].concat(), &[ID, "feedface"]),
    ];
    for (args, needles) in &cases {
        let (ok, _, err) = sada_with_cache(&cache, true, args);
        assert!(!ok, "{args:?} succeeded");
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        for n in *needles {
            assert!(err.contains(n), "`{n}` not in {err}");
        }
        assert!(!out.exists());
    }
    // an interrupted download: the snapshot lacks the UNet's config
    let snap = cache.join(format!("models--{}", ID.replace('/', "--"))).join("snapshots").join(COMMIT);
    std::fs::remove_file(snap.join("unet/config.json")).unwrap();
    let (ok, _, err) = sada_with_cache(&cache, true, &run_args(ID, o));
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(ID) && err.contains("unet/config.json"), "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n != "hub").collect();
    assert!(leftovers.is_empty(), "stray files: {leftovers:?}");
}
