//! Flags shared by the subcommands that sample.

use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use sada::pipelines::{default_model, StableDiffusion};
use sada::policy::SadaConfig;
use sada::solvers::SolverKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SolverArg {
    /// DPM-Solver++ (diffusers' DPMSolverMultistepScheduler, 2nd order by default)
    #[value(name = "dpm++")]
    DpmPp,
    /// Euler in the EDM parameterisation (diffusers' EulerDiscreteScheduler)
    Euler,
    /// Flow-matching Euler (diffusers' FlowMatchEulerDiscreteScheduler, Flux-style)
    Flow,
}

impl SolverArg {
    /// The solver for a Stable Diffusion (noise-prediction) model and its name in settings.
    pub fn for_stable_diffusion(self) -> anyhow::Result<(SolverKind, &'static str)> {
        match self {
            SolverArg::DpmPp => Ok((SolverKind::DpmSolverMultistep, "dpm++")),
            SolverArg::Euler => Ok((SolverKind::EulerDiscrete, "euler")),
            SolverArg::Flow => anyhow::bail!("--solver flow needs a flow-matching model; Stable Diffusion folders take dpm++ or euler"),
        }
    }
}

/// A model folder, or the embedded default model when none is given: the pipeline, the name
/// to report, and the guidance scale to use when none is given.
pub fn load_model(model: Option<&Path>, dtype: DType) -> anyhow::Result<(StableDiffusion, String, f64)> {
    let device = Device::Cpu;
    Ok(match model {
        Some(dir) => {
            let pipe = StableDiffusion::load(dir, dtype, &device)?;
            let guidance = pipe.default_guidance();
            (pipe, dir.display().to_string(), guidance)
        }
        None => (
            StableDiffusion::load_from(default_model::source(), dtype, &device).context("loading the embedded default model")?,
            default_model::NAME.to_string(),
            default_model::GUIDANCE_SCALE,
        ),
    })
}

/// SADA's parameters, named after the paper's code. Unset flags take the published settings for
/// the model family: SD-2 for dpm++/euler, Flux for flow.
#[derive(Debug, Clone, Args)]
pub struct SadaArgs {
    /// Half-open step range START,END in which steps may be accelerated [SD-2: 10,47]
    #[arg(long, value_name = "START,END", value_parser = parse_range)]
    pub acc_range: Option<(usize, usize)>,
    /// Maximum number of consecutive skipped steps [4]
    #[arg(long)]
    pub max_interval: Option<usize>,
    /// Token pruning in blocks at most this many times coarser than the latent (0 = off) [SD-2: 1, Flux: 0]
    #[arg(long)]
    pub max_downsample: Option<usize>,
    /// At most this many unstable tokens forced into a pruned step [SD-2: 5120, Flux: 0]
    #[arg(long)]
    pub max_fix: Option<usize>,
    /// Token-selection cell width [3]
    #[arg(long)]
    pub sx: Option<usize>,
    /// Token-selection cell height [3]
    #[arg(long)]
    pub sy: Option<usize>,
    /// Number of Lagrange anchors, 0 disables the Lagrange phase [SD-2: 4, Flux: 3]
    #[arg(long)]
    pub lagrange_term: Option<usize>,
    /// Anchor and skip period of the Lagrange phase [4]
    #[arg(long)]
    pub lagrange_int: Option<usize>,
    /// First step of the Lagrange phase [SD-2: 24, Flux: 20]
    #[arg(long)]
    pub lagrange_step: Option<usize>,
}

impl SadaArgs {
    /// The published preset for the solver family with these flags applied.
    pub fn config(&self, solver: SolverArg, seed: u64) -> SadaConfig {
        let base = match solver {
            SolverArg::Flow => SadaConfig::flux(),
            _ => SadaConfig::sd2(),
        };
        self.apply(base, seed)
    }

    /// `base` with every flag that was given replacing its value.
    pub fn apply(&self, base: SadaConfig, seed: u64) -> SadaConfig {
        SadaConfig {
            acc_range: self.acc_range.unwrap_or(base.acc_range),
            max_interval: self.max_interval.unwrap_or(base.max_interval),
            lagrange_term: self.lagrange_term.unwrap_or(base.lagrange_term),
            lagrange_int: self.lagrange_int.unwrap_or(base.lagrange_int),
            lagrange_step: self.lagrange_step.unwrap_or(base.lagrange_step),
            max_fix: self.max_fix.unwrap_or(base.max_fix),
            max_downsample: self.max_downsample.unwrap_or(base.max_downsample),
            sx: self.sx.unwrap_or(base.sx),
            sy: self.sy.unwrap_or(base.sy),
            seed,
        }
    }
}

fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s.split_once(',').ok_or_else(|| format!("expected START,END, got `{s}`"))?;
    let a = a.trim().parse().map_err(|_| format!("`{a}` is not a step index"))?;
    let b = b.trim().parse().map_err(|_| format!("`{b}` is not a step index"))?;
    Ok((a, b))
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: usize, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} steps {elapsed_precise}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}
