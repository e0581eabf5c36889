//! `sada bench-unet`: speed of our UNet on the full SD-2.1 or SDXL configuration with random
//! weights (no download), or on the embedded default model's UNet, per guided evaluation and
//! end to end with and without SADA.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::{Args, ValueEnum};
use sada::denoiser::token_cache::TokenCache;
use sada::denoiser::{Conditioning, Denoiser, ForwardContext, Guided};
use sada::models::controlnet::{ControlNetConfig, ControlNetModel, ControlUnit, ControlledUNet};
use sada::models::unet::presets;
use sada::models::{UNet2DConditionConfig, UNet2DConditionModel};
use sada::policy::{NoAcceleration, Policy, Sada, SadaConfig};
use sada::sampling::sample;

use crate::args::{DeviceArgs, DtypeArg};
use crate::profile::SpanTimes;
use sada::solvers::{build_solver, FlowTimesteps, SolverKind};

/// Which published UNet configuration to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UnetConfig {
    /// Stable Diffusion 2.1 (865M parameters, 1024-wide text embeddings)
    Sd21,
    /// SDXL base 1.0 (2.6B parameters, text_time added conditioning)
    Sdxl,
    /// The embedded default model's UNet with its trained weights (pixel space, 32 x 32 x 3,
    /// 16 text tokens of width 64; --size is ignored): bound by per-op overhead, not FLOPs
    Default,
}

#[derive(Debug, Args)]
pub struct BenchUnetArgs {
    /// UNet configuration (random weights, except `default`)
    #[arg(long, value_enum, default_value = "sd21")]
    pub config: UnetConfig,
    /// Image size in pixels (latent = size / 8)
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Timed guided evaluations (after one warm-up)
    #[arg(long, default_value_t = 3)]
    pub evals: usize,
    /// Also sample this many DPM-Solver++ steps end to end, baseline and SADA (0 = skip)
    #[arg(long, default_value_t = 0)]
    pub sample_steps: usize,
    /// Also steer the UNet with one ControlNet and a random control image, timing the pair as
    /// `sada generate --controlnet` runs it: for sd21 / sdxl a ControlNet of the UNet's
    /// configuration with random weights (as diffusers' `ControlNetModel.from_unet` shapes it),
    /// for default the embedded outline ControlNet
    #[arg(long)]
    pub controlnet: bool,
    /// Compute precision of the UNet (bf16 not on the CPU)
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    #[command(flatten)]
    pub weights: crate::args::WeightsArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Return freed heap memory to the system and restart the peak-RSS count (Linux: glibc's
/// malloc_trim, then `5` into /proc/self/clear_refs resets VmHWM).
pub(crate) fn reset_peak_rss() {
    crate::trim_heap();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process in GiB (Linux VmHWM).
pub fn peak_rss_gib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Timed evaluations one bench may ask for (each takes seconds to minutes).
pub const MAX_EVALS: usize = 10_000;

pub fn run(args: &BenchUnetArgs) -> Result<()> {
    anyhow::ensure!(args.size.is_multiple_of(64) && args.size > 0 && args.size <= 4096, "--size must be a positive multiple of 64, at most 4096");
    anyhow::ensure!((1..=MAX_EVALS).contains(&args.evals), "--evals must be 1 to {MAX_EVALS}");
    let dev = args.device.device()?;
    let dtype = args.dtype.resolve(&dev)?;
    // every network loaded from here on (text encoders load on the first prompt) holds its weights so
    let _weights = args.weights.at_rest(&dev, dtype)?;
    let profile = SpanTimes::install()?;
    let (name, preset, sched_preset, sada_config) = match args.config {
        UnetConfig::Sd21 => ("sd21", Some(presets::SD21), sada::solvers::presets::SD21, SadaConfig::sd2()),
        UnetConfig::Sdxl => ("sdxl", Some(presets::SDXL), sada::solvers::presets::SDXL, SadaConfig::sdxl()),
        UnetConfig::Default => ("default", None, sada::solvers::presets::SD21, SadaConfig::sd2()),
    };
    if args.sample_steps > 0 {
        // the sampling runs after minutes of timing: their settings are checked now
        let sched = sada::solvers::presets::parse(sched_preset);
        build_solver(SolverKind::DpmSolverMultistep, &sched, &Default::default(), args.sample_steps, &FlowTimesteps::default())
            .map_err(|e| anyhow::anyhow!("--sample-steps {}: {e}", args.sample_steps))?;
        sada_config.validate(args.sample_steps).map_err(|e| anyhow::anyhow!("--sample-steps {}: SADA's preset: {e}", args.sample_steps))?;
    }
    let source = sada::pipelines::default_model::source();
    // the default model samples in pixel space at its trained size, with 16-token prompts
    let (config, size, l, tokens): (UNet2DConditionConfig, _, _, _) = match preset {
        Some(preset) => (serde_json::from_str(preset)?, args.size, args.size / 8, 77),
        None => (source.read_json("unet/config.json")?, 32, 32, 16),
    };
    let (channels, text_dim) = (config.in_channels, config.resolve()?.cross_attention_dim);
    let t0 = Instant::now();
    let unet = match preset {
        Some(_) => random_unet(config.clone(), dtype, &dev)?,
        None => UNet2DConditionModel::load_from(&source, "unet", dtype, &dev)?,
    };
    let controlnet = match (args.controlnet, preset) {
        (false, _) => None,
        (true, preset) => {
            let mut model = match preset {
                Some(_) => {
                    let config = ControlNetConfig { unet: config.clone(), extra: Default::default() };
                    let weights = random_weights(|vb| ControlNetModel::new(config.clone(), vb).map(drop), dtype, &dev)?;
                    ControlNetModel::new(config, VarBuilder::from_tensors(weights, dtype, &dev))?
                }
                None => ControlNetModel::load_from(&source, "controlnet", dtype, &dev)?,
            };
            model.tag_sites("controlnet.0");
            Some(model)
        }
    };
    let units: Vec<ControlUnit> = controlnet.iter().map(|model| ControlUnit { model, settings: Default::default() }).collect();
    let controlled = ControlledUNet { unet: &unet, nets: &units, guess_mode: false, num_steps: args.sample_steps.max(1) };
    let model: &dyn Denoiser = if args.controlnet { &controlled } else { &unet };
    let init_s = t0.elapsed().as_secs_f64();
    // the random f32 weights the model was built from are gone: hand their memory back and
    // restart the peak, so peak_rss_gib is the loaded model's while it evaluates
    reset_peak_rss();
    let x = Tensor::randn(0f32, 1f32, (1, channels, l, l), &dev)?.to_dtype(dtype)?;
    // one control image for both halves of the guided batch, as the pipelines pass it
    let control_image = match &controlnet {
        Some(model) => {
            let side = l * model.image_factor();
            Some(Tensor::rand(0f32, 1f32, (1, model.conditioning_channels(), side, side), &dev)?.to_dtype(dtype)?)
        }
        None => None,
    };
    let text = |seed: f32| -> Result<Conditioning> {
        let mut c =
            Conditioning::new().with("encoder_hidden_states", (Tensor::randn(0f32, 1f32, (1, tokens, text_dim), &dev)? * seed as f64)?.to_dtype(dtype)?);
        if unet.uses_text_time() {
            let size = size as f32;
            c = c
                .with("text_embeds", (Tensor::randn(0f32, 1f32, (1, 1280), &dev)? * seed as f64)?.to_dtype(dtype)?)
                .with("time_ids", Tensor::new(&[[size, size, 0.0, 0.0, size, size]], &dev)?.to_dtype(dtype)?);
        }
        if let Some(image) = &control_image {
            c = c.with("controlnet_cond.0", image.clone()).with("control_weight", Tensor::ones(1, DType::F32, &dev)?);
        }
        Ok(c)
    };
    let (cond, uncond) = (text(1.0)?, text(0.5)?);
    let label = format!("{name}{}, {}, {:?}, weights {}", if args.controlnet { " + controlnet" } else { "" }, device_name(&dev), dtype, args.weights.label())
        .to_lowercase();
    let mut times = Vec::new();
    {
        let g = Guided::new(model, cond.clone(), Some(uncond.clone()), 7.5)?;
        for i in 0..=args.evals {
            if i == 1 {
                profile.reset();
            }
            let t = Instant::now();
            let mut cache = TokenCache::default();
            g.predict(&x, 500.0, &mut ForwardContext::full(&mut cache))?;
            // GPU work is queued: time it to completion
            dev.synchronize()?;
            if i > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "{{\"impl\": \"sada (candle)\", \"config\": \"{label}\", \"size\": {}, \"s_per_guided_eval\": {mean:.4}, \"min\": {min:.4}, \"peak_rss_gib\": {:.2}, \"init_s\": {init_s:.1}}}",
        size,
        peak_rss_gib()
    );
    // span times measure the host's side; on a GPU they time kernel launches, not kernels
    if dev.is_cpu() {
        // the guided batch runs one image per core (denoiser::batch): spans on both
        // threads add up, so shares are of the cores' time, not of the wall time
        let lanes = rayon::current_num_threads().min(2) as f64;
        let total: f64 = times.iter().sum::<f64>() * lanes;
        let parts: Vec<String> = profile.snapshot().iter().map(|(p, s)| format!("\"{p}\": {:.3}", s / total)).collect();
        println!("{{\"impl\": \"sada (candle)\", \"config\": \"{label}\", \"size\": {}, \"share_of_eval_time\": {{{}}}}}", size, parts.join(", "));
    }
    if args.sample_steps > 0 {
        let sched = sada::solvers::presets::parse(sched_preset);
        for (run, mut policy) in [("baseline", Box::new(NoAcceleration) as Box<dyn Policy>), ("sada", Box::new(Sada::new(sada_config, 0)) as Box<dyn Policy>)] {
            let mut solver = build_solver(SolverKind::DpmSolverMultistep, &sched, &Default::default(), args.sample_steps, &FlowTimesteps::default())?;
            let g = Guided::new(model, cond.clone(), Some(uncond.clone()), 7.5)?;
            let t = Instant::now();
            let (out, trace) = sample(&g, solver.as_mut(), policy.as_mut(), x.clone(), &mut |_, _| {})?;
            dev.synchronize()?;
            let wall = t.elapsed().as_secs_f64();
            if out.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?.is_nan() {
                anyhow::bail!("{run}: the sampled latents hold NaN ({label})");
            }
            println!(
                "{{\"impl\": \"sada (candle)\", \"config\": \"{label}\", \"size\": {}, \"run\": \"{run}\", \"steps\": {}, \"evaluations\": {}, \"wall_s\": {wall:.2}, \"decisions\": \"{}\"}}",
                size,
                args.sample_steps,
                trace.evaluations,
                trace.summary()
            );
        }
    }
    Ok(())
}

/// A UNet of this configuration with random weights. They come from a VarMap, but variables make
/// candle record the whole forward graph (keeping every activation alive); the model is rebuilt
/// from detached copies, as weights loaded from safetensors are.
fn random_unet(config: UNet2DConditionConfig, dtype: DType, dev: &Device) -> Result<UNet2DConditionModel> {
    let weights = random_weights(|vb| UNet2DConditionModel::new(config.clone(), vb).map(drop), dtype, dev)?;
    Ok(UNet2DConditionModel::new(config, VarBuilder::from_tensors(weights, dtype, dev))?)
}

/// The weights `build` creates, random, detached from the VarMap that made them.
pub(crate) fn random_weights(
    build: impl FnOnce(VarBuilder) -> sada::Result<()>,
    dtype: DType,
    dev: &Device,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let data = varmap.data().lock().map_err(|_| anyhow::anyhow!("weight map poisoned"))?;
    data.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().to_dtype(dtype)?))).collect()
}

pub(crate) fn device_name(dev: &Device) -> &'static str {
    match dev {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}
