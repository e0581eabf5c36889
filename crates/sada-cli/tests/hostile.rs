//! The command line's contract with a careless or hostile user: every bad invocation ends in
//! one line naming the flag, file or tensor and what was expected, exit code 1 (2 for argument
//! syntax), within seconds, with no output and no temporary file left behind; signals and
//! concurrent runs never leave a partial file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use common::sd_fixture::copy_dir;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("hostile", name)
}

/// sd2_tiny's UNet and scheduler with the tiny VAE, in `dir/model`.
fn model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    copy_dir(&fixtures().join("unet/sd2_tiny/unet"), &m.join("unet"));
    copy_dir(&fixtures().join("unet/sd2_tiny/scheduler"), &m.join("scheduler"));
    copy_dir(&fixtures().join("vae/tiny/vae"), &m.join("vae"));
    m
}

fn inputs() -> PathBuf {
    fixtures().join("unet/sd2_tiny/pipeline.safetensors")
}

/// Run `sada`: (exit code, stdout, stderr, seconds).
fn run(args: &[&str]) -> (i32, String, String, f64) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sada")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into(), t.elapsed().as_secs_f64())
}

/// Files in `dir` that are not in `before` (temporary files left behind, outputs written).
fn new_files(dir: &Path, before: &[PathBuf]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| !before.contains(p)).collect();
    v.sort();
    v
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
}

/// `args` must fail with exit code `code` and one line containing `needle`, quickly, and leave
/// no new file in `dir`.
fn refused(dir: &Path, args: &[&str], code: i32, needle: &str) {
    let before = listing(dir);
    let (c, _, err, secs) = run(args);
    assert_eq!(c, code, "{args:?}: exit code {c}, stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.contains(needle), "{args:?}: `{needle}` not in: {err}");
    assert!(secs < 20.0, "{args:?} took {secs:.1} s to fail");
    assert!(new_files(dir, &before).is_empty(), "{args:?} left {:?}", new_files(dir, &before));
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

fn rewrite_weights(path: &Path, f: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) {
    let mut w = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    f(&mut w);
    candle_core::safetensors::save(&w, path).unwrap();
}

#[test]
fn config_values_that_would_divide_by_zero_or_allocate_without_bound_are_refused() {
    let d = tmp("config");
    let out = d.join("out.png");
    let o = out.to_str().unwrap();
    let i = inputs();
    let i = i.to_str().unwrap();
    type Edit = Box<dyn Fn(&Path)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|m: &Path| edit_json(&m.join("unet/config.json"), |v| v["norm_num_groups"] = 0.into())), "`norm_num_groups` = 0"),
        (Box::new(|m: &Path| edit_json(&m.join("unet/config.json"), |v| v["block_out_channels"] = serde_json::json!([16, 0, 24]))), "block_out_channels"),
        (Box::new(|m: &Path| edit_json(&m.join("unet/config.json"), |v| v["layers_per_block"] = 0.into())), "layers_per_block"),
        (Box::new(|m: &Path| edit_json(&m.join("vae/config.json"), |v| v["scaling_factor"] = 0.into())), "`scaling_factor` = 0"),
        (Box::new(|m: &Path| edit_json(&m.join("vae/config.json"), |v| v["block_out_channels"] = serde_json::json!([]))), "block_out_channels"),
        (
            Box::new(|m: &Path| edit_json(&m.join("scheduler/scheduler_config.json"), |v| v["num_train_timesteps"] = 1_000_000_000_000u64.into())),
            "num_train_timesteps",
        ),
        (Box::new(|m: &Path| edit_json(&m.join("scheduler/scheduler_config.json"), |v| v["steps_offset"] = 5000.into())), "steps_offset"),
        (Box::new(|m: &Path| edit_json(&m.join("scheduler/scheduler_config.json"), |v| v["timestep_spacing"] = 5.into())), "`timestep_spacing` = 5"),
        (
            Box::new(|m: &Path| {
                std::fs::remove_file(m.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
                std::fs::write(m.join("unet/diffusion_pytorch_model.safetensors.index.json"), r#"{"metadata": {}, "weight_map": {}}"#).unwrap();
            }),
            "lists no weight files",
        ),
        (
            Box::new(|m: &Path| {
                std::fs::remove_file(m.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
                std::fs::write(m.join("unet/diffusion_pytorch_model.safetensors.index.json"), r#"{"weight_map": {"a": "../../../etc/passwd"}}"#).unwrap();
            }),
            "must be file names",
        ),
    ];
    for (k, (edit, needle)) in cases.iter().enumerate() {
        let case = d.join(format!("case{k}"));
        std::fs::create_dir_all(&case).unwrap();
        let m = model(&case);
        edit(&m);
        refused(&d, &["generate", "--model", m.to_str().unwrap(), "--inputs", i, "--output", o], 1, needle);
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn sizes_and_counts_are_checked_before_anything_large_is_allocated() {
    let d = tmp("sizes");
    let m = model(&d);
    let (m, o) = (m.to_str().unwrap().to_owned(), d.join("out.png"));
    let o = o.to_str().unwrap();
    let i = inputs();
    let i = i.to_str().unwrap();
    let p = "a red circle on a blue background";
    for (args, needle) in [
        (vec!["generate", "--prompt", p, "--steps", "18446744073709551615", "--output", o], "`steps`"),
        (vec!["generate", "--prompt", p, "--steps", "1000000000", "--output", o], "1000 training timesteps"),
        (vec!["generate", "--prompt", p, "--steps", "0", "--output", o], "`steps`"),
        (vec!["generate", "--prompt", p, "--height", "100000", "--width", "100000", "--output", o], "--height/--width 100000x100000 would need"),
        (vec!["generate", "--model", &m, "--inputs", i, "--height", "100000", "--width", "100000", "--output", o], "--height/--width"),
        (vec!["generate", "--prompt", p, "--max-memory", "1M", "--output", o], "--max-memory"),
        (vec!["generate", "--prompt", p, "--accel", "sada+", "--max-evals", "5", "--output", o], "`max_evals`: 5 is below the 17 evaluations"),
        (vec!["generate", "--prompt", p, "--accel", "sada+:tolerance=-1", "--output", o], "`tolerance`: -1"),
        (vec!["generate", "--prompt", p, "--accel", "sada+:order=9", "--output", o], "`order`"),
        (vec!["generate", "--prompt", p, "--max-evals", "20", "--output", o], "--max-evals and --tolerance apply to --accel sada+"),
        (vec!["gmm", "--study", "20,50"], "budget 50 must lie between 1 and --steps - 1"),
        (vec!["gmm", "--study", "20", "--runs", "0"], "--runs"),
        (vec!["gmm", "--study", "20", "--max-evals", "10"], "--study runs its own methods"),
        (vec!["gmm", "--study", "20", "--seed", "18446744073709551615"], "overflows the seed range"),
        (vec!["gmm", "--batch", "100000000"], "--batch/--size"),
        (vec!["gmm", "--size", "1000000"], "--batch/--size"),
        (vec!["bench-unet", "--size", "1048576"], "--size"),
        (vec!["bench-unet", "--evals", "0"], "--evals"),
        (vec!["bench-unet", "--device", "tpu"], "--device tpu: expected cpu, cuda, cuda:N or metal"),
        (vec!["bench-unet", "--device", "cuda:x"], "`x` is not a device number"),
        (vec!["generate", "--prompt", p, "--dtype", "bf16", "--device", "cpu", "--output", o], "--dtype bf16 is not supported on the CPU"),
        // settings the model would ignore, or that would overflow inside it
        (vec!["generate", "--prompt", p, "--original-size", "64,64", "--output", o], "only SDXL models take size conditioning"),
        (vec!["generate", "--prompt", p, "--guidance-scale", "1e300", "--output", o], "`guidance_scale`"),
        (vec!["generate", "--prompt", p, "--guidance-scale", "inf", "--output", o], "`guidance_scale`"),
        (vec!["generate", "--prompt", p, "--steps", "10", "--accel", "fewer-steps", "--output", o], "fewer-steps:steps"),
    ] {
        refused(&d, &args, 1, needle);
    }
    if !cfg!(feature = "cuda") {
        refused(&d, &["bench-unet", "--device", "cuda"], 1, "this sada was built without CUDA support");
    }
    // argument syntax is clap's: exit code 2
    refused(&d, &["generate", "--prompt", p, "--steps", "-5", "--output", o], 2, "'-5'");
    refused(&d, &["generate", "--prompt", p, "--steps", "many", "--output", o], 2, "--steps");
    refused(&d, &["generate", "--prompt", p, "--max-memory", "lots", "--output", o], 2, "--max-memory");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn integer_and_non_finite_tensors_are_named() {
    let d = tmp("tensors");
    let o = d.join("out.png");
    let o = o.to_str().unwrap();
    let dev = Device::Cpu;
    // weights
    for (k, (change, needle)) in [
        (
            Box::new(|w: &mut std::collections::HashMap<String, Tensor>| {
                let t = w["conv_in.weight"].clone();
                w.insert("conv_in.weight".into(), t.to_dtype(DType::I64).unwrap());
            }) as Box<dyn Fn(&mut std::collections::HashMap<String, Tensor>)>,
            "tensor `conv_in.weight` is I64",
        ),
        (
            Box::new(|w: &mut std::collections::HashMap<String, Tensor>| {
                let t = w["conv_out.bias"].clone();
                let nan = Tensor::full(f32::NAN, t.shape(), &Device::Cpu).unwrap();
                w.insert("conv_out.bias".into(), nan);
            }),
            "tensor `conv_out.bias` holds NaN",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let case = d.join(format!("w{k}"));
        std::fs::create_dir_all(&case).unwrap();
        let m = model(&case);
        rewrite_weights(&m.join("unet/diffusion_pytorch_model.safetensors"), change);
        refused(&d, &["generate", "--model", m.to_str().unwrap(), "--inputs", inputs().to_str().unwrap(), "--output", o], 1, needle);
    }
    // inputs
    let m = model(&d);
    let base = candle_core::safetensors::load(inputs(), &dev).unwrap();
    for (k, (tensor, needle)) in [
        (base["prompt_embeds"].to_dtype(DType::U8).unwrap(), "tensor `prompt_embeds` is U8"),
        ((&base["prompt_embeds"] * f64::NAN).unwrap(), "tensor `prompt_embeds` holds NaN"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut t = base.clone();
        t.insert("prompt_embeds".into(), tensor);
        let f = d.join(format!("inputs{k}.safetensors"));
        candle_core::safetensors::save(&t, &f).unwrap();
        refused(&d, &["generate", "--model", m.to_str().unwrap(), "--inputs", f.to_str().unwrap(), "--output", o], 1, needle);
        std::fs::remove_file(&f).unwrap();
    }
    // a file whose header announces 8 GiB of latents (sparse: it takes no disk) is refused
    // before anything is read
    let f = d.join("huge.safetensors");
    let bytes: u64 = 4 << 31;
    let header = format!(r#"{{"latents":{{"dtype":"F16","shape":[1,4,32768,32768],"data_offsets":[0,{bytes}]}}}}"#);
    let mut head = (header.len() as u64).to_le_bytes().to_vec();
    head.extend_from_slice(header.as_bytes());
    std::fs::write(&f, &head).unwrap();
    std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(head.len() as u64 + bytes).unwrap();
    refused(&d, &["generate", "--model", m.to_str().unwrap(), "--inputs", f.to_str().unwrap(), "--output", o], 1, "larger than any pipeline input");
    std::fs::remove_file(&f).unwrap();
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn output_paths_are_checked_before_sampling() {
    let d = tmp("outputs");
    let p = "a red circle on a blue background";
    let folder = d.join("a-folder");
    std::fs::create_dir_all(&folder).unwrap();
    let o = d.join("out.png");
    for (args, needle) in [
        (vec!["generate", "--prompt", p, "--output", folder.to_str().unwrap()], "is a folder"),
        (vec!["generate", "--prompt", p, "--output", "/nonexistent-sada-dir/x.png"], "does not exist"),
        (vec!["generate", "--prompt", p, "--output", o.to_str().unwrap(), "--trace", o.to_str().unwrap()], "both name"),
        (vec!["generate", "--prompt", p, "--output", o.to_str().unwrap(), "--trace", "/proc/sada-trace.json"], "--trace /proc/sada-trace.json: cannot write"),
        (vec!["gmm", "--trace", "/proc/sada-trace.json"], "--trace"),
        (vec!["bench", "--out", o.to_str().unwrap()], "is a file"),
    ] {
        if args.contains(&"bench") {
            std::fs::write(&o, b"a file").unwrap();
        }
        refused(&d, &args, 1, needle);
        let _ = std::fs::remove_file(&o);
    }
    assert!(listing(&folder).is_empty(), "nothing written into the folder given as --output");
    // a symlink planted where a predictable temporary name would be is never followed
    let victim = d.join("victim.txt");
    std::fs::write(&victim, b"keep me").unwrap();
    std::os::unix::fs::symlink(&victim, d.join(".out.png.partial")).unwrap();
    let (c, _, err, _) = run(&["generate", "--prompt", p, "--steps", "5", "--accel", "none", "--output", o.to_str().unwrap()]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert_eq!(&std::fs::read(&o).unwrap()[1..4], b"PNG");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn prompts_in_any_script_and_of_any_length_are_handled() {
    let d = tmp("prompts");
    let o = d.join("out.png");
    let os = o.to_str().unwrap();
    let long = "word ".repeat(3000);
    for (args, needle) in [
        (vec!["generate", "--prompt", "", "--output", os], "`--prompt`: is empty"),
        (vec!["generate", "--prompt", "   \t ", "--output", os], "`--prompt`: is empty"),
        (vec!["generate", "--prompt", &long, "--output", os], "at most 10000"),
        (vec!["generate", "--prompt", "a red circle", "--negative-prompt", &long, "--output", os], "`--negative-prompt`"),
    ] {
        refused(&d, &args, 1, needle);
    }
    // a prompt in another script: reported as unknown words, written as UTF-8 metadata
    let prompt = "a red circle 🔴 sur un fond bleu";
    let (c, _, err, _) = run(&["generate", "--prompt", prompt, "--negative-prompt", "ugly blurry", "--steps", "5", "--accel", "none", "--output", os]);
    assert_eq!(c, 0, "{err}");
    let notes: Vec<&str> = err.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(notes.len(), 1, "one line for the unknown words of both prompts: {err}");
    assert!(notes[0].contains("🔴") && notes[0].contains("--prompt") && notes[0].contains("ugly") && notes[0].contains("--negative-prompt"), "{err}");
    let png = std::fs::read(&o).unwrap();
    assert!(png.windows(4).any(|w| w == b"iTXt") && String::from_utf8_lossy(&png).contains(prompt), "the prompt is not in the PNG");
    // longer than the text encoder reads: one warning with the count dropped
    let words = "a red circle on a blue background ".repeat(12);
    let (c, _, err, _) = run(&["generate", "--prompt", &words, "--steps", "5", "--accel", "none", "--output", os]);
    assert_eq!(c, 0, "{err}");
    let dropped: Vec<&str> = err.lines().filter(|l| l.contains("dropped")).collect();
    assert_eq!(dropped.len(), 1, "{err}");
    assert!(dropped[0].contains("--prompt has 84 words"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

/// PNGs in `dir` other than `keep`, and temporary files.
fn strays(dir: &Path, keep: &Path) -> Vec<PathBuf> {
    listing(dir).into_iter().filter(|p| p != keep).collect()
}

#[test]
fn sigterm_at_any_moment_leaves_the_previous_output_or_a_complete_new_one() {
    let d = tmp("signals");
    let o = d.join("out.png");
    std::fs::write(&o, b"previous output").unwrap();
    let mut finished = 0;
    for k in 0..20u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sada"))
            .args([
                "generate",
                "--prompt",
                "a red circle on a blue background",
                "--steps",
                "8",
                "--accel",
                "none",
                "--seed",
                &k.to_string(),
                "--output",
                o.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // spread the signals from start-up to the end of the write
        std::thread::sleep(Duration::from_millis(50 + (k * 97) % 1500));
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        match status.code() {
            Some(0) => finished += 1,
            Some(143) => {}
            other => panic!("run {k}: exit {other:?} (expected 143 on SIGTERM, or 0 if it had finished)"),
        }
        let bytes = std::fs::read(&o).unwrap();
        assert!(bytes == b"previous output" || (bytes.starts_with(b"\x89PNG") && bytes.ends_with(b"IEND\xaeB`\x82")), "run {k}: a partial output");
        assert!(strays(&d, &o).is_empty(), "run {k} left {:?}", strays(&d, &o));
    }
    eprintln!("{finished} of 20 runs finished before the signal");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn two_runs_writing_one_path_each_leave_a_complete_file() {
    let d = tmp("race");
    let o = d.join("out.png");
    let spawn = |seed: &str| {
        Command::new(env!("CARGO_BIN_EXE_sada"))
            .args([
                "generate",
                "--prompt",
                "a red circle on a blue background",
                "--steps",
                "6",
                "--accel",
                "none",
                "--seed",
                seed,
                "--output",
                o.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn("1"));
        let b = s.spawn(|| spawn("2"));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.status.success() && b.status.success());
    let bytes = std::fs::read(&o).unwrap();
    assert!(bytes.starts_with(b"\x89PNG") && bytes.ends_with(b"IEND\xaeB`\x82"));
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("\"seed\":1") || text.contains("\"seed\":2"), "the file is one run's whole output");
    assert!(strays(&d, &o).is_empty(), "{:?}", strays(&d, &o));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn stdout_into_a_closed_pipe_ends_quietly_with_141_not_a_panic() {
    // the reader is gone before the run starts, as with `sada gmm | head -0`: every print fails
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_sada")).arg("gmm").stdout(writer).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
