//! An accelerator of your own: a policy that skips every other step inside a range by reusing
//! the last network output, run on the embedded model through the same pipeline as SADA:
//! `cargo run -p sada --example custom_accelerator`.

use candle_core::Tensor;
use sada::denoiser::{Capabilities, TokenPlan};
use sada::pipelines::{default_model, GenerateOptions, Pipeline, PromptOptions};
use sada::policy::{Acceleration, Observation, Policy, SkipKind, StepPlan};
use sada::solvers::{Prediction, Solver};

/// Skips the odd steps in `start..end`; a skipped step feeds the solver the last real output.
struct EveryOther {
    start: usize,
    end: usize,
    last_output: Option<Tensor>,
}

impl Policy for EveryOther {
    fn begin(&mut self, solver: &dyn Solver, _latent_shape: &[usize], _caps: &Capabilities) -> sada::Result<()> {
        if self.start == 0 || self.end > solver.num_steps() {
            return Err(sada::Error::param("start/end", format!("{}..{} must lie inside 1..={}", self.start, self.end, solver.num_steps())));
        }
        self.last_output = None;
        Ok(())
    }

    fn plan(&self, step: usize) -> StepPlan {
        if (self.start..self.end).contains(&step) && step % 2 == 1 {
            StepPlan::Skip(SkipKind::Reuse)
        } else {
            StepPlan::Compute(TokenPlan::Full)
        }
    }

    fn substitute(&mut self, step: usize, _sample: &Tensor, _solver: &dyn Solver) -> sada::Result<Prediction> {
        let last = self.last_output.clone().ok_or_else(|| sada::Error::internal(format!("step {step} skipped before any output")))?;
        Ok(Prediction::ModelOutput(last))
    }

    fn observe(&mut self, _step: usize, obs: &Observation, _solver: &dyn Solver) -> sada::Result<Option<f64>> {
        if let Some(out) = obs.output {
            self.last_output = Some(out.clone());
        }
        Ok(None)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = sada::device::by_name("auto")?;
    let mut pipe = default_model::load(&device)?;
    let inputs = pipe.encode_prompts(&["a small green star at the top left on a white background".into()], &PromptOptions::default())?;
    // the baseline's settings: the policy given here decides what each step costs
    let opts = GenerateOptions { acceleration: Acceleration::default(), ..pipe.default_options() };
    let mut policy = EveryOther { start: 10, end: 40, last_output: None };
    let (_, trace) = pipe.generate_with(&inputs, &opts, &mut policy, &mut |_, _| {})?;
    println!("{} network evaluations for {} steps [{}]", trace.evaluations, trace.steps.len(), trace.summary());
    Ok(())
}
