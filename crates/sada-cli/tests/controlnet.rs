//! `sada generate` / `sada bench` with ControlNets: the fixture ControlNets on the tiny SD-1.5
//! pipeline, and the embedded model's outline ControlNet.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_flag_explained, sada};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("controlnet", name)
}

/// The tiny SD-1.5 pipeline with its tokenizer's vocabulary, in `dir/sd15`.
fn sd15(dir: &Path) -> PathBuf {
    let m = dir.join("sd15");
    common::sd_fixture::sd_folder("sd15", &m);
    m
}

fn cn(name: &str) -> String {
    fixtures().join("controlnet").join(name).display().to_string()
}

fn parameters(png: &Path) -> serde_json::Value {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let reader = decoder.read_info().unwrap();
    let text = reader.info().utf8_text.iter().find(|t| t.keyword == "parameters").unwrap().get_text().unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn generate_with_a_controlnet_records_it_and_differs_from_without() {
    let dir = tmp("generate");
    let m = sd15(&dir);
    let (m, img) = (m.to_str().unwrap(), cn("control_circle.png"));
    let out = dir.join("a.png");
    let args = ["generate", "--model", m, "--prompt", "a cat", "--steps", "8", "--accel", "none", "--output-type", "latent"];
    let (ok, _, err) = sada(&[&args[..], &["--controlnet", &cn("sd15_canny"), "--control-image", &img, "--output", out.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    let plain = dir.join("plain.safetensors");
    let (ok, _, err) = sada(&[&args[..], &["--output", plain.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    assert_ne!(std::fs::read(&out).unwrap(), std::fs::read(&plain).unwrap(), "the ControlNet changed nothing");

    let png = dir.join("b.png");
    let (ok, _, err) = sada(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "a cat",
        "--steps",
        "8",
        "--accel",
        "none",
        "--controlnet",
        &cn("sd15_canny"),
        "--control-image",
        &img,
        "--controlnet-scale",
        "0.5",
        "--control-guidance-end",
        "0.8",
        "--guess-mode",
        "--output",
        png.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let p = parameters(&png);
    assert_eq!(p["controlnets"][0]["scale"], 0.5);
    assert_eq!(p["controlnets"][0]["end"], 0.8);
    assert_eq!(p["guess_mode"], true);
}

#[test]
fn bad_controlnet_invocations_fail_with_one_line_and_no_output() {
    let dir = tmp("hostile");
    let m = sd15(&dir);
    let m = m.to_str().unwrap();
    let out = dir.join("x.png");
    let img = cn("control_circle.png");
    let not_png = fixtures().join("controlnet/cases.json").display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--controlnet".into(), cn("sdxl_canny"), "--control-image".into(), img.clone()], "another model"),
        (vec!["--controlnet".into(), cn("sd15_canny")], "one control image per ControlNet"),
        (vec!["--control-image".into(), img.clone()], "no controlnet/ folder"),
        (vec!["--controlnet-scale".into(), "2".into()], "need --control-image"),
        (vec!["--controlnet".into(), cn("sd15_canny"), "--control-image".into(), not_png.clone()], "not a readable PNG"),
        (vec!["--controlnet".into(), cn("sd15_canny"), "--control-image".into(), "/nonexistent.png".into()], "/nonexistent.png"),
        (vec!["--controlnet".into(), "/nonexistent-dir".into(), "--control-image".into(), img.clone()], "/nonexistent-dir"),
        (vec!["--controlnet".into(), m.into(), "--control-image".into(), img.clone()], "config.json"),
        (
            vec![
                "--controlnet".into(),
                cn("sd15_canny"),
                "--control-image".into(),
                img.clone(),
                "--control-guidance-start".into(),
                "0.9".into(),
                "--control-guidance-end".into(),
                "0.1".into(),
            ],
            "control_guidance_start/end",
        ),
        (vec!["--controlnet".into(), cn("sd15_canny"), "--control-image".into(), img.clone(), "--controlnet-scale".into(), "1,2".into()], "--controlnet-scale"),
        (
            vec!["--controlnet".into(), cn("sd15_canny"), "--control-image".into(), img.clone(), "--controlnet-scale".into(), "nan".into()],
            "controlnet_conditioning_scale",
        ),
        (
            vec!["--controlnet".into(), cn("sd15_canny"), "--control-image".into(), img.clone(), "--controlnet-scale".into(), "1e300".into()],
            "controlnet_conditioning_scale",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["generate", "--model", m, "--prompt", "a cat", "--steps", "8", "--accel", "none", "--output", out.to_str().unwrap()];
        args.extend(extra.iter().map(String::as_str));
        let (ok, _, err) = sada(&args);
        assert!(!ok, "{extra:?} succeeded");
        assert!(err.contains(needle), "{extra:?}: expected `{needle}` in: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{extra:?} left {}", out.display());
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "stray files in {}", dir.display());
    // bench: outlines and images are two sources of the same thing; outlines need a controlnet/
    let bench_out = dir.join("bench");
    for (extra, needle) in [(vec!["--control-image", img.as_str()], "give one of them"), (vec![], "--control-outlines: this model has no controlnet/")] {
        let mut args = vec!["bench", "--model", m, "--steps", "8", "--seeds", "1", "--control-outlines", "--out", bench_out.to_str().unwrap()];
        args.extend(extra);
        let (ok, _, err) = sada(&args);
        assert!(!ok && err.contains(needle) && err.trim().lines().count() == 1, "{needle}: {err}");
        assert!(!bench_out.exists());
    }
}

#[test]
fn help_explains_the_controlnet_flags() {
    for cmd in ["generate", "bench"] {
        let (ok, out, _) = sada(&[cmd, "-h"]);
        assert!(ok);
        for flag in ["--controlnet", "--control-image", "--controlnet-scale", "--control-guidance-start", "--control-guidance-end", "--guess-mode"] {
            assert_flag_explained(&out, flag);
        }
    }
}

#[test]
fn embedded_model_takes_a_control_image_with_its_own_controlnet() {
    let dir = tmp("embedded");
    let out = dir.join("c.png");
    let img = fixtures().join("default_model/controlnet_image.png");
    let (ok, stdout, err) = sada(&[
        "generate",
        "--prompt",
        "a large red circle in the center on a blue background",
        "--control-image",
        img.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("SADA:"), "{stdout}");
    let p = parameters(&out);
    assert_eq!(p["controlnets"][0]["controlnet"], "the model's controlnet/");
    assert_eq!(p["options"]["steps"], 50);
}

/// A PNG that claims `w x h` pixels and holds none: its signature, header and an empty IDAT.
fn png_header_only(path: &Path, w: u32, h: u32) {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut f = b"\x89PNG\r\n\x1a\n".to_vec();
    f.extend_from_slice(&13u32.to_be_bytes());
    f.extend_from_slice(&ihdr);
    f.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(b"IDAT");
    f.extend_from_slice(&crc32(b"IDAT").to_be_bytes());
    std::fs::write(path, f).unwrap();
}

#[test]
fn huge_or_truncated_control_images_are_refused_before_decoding() {
    let dir = tmp("huge");
    let out = dir.join("x.png");
    let huge = dir.join("huge.png");
    png_header_only(&huge, 60_000, 60_000);
    let small = dir.join("truncated.png");
    png_header_only(&small, 32, 32);
    for (img, needle) in [(&huge, "larger than"), (&small, "corrupt PNG")] {
        let (ok, _, err) = sada(&[
            "generate",
            "--prompt",
            "a large red circle in the center on a blue background",
            "--control-image",
            img.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(!ok);
        assert!(err.contains(needle) && err.contains(img.to_str().unwrap()), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
}
