//! The `sada` binary as a user runs it.

mod common;

use common::{assert_flag_explained, sada};

#[test]
fn gmm_demo_reports_evaluations_and_psnr() {
    let dir = std::env::temp_dir().join(format!("sada-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace.json");
    let (ok, out, err) = sada(&["gmm", "--size", "16", "--trace", trace.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("baseline        :  50 evaluations"), "{out}");
    assert!(out.contains("SADA") && out.contains("PSNR") && out.contains("fewer evaluations"), "{out}");
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert_eq!(t["steps"].as_array().unwrap().len(), 50);
    assert!(t["evaluations"].as_u64().unwrap() < 50);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn impossible_parameters_fail_with_one_line_naming_them() {
    for (args, name) in [
        (vec!["gmm", "--acc-range", "10,60"], "acc_range"),
        (vec!["gmm", "--steps", "20", "--acc-range", "4,18", "--lagrange-step", "8"], "lagrange_term"),
        (vec!["gmm", "--max-interval", "0"], "max_interval"),
        (vec!["gmm", "--class", "99"], "class"),
        // unbounded work is refused before it starts
        (vec!["gmm", "--study", "20", "--runs", "18446744073709551615"], "--runs"),
        (vec!["bench-unet", "--evals", "18446744073709551615"], "--evals"),
        (vec!["bench-flux", "--evals", "18446744073709551615"], "--evals"),
        (vec!["bench-flux", "--double", "18446744073709551615", "--single", "3"], "--double"),
        (vec!["bench-unet", "--config", "default", "--sample-steps", "1001"], "--sample-steps"),
        (vec!["gmm", "--accel", "deepcache:uniform=false,pow=1e308"], "pow"),
        (vec!["gmm", "--accel", "deepcache:interval=2,interval=3"], "interval"),
        (vec!["gmm", "--steps", "10", "--accel", "fewer-steps"], "fewer-steps:steps"),
        (vec!["bench", "merge"], "not provided: --out <DIR>"),
        (vec!["bench-unet", "--weights", "q8_0", "--dtype", "f16"], "--weights q8_0 applies to the CPU with --dtype f32"),
        (vec!["gmm", "--max-memory", "1"], "but 1 B --max-memory"),
    ] {
        let (ok, out, err) = sada(&args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("error: ") && err.contains(name), "{err}");
    }
}

#[test]
fn trace_into_a_missing_folder_fails_without_writing() {
    let (ok, _, err) = sada(&["gmm", "--size", "8", "--trace", "/nonexistent-dir/t.json"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent-dir"), "{err}");
}

#[test]
fn help_explains_every_flag() {
    let (ok, out, _) = sada(&["gmm", "-h"]);
    assert!(ok);
    for flag in [
        "--solver",
        "--steps",
        "--guidance-scale",
        "--seed",
        "--trace",
        "--acc-range",
        "--max-interval",
        "--max-downsample",
        "--max-fix",
        "--sx",
        "--sy",
        "--lagrange-term",
        "--lagrange-int",
        "--lagrange-step",
    ] {
        assert_flag_explained(&out, flag);
    }
}

#[test]
fn bench_unet_times_the_embedded_unet_with_and_without_its_controlnet() {
    for (extra, label) in [
        (vec![], "default, cpu, f32, weights as stored"),
        (vec!["--controlnet"], "default + controlnet, cpu, f32, weights as stored"),
        (vec!["--weights", "q8_0"], "default, cpu, f32, weights q8_0"),
    ] {
        let mut args = vec!["bench-unet", "--config", "default", "--evals", "2"];
        args.extend(extra.iter().copied());
        let (ok, out, err) = sada(&args);
        assert!(ok, "{args:?}: {err}");
        let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(first["config"], label, "{out}");
        let s = first["s_per_guided_eval"].as_f64().unwrap();
        assert!(s > 0.0 && s.is_finite() && first["min"].as_f64().unwrap() <= s, "{out}");
    }
}
