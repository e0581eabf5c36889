//! A method set against the unaccelerated baseline from the same noise: the sampled runs, how
//! close the method's image lands (PSNR, SSIM, LPIPS), how much faster it got there, and the
//! plain solver given the same cost. `sada generate --compare` and `sada bench` report these.
//!
//! ```
//! use sada::compare::{Fidelity, Run};
//! use sada::pipelines::{default_model, GenerateOptions, Pipeline, PromptOptions};
//! use sada::policy::Acceleration;
//!
//! # fn main() -> sada::Result<()> {
//! let mut pipe = default_model::load(&sada::device::by_name("cpu")?)?;
//! let inputs = pipe.encode_prompts(&["a small blue square at the bottom right on a white background".into()], &PromptOptions::default())?;
//! let sada = pipe.default_options();
//! let baseline = GenerateOptions { acceleration: Acceleration::default(), ..sada.clone() };
//! let (base, run) = (Run::sample(&mut pipe, &inputs, &baseline, &mut |_, _| {})?, Run::sample(&mut pipe, &inputs, &sada, &mut |_, _| {})?);
//! let fidelity = Fidelity::of(&run.image(&pipe)?, &base.image(&pipe)?, None)?;
//! assert!(run.speedup_over(&base).work > 1.5 && fidelity.psnr_db > 25.0);
//! # Ok(())
//! # }
//! ```

use std::time::Instant;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::image::{to_rgb, RgbImage};
use crate::metrics::lpips::Lpips;
use crate::metrics::{psnr_rgb, ssim};
use crate::pipelines::{GenerateOptions, Pipeline, PipelineInputs};
use crate::sampling::Trace;

/// One sampled run.
pub struct Run {
    /// The final latents.
    pub latents: Tensor,
    /// What each step did and cost.
    pub trace: Trace,
    /// Wall-clock seconds of sampling (decoding not counted).
    pub seconds: f64,
}

impl Run {
    /// Sample `opts` from `inputs`; `on_step(done, total)` after every step.
    pub fn sample(pipe: &mut dyn Pipeline, inputs: &PipelineInputs, opts: &GenerateOptions, on_step: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        let start = Instant::now();
        let (latents, trace) = pipe.generate(inputs, opts, on_step)?;
        Ok(Self { latents, trace, seconds: start.elapsed().as_secs_f64() })
    }

    /// The run's image (8-bit RGB), from a pipeline that decodes.
    pub fn image(&self, pipe: &dyn Pipeline) -> Result<RgbImage> {
        Self::rgb(pipe.decode(&self.latents)?)
    }

    /// The run's image, from a pipeline's decoder alone ([`Pipeline::into_decoder`]).
    pub fn image_from(&self, decoder: &crate::pipelines::Decoder) -> Result<RgbImage> {
        Self::rgb(decoder.decode(&self.latents)?)
    }

    fn rgb(decoded: Option<Tensor>) -> Result<RgbImage> {
        to_rgb(&decoded.ok_or_else(|| Error::param("output", "this model has no decoder (vae/), so no image can be made"))?)
    }

    /// How much faster than `baseline` this run sampled: wall-clock time, and network work
    /// (full evaluations, partial ones by their measured time).
    pub fn speedup_over(&self, baseline: &Run) -> Speedup {
        Speedup { wall: baseline.seconds / self.seconds, work: baseline.trace.equivalent_evaluations() / self.trace.equivalent_evaluations() }
    }
}

/// A run's speedup over the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speedup {
    /// Baseline sampling time over this run's.
    pub wall: f64,
    /// Baseline network work over this run's.
    pub work: f64,
}

/// How close an image lands to the baseline's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fidelity {
    /// Infinite when the images are identical.
    pub psnr_db: f64,
    /// Structural similarity, averaged over channels (1 for identical images).
    pub ssim: f64,
    /// With LPIPS weights given.
    pub lpips: Option<f64>,
}

impl Fidelity {
    /// `image` against `baseline`, with LPIPS when `lpips` is given.
    pub fn of(image: &RgbImage, baseline: &RgbImage, lpips: Option<&Lpips>) -> Result<Self> {
        Ok(Self { psnr_db: psnr_rgb(image, baseline)?, ssim: ssim(image, baseline)?, lpips: lpips.map(|l| l.distance_rgb(image, baseline)).transpose()? })
    }
}

/// The plain solver's step count at the cost of `run` (its network work rounded, at least 1),
/// or None when that is no fewer than the baseline's `steps`: the equal-budget comparison.
pub fn equal_budget_steps(run: &Trace, steps: usize) -> Option<usize> {
    let k = (run.equivalent_evaluations().round() as usize).clamp(1, steps);
    (k < steps).then_some(k)
}
