//! `sada bench`: prompts x seeds, each sampled three ways from the same initial noise: the
//! unaccelerated baseline, SADA, and the plain solver given as many steps as SADA used
//! evaluations (what the same compute buys without SADA). Reports evaluations, wall time,
//! speedup, and PSNR / SSIM against the baseline image, as Markdown and JSON, with an image grid
//! and a plot of SADA's criterion and decisions. Each finished run is written to the output
//! folder as it completes, so an interrupted bench resumes where it stopped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args;
use sada::data::shapes::Scene;
use sada::metrics::{psnr_rgb, ssim};
use sada::image::{hstack, png_bytes, to_rgb, upscale, vstack, RgbImage};
use sada::pipelines::{GenerateOptions, PipelineInputs};
use sada::policy::{Acceleration, Decision, SadaConfig};
use sada::sampling::Trace;
use serde::{Deserialize, Serialize};

use crate::args::{load_model, DeviceArgs, SadaArgs, SolverArg};
use crate::output::write_atomic;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// diffusers model folder with a text encoder [default: the embedded shapes model]
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Text file with one prompt per line [default: 8 captions the embedded model never saw in
    /// training]
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Seeds 0..N for every prompt
    #[arg(long, default_value_t = 2)]
    pub seeds: u64,
    /// Solver steps of the baseline and of SADA
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale [default: the model's, as `sada generate`]
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    /// Solver, built from the model's scheduler config (the published SADA numbers are for
    /// DPM-Solver++)
    #[arg(long, value_enum, default_value = "dpm++")]
    pub solver: SolverArg,
    /// Output folder (created); rerunning with the same settings skips the finished runs
    #[arg(long, value_name = "DIR", default_value = "sada-bench")]
    pub out: PathBuf,
    #[command(flatten)]
    pub sada: SadaArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// One method's result for one prompt and seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MethodRun {
    method: String,
    steps: usize,
    evaluations: usize,
    seconds: f64,
    /// Against the baseline image (none for the baseline itself).
    psnr_db: Option<f64>,
    ssim: Option<f64>,
    image: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunRecord {
    index: usize,
    prompt: String,
    seed: u64,
    methods: Vec<MethodRun>,
    sada_trace: Trace,
}

#[derive(Debug, Clone, Serialize)]
struct MethodSummary {
    method: String,
    mean_evaluations: f64,
    total_seconds: f64,
    /// Total baseline wall time over total wall time of this method.
    speedup: f64,
    mean_psnr_db: Option<f64>,
    min_psnr_db: Option<f64>,
    mean_ssim: Option<f64>,
    min_ssim: Option<f64>,
}

const METHODS: [&str; 3] = ["baseline", "sada", "plain-equal-evals"];

/// Held-out captions spread over the split (every background appears).
pub fn builtin_prompts() -> Vec<String> {
    let held: Vec<Scene> = Scene::all().into_iter().filter(|s| s.is_held_out()).collect();
    (0..8).map(|i| held[i * held.len() / 8 + 3].caption()).collect()
}

pub fn run(args: &BenchArgs) -> Result<()> {
    anyhow::ensure!(args.seeds > 0, "--seeds must be at least 1");
    let (mut pipe, model_name, default_guidance) = load_model(args.model.as_deref(), DType::F32, &args.device.device()?)?;
    let kind = args.solver.for_family(pipe.family())?;
    let solver_name = "dpm++";
    anyhow::ensure!(pipe.can_decode(), "{model_name}: no vae/ folder, so images cannot be compared");
    let prompts = match &args.prompts {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read prompt file", path.display()))?;
            let p: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
            anyhow::ensure!(!p.is_empty(), "{}: no prompts (one per line expected)", path.display());
            p
        }
        None => builtin_prompts(),
    };
    let guidance_scale = args.guidance_scale.unwrap_or(default_guidance);
    let sada_config = args.sada.apply(<SadaConfig as sada::policy::acceleration::Method>::preset(pipe.family()), 0);
    sada_config.validate(args.steps)?;
    let settings = serde_json::json!({
        "model": model_name,
        "prompts": prompts,
        "seeds": args.seeds,
        "steps": args.steps,
        "guidance_scale": guidance_scale,
        "solver": solver_name,
        "sada": sada_config,
    });
    std::fs::create_dir_all(args.out.join("runs")).with_context(|| format!("cannot create {}", args.out.display()))?;
    std::fs::create_dir_all(args.out.join("images"))?;
    let settings_path = args.out.join("settings.json");
    if settings_path.is_file() {
        let old: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings_path)?).with_context(|| format!("{}: invalid JSON", settings_path.display()))?;
        if old != settings {
            bail!("{}: this folder holds a bench with other settings; choose another --out or delete it", settings_path.display());
        }
    } else {
        write_atomic(&settings_path, serde_json::to_string_pretty(&settings)?.as_bytes())?;
    }

    let (size, _) = pipe.default_size();
    let total = prompts.len() * args.seeds as usize;
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} runs {elapsed_precise} {msg}").expect("static template").progress_chars("=> "));
    bar.set_prefix("bench");
    let mut records = Vec::new();
    let mut warmed_up = false;
    for (pi, prompt) in prompts.iter().enumerate() {
        let mut inputs: Option<PipelineInputs> = None;
        for seed in 0..args.seeds {
            let index = pi * args.seeds as usize + seed as usize;
            let record_path = args.out.join("runs").join(format!("{index:04}.json"));
            if let Some(r) = std::fs::read_to_string(&record_path).ok().and_then(|t| serde_json::from_str::<RunRecord>(&t).ok()) {
                if r.prompt == *prompt && r.seed == seed {
                    records.push(r);
                    bar.inc(1);
                    continue;
                }
            }
            if inputs.is_none() {
                inputs = Some(pipe.encode_prompts(std::slice::from_ref(prompt), "")?);
            }
            let inputs = inputs.as_ref().expect("encoded above");
            let base_opts = GenerateOptions { steps: args.steps, guidance_scale, height: size, width: size, seed, solver: kind, acceleration: Acceleration::default() };
            if !warmed_up {
                // First calls allocate; keep that out of the baseline's time.
                pipe.generate(inputs, &GenerateOptions { steps: 2, ..base_opts.clone() }, &mut |_, _| {})?;
                warmed_up = true;
            }
            let mut sample = |opts: &GenerateOptions, label: &str| -> Result<(RgbImage, Trace, f64)> {
                bar.set_message(format!("{label}: {}", truncate(prompt, 40)));
                let start = Instant::now();
                let (latents, trace) = pipe.generate(inputs, opts, &mut |i, n| bar.set_message(format!("{label} step {i}/{n}: {}", truncate(prompt, 40))))?;
                let seconds = start.elapsed().as_secs_f64();
                let image = to_rgb(&pipe.decode(&latents)?.context("no decoder")?)?;
                Ok((image, trace, seconds))
            };
            let (base_img, base_trace, base_s) = sample(&base_opts, "baseline")?;
            // SADA's token-selection seed follows the run's seed, as in `sada generate`.
            let sada_opts = GenerateOptions { acceleration: Acceleration::Sada(SadaConfig { seed, ..sada_config.clone() }), ..base_opts.clone() };
            let (sada_img, sada_trace, sada_s) = sample(&sada_opts, "SADA")?;
            let plain_opts = GenerateOptions { steps: sada_trace.evaluations, ..base_opts.clone() };
            let (plain_img, plain_trace, plain_s) = sample(&plain_opts, "plain")?;
            let mut methods = Vec::new();
            for (name, img, trace, seconds, steps) in [
                (METHODS[0], &base_img, &base_trace, base_s, args.steps),
                (METHODS[1], &sada_img, &sada_trace, sada_s, args.steps),
                (METHODS[2], &plain_img, &plain_trace, plain_s, plain_opts.steps),
            ] {
                let file = format!("images/{index:04}-{name}.png");
                write_atomic(&args.out.join(&file), &png_bytes(img, &[("parameters", serde_json::json!({"prompt": prompt, "seed": seed, "method": name, "steps": steps}).to_string())])?)?;
                let vs_base = name != METHODS[0];
                methods.push(MethodRun {
                    method: name.into(),
                    steps,
                    evaluations: trace.evaluations,
                    seconds,
                    psnr_db: if vs_base { Some(psnr_rgb(img, &base_img)?) } else { None },
                    ssim: if vs_base { Some(ssim(img, &base_img)?) } else { None },
                    image: file,
                });
            }
            let record = RunRecord { index, prompt: prompt.clone(), seed, methods, sada_trace };
            write_atomic(&record_path, serde_json::to_string_pretty(&record)?.as_bytes())?;
            records.push(record);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let summary = summarize(&records);
    let report = serde_json::json!({ "settings": settings, "summary": summary, "runs": records });
    write_atomic(&args.out.join("bench.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    let md = markdown(&settings, &summary, &records);
    write_atomic(&args.out.join("bench.md"), md.as_bytes())?;
    write_atomic(&args.out.join("grid.png"), &png_bytes(&grid(&args.out, &records)?, &[("layout", "rows: prompt x seed; columns: baseline | SADA | plain solver at SADA's evaluations".into())])?)?;
    write_atomic(&args.out.join("criterion.svg"), criterion_svg(&records, args.steps, sada_config.acc_range).as_bytes())?;
    print!("{md}");
    println!("\nwritten to {}: bench.md, bench.json, grid.png, criterion.svg", args.out.display());
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn summarize(records: &[RunRecord]) -> Vec<MethodSummary> {
    let base_total: f64 = records.iter().map(|r| r.methods[0].seconds).sum();
    (0..METHODS.len())
        .map(|m| {
            let runs: Vec<&MethodRun> = records.iter().map(|r| &r.methods[m]).collect();
            let n = runs.len().max(1) as f64;
            let total: f64 = runs.iter().map(|r| r.seconds).sum();
            let stat = |f: fn(&MethodRun) -> Option<f64>| -> (Option<f64>, Option<f64>) {
                let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
                if v.is_empty() {
                    (None, None)
                } else {
                    (Some(v.iter().sum::<f64>() / v.len() as f64), v.iter().copied().reduce(f64::min))
                }
            };
            let (mean_psnr_db, min_psnr_db) = stat(|r| r.psnr_db);
            let (mean_ssim, min_ssim) = stat(|r| r.ssim);
            MethodSummary {
                method: METHODS[m].into(),
                mean_evaluations: runs.iter().map(|r| r.evaluations as f64).sum::<f64>() / n,
                total_seconds: total,
                speedup: base_total / total,
                mean_psnr_db,
                min_psnr_db,
                mean_ssim,
                min_ssim,
            }
        })
        .collect()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "-".into())
}

fn markdown(settings: &serde_json::Value, summary: &[MethodSummary], records: &[RunRecord]) -> String {
    let mut s = format!(
        "# sada bench\n\nmodel `{}`, {} prompts x {} seeds, {} steps, solver {}, guidance {}\n\n",
        settings["model"].as_str().unwrap_or("?"),
        settings["prompts"].as_array().map(Vec::len).unwrap_or(0),
        settings["seeds"],
        settings["steps"],
        settings["solver"].as_str().unwrap_or("?"),
        settings["guidance_scale"]
    );
    s += "| method | evaluations (mean) | wall s (total) | speedup | PSNR dB mean (min) | SSIM mean (min) |\n|---|---|---|---|---|---|\n";
    for m in summary {
        s += &format!(
            "| {} | {:.1} | {:.2} | {:.2}x | {} ({}) | {} ({}) |\n",
            m.method,
            m.mean_evaluations,
            m.total_seconds,
            m.speedup,
            opt(m.mean_psnr_db, 2),
            opt(m.min_psnr_db, 2),
            opt(m.mean_ssim, 4),
            opt(m.min_ssim, 4)
        );
    }
    s += "\n| # | prompt | seed | SADA evals | SADA decisions | SADA PSNR / SSIM | plain PSNR / SSIM |\n|---|---|---|---|---|---|---|\n";
    for r in records {
        let (sd, pl) = (&r.methods[1], &r.methods[2]);
        s += &format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} / {} |\n",
            r.index,
            r.prompt,
            r.seed,
            sd.evaluations,
            r.sada_trace.summary(),
            opt(sd.psnr_db, 2),
            opt(sd.ssim, 4),
            opt(pl.psnr_db, 2),
            opt(pl.ssim, 4)
        );
    }
    s
}

fn grid(out: &Path, records: &[RunRecord]) -> Result<RgbImage> {
    let mut rows = Vec::new();
    for r in records {
        let mut cells = Vec::new();
        for m in &r.methods {
            let path = out.join(&m.image);
            let img = read_png(&path)?;
            let factor = (128 / img.width.max(1)).max(1);
            cells.push(upscale(&img, factor));
        }
        let refs: Vec<&RgbImage> = cells.iter().collect();
        rows.push(hstack(&refs));
    }
    let refs: Vec<&RgbImage> = rows.iter().collect();
    Ok(vstack(&refs))
}

fn read_png(path: &Path) -> Result<RgbImage> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().with_context(|| format!("{}: not a PNG", path.display()))?;
    let mut buf = vec![0; reader.output_buffer_size().context("PNG too large")?];
    let info = reader.next_frame(&mut buf).with_context(|| format!("{}: corrupt PNG", path.display()))?;
    anyhow::ensure!(info.color_type == png::ColorType::Rgb && info.bit_depth == png::BitDepth::Eight, "{}: expected 8-bit RGB", path.display());
    buf.truncate(info.buffer_size());
    Ok(RgbImage { width: info.width as usize, height: info.height as usize, pixels: buf })
}

/// SADA's stability criterion over the steps of every run (symmetric-log scale: stable steps,
/// criterion <= 0, lie on or below the zero line) and the decisions of the first run as a strip.
fn criterion_svg(records: &[RunRecord], steps: usize, acc_range: (usize, usize)) -> String {
    let (w, h, left, top, plot_h, strip_h) = (900.0, 420.0, 60.0, 30.0, 260.0, 24.0);
    let plot_w = w - left - 20.0;
    let x = |n: f64| left + plot_w * n / steps.max(1) as f64;
    let values: Vec<f64> = records.iter().flat_map(|r| r.sada_trace.steps.iter().filter_map(|s| s.criterion)).collect();
    let mut mags: Vec<f64> = values.iter().map(|v| v.abs()).filter(|v| *v > 0.0).collect();
    mags.sort_by(f64::total_cmp);
    let scale = mags.get(mags.len() / 2).copied().unwrap_or(1.0);
    let f = |v: f64| (v / scale).asinh();
    let max = values.iter().map(|v| f(*v).abs()).fold(1.0, f64::max);
    let y = |v: f64| top + plot_h / 2.0 - (plot_h / 2.0) * f(v) / max;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    s += &format!("<text x=\"{left}\" y=\"18\">SADA stability criterion mean(m) per step (asinh(m / {scale:.3e}); at or below 0 = stable), {} runs</text>\n", records.len());
    s += &format!(
        "<rect x=\"{:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{plot_h}\" fill=\"#eef\"/>\n",
        x(acc_range.0 as f64),
        x(acc_range.1 as f64) - x(acc_range.0 as f64)
    );
    s += &format!("<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\n", left + plot_w, y(0.0), y(0.0));
    s += &format!("<text x=\"4\" y=\"{:.1}\">0</text>\n", y(0.0) + 4.0);
    for r in records {
        let pts: Vec<String> = r.sada_trace.steps.iter().filter_map(|st| st.criterion.map(|c| format!("{:.1},{:.1}", x(st.index as f64 + 0.5), y(c)))).collect();
        s += &format!("<polyline fill=\"none\" stroke=\"#c33\" stroke-opacity=\"0.5\" points=\"{}\"/>\n", pts.join(" "));
    }
    let colour = |d: Decision| match d {
        Decision::Full => "#444",
        Decision::Refresh => "#39c",
        Decision::Pruned => "#9c3",
        Decision::SkipAm => "#f90",
        Decision::SkipLagrange => "#c3c",
        Decision::Partial => "#6cc",
        Decision::Reuse => "#c96",
    };
    let strip_y = top + plot_h + 20.0;
    if let Some(r) = records.first() {
        for st in &r.sada_trace.steps {
            s += &format!(
                "<rect x=\"{:.1}\" y=\"{strip_y}\" width=\"{:.1}\" height=\"{strip_h}\" fill=\"{}\"/>\n",
                x(st.index as f64),
                (x(1.0) - x(0.0) - 1.0).max(1.0),
                colour(st.decision)
            );
        }
        s += &format!("<text x=\"4\" y=\"{:.1}\">run 0</text>\n", strip_y + 16.0);
    }
    for n in (0..=steps).step_by(10) {
        s += &format!("<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n}</text>\n", x(n as f64), strip_y + strip_h + 16.0);
    }
    let mut lx = left;
    for d in Decision::ALL {
        s += &format!("<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n", h - 22.0, colour(d), lx + 16.0, h - 12.0, d.name());
        lx += 120.0;
    }
    s += &format!("<text x=\"{:.1}\" y=\"{:.1}\">shaded: acc_range</text>\n", lx, h - 12.0);
    s + "</svg>\n"
}
