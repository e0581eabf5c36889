//! `sada generate --prompt` and `sada bench` on the embedded default model (no download).

mod common;

use std::path::{Path, PathBuf};

use common::{assert_flag_explained, sada};

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("default", name)
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
    assert!(stdout.starts_with("SADA: ") && stdout.contains(" evaluations") && stdout.contains("for 50 steps [full"), "{stdout}");
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
fn bench_compares_methods_with_the_equal_budget_plain_solver_and_resumes() {
    let d = tmp("bench");
    let prompts = d.join("prompts.txt");
    std::fs::write(&prompts, "a small red star at the top left on a blue background\n\n").unwrap();
    let out = d.join("out");
    let args = ["bench", "--prompts", prompts.to_str().unwrap(), "--seeds", "1", "--methods", "sada,deepcache", "--out", out.to_str().unwrap()];
    let (ok, stdout, err) = sada(&args);
    assert!(ok, "{err}");
    for f in [
        "bench.md",
        "bench.json",
        "grid.png",
        "criterion.svg",
        "tradeoff.svg",
        "settings.json",
        "runs/0000.json",
        "images/0000-baseline.png",
        "images/0000-m00.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(stdout.contains("| sada |") && stdout.contains("| deepcache |") && stdout.contains("| baseline |"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap();
    let s = &report["summary"];
    let (base, sada_m, deep) = (&s[0], &s[1], &s[2]);
    assert_eq!(base["mean_evaluations"], 50.0);
    let evals = sada_m["mean_evaluations"].as_f64().unwrap();
    assert!(evals < 40.0, "SADA used {evals} evaluations");
    assert!(sada_m["mean_psnr_db"].as_f64().unwrap() > 20.0 && sada_m["mean_ssim"].as_f64().unwrap() > 0.5);
    // DeepCache calls the network at every step, but most calls are partial: its cost is lower
    assert_eq!(deep["mean_evaluations"], 50.0);
    let cost = deep["mean_equivalent_evaluations"].as_f64().unwrap();
    assert!(cost < 40.0, "DeepCache cost {cost}");
    // the equal-budget view: the plain solver with round(cost) steps, run on the same noise
    let run = &report["runs"][0];
    for (m, summary) in [(0, sada_m), (1, deep)] {
        let k = run["methods"][m]["equal_budget_steps"].as_u64().unwrap();
        assert_eq!(k, run["methods"][m]["equivalent_evaluations"].as_f64().unwrap().round() as u64);
        let plain = &run["plain"][k.to_string()];
        assert_eq!(plain["steps"].as_u64().unwrap(), k);
        assert_eq!(plain["evaluations"].as_u64().unwrap(), k);
        assert_eq!(summary["equal_budget_psnr_db"], plain["psnr_db"]);
        let gain = summary["psnr_gain_over_equal_budget_db"].as_f64().unwrap();
        assert!((gain - (summary["mean_psnr_db"].as_f64().unwrap() - plain["psnr_db"].as_f64().unwrap())).abs() < 1e-9);
    }
    assert_eq!(png_size(&out.join("grid.png")), (3 * 128, 128));
    assert!(std::fs::read_to_string(out.join("criterion.svg")).unwrap().starts_with("<svg"));
    assert!(std::fs::read_to_string(out.join("tradeoff.svg")).unwrap().contains("plain solver"));

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
fn sharded_benches_merge_into_one_report() {
    let d = tmp("shards");
    let prompts = d.join("prompts.txt");
    std::fs::write(&prompts, "a small red star at the top left on a blue background\na large green ring in the center on a white background\n").unwrap();
    let p = prompts.to_str().unwrap();
    let (a, b, merged) = (d.join("a"), d.join("b"), d.join("merged"));
    for (shard, out) in [("0/2", &a), ("1/2", &b)] {
        let (ok, stdout, err) = sada(&[
            "bench",
            "--prompts",
            p,
            "--seeds",
            "1",
            "--steps",
            "20",
            "--methods",
            "fewer-steps:steps=10",
            "--shard",
            shard,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        assert!(stdout.contains("(1 of 2 runs here)"), "{stdout}");
    }
    assert!(a.join("runs/0000.json").is_file() && !a.join("runs/0001.json").exists());
    assert!(b.join("runs/0001.json").is_file() && !b.join("runs/0000.json").exists());
    let (ok, stdout, err) = sada(&["bench", "merge", a.to_str().unwrap(), b.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(stdout.contains("(2 of 2 runs here)") && stdout.contains("merged 2 of 2 runs"), "{stdout}");
    assert!(merged.join("images/0001-m00.png").is_file() && merged.join("grid.png").is_file());
    assert_eq!(png_size(&merged.join("grid.png")), (2 * 128, 2 * 128));
    // folders of other settings do not merge
    let (ok, _, _) = sada(&[
        "bench",
        "--prompts",
        p,
        "--seeds",
        "1",
        "--steps",
        "20",
        "--methods",
        "fewer-steps:steps=5",
        "--shard",
        "0/2",
        "--out",
        d.join("c").to_str().unwrap(),
    ]);
    assert!(ok);
    let (ok, _, err) = sada(&["bench", "merge", a.to_str().unwrap(), d.join("c").to_str().unwrap(), "--out", d.join("m2").to_str().unwrap()]);
    assert!(!ok && err.contains("other settings") && err.trim().lines().count() == 1, "{err}");
    assert!(!d.join("m2").exists());

    // shards come from other machines: a record naming an image outside its images/ (or a
    // link out of it), or settings that cannot be, are refused before anything is written
    let victim = d.join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let record = std::fs::read_to_string(b.join("runs/0001.json")).unwrap();
    let baseline_image = "images/0001-baseline.png";
    assert!(record.contains(baseline_image), "{record}");
    for (bad, needle) in [("../../victim.txt", "images/NAME.png"), (victim.to_str().unwrap(), "images/NAME.png"), ("images/link.png", "not a regular file")] {
        std::os::unix::fs::symlink(&victim, b.join("images/link.png")).ok();
        std::fs::write(b.join("runs/0001.json"), record.replace(baseline_image, bad)).unwrap();
        for out in [d.join("m3"), b.clone()] {
            let (ok, _, err) = sada(&["bench", "merge", a.to_str().unwrap(), b.to_str().unwrap(), "--out", out.to_str().unwrap()]);
            assert!(!ok && err.contains(needle) && err.trim().lines().count() == 1, "{bad}: {err}");
            assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
            assert!(!d.join("m3").exists());
        }
    }
    std::fs::write(b.join("runs/0001.json"), &record).unwrap();
    // merging a folder into itself (the same images both sides) loses nothing
    let size = std::fs::metadata(a.join("images/0000-baseline.png")).unwrap().len();
    let (ok, _, err) = sada(&["bench", "merge", a.to_str().unwrap(), b.to_str().unwrap(), "--out", a.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::metadata(a.join("images/0000-baseline.png")).unwrap().len(), size);
    let settings = std::fs::read_to_string(b.join("settings.json")).unwrap();
    std::fs::write(b.join("settings.json"), settings.replace("\"seeds\": 1", "\"seeds\": 0")).unwrap();
    let (ok, _, err) = sada(&["bench", "merge", b.to_str().unwrap(), "--out", d.join("m4").to_str().unwrap()]);
    assert!(!ok && err.contains("impossible settings"), "{err}");
    assert!(!d.join("m4").exists());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn every_method_runs_from_generate_and_bad_specs_are_one_line() {
    let d = tmp("methods");
    let o = d.join("x.png");
    let never = d.join("never");
    let never = never.to_str().unwrap();
    for spec in ["deepcache", "adaptive", "fbcache:threshold=0.1", "taylorseer", "fewer-steps:steps=20"] {
        let (ok, stdout, err) = sada(&["generate", "--prompt", "a red circle on a blue background", "--accel", spec, "--output", o.to_str().unwrap()]);
        assert!(ok, "{spec}: {err}");
        let name = spec.split(':').next().unwrap();
        assert!(stdout.starts_with(&format!("{name}: ")), "{stdout}");
        std::fs::remove_file(&o).unwrap();
    }
    for (args, needle) in [
        (vec!["generate", "--prompt", "a red circle", "--accel", "turbo"], "unknown method `turbo`"),
        (vec!["generate", "--prompt", "a red circle", "--accel", "deepcache:branch=99"], "deepcache:branch"),
        (vec!["generate", "--prompt", "a red circle", "--accel", "deepcache:intervall=2"], "no setting `intervall`"),
        (vec!["generate", "--prompt", "a red circle", "--accel", "adaptive", "--acc-range", "5,40"], "--accel sada"),
        (vec!["gmm", "--accel", "fbcache"], "fbcache needs"),
        (vec!["bench", "--methods", "sada,none"], "baseline always runs"),
        // refused before --out is made, not after run 0's images
        (vec!["bench", "--guidance-scale", "nan"], "`guidance_scale`"),
        (vec!["bench", "--method", "teacache"], "teacache needs a transformer"),
    ] {
        let mut args = args.clone();
        let out = o.to_str().unwrap();
        if args[0] == "generate" {
            args.extend_from_slice(&["--output", out]);
        }
        if args[0] == "bench" {
            args.extend_from_slice(&["--out", never]);
        }
        let (ok, _, err) = sada(&args);
        assert!(!ok, "{args:?} succeeded");
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        assert!(err.contains(needle), "`{needle}` not in {err}");
        assert!(!o.exists() && !d.join("never").exists());
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn help_explains_the_prompt_and_bench_flags() {
    for (cmd, flags) in [
        ("generate", &["--prompt", "--negative-prompt", "--compare", "--model", "--inputs", "--output", "--accel", "--device"][..]),
        (
            "bench",
            &["--model", "--prompts", "--seeds", "--steps", "--out", "--acc-range", "--methods", "--method", "--sweep", "--lpips-weights", "--shard"][..],
        ),
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
    let common =
        ["generate", "--prompt", "a small blue star at the top left on a white background", "--steps", "20", "--accel", "none", "--output-type", "latent"];
    let (ok, _, err) = sada(&[&common[..], &["--output", a.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    let (ok, _, err) = sada(&[&common[..], &["--model", folder.to_str().unwrap(), "--guidance-scale", "4", "--output", b.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::remove_dir_all(&d).ok();
}
