//! Flags shared by the subcommands that sample.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use sada::models::hub::HubOptions;
use sada::models::layers::weight::{at_rest, AtRest, WeightType};
use sada::models::{ModelRef, ModelSource};
use sada::pipelines::{default_model, load_pipeline, Pipeline, PromptOptions};
use sada::policy::{Acceleration, SadaConfig};
use sada::solvers::SolverKind;
use sada::Family;

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
    pub fn kind(self) -> SolverKind {
        match self {
            SolverArg::DpmPp => SolverKind::DpmSolverMultistep,
            SolverArg::Euler => SolverKind::EulerDiscrete,
            SolverArg::Flow => SolverKind::FlowMatchEulerDiscrete,
        }
    }
}

/// `--solver` as given, or the family's default; refused when a model of `family` cannot be
/// sampled with it.
pub fn solver_for(given: Option<SolverArg>, family: Family) -> anyhow::Result<SolverKind> {
    let Some(arg) = given else { return Ok(family.default_solver()) };
    let kind = arg.kind();
    if !family.accepts(kind) {
        // the names `--solver` takes (SolverKind's cli_name), never the enums' Rust names
        let accepted = family.solver_names();
        match family {
            Family::Flux => bail!("--solver {kind} needs a diffusion model; flow-matching models take {accepted}"),
            Family::StableDiffusion | Family::Sdxl => bail!("--solver {kind} needs a flow-matching model; Stable Diffusion models take {accepted}"),
        }
    }
    Ok(kind)
}

/// Where the networks run.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Device: auto, cpu, cuda, cuda:N or metal (cuda and metal need a sada built with
    /// `--features cuda` / `--features metal`; auto picks the first GPU of a build that has
    /// one and a machine that has it, else the CPU)
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub device: String,
}

impl DeviceArgs {
    pub fn device(&self) -> anyhow::Result<Device> {
        sada::device::by_name(&self.device).map_err(|e| anyhow::anyhow!("--device {}: {e}", self.device.trim()))
    }
}

/// Compute precision of the networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl DtypeArg {
    /// The dtype on `device`, refusing what the device cannot compute.
    pub fn resolve(self, device: &Device) -> anyhow::Result<DType> {
        Ok(match self {
            DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 if device.is_cpu() => {
                bail!("--dtype bf16 is not supported on the CPU (candle has no bf16 matrix product there); use f32 or f16")
            }
            DtypeArg::Bf16 => DType::BF16,
        })
    }
}

/// How the networks' weights are held between uses.
#[derive(Debug, Clone, Args)]
pub struct WeightsArgs {
    /// Hold the networks' weights in this type between uses, widened to f32 piece by piece inside
    /// each product (CPU, --dtype f32): f32, f16, bf16 (half the memory), q8_0 (ggml's 8-bit
    /// blocks, 0.27 of it), q4_0 or q4_k (ggml's 4-bit blocks, 0.14; q4_k fits a scale and a
    /// minimum per 32 values); layers whose rows are not whole blocks take the nearest wider type
    /// that fits (q8_0, else f16) [default: as the file stores them: a GGUF file's blocks kept,
    /// anything else f32]
    #[arg(long, value_name = "TYPE", value_parser = parse_weights)]
    pub weights: Option<WeightType>,
}

fn parse_weights(s: &str) -> Result<WeightType, String> {
    WeightType::parse(s).map_err(|e| e.to_string())
}

impl WeightsArgs {
    /// Hold the weights of every network this thread loads from now on in the chosen type (until
    /// the guard drops); refused where it cannot apply.
    pub fn at_rest(&self, device: &Device, dtype: DType) -> anyhow::Result<Option<AtRest>> {
        let Some(ty) = self.weights else { return Ok(None) };
        if ty != WeightType::F32 && !(device.is_cpu() && dtype == DType::F32) {
            bail!("--weights {} applies to the CPU with --dtype f32; on other devices use --dtype", ty.name());
        }
        Ok(Some(at_rest(ty)))
    }

    /// The name to report: the type asked for, or `as stored`.
    pub fn label(&self) -> &'static str {
        self.weights.map_or("as stored", WeightType::name)
    }
}

/// Which model to run.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// The model: a diffusers folder, a single-file checkpoint (.safetensors in the original
    /// SD-1.x / 2.x / XL layout), or a Hugging Face id (org/name) looked up in the local
    /// Hugging Face cache (HF_HUB_CACHE, HF_HOME, ~/.cache/huggingface/hub) and downloaded when
    /// missing unless offline [default: the embedded 32x32 shapes model, no download]
    #[arg(long, value_name = "DIR|FILE|ID")]
    pub model: Option<String>,
    /// Branch, tag or commit of a Hugging Face id [main]
    #[arg(long, value_name = "REV", requires = "model")]
    pub revision: Option<String>,
    /// Never use the network (also HF_HUB_OFFLINE=1): a Hugging Face id must be in the cache
    #[arg(long)]
    pub offline: bool,
    /// The denoiser (UNet or FLUX.1 transformer) from this single file, safetensors or GGUF (e.g.
    /// city96's flux1-dev-Q8_0.gguf), as ComfyUI loads a diffusion model on its own; text
    /// encoders, VAE and scheduler come from --model (an id then skips its own denoiser's files)
    #[arg(long, value_name = "FILE", requires = "model")]
    pub denoiser: Option<PathBuf>,
}

/// The model `args` names, or the embedded default model when none is given, and the name to
/// report.
pub fn load_model(args: &ModelArgs, dtype: DType, device: &Device) -> anyhow::Result<(Box<dyn Pipeline>, String)> {
    let Some((source, model)) = model_source(args)? else {
        let pipe = default_model::load_in(dtype, device).context("loading the embedded default model")?;
        return Ok((Box::new(pipe), default_model::NAME.to_string()));
    };
    if args.model.as_deref().and_then(ModelRef::parse).is_some_and(|r| r.is_hub()) {
        // a cached snapshot can lack files (an interrupted download): name the id, not only the path
        let opts = args.hub_options();
        let pipe = load_pipeline(source, dtype, device).with_context(|| format!("--model {model} (revision {})", opts.revision()))?;
        return Ok((pipe, model));
    }
    Ok((load_pipeline(source, dtype, device)?, model))
}

/// Where the files of the model `args` names come from, and the name to report; None for the
/// embedded default (no --model).
pub fn model_source(args: &ModelArgs) -> anyhow::Result<Option<(ModelSource, String)>> {
    let Some(model) = args.model.as_deref() else { return Ok(None) };
    let Some(model_ref) = ModelRef::parse(model) else {
        bail!("--model {model}: no such folder or file, and not a Hugging Face id (org/name)");
    };
    let opts = args.hub_options();
    if !model_ref.is_hub() && args.revision.is_some() {
        // a local folder named like an id (org/name) is the folder: a revision cannot apply
        bail!("--revision applies to a Hugging Face id, not to the local folder or file {model}");
    }
    Ok(Some(match &args.denoiser {
        Some(file) => {
            if !file.is_file() {
                bail!("--denoiser {}: no such file", file.display());
            }
            (model_ref.pipeline_source_with_denoiser(&opts, file)?, format!("{model} + {}", file.display()))
        }
        None => (model_ref.pipeline_source(&opts)?, model.to_owned()),
    }))
}

impl ModelArgs {
    /// How Hugging Face ids are looked up.
    pub fn hub_options(&self) -> HubOptions {
        HubOptions { revision: self.revision.clone(), offline: self.offline }
    }
}

/// The methods `--accel` takes, one per line (for --help).
pub fn methods_help() -> String {
    let mut s = String::from(
        "Acceleration method, NAME or NAME:key=value,... (values are JSON, e.g. sada:acc_range=[10,47] or \
         deepcache:interval=5); unset settings take the published ones for the model family. Methods:",
    );
    for (name, about) in Acceleration::METHODS {
        s += &format!("\n  {name}: {about}");
    }
    s
}

/// `--accel` and, for SADA, its parameters as flags of their own.
#[derive(Debug, Clone, Args)]
pub struct AccelArgs {
    #[arg(long, value_name = "METHOD", default_value = "sada", help = "Acceleration method (NAME or NAME:key=value,...; see --help for the list)", long_help = methods_help())]
    pub accel: String,
    #[command(flatten)]
    pub sada: SadaArgs,
    /// sada+: at most this many network evaluations per image (its budget; overrides
    /// --tolerance)
    #[arg(long, value_name = "N")]
    pub max_evals: Option<usize>,
    /// sada+: skip a step when its estimated relative error is at most this [0.01]
    #[arg(long, value_name = "X")]
    pub tolerance: Option<f64>,
}

impl AccelArgs {
    /// The chosen method with its settings for `family`.
    pub fn acceleration(&self, family: Family) -> anyhow::Result<Acceleration> {
        let mut accel = Acceleration::parse(&self.accel, family)?;
        match &mut accel {
            Acceleration::Sada(cfg) => *cfg = self.sada.apply(cfg.clone()),
            _ if self.sada.any() => bail!("the SADA flags (--acc-range, --max-interval, ...) apply to --accel sada, not `{}`", accel.name()),
            _ => {}
        }
        match &mut accel {
            Acceleration::SadaPlus(cfg) => {
                cfg.max_evals = self.max_evals.unwrap_or(cfg.max_evals);
                cfg.tolerance = self.tolerance.unwrap_or(cfg.tolerance);
            }
            _ if self.max_evals.is_some() || self.tolerance.is_some() => {
                bail!("--max-evals and --tolerance apply to --accel sada+, not `{}`", accel.name())
            }
            _ => {}
        }
        Ok(accel)
    }
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
    /// `base` with every flag that was given replacing its value.
    pub fn apply(&self, base: SadaConfig) -> SadaConfig {
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
        }
    }

    /// Whether any SADA flag was given.
    pub fn any(&self) -> bool {
        self.acc_range.is_some()
            || self.max_interval.is_some()
            || self.max_downsample.is_some()
            || self.max_fix.is_some()
            || self.sx.is_some()
            || self.sy.is_some()
            || self.lagrange_term.is_some()
            || self.lagrange_int.is_some()
            || self.lagrange_step.is_some()
    }
}

fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s.split_once(',').ok_or_else(|| format!("expected START,END, got `{s}`"))?;
    let a = a.trim().parse().map_err(|_| format!("`{a}` is not a step index"))?;
    let b = b.trim().parse().map_err(|_| format!("`{b}` is not a step index"))?;
    Ok((a, b))
}

/// One line per kind of trouble with the prompts: words the model does not know (all
/// prompts together), and tokens beyond the text encoder's window (per prompt).
pub fn report_prompt(pipe: &mut dyn Pipeline, model_name: &str, opts: &PromptOptions, prompts: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut unknown = Vec::new();
    for (flag, text) in prompts {
        let check = pipe.check_prompt(text, opts)?;
        if !check.unknown.is_empty() {
            unknown.push(format!("{:?} in {flag}", check.unknown));
        }
        if check.tokens > check.window {
            eprintln!(
                "note: {flag} has {} words; the text encoder reads {}, so the last {} are dropped",
                check.tokens,
                check.window,
                check.tokens - check.window
            );
        }
    }
    if !unknown.is_empty() {
        eprintln!("note: {model_name} does not know the words {}; they are read as the unknown token", unknown.join(" and "));
    }
    Ok(())
}

/// The memory a run may use.
#[derive(Debug, Clone, Args)]
pub struct MemoryArgs {
    /// Memory the run may use, e.g. 16G or 512M [default: what the machine has available];
    /// sizes whose estimated need is larger are refused before anything is allocated
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,
}

impl MemoryArgs {
    /// Refuse a run whose estimated need (bytes) is above the limit; `flag` and `value` name
    /// what to change.
    pub fn check(&self, flag: &str, value: &str, need: u128) -> anyhow::Result<()> {
        let (limit, what) = match self.max_memory {
            Some(m) => (m as u128, "--max-memory"),
            None => match available_memory() {
                Some(m) => (m as u128, "available"),
                None => return Ok(()),
            },
        };
        if need > limit {
            bail!(
                "{flag} {value} would need about {} (estimate) but {} {what}; choose a smaller size{}",
                gib(need),
                gib(limit),
                if self.max_memory.is_none() { " or raise --max-memory" } else { "" }
            );
        }
        Ok(())
    }
}

/// A size in the unit that shows it (1 MiB limits read as 1.0 MiB, not 0.0 GiB).
fn gib(bytes: u128) -> String {
    sada::files::human_bytes(u64::try_from(bytes).unwrap_or(u64::MAX))
}

/// MemAvailable from /proc/meminfo, in bytes (None where it cannot be read).
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// `16G`, `512M`, `1.5T`, `1000000` (bytes).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("`{s}`: expected a size such as 16G, 512M or a number of bytes")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("`{s}`: expected a size such as 16G, 512M or a number of bytes"))?;
    let bytes = v * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{s}`: expected a positive size"));
    }
    Ok(bytes as u64)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: usize, label: &str) -> indicatif::ProgressBar {
    progress_of(len, label, "steps")
}

/// [`progress`] counting `unit` (steps, tensors, ...).
pub fn progress_of(len: usize, label: &str, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    let template = format!("{{msg:>10}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{elapsed_precise}}");
    bar.set_style(indicatif::ProgressStyle::with_template(&template).expect("a fixed template").progress_chars("=> "));
    bar.set_message(label.to_owned());
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solver_names_are_the_ones_solver_takes() {
        for arg in SolverArg::value_variants() {
            let name = arg.to_possible_value().expect("every solver has a name");
            assert_eq!(name.get_name(), arg.kind().cli_name(), "{arg:?}");
        }
        let e = solver_for(Some(SolverArg::DpmPp), Family::Flux).unwrap_err().to_string();
        assert_eq!(e, "--solver dpm++ needs a diffusion model; flow-matching models take flow");
        let e = solver_for(Some(SolverArg::Flow), Family::Sdxl).unwrap_err().to_string();
        assert_eq!(e, "--solver flow needs a flow-matching model; Stable Diffusion models take dpm++ or euler");
        assert_eq!(solver_for(Some(SolverArg::Euler), Family::StableDiffusion).unwrap(), SolverKind::EulerDiscrete);
        assert_eq!(solver_for(None, Family::Flux).unwrap(), SolverKind::FlowMatchEulerDiscrete);
    }
}
