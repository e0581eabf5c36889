//! `sada generate`: sample a Stable Diffusion model folder (or the embedded default model),
//! with SADA, a rival accelerator or none, optionally side by side with the unaccelerated
//! baseline.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::{Args, ValueEnum};
use sada::compare::{Fidelity, Run};
use sada::image::{hstack, png_bytes};
use sada::pipelines::{validate_prompt, GenerateOptions, Pipeline, PipelineInputs, PromptOptions, SizeConditioning};
use sada::policy::Acceleration;

use crate::args::{load_model, progress, report_prompt, solver_for, AccelArgs, DeviceArgs, DtypeArg, MemoryArgs, ModelArgs, SolverArg};
use crate::control::{control_inputs, ControlArgs};
use crate::output::{check_distinct, check_writable, commit_all, stage, stage_bytes};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputType {
    /// A PNG image (needs the model folder's vae/)
    Pil,
    /// The final latents as a safetensors file with one tensor named `latents`
    Latent,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (needs a model with a text encoder: CLIP's tokenizer as Stable Diffusion
    /// models have, or a word-level one as the embedded model)
    #[arg(long, conflicts_with = "inputs")]
    pub prompt: Option<String>,
    /// The negative prompt (the unconditional side of classifier-free guidance) [default: none,
    /// which is "" for SD-1.x/2.x and zero embeddings for SDXL, as in diffusers]
    #[arg(long, requires = "prompt")]
    pub negative_prompt: Option<String>,
    /// Read the text encoder this many layers before its last, as diffusers' clip_skip
    #[arg(long, value_name = "N", requires = "prompt")]
    pub clip_skip: Option<usize>,
    /// Flux: T5 tokens the prompt is padded or cut to, as diffusers' max_sequence_length
    /// [default: 512, 256 for schnell-style models without a guidance embedding]
    #[arg(long, value_name = "N", requires = "prompt")]
    pub max_sequence_length: Option<usize>,
    /// SDXL size conditioning: the original size H,W [default: the image size]
    #[arg(long, value_name = "H,W", value_parser = parse_pair)]
    pub original_size: Option<(usize, usize)>,
    /// SDXL size conditioning: the crop's top-left corner TOP,LEFT [0,0]
    #[arg(long, value_name = "TOP,LEFT", value_parser = parse_pair)]
    pub crops_coords_top_left: Option<(usize, usize)>,
    /// SDXL size conditioning: the target size H,W [default: the image size]
    #[arg(long, value_name = "H,W", value_parser = parse_pair)]
    pub target_size: Option<(usize, usize)>,
    /// Initial noise from a safetensors file (tensor `latents`, unscaled) instead of --seed's
    #[arg(long, value_name = "FILE.safetensors")]
    pub latents: Option<PathBuf>,
    /// safetensors file with precomputed conditioning instead of --prompt, named as diffusers'
    /// pipeline arguments: prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
    /// negative_pooled_prompt_embeds, add_time_ids (optional) and latents (optional unscaled
    /// initial noise)
    #[arg(long, value_name = "FILE.safetensors")]
    pub inputs: Option<PathBuf>,
    /// Number of solver steps (50, SADA's published setting for every model; diffusers' Flux
    /// default is 28, and FLUX.1-schnell is meant for 4, with --accel none)
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale [default: 7.5, 5.0 for SDXL-style models, 4.0 for the
    /// embedded model; Flux: 3.5, the distilled guidance fed to the network, ignored by schnell]
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    /// Solver, built from the model's scheduler_config.json as diffusers' from_config would
    /// [default: dpm++, euler for SDXL, flow for Flux, as SADA's published runs]
    #[arg(long, value_enum)]
    pub solver: Option<SolverArg>,
    /// Image height in pixels [default: unet sample_size x VAE scale factor; Flux: 1024]
    #[arg(long)]
    pub height: Option<usize>,
    /// Image width in pixels [default: unet sample_size x VAE scale factor; Flux: 1024]
    #[arg(long)]
    pub width: Option<usize>,
    /// Seed of the initial noise, drawn as torch.Generator("cpu").manual_seed(SEED) and
    /// diffusers' randn_tensor draw it (when no latents are given), and of SADA's token selection
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the result
    #[arg(long, value_name = "PATH", default_value = "sada.png")]
    pub output: PathBuf,
    /// Also run the unaccelerated baseline from the same noise; write [baseline | accelerated]
    /// side by side and print PSNR, SSIM and the speedup
    #[arg(long)]
    pub compare: bool,
    /// What to write
    #[arg(long, value_enum, default_value = "pil")]
    pub output_type: OutputType,
    /// Decode in overlapping, blended tiles of the autoencoder's sample_size, as diffusers'
    /// enable_vae_tiling: the decoder's memory is one tile's at any image size (seams differ
    /// slightly from an untiled decode)
    #[arg(long)]
    pub vae_tiling: bool,
    /// Write the per-step trace as JSON
    #[arg(long, value_name = "FILE.json")]
    pub trace: Option<PathBuf>,
    /// Compute precision of the networks (f16/bf16 only where the device supports them)
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    #[command(flatten)]
    pub weights: crate::args::WeightsArgs,
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub accel: AccelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

/// How a run is named in messages.
fn label(a: &Acceleration) -> &'static str {
    match a {
        Acceleration::Sada(_) => "SADA",
        Acceleration::None(_) => "baseline",
        other => other.name(),
    }
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    // everything that can be refused without the model is, before it loads
    check_writable("--output", &args.output)?;
    if let Some(trace) = &args.trace {
        check_writable("--trace", trace)?;
        check_distinct(&[("--output", &args.output), ("--trace", trace)])?;
    }
    if let Some(prompt) = &args.prompt {
        validate_prompt("--prompt", prompt, false)?;
        validate_prompt("--negative-prompt", args.negative_prompt.as_deref().unwrap_or(""), true)?;
    }
    args.control.check(false)?;
    let device = args.device.device()?;
    let dtype = args.dtype.resolve(&device)?;
    // every network loaded from here on (text encoders load on the first prompt) holds its weights so
    let _weights = args.weights.at_rest(&device, dtype)?;
    if args.compare && args.output_type != OutputType::Pil {
        bail!("--compare writes images side by side; it needs --output-type pil");
    }
    let load_start = Instant::now();
    let (mut pipe, model_name) = load_model(&args.model, dtype, &device)?;
    let default_guidance = pipe.default_guidance();
    let controlnets = if args.control.any() {
        let hub_opts = sada::models::hub::HubOptions { revision: None, offline: args.model.offline };
        args.control.attach(pipe.as_mut(), &hub_opts, dtype, &device, false)?
    } else {
        Vec::new()
    };
    let mut load_s = load_start.elapsed().as_secs_f64();
    let mut text_s = 0.0;
    let solver = solver_for(args.solver, pipe.family())?;
    let acceleration = args.accel.acceleration(pipe.family())?;
    if args.compare && acceleration.is_baseline() {
        bail!("--compare compares an accelerated run with the baseline; it cannot be combined with --accel none");
    }
    let inputs = match (&args.prompt, &args.inputs) {
        (Some(prompt), _) => {
            let prompt_opts =
                PromptOptions { negative_prompt: args.negative_prompt.clone(), clip_skip: args.clip_skip, max_sequence_length: args.max_sequence_length };
            // the tokenizers and text encoders load on the first prompt: load time, not encoding time
            let start = Instant::now();
            report_prompt(
                pipe.as_mut(),
                &model_name,
                &prompt_opts,
                &[("--prompt", prompt), ("--negative-prompt", args.negative_prompt.as_deref().unwrap_or(""))],
            )?;
            load_s += start.elapsed().as_secs_f64();
            let start = Instant::now();
            let encoded = pipe.encode_prompts(std::slice::from_ref(prompt), &prompt_opts)?;
            text_s = start.elapsed().as_secs_f64();
            // one prompt per run: the text encoders' memory is free for sampling
            pipe.release_text_encoders();
            crate::trim_heap();
            encoded
        }
        (None, Some(path)) => PipelineInputs::load(path, &device)?,
        (None, None) => bail!("give --prompt TEXT (or --inputs FILE.safetensors with precomputed prompt_embeds)"),
    };
    // the denoiser's weights where they load after the prompt (Flux): load time
    let start = Instant::now();
    pipe.load_denoiser()?;
    load_s += start.elapsed().as_secs_f64();
    let mut inputs = inputs;
    inputs.control = control_inputs(&controlnets, None)?;
    inputs.guess_mode = args.control.guess_mode;
    if let Some(path) = &args.latents {
        let given = PipelineInputs::load(path, &device)?;
        inputs.latents = Some(given.latents.with_context(|| format!("--latents {}: holds no tensor named `latents`", path.display()))?);
    }
    if args.output_type == OutputType::Pil && !pipe.can_decode() {
        bail!("{model_name}: no vae/ folder, so no image can be decoded; use --output-type latent");
    }
    // Without --height/--width, the size follows the given latents, else diffusers' default.
    let scale = pipe.vae_scale_factor();
    let (lat_h, lat_w) = match &inputs.latents {
        Some(l) if l.rank() == 4 => (Some(l.dim(2)? * scale), Some(l.dim(3)? * scale)),
        _ => (None, None),
    };
    let (size_h, size_w) = pipe.default_size();
    let opts = GenerateOptions {
        steps: args.steps,
        guidance_scale: args.guidance_scale.unwrap_or(default_guidance),
        height: args.height.or(lat_h).unwrap_or(size_h),
        width: args.width.or(lat_w).unwrap_or(size_w),
        seed: args.seed,
        solver,
        acceleration,
        size_conditioning: SizeConditioning {
            original_size: args.original_size,
            crops_coords_top_left: args.crops_coords_top_left.unwrap_or((0, 0)),
            target_size: args.target_size,
        },
    };
    pipe.validate(&opts)?;
    if args.vae_tiling {
        pipe.set_vae_tiling(true).with_context(|| format!("--vae-tiling: {model_name}"))?;
    }
    let batch = inputs.prompt_embeds.as_ref().map(|p| p.dim(0)).transpose()?.unwrap_or(1);
    args.memory.check("--height/--width", &format!("{}x{}", opts.width, opts.height), pipe.estimate_memory(&opts, batch))?;
    let run_one = |pipe: &mut Box<dyn Pipeline>, opts: &GenerateOptions| -> Result<Run> {
        let bar = progress(opts.acceleration.steps(opts.steps), label(&opts.acceleration));
        let run = Run::sample(pipe.as_mut(), &inputs, opts, &mut |i, _| bar.set_position(i as u64))?;
        bar.finish_and_clear();
        Ok(run)
    };
    let baseline = if args.compare { Some(run_one(&mut pipe, &GenerateOptions { acceleration: Acceleration::default(), ..opts.clone() })?) } else { None };
    let run = run_one(&mut pipe, &opts)?;
    let (trace, sample_s) = (&run.trace, run.seconds);
    let name = label(&opts.acceleration);

    let settings = serde_json::json!({
        "model": model_name,
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "clip_skip": args.clip_skip,
        "max_sequence_length": args.max_sequence_length,
        "scheduler_shipped": pipe.scheduler_class(),
        "options": &opts,
        "controlnets": controlnets,
        "guess_mode": args.control.guess_mode,
        "vae_tiling": args.vae_tiling,
        // Measured cost is timing and varies run to run; only what decides the image goes in the file,
        // so the same settings give byte-identical PNGs.
        "evaluations": trace.evaluations,
        "compare": args.compare,
    });
    let mut decode_s = 0.0;
    // the peak so far, to tell whether decoding raised it
    let sampling_peak = peak_memory_gib();
    let mut outputs = Vec::new();
    match args.output_type {
        OutputType::Latent => {
            let latents = HashMap::from([("latents".to_string(), run.latents.to_dtype(DType::F32)?)]);
            outputs.push(stage(&args.output, |tmp| Ok(candle_core::safetensors::save(&latents, tmp)?))?);
        }
        OutputType::Pil => {
            // sampling is over: only the decoder is kept, the denoiser's memory is free for it
            let decoder = pipe.into_decoder();
            crate::trim_heap();
            let start = Instant::now();
            let image = run.image_from(&decoder)?;
            decode_s = start.elapsed().as_secs_f64();
            let (out, settings) = match &baseline {
                Some(base_run) => {
                    let base = base_run.image_from(&decoder)?;
                    let f = Fidelity::of(&image, &base, None)?;
                    let speedup = run.speedup_over(base_run);
                    println!(
                        "baseline: {} evaluations, sampling {:.2} s; {name} vs baseline: PSNR {:.2} dB, SSIM {:.4}, speedup {:.2}x wall, {:.2}x less network work",
                        base_run.trace.evaluations, base_run.seconds, f.psnr_db, f.ssim, speedup.wall, speedup.work
                    );
                    let mut settings = settings;
                    settings["psnr_db"] = f.psnr_db.into();
                    settings["ssim"] = f.ssim.into();
                    settings["layout"] = format!("baseline | {name}").into();
                    (hstack(&[&base, &image]), settings)
                }
                None => (image, settings),
            };
            outputs.push(stage_bytes(&args.output, &png_bytes(&out, &[("parameters", settings.to_string())])?)?);
        }
    }
    if let Some(path) = &args.trace {
        outputs.push(stage_bytes(path, serde_json::to_string_pretty(&trace)?.as_bytes())?);
    }
    // the image and the trace appear together or not at all
    commit_all(outputs)?;
    // partial calls (a branch served from a cache) cost less than full ones: say how much
    let cost = trace.equivalent_evaluations();
    let cost_note = if cost + 0.5 < trace.evaluations as f64 { format!(" (cost {cost:.1} full evaluations)") } else { String::new() };
    println!(
        "{name}: {} evaluations{cost_note} for {} steps [{}], sampling {:.2} s, written to {}",
        trace.evaluations,
        trace.steps.len(),
        trace.summary(),
        sample_s,
        args.output.display()
    );
    let peak = match (peak_memory_gib(), sampling_peak) {
        (Some(all), Some(before)) if all > before + 0.005 => format!(", peak memory {all:.2} GiB ({before:.2} GiB before decoding)"),
        (Some(all), _) => format!(", peak memory {all:.2} GiB"),
        _ => String::new(),
    };
    println!("time: loading {load_s:.2} s, text encoding {text_s:.2} s, sampling {sample_s:.2} s, decoding {decode_s:.2} s{peak}");
    Ok(())
}

/// The process's peak resident memory (Linux `VmHWM`), where the system reports it.
fn peak_memory_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

fn parse_pair(s: &str) -> std::result::Result<(usize, usize), String> {
    let (a, b) = s.split_once(',').ok_or_else(|| format!("expected two numbers A,B, got `{s}`"))?;
    let a = a.trim().parse().map_err(|_| format!("`{a}` is not a size"))?;
    let b = b.trim().parse().map_err(|_| format!("`{b}` is not a size"))?;
    Ok((a, b))
}
