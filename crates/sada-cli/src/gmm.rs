//! `sada gmm`: an accelerator (SADA by default) on the exact Gaussian-mixture denoiser, against
//! the unaccelerated solver and the plain solver given as many evaluations.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use sada::denoiser::{Conditioning, Guided};
use sada::gmm::{class_weights, uniform_weights, GaussianMixture, GmmSchedule};
use sada::metrics::{data_range, psnr};
use sada::policy::acceleration::Family;
use sada::policy::{NoAcceleration, Policy};
use sada::sampling::{sample, Trace};
use sada::schedule::NoiseSchedule;
use sada::solvers::{build_solver, presets, FlowTimesteps, Solver, SolverKind};

use crate::args::{progress, AccelArgs, MemoryArgs, SolverArg};

#[derive(Debug, Args)]
pub struct GmmArgs {
    /// Solver; dpm++ and euler use SD-2.1's schedule (v-prediction), flow uses Flux's
    #[arg(long, value_enum, default_value = "dpm++")]
    pub solver: SolverArg,
    /// Number of solver steps
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 disables guidance)
    #[arg(long, default_value_t = 7.5)]
    pub guidance_scale: f64,
    /// Latent height and width
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Number of images (batch size)
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Mixture component the conditional branch favours
    #[arg(long, default_value_t = 0)]
    pub class: usize,
    /// Seed of the initial noise (and of SADA's token selection)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the accelerated run's per-step trace as JSON
    #[arg(long, value_name = "FILE.json")]
    pub trace: Option<PathBuf>,
    #[command(flatten)]
    pub accel: AccelArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

const CLASSES: usize = 4;
const VARIANTS: usize = 4;
const COMPONENTS: usize = CLASSES * VARIANTS;
/// Amplitude of the within-class detail (overridable for experiments).
const DETAIL: f32 = 0.15;

pub fn run(args: &GmmArgs) -> Result<()> {
    if let Some(trace) = &args.trace {
        crate::output::check_writable("--trace", trace)?;
    }
    anyhow::ensure!(args.size >= 1 && args.batch >= 1, "--size and --batch must be at least 1");
    // per latent element: the f32 latents, the f64 posterior mean and its inputs, the guided
    // batch twice over, the solver's history and the three runs' results
    let elements = (args.batch as u128) * 4 * (args.size as u128) * (args.size as u128);
    args.memory.check("--batch/--size", &format!("{}/{}", args.batch, args.size), elements.saturating_mul(160))?;
    let (kind, preset, label) = match args.solver {
        SolverArg::DpmPp => (SolverKind::DpmSolverMultistep, presets::SD21, "SD-2.1 schedule, v-prediction, DPM-Solver++"),
        SolverArg::Euler => (SolverKind::EulerDiscrete, presets::SD21, "SD-2.1 schedule, v-prediction, Euler"),
        SolverArg::Flow => (SolverKind::FlowMatchEulerDiscrete, presets::FLUX, "Flux schedule, flow matching, Euler"),
    };
    let config = presets::parse(preset);
    let shape = [4usize, args.size, args.size];
    // Flux packs 2x2 latent patches into one token; the shift follows the token count.
    let flow = |steps: usize| -> Result<FlowTimesteps> {
        Ok(match args.solver {
            SolverArg::Flow => {
                let cfg: sada::solvers::FlowMatchEulerDiscreteConfig =
                    sada::solvers::config::from_config(&config, &Default::default())?;
                FlowTimesteps {
                    sigmas: Some(sada::schedule::flow::flux_default_sigmas(steps)),
                    mu: Some(cfg.mu((args.size / 2).max(1) * (args.size / 2).max(1))),
                }
            }
            _ => FlowTimesteps::default(),
        })
    };
    let build = |steps: usize| -> Result<Box<dyn Solver>> {
        Ok(build_solver(kind, &config, &Default::default(), steps, &flow(steps)?)?)
    };
    let mut solver = build(args.steps)?;

    let (schedule, prediction_type) = match args.solver {
        SolverArg::Flow => (GmmSchedule::Flow { num_train_timesteps: 1000 }, solver.prediction_type()),
        _ => {
            let train: sada::schedule::TrainingSchedule = sada::solvers::config::from_config(&config, &Default::default())?;
            (GmmSchedule::Discrete(NoiseSchedule::new(&train)?), solver.prediction_type())
        }
    };
    let model = GaussianMixture::image_like(&shape, CLASSES, VARIANTS, DETAIL, 1234, schedule, prediction_type);
    let cond = Conditioning::new().with("class_weights", class_weights(COMPONENTS, args.class, 0.3, args.batch)?);
    let uncond = Conditioning::new().with("class_weights", uniform_weights(COMPONENTS, args.batch)?);
    let noise = seeded_noise(&[args.batch, shape[0], shape[1], shape[2]], args.seed)?
        .affine(solver.init_noise_sigma(), 0.0)?;

    let family = match args.solver {
        SolverArg::Flow => Family::Flux,
        _ => Family::StableDiffusion,
    };
    let accel = args.accel.acceleration(family, args.seed)?;
    accel.validate(accel.steps(args.steps))?;
    let guided = Guided::new(&model, cond, Some(uncond), args.guidance_scale)?;
    let run = |solver: &mut dyn Solver, policy: &mut dyn Policy, name: &str| -> Result<(Tensor, Trace, f64)> {
        let bar = progress(solver.num_steps(), name);
        let start = Instant::now();
        let (x, trace) = sample(&guided, solver, policy, noise.clone(), &mut |i, _| bar.set_position(i as u64))?;
        bar.finish_and_clear();
        Ok((x, trace, start.elapsed().as_secs_f64()))
    };

    let (base, base_trace, base_s) = run(solver.as_mut(), &mut NoAcceleration, "baseline")?;
    let mut fast_solver = build(accel.steps(args.steps))?;
    let (fast, trace, fast_s) = run(fast_solver.as_mut(), accel.policy().as_mut(), accel.name())?;
    // The plain solver given the same number of evaluations SADA used.
    let mut short = build(trace.evaluations)?;
    let (plain, _, plain_s) = run(short.as_mut(), &mut NoAcceleration, "plain")?;

    let range = data_range(&base)?;
    println!(
        "Gaussian-mixture denoiser ({COMPONENTS} components), {label}, {} steps, CFG {}, latents {}x4x{}x{}",
        args.steps, args.guidance_scale, args.batch, args.size, args.size
    );
    println!("baseline        : {:>3} evaluations  {:>8.3} s", base_trace.evaluations, base_s);
    println!(
        "{:<16}: {:>3} evaluations  {:>8.3} s   {:.2}x fewer evaluations   PSNR {:.2} dB   [{}]",
        if accel.name() == "sada" { "SADA" } else { accel.name() },
        trace.evaluations,
        fast_s,
        base_trace.evaluations as f64 / trace.evaluations as f64,
        psnr(&fast, &base, range)?,
        trace.summary()
    );
    println!(
        "plain {:>3} steps: {:>3} evaluations  {:>8.3} s   {:.2}x fewer evaluations   PSNR {:.2} dB",
        trace.evaluations,
        trace.evaluations,
        plain_s,
        base_trace.evaluations as f64 / trace.evaluations as f64,
        psnr(&plain, &base, range)?
    );
    println!("(PSNR on the final latents against the baseline, data range {range:.3})");
    if let Some(path) = &args.trace {
        crate::output::write_atomic(path, serde_json::to_string_pretty(&trace)?.as_bytes())
            .with_context(|| format!("writing trace {}", path.display()))?;
        println!("trace written to {}", path.display());
    }
    Ok(())
}

/// Standard-normal noise from a seed (Box-Muller on a ChaCha stream), identical on every machine.
pub fn seeded_noise(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Ok(Tensor::from_vec(sada::noise::normal_samples(n, seed), shape, &Device::Cpu)?)
}
