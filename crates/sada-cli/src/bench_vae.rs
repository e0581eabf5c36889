//! `sada bench-vae`: speed and peak memory of our autoencoder on a published configuration
//! (SD, SDXL, Flux) with random weights: decoding latents of an image size, and optionally
//! encoding the image, plain or tiled (compare with tools/bench_vae.sh, which runs diffusers'
//! AutoencoderKL beside it).

use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use candle_nn::VarBuilder;
use clap::{Args, ValueEnum};
use sada::models::vae::{presets, AutoencoderKl, AutoencoderKlConfig};

use crate::args::{DeviceArgs, DtypeArg};
use crate::bench_flux::timed;
use crate::bench_unet::{peak_rss_gib, random_weights, reset_peak_rss, MAX_EVALS};

/// Which published autoencoder configuration to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VaeConfig {
    /// Stable Diffusion 1.x / 2.x (4 latent channels; 83.7M parameters)
    Sd,
    /// SDXL (the same network, its own scaling factor and 1024 px tiles)
    Sdxl,
    /// FLUX.1 (16 latent channels, no quant convs)
    Flux,
}

#[derive(Debug, Args)]
pub struct BenchVaeArgs {
    /// Autoencoder configuration (random weights)
    #[arg(long, value_enum, default_value = "sd")]
    pub config: VaeConfig,
    /// Image size in pixels (latent = size / 8)
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Images per call
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed calls (after one warm-up)
    #[arg(long, default_value_t = 2)]
    pub evals: usize,
    /// Also time encoding an image of the size
    #[arg(long)]
    pub encode: bool,
    /// Decode (and encode) in tiles of the configuration's sample_size, as diffusers'
    /// enable_tiling
    #[arg(long)]
    pub tiling: bool,
    /// Compute precision (bf16 not on the CPU)
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: &BenchVaeArgs) -> Result<()> {
    anyhow::ensure!(args.size.is_multiple_of(8) && args.size > 0 && args.size <= 8192, "--size must be a positive multiple of 8, at most 8192");
    anyhow::ensure!((1..=64).contains(&args.batch), "--batch must be 1 to 64");
    anyhow::ensure!((1..=MAX_EVALS).contains(&args.evals), "--evals must be 1 to {MAX_EVALS}");
    let dev = args.device.device()?;
    let dtype = args.dtype.resolve(&dev)?;
    let (name, preset) = match args.config {
        VaeConfig::Sd => ("sd", presets::SD),
        VaeConfig::Sdxl => ("sdxl", presets::SDXL),
        VaeConfig::Flux => ("flux", presets::FLUX),
    };
    let config: AutoencoderKlConfig = serde_json::from_str(preset)?;
    let t0 = Instant::now();
    let weights = random_weights(|vb| AutoencoderKl::new(config.clone(), vb).map(drop).map_err(Into::into), dtype, &dev)?;
    let mut vae = AutoencoderKl::new(config.clone(), VarBuilder::from_tensors(weights, dtype, &dev))?;
    vae.set_tiling(args.tiling);
    let init_s = t0.elapsed().as_secs_f64();
    reset_peak_rss();
    let (b, l) = (args.batch, args.size / 8);
    let latents = Tensor::randn(0f32, 1f32, (b, config.latent_channels, l, l), &dev)?.to_dtype(dtype)?;
    let label = format!("{name}, {}, {dtype:?}{}", crate::bench_unet::device_name(&dev), if args.tiling { ", tiled" } else { "" });
    // GPU work is queued: each call is timed to completion
    let (mean, min) = timed(args.evals, || {
        drop(vae.decode(&latents)?);
        Ok(dev.synchronize()?)
    })?;
    println!(
        "{{\"impl\": \"sada (candle)\", \"config\": \"{label}\", \"op\": \"decode\", \"size\": {}, \"batch\": {b}, \"s_per_call\": {mean:.4}, \"min\": {min:.4}, \"peak_rss_gib\": {:.2}, \"init_s\": {init_s:.1}}}",
        args.size,
        peak_rss_gib()
    );
    if args.encode {
        reset_peak_rss();
        let image = Tensor::rand(-1f32, 1f32, (b, 3, args.size, args.size), &dev)?.to_dtype(dtype)?;
        let (mean, min) = timed(args.evals, || {
            drop(vae.encode(&image)?);
            Ok(dev.synchronize()?)
        })?;
        println!(
            "{{\"impl\": \"sada (candle)\", \"config\": \"{label}\", \"op\": \"encode\", \"size\": {}, \"batch\": {b}, \"s_per_call\": {mean:.4}, \"min\": {min:.4}, \"peak_rss_gib\": {:.2}}}",
            args.size,
            peak_rss_gib()
        );
    }
    Ok(())
}
