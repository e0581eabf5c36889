//! `sada generate`: sample a Stable Diffusion model folder, with or without SADA.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use sada::pipelines::image::{png_bytes, to_rgb};
use sada::pipelines::{GenerateOptions, PipelineInputs, StableDiffusion};
use sada::solvers::SolverKind;

use crate::args::{progress, SadaArgs, SolverArg};
use crate::output::{replace_atomically, write_atomic};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// SADA with the published settings for the model family (overridable by the SADA flags)
    Sada,
    /// The unaccelerated baseline
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputType {
    /// A PNG image (needs the model folder's vae/)
    Pil,
    /// The final latents as a safetensors file with one tensor named `latents`
    Latent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// diffusers model folder with unet/, scheduler/ and optionally vae/
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// safetensors file with the conditioning, named as diffusers' pipeline arguments:
    /// prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
    /// add_time_ids (optional) and latents (optional unscaled initial noise)
    #[arg(long, value_name = "FILE.safetensors")]
    pub inputs: PathBuf,
    /// Number of solver steps
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale [default: 7.5, or 5.0 for SDXL-style models]
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    /// Solver (built from the folder's scheduler_config.json as diffusers' from_config would)
    #[arg(long, value_enum, default_value = "dpm++")]
    pub solver: SolverArg,
    /// Image height in pixels [default: unet sample_size x VAE scale factor]
    #[arg(long)]
    pub height: Option<usize>,
    /// Image width in pixels [default: unet sample_size x VAE scale factor]
    #[arg(long)]
    pub width: Option<usize>,
    /// Seed of the initial noise (when --inputs has no latents) and of SADA's token selection
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Acceleration
    #[arg(long, value_enum, default_value = "sada")]
    pub accel: Accel,
    /// Where to write the result
    #[arg(long, value_name = "PATH")]
    pub output: PathBuf,
    /// What to write
    #[arg(long, value_enum, default_value = "pil")]
    pub output_type: OutputType,
    /// Write the per-step trace as JSON
    #[arg(long, value_name = "FILE.json")]
    pub trace: Option<PathBuf>,
    /// Compute precision of the networks (f16/bf16 only where the device supports them)
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    #[command(flatten)]
    pub sada: SadaArgs,
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let device = Device::Cpu;
    let dtype = match args.dtype {
        DtypeArg::F32 => DType::F32,
        DtypeArg::F16 => DType::F16,
        DtypeArg::Bf16 => bail!("--dtype bf16 is not supported on the CPU (candle has no bf16 matrix product there); use f32 or f16"),
    };
    let kind = match args.solver {
        SolverArg::DpmPp => SolverKind::DpmSolverMultistep,
        SolverArg::Euler => SolverKind::EulerDiscrete,
        SolverArg::Flow => bail!("--solver flow needs a flow-matching model; Stable Diffusion folders take dpm++ or euler"),
    };
    let inputs = PipelineInputs::load(&args.inputs, &device)?;
    let mut pipe = StableDiffusion::load(&args.model, dtype, &device)?;
    if args.output_type == OutputType::Pil && pipe.vae.is_none() {
        bail!("{}: no vae/ folder, so no image can be decoded; use --output-type latent", args.model.display());
    }
    // Without --height/--width, the size follows the given latents, else diffusers' default.
    let scale = pipe.vae_scale_factor();
    let (lat_h, lat_w) = match &inputs.latents {
        Some(l) if l.rank() == 4 => (Some(l.dim(2)? * scale), Some(l.dim(3)? * scale)),
        _ => (None, None),
    };
    let size = pipe.default_size();
    let opts = GenerateOptions {
        steps: args.steps,
        guidance_scale: args.guidance_scale.unwrap_or(pipe.default_guidance()),
        height: args.height.or(lat_h).unwrap_or(size),
        width: args.width.or(lat_w).unwrap_or(size),
        seed: args.seed,
        solver: match kind {
            SolverKind::EulerDiscrete => "euler",
            _ => "dpm++",
        },
        sada: match args.accel {
            Accel::Sada => Some(args.sada.apply(pipe.default_sada(), args.seed)),
            Accel::None => None,
        },
    };
    let bar = progress(opts.steps, if opts.sada.is_some() { "SADA" } else { "baseline" });
    let start = Instant::now();
    let (latents, trace) = pipe.generate(&inputs, &opts, kind, &mut |i, _| bar.set_position(i as u64))?;
    bar.finish_and_clear();
    let sample_s = start.elapsed().as_secs_f64();

    let settings = serde_json::json!({
        "model": args.model.display().to_string(),
        "options": &opts,
        "evaluations": trace.evaluations,
    });
    match args.output_type {
        OutputType::Latent => {
            let latents = HashMap::from([("latents".to_string(), latents.to_dtype(DType::F32)?)]);
            replace_atomically(&args.output, |tmp| Ok(candle_core::safetensors::save(&latents, tmp)?))?;
        }
        OutputType::Pil => {
            let image = pipe.decode(&latents)?.context("no VAE")?;
            let png = png_bytes(&to_rgb(&image)?, &[("parameters", settings.to_string())])?;
            write_atomic(&args.output, &png)?;
        }
    }
    if let Some(path) = &args.trace {
        write_atomic(path, serde_json::to_string_pretty(&trace)?.as_bytes())?;
    }
    println!(
        "{}: {} evaluations for {} steps [{}], sampling {:.2} s, written to {}",
        if opts.sada.is_some() { "SADA" } else { "baseline" },
        trace.evaluations,
        opts.steps,
        trace.summary(),
        sample_s,
        args.output.display()
    );
    Ok(())
}
