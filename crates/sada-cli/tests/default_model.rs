//! `sada generate --prompt` and `sada bench` on the embedded default model (no download).

mod common;

use std::path::{Path, PathBuf};

use common::{assert_flag_explained, sada};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sada-default-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// (width, height) from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[1..4], b"PNG");
    (u32::from_be_bytes(b[16..20].try_into().unwrap()), u32::from_be_bytes(b[20..24].try_into().unwrap()))
}

#[test]
fn generate_from_a_prompt_writes_a_png_with_its_settings_and_is_deterministic() {
    let d = tmp("gen");
    let (a, b, c) = (d.join("a.png"), d.join("b.png"), d.join("cmp.png"));
    let prompt = "a red circle on a blue background";
    let (ok, stdout, err) = sada(&["generate", "--prompt", prompt, "--output", a.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(stdout.starts_with("SADA: ") && stdout.contains("evaluations for 50 steps [full"), "{stdout}");
    assert_eq!(png_size(&a), (32, 32));
    let text = String::from_utf8_lossy(&std::fs::read(&a).unwrap()).into_owned();
    assert!(text.contains("parameters") && text.contains(prompt) && text.contains("sada-shapes-32"), "settings missing from PNG");
    let (ok, _, err) = sada(&["generate", "--prompt", prompt, "--output", b.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same seed, different image");

    let (ok, stdout, err) = sada(&["generate", "--prompt", prompt, "--compare", "--output", c.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(stdout.contains("baseline: 50 evaluations") && stdout.contains("PSNR") && stdout.contains("SSIM") && stdout.contains("speedup"), "{stdout}");
    assert_eq!(png_size(&c), (64, 32), "baseline | SADA side by side");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn unknown_words_are_reported_not_fatal() {
    let d = tmp("unk");
    let out = d.join("x.png");
    let (ok, _, err) = sada(&["generate", "--prompt", "a purple giraffe", "--steps", "50", "--accel", "none", "--output", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("giraffe") && !err.contains("purple\""), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn prompt_errors_are_one_line_and_write_nothing() {
    let d = tmp("err");
    let out = d.join("never.png");
    let o = out.to_str().unwrap();
    let unet_only = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/unet/sd2_tiny");
    for (args, needle) in [
        (vec!["generate", "--output", o], "--prompt"),
        (vec!["generate", "--prompt", "a red circle", "--model", unet_only.to_str().unwrap(), "--output", o], "no text encoder"),
        (vec!["generate", "--prompt", "a red circle", "--steps", "20", "--output", o], "acc_range"),
        (vec!["generate", "--prompt", "a red circle", "--compare", "--accel", "none", "--output", o], "--accel none"),
    ] {
        let (ok, _, err) = sada(&args);
        assert!(!ok, "{args:?} succeeded");
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        assert!(err.contains(needle), "`{needle}` not in {err}");
        assert!(!out.exists());
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bench_reports_three_methods_and_resumes() {
    let d = tmp("bench");
    let prompts = d.join("prompts.txt");
    std::fs::write(&prompts, "a small red star at the top left on a blue background\n\n").unwrap();
    let out = d.join("out");
    let args = ["bench", "--prompts", prompts.to_str().unwrap(), "--seeds", "1", "--out", out.to_str().unwrap()];
    let (ok, stdout, err) = sada(&args);
    assert!(ok, "{err}");
    for f in ["bench.md", "bench.json", "grid.png", "criterion.svg", "settings.json", "runs/0000.json", "images/0000-sada.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(stdout.contains("| sada |") && stdout.contains("| plain-equal-evals |"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap();
    let s = &report["summary"];
    let (base, sada_m, plain) = (&s[0], &s[1], &s[2]);
    assert_eq!(base["mean_evaluations"], 50.0);
    let evals = sada_m["mean_evaluations"].as_f64().unwrap();
    assert!(evals < 40.0, "SADA used {evals} evaluations");
    assert_eq!(plain["mean_evaluations"].as_f64().unwrap(), evals, "plain solver must get SADA's evaluation count");
    assert!(sada_m["mean_psnr_db"].as_f64().unwrap() > 20.0 && sada_m["mean_ssim"].as_f64().unwrap() > 0.5);
    assert_eq!(png_size(&out.join("grid.png")), (3 * 128, 128));
    assert!(std::fs::read_to_string(out.join("criterion.svg")).unwrap().starts_with("<svg"));

    // a rerun resumes: the finished run is not redone
    let before = std::fs::metadata(out.join("runs/0000.json")).unwrap().modified().unwrap();
    let (ok, again, err) = sada(&args);
    assert!(ok, "{err}");
    assert_eq!(std::fs::metadata(out.join("runs/0000.json")).unwrap().modified().unwrap(), before);
    assert_eq!(again.lines().find(|l| l.starts_with("| sada |")), stdout.lines().find(|l| l.starts_with("| sada |")));

    // other settings into the same folder are refused
    let mut other = args.to_vec();
    other.extend_from_slice(&["--guidance-scale", "2"]);
    let (ok, _, err) = sada(&other);
    assert!(!ok && err.contains("settings.json") && err.contains("other settings"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn help_explains_the_prompt_and_bench_flags() {
    for (cmd, flags) in [
        ("generate", &["--prompt", "--negative-prompt", "--compare", "--model", "--inputs", "--output"][..]),
        ("bench", &["--model", "--prompts", "--seeds", "--steps", "--out", "--acc-range"][..]),
    ] {
        let (ok, out, _) = sada(&[cmd, "-h"]);
        assert!(ok, "{cmd} -h failed");
        for flag in flags {
            assert_flag_explained(&out, flag);
        }
    }
}

#[test]
fn the_shipped_folder_on_disk_gives_what_the_embedded_copy_gives() {
    let d = tmp("dir");
    let (a, b) = (d.join("embedded.safetensors"), d.join("folder.safetensors"));
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sada/assets/default_model");
    let common = ["generate", "--prompt", "a small blue star at the top left on a white background", "--steps", "20", "--accel", "none", "--output-type", "latent"];
    let (ok, _, err) = sada(&[&common[..], &["--output", a.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    let (ok, _, err) = sada(&[&common[..], &["--model", folder.to_str().unwrap(), "--guidance-scale", "4", "--output", b.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::remove_dir_all(&d).ok();
}
