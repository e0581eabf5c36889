//! `sada bench-flux`: speed of our Flux transformer at FLUX.1-dev's width (3072 channels, 24 heads,
//! 4096-wide T5 embeddings, guidance embedding) with random weights (no download), a few blocks
//! deep so that it fits in memory (all 57 blocks need 48 GB in f32): one forward, and one forward
//! with SADA's token pruning computing one image token per 3 x 3 cell.

use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use candle_nn::VarBuilder;
use clap::Args;
use sada::denoiser::token_cache::TokenCache;
use sada::denoiser::{Conditioning, Denoiser, ForwardContext, TokenPlan, TokenSelection};
use sada::models::flux::{FluxTransformer2DModel, FluxTransformerConfig};

use crate::args::{DeviceArgs, DtypeArg};
use crate::bench_unet::peak_rss_gib;
use crate::profile::SpanTimes;

#[derive(Debug, Args)]
pub struct BenchFluxArgs {
    /// Image size in pixels (a multiple of 16; latent = size / 8, image tokens = (size / 16)^2)
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Double-stream blocks (FLUX.1-dev has 19)
    #[arg(long, default_value_t = 1)]
    pub double: usize,
    /// Single-stream blocks (FLUX.1-dev has 38)
    #[arg(long, default_value_t = 2)]
    pub single: usize,
    /// T5 tokens of the prompt (diffusers' default for dev: 512)
    #[arg(long, default_value_t = 512)]
    pub text_tokens: usize,
    /// Timed forwards of each kind (after one warm-up)
    #[arg(long, default_value_t = 1)]
    pub evals: usize,
    /// Compute precision (bf16 not on the CPU)
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    #[command(flatten)]
    pub weights: crate::args::WeightsArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub(crate) fn timed(evals: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    let mut times = Vec::new();
    for i in 0..=evals {
        let t = Instant::now();
        f()?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok((times.iter().sum::<f64>() / times.len() as f64, times.iter().cloned().fold(f64::INFINITY, f64::min)))
}

pub fn run(args: &BenchFluxArgs) -> Result<()> {
    anyhow::ensure!(args.size.is_multiple_of(16) && args.size > 0 && args.size <= 4096, "--size must be a positive multiple of 16, at most 4096");
    anyhow::ensure!((1..=crate::bench_unet::MAX_EVALS).contains(&args.evals), "--evals must be 1 to {}", crate::bench_unet::MAX_EVALS);
    let blocks = args.double.saturating_add(args.single);
    anyhow::ensure!((1..=57).contains(&blocks), "--double + --single must be 1 to 57 blocks");
    anyhow::ensure!((1..=4096).contains(&args.text_tokens), "--text-tokens must be 1 to 4096");
    let dev = args.device.device()?;
    let dtype = args.dtype.resolve(&dev)?;
    // every network loaded from here on (text encoders load on the first prompt) holds its weights so
    let _weights = args.weights.at_rest(&dev, dtype)?;
    let profile = SpanTimes::install()?;
    let config = FluxTransformerConfig { num_layers: args.double, num_single_layers: args.single, guidance_embeds: true, ..Default::default() };
    let t0 = Instant::now();
    let weights = crate::bench_unet::random_weights(|vb| FluxTransformer2DModel::new(config.clone(), vb).map(drop), dtype, &dev)?;
    let model = FluxTransformer2DModel::new(config.clone(), VarBuilder::from_tensors(weights, dtype, &dev))?;
    let init_s = t0.elapsed().as_secs_f64();
    // the random f32 weights are gone: peak_rss_gib is the loaded model's while it evaluates
    crate::bench_unet::reset_peak_rss();
    let l = args.size / 8;
    let x = Tensor::randn(0f32, 1f32, (1, 16, l, l), &dev)?.to_dtype(dtype)?;
    let cond = Conditioning::new()
        .with("encoder_hidden_states", Tensor::randn(0f32, 1f32, (1, args.text_tokens, config.joint_attention_dim), &dev)?.to_dtype(dtype)?)
        .with("pooled_projections", Tensor::randn(0f32, 1f32, (1, config.pooled_projection_dim), &dev)?.to_dtype(dtype)?)
        .with("guidance", Tensor::new(&[3.5f32], &dev)?);
    let mut warm = false;
    let (mean, min) = timed(args.evals, || {
        if warm {
            profile.reset();
        }
        warm = true;
        model.predict_full(&x, 500.0, &cond)?;
        dev.synchronize()?;
        Ok(())
    })?;
    let shares: Vec<String> = profile.snapshot().iter().map(|(p, s)| format!("\"{p}\": {:.3}", s / (mean * args.evals as f64))).collect();
    // a pruned step as SADA makes one: caches filled by a full step, then one random token per
    // 3 x 3 cell of the token grid (no token scored unstable)
    let grid = args.size / 16;
    let sel = TokenSelection::new(vec![false; grid * grid], grid, grid, 3, 3, 0, 1);
    let computed = sel.num_computed();
    let (pmean, pmin) = {
        let mut cache = TokenCache::default();
        let refresh = TokenPlan::Refresh;
        model.predict(&x, 500.0, &cond, &mut ForwardContext::new(0, &refresh, &mut cache, None))?;
        let plan = TokenPlan::Pruned(sel);
        timed(args.evals, || {
            model.predict(&x, 480.0, &cond, &mut ForwardContext::new(1, &plan, &mut cache, None))?;
            dev.synchronize()?;
            Ok(())
        })?
    };
    println!(
        "{{\"impl\": \"sada (candle)\", \"config\": \"flux.1-dev width, {} double + {} single blocks, {:?}, weights {}\", \"size\": {}, \"text_tokens\": {}, \"s_per_eval\": {mean:.3}, \"min\": {min:.3}, \"s_pruned_eval\": {pmean:.3}, \"pruned_min\": {pmin:.3}, \"image_tokens\": {}, \"tokens_computed\": {computed}, \"peak_rss_gib\": {:.2}, \"init_s\": {init_s:.1}}}",
        args.double,
        args.single,
        dtype,
        args.weights.label(),
        args.size,
        args.text_tokens,
        grid * grid,
        peak_rss_gib()
    );
    // span times measure the host's side; on a GPU they time kernel launches, not kernels
    if dev.is_cpu() {
        println!("{{\"impl\": \"sada (candle)\", \"size\": {}, \"share_of_forward_time\": {{{}}}}}", args.size, shares.join(", "));
    }
    Ok(())
}
