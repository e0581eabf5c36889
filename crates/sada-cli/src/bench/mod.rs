//! `sada bench`: prompts x seeds, each sampled from the same initial noise by the unaccelerated
//! baseline and by every method asked for (SADA and its rivals, optionally with their
//! speed-vs-fidelity sweeps); each method is also set against the plain solver given the same
//! cost (the equal-budget view). Reports evaluations, wall time, speedup and PSNR / SSIM (and
//! LPIPS with `--lpips-weights`) against the baseline image, as Markdown and JSON, with an
//! image grid, SADA's criterion plot and a speed-vs-fidelity plot.
//!
//! Every finished prompt x seed is written to `runs/` as it completes, so an interrupted bench
//! resumes, and `--shard I/N` runs every N-th of them so several machines can share the work;
//! `sada bench merge DIRS... --out DIR` makes one report from their folders.

mod plot;
mod report;
mod shard;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use sada::compare::{equal_budget_steps, Fidelity, Run};
use sada::data::shapes::Scene;
use sada::image::{png_bytes, RgbImage};
use sada::metrics::lpips::Lpips;
use sada::pipelines::{validate_prompt, GenerateOptions, Pipeline, PipelineInputs, PromptOptions};
use sada::policy::Acceleration;
use sada::sampling::Trace;
use sada::Family;
use serde::{Deserialize, Serialize};

use crate::args::{load_model, solver_for, DeviceArgs, DtypeArg, MemoryArgs, ModelArgs, SadaArgs, SolverArg};
use crate::control::{control_inputs, ControlArgs};
use crate::output::write_atomic;
pub use plot::lines_svg;
pub use shard::Shard;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub action: Option<BenchAction>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchAction {
    /// Merge the runs of bench folders made with the same settings (e.g. one per --shard)
    /// into one report
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Bench output folders to merge
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Folder for the merged report (created; images are copied into it)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file with one prompt per line [default: 8 captions the embedded model never saw in
    /// training]
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Seeds 0..N for every prompt
    #[arg(long, default_value_t = 2)]
    pub seeds: u64,
    /// Solver steps of the baseline (and of every method but fewer-steps)
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale [default: the model's, as `sada generate`]
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    /// Solver, built from the model's scheduler config [default: dpm++, euler for SDXL, flow
    /// for Flux, as SADA's published runs]
    #[arg(long, value_enum)]
    pub solver: Option<SolverArg>,
    /// Methods to compare with the baseline, by name, comma-separated (each with its preset
    /// settings): sada, deepcache, adaptive, fbcache, taylorseer, fewer-steps
    #[arg(long, value_name = "NAMES", default_value = "sada", value_delimiter = ',')]
    pub methods: Vec<String>,
    /// A further method with settings, NAME:key=value,... (repeatable), e.g.
    /// --method deepcache:interval=5
    #[arg(long = "method", value_name = "SPEC")]
    pub extra_methods: Vec<String>,
    #[command(flatten)]
    pub control: ControlArgs,
    /// With the embedded model (or any whose prompts are captions of the shapes set): steer
    /// every run with the model's ControlNet, each caption's control image being its shape's
    /// outline
    #[arg(long)]
    pub control_outlines: bool,
    /// Also run each named method's sweep of settings, from mild to aggressive, for the
    /// speed-vs-fidelity plot
    #[arg(long)]
    pub sweep: bool,
    /// LPIPS weights (safetensors or .pth; the lpips package's state dict, e.g. from
    /// tools/export_lpips.py, or torchvision's backbone plus the package's linear layers;
    /// repeatable): report LPIPS against the baseline too
    #[arg(long, value_name = "FILE")]
    pub lpips_weights: Vec<PathBuf>,
    /// Run only the I-th of every N prompt x seed pairs (0-based), e.g. 2/8; `auto` takes I from
    /// SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) or JOB_COMPLETION_INDEX and N from
    /// SLURM_ARRAY_TASK_COUNT (read by default inside a Slurm array job)
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Output folder (created); rerunning with the same settings skips the finished runs
    #[arg(long, value_name = "DIR", default_value = "sada-bench")]
    pub out: PathBuf,
    #[command(flatten)]
    pub sada: SadaArgs,
    /// Compute precision of the networks (bf16 not on the CPU)
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    #[command(flatten)]
    pub weights: crate::args::WeightsArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

/// One method's result for one prompt and seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodRun {
    /// Short name: the method and the settings that differ from its preset.
    pub label: String,
    /// The settings in full, as `--method` reads them.
    pub spec: String,
    pub steps: usize,
    pub evaluations: usize,
    /// Cost in full network evaluations (partial and pruned calls by their time).
    pub equivalent_evaluations: f64,
    pub seconds: f64,
    /// Against the baseline image (none for the baseline itself; "inf" when identical).
    #[serde(with = "db", default)]
    pub psnr_db: Option<f64>,
    pub ssim: Option<f64>,
    pub lpips: Option<f64>,
    /// What each step did, e.g. `full 25, skip-am 8`.
    pub decisions: String,
    pub image: String,
    /// The plain solver at this run's cost: its steps (None when that is the baseline itself).
    pub equal_budget_steps: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub index: usize,
    pub prompt: String,
    pub seed: u64,
    pub baseline: MethodRun,
    /// In the order of the settings' `methods`.
    pub methods: Vec<MethodRun>,
    /// The plain solver at the step counts the equal-budget view needed, by steps.
    pub plain: BTreeMap<usize, MethodRun>,
    /// SADA's trace (the criterion plot), for the first SADA method.
    pub sada_trace: Option<Trace>,
}

/// What a bench folder was made with; a folder only ever holds runs of one settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub model: String,
    pub prompts: Vec<String>,
    pub seeds: u64,
    pub steps: usize,
    pub guidance_scale: f64,
    pub solver: sada::solvers::SolverKind,
    pub family: Family,
    /// Full specs, in report order; `columns` of them go into the image grid.
    pub methods: Vec<String>,
    pub columns: usize,
    /// The LPIPS backbone, when LPIPS is reported.
    pub lpips: Option<String>,
    /// The ControlNets steering every run, and where their control images come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<serde_json::Value>,
}

/// A prompt file larger than this is refused before it is read.
const MAX_PROMPT_FILE: u64 = 16 << 20;
/// Prompt x seed pairs one bench may hold.
const MAX_RUNS: u64 = 1_000_000;

/// Held-out captions spread over the split (every background appears).
pub fn builtin_prompts() -> Vec<String> {
    let held: Vec<Scene> = Scene::all().into_iter().filter(|s| s.is_held_out()).collect();
    (0..8).map(|i| held[i * held.len() / 8 + 3].caption()).collect()
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.action {
        Some(BenchAction::Merge(m)) => shard::merge(&m.dirs, &m.out),
        None => run_bench(&args.run),
    }
}

/// The methods to run, with their settings for `family`: the named ones, the `--method` specs,
/// and with `--sweep` each named method's sweep. Returns them and how many lead the list
/// (the grid's columns).
fn methods(args: &RunArgs, family: Family) -> Result<(Vec<Acceleration>, usize)> {
    let mut list = Vec::new();
    let push = |a: Acceleration, list: &mut Vec<Acceleration>| {
        if !list.contains(&a) {
            list.push(a);
        }
    };
    for name in args.methods.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let mut a = Acceleration::parse(name, family)?;
        if let Acceleration::Sada(cfg) = &mut a {
            *cfg = args.sada.apply(cfg.clone());
        }
        anyhow::ensure!(!a.is_baseline(), "--methods: the baseline always runs; leave `none` out");
        push(a, &mut list);
    }
    for spec in &args.extra_methods {
        let a = Acceleration::parse(spec, family)?;
        anyhow::ensure!(!a.is_baseline(), "--method: the baseline always runs; leave `none` out");
        push(a, &mut list);
    }
    if args.sada.any() && !list.iter().any(|a| matches!(a, Acceleration::Sada(_))) {
        bail!("the SADA flags (--acc-range, ...) need sada among --methods");
    }
    anyhow::ensure!(!list.is_empty(), "--methods: name at least one method");
    let columns = list.len();
    if args.sweep {
        for name in args.methods.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            // a sweep's settings that would run more steps than the baseline are left out
            for a in Acceleration::sweep(name, family)?.into_iter().filter(|a| a.steps(args.steps) <= args.steps) {
                push(a, &mut list);
            }
        }
    }
    for a in &list {
        a.check(args.steps).with_context(|| format!("method `{}`", a.label(family)))?;
    }
    Ok((list, columns))
}

fn run_bench(args: &RunArgs) -> Result<()> {
    anyhow::ensure!(args.seeds > 0, "--seeds must be at least 1");
    let shard = Shard::from_args(args.shard.as_deref())?;
    shard::check_out(&args.out)?;
    let device = args.device.device()?;
    args.control.check(args.control_outlines)?;
    let dtype = args.dtype.resolve(&device)?;
    // every network loaded from here on (text encoders load on the first prompt) holds its weights so
    let _weights = args.weights.at_rest(&device, dtype)?;
    let (mut pipe, model_name) = load_model(&args.model, dtype, &device)?;
    let default_guidance = pipe.default_guidance();
    let attached = if args.control.any() || args.control_outlines {
        let hub_opts = sada::models::hub::HubOptions { revision: None, offline: args.model.offline };
        args.control.attach(pipe.as_mut(), &hub_opts, dtype, &device, args.control_outlines)?
    } else {
        Vec::new()
    };
    let control = (!attached.is_empty())
        .then(|| serde_json::json!({ "controlnets": attached, "control_outlines": args.control_outlines, "guess_mode": args.control.guess_mode }));
    let family = pipe.family();
    let kind = solver_for(args.solver, family)?;
    anyhow::ensure!(pipe.can_decode(), "{model_name}: no vae/ folder, so images cannot be compared");
    anyhow::ensure!(pipe.has_text_encoder(), "{model_name}: no text encoder, so prompts cannot be benchmarked");
    let prompts = match &args.prompts {
        Some(path) => {
            let text = sada::files::read_text(path, MAX_PROMPT_FILE).context("--prompts")?;
            let p: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
            anyhow::ensure!(!p.is_empty(), "{}: no prompts (one per line expected)", path.display());
            for (i, prompt) in p.iter().enumerate() {
                validate_prompt(&format!("--prompts line {}", i + 1), prompt, false)?;
            }
            p
        }
        None => builtin_prompts(),
    };
    // the outline of the scene each caption describes
    let outlines: Vec<RgbImage> = if args.control_outlines {
        let scenes = Scene::all();
        let side = pipe.default_size().1;
        prompts
            .iter()
            .map(|p| {
                scenes
                    .iter()
                    .find(|s| s.caption() == *p)
                    .map(|s| s.outline(side))
                    .with_context(|| format!("--control-outlines: `{p}` is not a caption of the shapes set"))
            })
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let runs = prompts.len() as u128 * args.seeds as u128;
    anyhow::ensure!(runs <= MAX_RUNS as u128, "--seeds {} x {} prompts is {runs} runs; a bench holds at most {MAX_RUNS}", args.seeds, prompts.len());
    let (methods, columns) = methods(args, family)?;
    let lpips = if args.lpips_weights.is_empty() { None } else { Some(Lpips::load(&args.lpips_weights, &device)?) };
    let settings = Settings {
        model: model_name,
        prompts: prompts.clone(),
        seeds: args.seeds,
        steps: args.steps,
        guidance_scale: args.guidance_scale.unwrap_or(default_guidance),
        solver: kind,
        family,
        methods: methods.iter().map(Acceleration::spec).collect(),
        columns,
        lpips: lpips.as_ref().map(|l| format!("{:?}", l.net).to_lowercase()),
        control,
    };
    let probe = GenerateOptions {
        steps: args.steps,
        guidance_scale: settings.guidance_scale,
        height: pipe.default_size().0,
        width: pipe.default_size().1,
        seed: 0,
        solver: kind,
        acceleration: Acceleration::default(),
        size_conditioning: Default::default(),
    };
    pipe.validate(&probe)?;
    for a in &methods {
        pipe.validate(&GenerateOptions { acceleration: a.clone(), ..probe.clone() })?;
    }
    args.memory.check("--model", &settings.model, pipe.estimate_memory(&probe, 1))?;
    let _lock = shard::prepare(&args.out, &settings)?;

    let cases: Vec<(usize, usize, u64)> = (0..prompts.len())
        .flat_map(|p| (0..args.seeds).map(move |s| (p, s)))
        .enumerate()
        .map(|(i, (p, s))| (i, p, s))
        .filter(|(i, _, _)| shard.takes(*i))
        .collect();
    let bar = indicatif::ProgressBar::new(cases.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} runs {elapsed_precise} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix("bench");
    let mut bench = Bench { pipe: &mut pipe, settings: &settings, methods: &methods, lpips: lpips.as_ref(), out: &args.out, bar: &bar, warmed_up: false };
    let mut encoded: Option<(usize, PipelineInputs)> = None;
    for &(index, pi, seed) in &cases {
        let prompt = &prompts[pi];
        let record_path = args.out.join("runs").join(format!("{index:04}.json"));
        if let Ok(r) = shard::read_record(&record_path) {
            if r.prompt == *prompt && r.seed == seed {
                bar.inc(1);
                continue;
            }
        }
        if encoded.as_ref().map(|(p, _)| *p) != Some(pi) {
            let mut inputs = bench.pipe.encode_prompts(std::slice::from_ref(prompt), &PromptOptions::default())?;
            let images = outlines.get(pi).map(|outline| vec![outline.clone(); attached.len()]);
            inputs.control = control_inputs(&attached, images.as_deref())?;
            inputs.guess_mode = args.control.guess_mode;
            encoded = Some((pi, inputs));
        }
        let inputs = &encoded.as_ref().expect("encoded above").1;
        let record = bench.case(index, prompt, seed, inputs)?;
        write_atomic(&record_path, serde_json::to_string_pretty(&record)?.as_bytes())?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let records = shard::records(&args.out, &settings)?;
    let md = report::write(&args.out, &settings, &records)?;
    print!("{md}");
    if shard.count > 1 {
        println!("\nshard {}/{}: {} of its {} runs done; `sada bench merge` combines the shards' folders", shard.index, shard.count, cases.len(), cases.len());
    }
    println!(
        "\nwritten to {}: bench.md, bench.json, grid.png, tradeoff.svg{}",
        args.out.display(),
        if records.iter().any(|r| r.sada_trace.is_some()) { ", criterion.svg" } else { "" }
    );
    Ok(())
}

/// One prompt x seed: its index in the bench, and the encoded prompt its methods share.
struct Case<'a> {
    index: usize,
    prompt: &'a str,
    seed: u64,
    inputs: &'a PipelineInputs,
}

/// What one prompt x seed needs to run every method.
struct Bench<'a> {
    pipe: &'a mut Box<dyn Pipeline>,
    settings: &'a Settings,
    methods: &'a [Acceleration],
    lpips: Option<&'a Lpips>,
    out: &'a Path,
    bar: &'a indicatif::ProgressBar,
    warmed_up: bool,
}

impl Bench<'_> {
    fn sample(&mut self, inputs: &PipelineInputs, opts: &GenerateOptions, label: &str, prompt: &str) -> Result<(RgbImage, Run)> {
        let short = truncate(prompt, 40);
        self.bar.set_message(format!("{label}: {short}"));
        let bar = self.bar;
        let run = Run::sample(self.pipe.as_mut(), inputs, opts, &mut |i, n| bar.set_message(format!("{label} step {i}/{n}: {short}")))?;
        let image = run.image(self.pipe.as_ref())?;
        Ok((image, run))
    }

    /// Sample `accel` for `case` and score it against `base` (None: this is the baseline).
    fn method(&mut self, case: &Case, accel: &Acceleration, base: Option<&RgbImage>, file: &str) -> Result<(MethodRun, RgbImage, Trace)> {
        let &Case { index, prompt, seed, inputs } = case;
        let s = self.settings;
        let opts = GenerateOptions {
            steps: s.steps,
            guidance_scale: s.guidance_scale,
            height: self.pipe.default_size().0,
            width: self.pipe.default_size().1,
            seed,
            solver: s.solver,
            acceleration: accel.clone(),
            size_conditioning: Default::default(),
        };
        let label = if accel.is_baseline() { "baseline".to_owned() } else { accel.label(s.family) };
        let (img, Run { trace, seconds, .. }) = self.sample(inputs, &opts, &label, prompt)?;
        let image = format!("images/{index:04}-{file}.png");
        let meta = serde_json::json!({"prompt": prompt, "seed": seed, "method": accel.spec(), "steps": opts.acceleration.steps(s.steps)});
        write_atomic(&self.out.join(&image), &png_bytes(&img, &[("parameters", meta.to_string())])?)?;
        let fidelity = base.map(|b| Fidelity::of(&img, b, self.lpips)).transpose()?;
        let run = MethodRun {
            label,
            spec: accel.spec(),
            steps: accel.steps(s.steps),
            evaluations: trace.evaluations,
            equivalent_evaluations: trace.equivalent_evaluations(),
            seconds,
            psnr_db: fidelity.map(|f| f.psnr_db),
            ssim: fidelity.map(|f| f.ssim),
            lpips: fidelity.and_then(|f| f.lpips),
            decisions: trace.summary(),
            image,
            equal_budget_steps: None,
        };
        Ok((run, img, trace))
    }

    fn case(&mut self, index: usize, prompt: &str, seed: u64, inputs: &PipelineInputs) -> Result<RunRecord> {
        let s = self.settings;
        let case = Case { index, prompt, seed, inputs };
        if !self.warmed_up {
            // First calls allocate; keep that out of the baseline's time.
            let opts = GenerateOptions {
                steps: 2,
                guidance_scale: s.guidance_scale,
                height: self.pipe.default_size().0,
                width: self.pipe.default_size().1,
                seed,
                solver: s.solver,
                acceleration: Acceleration::default(),
                size_conditioning: Default::default(),
            };
            self.pipe.generate(inputs, &opts, &mut |_, _| {})?;
            self.warmed_up = true;
        }
        let (baseline, base_img, _) = self.method(&case, &Acceleration::default(), None, "baseline")?;
        let mut methods = Vec::new();
        let mut sada_trace = None;
        let mut plain: BTreeMap<usize, MethodRun> = BTreeMap::new();
        for (m, accel) in self.methods.iter().enumerate() {
            let (mut run, _, trace) = self.method(&case, accel, Some(&base_img), &format!("m{m:02}"))?;
            let budget = if matches!(accel, Acceleration::FewerSteps(_)) { None } else { equal_budget_steps(&trace, s.steps) };
            if matches!(accel, Acceleration::Sada(_)) && sada_trace.is_none() {
                sada_trace = Some(trace);
            }
            // the plain solver at the same cost (fewer-steps is that already)
            if let Some(k) = budget {
                if let std::collections::btree_map::Entry::Vacant(e) = plain.entry(k) {
                    let fewer = Acceleration::parse(&format!("fewer-steps:steps={k}"), s.family)?;
                    let (p, _, _) = self.method(&case, &fewer, Some(&base_img), &format!("plain{k:03}"))?;
                    e.insert(p);
                }
                run.equal_budget_steps = Some(k);
            }
            methods.push(run);
        }
        Ok(RunRecord { index, prompt: prompt.to_owned(), seed, baseline, methods, plain, sada_trace })
    }
}

/// PSNR of identical images is infinite, which JSON cannot hold: it is written as "inf".
pub(crate) mod db {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) if x.is_infinite() && *x > 0.0 => s.serialize_str("inf"),
            Some(x) => s.serialize_some(x),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Db {
            Number(f64),
            Text(String),
        }
        match Option::<Db>::deserialize(d)? {
            None => Ok(None),
            Some(Db::Number(x)) => Ok(Some(x)),
            Some(Db::Text(t)) if t == "inf" => Ok(Some(f64::INFINITY)),
            Some(Db::Text(t)) => Err(serde::de::Error::custom(format!("`{t}` is not a PSNR"))),
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
