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
use sada::policy::sada_plus::SadaPlusConfig;
use sada::policy::Method;
use sada::policy::{Acceleration, NoAcceleration, Policy};
use sada::sampling::{sample, Trace};
use sada::schedule::NoiseSchedule;
use sada::solvers::{build_solver, presets, FlowTimesteps, Solver, SolverKind};
use sada::Family;

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
    /// Study instead of one run: for each budget (network evaluations, comma-separated), the
    /// plain solver with that many steps and `sada+` held to it on the --steps schedule, plus
    /// reference SADA once, each against the --steps baseline and against the exact ODE
    /// solution (the same solver at 500 steps), averaged over --runs seeds
    #[arg(long, value_name = "EVALS,...", value_delimiter = ',', num_args = 1..)]
    pub study: Option<Vec<usize>>,
    /// Seeds per study point (seed, seed+1, ...)
    #[arg(long, default_value_t = 8, requires = "study")]
    pub runs: u64,
    /// Write the study's PSNR-against-evaluations plot here (SVG)
    #[arg(long, value_name = "FILE.svg", requires = "study")]
    pub plot: Option<PathBuf>,
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
    if let Some(plot) = &args.plot {
        crate::output::check_writable("--plot", plot)?;
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
                let cfg: sada::solvers::FlowMatchEulerDiscreteConfig = sada::solvers::config::from_config(&config, &Default::default())?;
                FlowTimesteps {
                    sigmas: Some(sada::schedule::flow::flux_default_sigmas(steps)),
                    mu: Some(cfg.mu((args.size / 2).max(1) * (args.size / 2).max(1))),
                }
            }
            _ => FlowTimesteps::default(),
        })
    };
    let build = |steps: usize| -> Result<Box<dyn Solver>> { Ok(build_solver(kind, &config, &Default::default(), steps, &flow(steps)?)?) };
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
    let noise = seeded_noise(&[args.batch, shape[0], shape[1], shape[2]], args.seed)?.affine(solver.init_noise_sigma(), 0.0)?;

    let family = match args.solver {
        SolverArg::Flow => Family::Flux,
        _ => Family::StableDiffusion,
    };
    let guided = Guided::new(&model, cond, Some(uncond), args.guidance_scale)?;
    if let Some(budgets) = &args.study {
        let init_sigma = solver.init_noise_sigma();
        let noise = |seed: u64| -> Result<Tensor> { Ok(seeded_noise(&[args.batch, shape[0], shape[1], shape[2]], seed)?.affine(init_sigma, 0.0)?) };
        return study(args, budgets, label, &guided, &build, &noise, family);
    }
    let accel = args.accel.acceleration(family)?;
    accel.check(args.steps)?;
    let run = |solver: &mut dyn Solver, policy: &mut dyn Policy, name: &str| -> Result<(Tensor, Trace, f64)> {
        let bar = progress(solver.num_steps(), name);
        let start = Instant::now();
        let (x, trace) = sample(&guided, solver, policy, noise.clone(), &mut |i, _| bar.set_position(i as u64))?;
        bar.finish_and_clear();
        Ok((x, trace, start.elapsed().as_secs_f64()))
    };

    let (base, base_trace, base_s) = run(solver.as_mut(), &mut NoAcceleration, "baseline")?;
    let mut fast_solver = build(accel.steps(args.steps))?;
    let (fast, trace, fast_s) = run(fast_solver.as_mut(), accel.policy(args.seed).as_mut(), accel.name())?;
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
        crate::output::write_atomic(path, serde_json::to_string_pretty(&trace)?.as_bytes()).with_context(|| format!("writing trace {}", path.display()))?;
        println!("trace written to {}", path.display());
    }
    Ok(())
}

/// One study point: a method at a budget, over the seeds (sums while they run, then means).
struct Point {
    method: &'static str,
    accel: Acceleration,
    evals: f64,
    psnr_baseline: f64,
    psnr_exact: f64,
    min_baseline: f64,
    min_exact: f64,
}

impl Point {
    fn new(method: &'static str, accel: Acceleration) -> Self {
        Self { method, accel, evals: 0.0, psnr_baseline: 0.0, psnr_exact: 0.0, min_baseline: f64::INFINITY, min_exact: f64::INFINITY }
    }
}

/// The steps of the "exact" solution (at 1000, DPM-Solver++'s grid repeats a timestep and
/// its step ratio divides by zero, in diffusers too). The study prints how far half as many
/// steps land from it, which bounds its own error.
const EXACT_STEPS: usize = 500;

fn study(
    args: &GmmArgs,
    budgets: &[usize],
    label: &str,
    guided: &Guided,
    build: &dyn Fn(usize) -> Result<Box<dyn Solver>>,
    noise: &dyn Fn(u64) -> Result<Tensor>,
    family: Family,
) -> Result<()> {
    anyhow::ensure!((1..=10_000).contains(&args.runs), "--runs must be 1 to 10000");
    let seeds_end = args.seed.checked_add(args.runs).with_context(|| format!("--seed {} + --runs {} overflows the seed range", args.seed, args.runs))?;
    let a = &args.accel;
    anyhow::ensure!(
        a.accel == "sada" && !a.sada.any() && a.max_evals.is_none() && a.tolerance.is_none() && args.trace.is_none(),
        "--study runs its own methods (plain, sada, sada+) with their presets; leave out --accel, the method flags and --trace"
    );
    for &b in budgets {
        anyhow::ensure!((1..args.steps).contains(&b), "--study: budget {b} must lie between 1 and --steps - 1 = {}", args.steps - 1);
    }
    let sada_plus = |b: usize| -> Acceleration {
        // the budget sets the evaluations; skips in a row are allowed as far as it needs
        let mut cfg = SadaPlusConfig { max_evals: b, ..<SadaPlusConfig as Method>::preset(family) };
        while cfg.min_evals(args.steps) > b && cfg.max_interval < args.steps {
            cfg.max_interval += 1;
        }
        Acceleration::SadaPlus(cfg)
    };
    let mut points: Vec<Point> = Vec::new();
    for &b in budgets {
        points.push(Point::new("plain", Acceleration::parse(&format!("fewer-steps:steps={b}"), family)?));
        let plus = sada_plus(b);
        if plus.validate(args.steps).is_ok() {
            points.push(Point::new("sada+", plus));
        }
    }
    // reference SADA's published ranges are for 50 steps
    let sada = Acceleration::preset("sada", family)?;
    let sada_fits = sada.validate(args.steps).is_ok();
    if sada_fits {
        points.push(Point::new("sada", sada));
    }
    let bar = progress(points.len().saturating_mul(usize::try_from(args.runs).unwrap_or(usize::MAX)), "study");
    let (mut convergence, mut baseline_to_exact) = (0.0, 0.0);
    for seed in args.seed..seeds_end {
        let x_t = noise(seed)?;
        let exact = sample(guided, build(EXACT_STEPS)?.as_mut(), &mut NoAcceleration, x_t.clone(), &mut |_, _| {})?.0;
        let half = sample(guided, build(EXACT_STEPS / 2)?.as_mut(), &mut NoAcceleration, x_t.clone(), &mut |_, _| {})?.0;
        convergence += psnr(&half, &exact, data_range(&exact)?)?;
        let base = sample(guided, build(args.steps)?.as_mut(), &mut NoAcceleration, x_t.clone(), &mut |_, _| {})?.0;
        let range = data_range(&base)?;
        baseline_to_exact += psnr(&base, &exact, range)?;
        for p in points.iter_mut() {
            let mut solver = build(p.accel.steps(args.steps))?;
            let (x, trace) = sample(guided, solver.as_mut(), p.accel.policy(seed).as_mut(), x_t.clone(), &mut |_, _| {})?;
            let (to_base, to_exact) = (psnr(&x, &base, range)?, psnr(&x, &exact, range)?);
            p.evals += trace.evaluations as f64;
            p.psnr_baseline += to_base;
            p.psnr_exact += to_exact;
            p.min_baseline = p.min_baseline.min(to_base);
            p.min_exact = p.min_exact.min(to_exact);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let runs = args.runs as f64;
    for p in points.iter_mut() {
        p.evals /= runs;
        p.psnr_baseline /= runs;
        p.psnr_exact /= runs;
    }
    println!(
        "Gaussian-mixture study ({COMPONENTS} components), {label}, {} steps, CFG {}, latents {}x4x{}x{}, {} seeds from {}",
        args.steps, args.guidance_scale, args.batch, args.size, args.size, args.runs, args.seed
    );
    println!(
        "PSNR on the final latents (mean over seeds; data range of each seed's baseline); exact = {EXACT_STEPS} steps of the same solver ({} steps land {:.1} dB from it)\n",
        EXACT_STEPS / 2,
        convergence / runs
    );
    println!("| method | evaluations | PSNR vs {}-step baseline dB, mean (min) | PSNR vs exact dB, mean (min) |", args.steps);
    println!("|---|---|---|---|");
    println!("| baseline | {} | - | {:.2} |", args.steps, baseline_to_exact / runs);
    for p in &points {
        println!("| {} | {:.1} | {:.2} ({:.2}) | {:.2} ({:.2}) |", p.method, p.evals, p.psnr_baseline, p.min_baseline, p.psnr_exact, p.min_exact);
    }
    let skipped: Vec<usize> = budgets.iter().copied().filter(|&b| !points.iter().any(|p| p.method == "sada+" && p.evals.round() as usize == b)).collect();
    if !sada_fits {
        println!("\nreference SADA left out: its published settings do not fit {} steps", args.steps);
    }
    if !skipped.is_empty() {
        println!("\nsada+ cannot keep to budgets {skipped:?} on {} steps (below its warm-up and tail)", args.steps);
    }
    if let Some(path) = &args.plot {
        let series: Vec<(String, Vec<(f64, f64)>)> = ["plain", "sada+", "sada"]
            .iter()
            .map(|&m| (m.to_owned(), points.iter().filter(|p| p.method == m).map(|p| (p.evals, p.psnr_baseline)).collect()))
            .collect();
        let title = format!("GMM, {label}: PSNR vs the {}-step baseline", args.steps);
        crate::output::write_atomic(path, crate::bench::lines_svg(&title, "network evaluations", "PSNR dB", &series).as_bytes())
            .with_context(|| format!("writing plot {}", path.display()))?;
        println!("\nplot written to {}", path.display());
    }
    Ok(())
}

/// Standard-normal noise from a seed (Box-Muller on a ChaCha stream), identical on every machine.
pub fn seeded_noise(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Ok(Tensor::from_vec(sada::noise::normal_samples(n, seed), shape, &Device::Cpu)?)
}
