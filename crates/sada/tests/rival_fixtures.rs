//! The rival accelerators on the tiny UNet fixtures: against the authors' DeepCache plug-in and
//! a transcription of AdaptiveDiffusion's loop running over diffusers
//! (`tools/gen_rival_fixtures.py`), and, for every method, which layers each step computes,
//! counted from the model's tracing spans and checked against the schedule derived by hand.
//!
//! Tolerances: final latents of 20 guided DPM-Solver++ steps within 1e-3 relative (max |diff| /
//! max |reference|), as the UNet pipeline fixtures.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor};
use sada::denoiser::{Conditioning, Guided};
use sada::models::UNet2DConditionModel;
use sada::policy::{Acceleration, Decision};
use sada::sampling::{sample, Trace};
use sada::solvers::{build_solver, load_scheduler_config, FlowTimesteps, SolverKind};
use sada::Family;
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[path = "common/device.rs"]
mod test_device;
use test_device::device;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &device()).unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    d / want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64
}

/// Counts `resnet` spans (one per ResNet block run) since the last `take`.
#[derive(Clone, Default)]
struct ResnetCount(Arc<Mutex<usize>>);

impl ResnetCount {
    fn take(&self) -> usize {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl<S: tracing::Subscriber> Layer<S> for ResnetCount {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "resnet" {
            *self.0.lock().unwrap() += 1;
        }
    }
}

/// 20 guided DPM-Solver++ steps of `case` under `accel`; the resnet blocks each step ran.
/// On one thread: the count is per evaluation (12 ResNet blocks) and every method, acting at
/// branch sites or not, runs the batch the same way, so "off" can equal the baseline exactly
/// (on more cores the batch runs one image per core, within about 1e-6 of the whole batch).
fn run(case: &str, accel: &Acceleration) -> (Tensor, Trace, Vec<usize>) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| run_here(case, accel))
}

fn run_here(case: &str, accel: &Acceleration) -> (Tensor, Trace, Vec<usize>) {
    let dir = fixtures().join("unet").join(case);
    let unet = UNet2DConditionModel::load(&dir.join("unet"), DType::F32, &device()).unwrap();
    let p = load(dir.join("pipeline.safetensors"));
    let config = load_scheduler_config(&dir.join("scheduler/scheduler_config.json")).unwrap();
    let mut solver = build_solver(SolverKind::DpmSolverMultistep, &config, &Default::default(), 20, &FlowTimesteps::default()).unwrap();
    let cond = Conditioning::new().with("encoder_hidden_states", p["prompt_embeds"].clone());
    let uncond = Conditioning::new().with("encoder_hidden_states", p["negative_prompt_embeds"].clone());
    let guided = Guided::new(&unet, cond, Some(uncond), 7.5).unwrap();
    let latents = p["latents"].affine(solver.init_noise_sigma(), 0.0).unwrap();
    let counter = ResnetCount::default();
    let subscriber = tracing_subscriber::registry().with(counter.clone());
    let mut per_step = Vec::new();
    let (x, trace) = tracing::subscriber::with_default(subscriber, || {
        sample(&guided, solver.as_mut(), accel.policy(0).as_mut(), latents, &mut |_, _| per_step.push(counter.take())).unwrap()
    });
    (x, trace, per_step)
}

fn accel(spec: &str) -> Acceleration {
    Acceleration::parse(spec, Family::StableDiffusion).unwrap()
}

/// ResNet blocks in one full evaluation of sd15_tiny: 2 levels x 2 down, 2 mid, 2 x 3 up.
const SD15_FULL: usize = 12;

#[test]
fn deepcache_matches_the_authors_plug_in() {
    for case in ["sd15_tiny", "sd2_tiny"] {
        let want = load(fixtures().join("rivals").join(format!("{case}.safetensors")));
        let (base, _, _) = run(case, &Acceleration::default());
        assert!(rel_err(&base, &want["baseline"]) <= 1e-3, "{case} baseline");
        for (interval, branch) in [(3, 0), (2, 1), (4, 3)] {
            let (x, trace, _) = run(case, &accel(&format!("deepcache:interval={interval},branch={branch}")));
            let e = rel_err(&x, &want[&format!("deepcache_i{interval}_b{branch}")]);
            eprintln!("{case} deepcache interval {interval} branch {branch}: relative error {e:e} ({})", trace.summary());
            assert!(e <= 1e-3, "{case} deepcache {interval}/{branch}: {e:e}");
            let partial: Vec<usize> = trace.steps.iter().filter(|s| s.decision == Decision::Partial).map(|s| s.index).collect();
            let want_partial: Vec<usize> = (0..20).filter(|s| s % interval != 0).collect();
            assert_eq!(partial, want_partial, "{case}: cached steps");
        }
    }
}

#[test]
fn deepcache_computes_only_the_layers_above_its_branch() {
    // sd15_tiny's skips: 0 input conv, 1-2 the first level's ResNet blocks, 3 its downsampler,
    // 4-5 the second level's. A cached step runs the down layers above the branch and the up
    // layers that take skips branch..0 (one ResNet block each).
    for (branch, cached) in [(0, 1), (1, 1 + 2), (3, 2 + 4)] {
        let (_, trace, per_step) = run("sd15_tiny", &accel(&format!("deepcache:interval=3,branch={branch}")));
        for (s, &n) in per_step.iter().enumerate() {
            let want = if s % 3 == 0 { SD15_FULL } else { cached };
            assert_eq!(n, want, "branch {branch}, step {s}: {n} ResNet blocks ({:?})", trace.steps[s].decision);
        }
    }
}

#[test]
fn adaptive_diffusion_follows_the_authors_loop() {
    for case in ["sd15_tiny", "sd2_tiny"] {
        let want = load(fixtures().join("rivals").join(format!("{case}.safetensors")));
        let (x, trace, per_step) = run(case, &accel("adaptive"));
        let mask: Vec<f32> = want["adaptive_mask"].to_vec1().unwrap();
        let got: Vec<f32> = trace.steps.iter().map(|s| if s.decision == Decision::Reuse { 0.0 } else { 1.0 }).collect();
        assert_eq!(got, mask, "{case}: computed (1) and reused (0) steps");
        assert!(mask.contains(&0.0), "{case}: the fixture skips nothing, so it tests nothing");
        let e = rel_err(&x, &want["adaptive"]);
        eprintln!("{case} adaptive: relative error {e:e} ({})", trace.summary());
        assert!(e <= 1e-3, "{case} adaptive: {e:e}");
        // a reused step runs no ResNet block at all
        for (s, &n) in per_step.iter().enumerate() {
            assert_eq!(n == 0, trace.steps[s].decision == Decision::Reuse, "step {s}");
        }
    }
}

#[test]
fn first_block_cache_runs_the_first_block_and_serves_the_rest() {
    // a threshold no change reaches: every step after the first is served
    let (x, trace, per_step) = run("sd15_tiny", &accel("fbcache:threshold=1000"));
    assert_eq!(per_step[0], SD15_FULL);
    assert!(per_step[1..].iter().all(|&n| n == 1), "{per_step:?}");
    assert!(trace.steps[1..].iter().all(|s| s.decision == Decision::Partial));
    assert!(trace.steps[1..].iter().all(|s| s.criterion.is_some_and(|c| c > 0.0)));
    // threshold 0: off, identical to the baseline
    let (base, _, _) = run("sd15_tiny", &Acceleration::default());
    let (off, off_trace, _) = run("sd15_tiny", &accel("fbcache:threshold=0"));
    assert_eq!(rel_err(&off, &base), 0.0);
    assert_eq!(off_trace.count(Decision::Full), 20);
    assert!(rel_err(&x, &base) > 1e-3, "serving the rest changed nothing");
    // a middle threshold: the reference residual is the last full step's, so cached runs end
    let (_, mid, _) = run("sd15_tiny", &accel("fbcache:threshold=0.08"));
    let full = mid.count(Decision::Full);
    assert!(full > 1 && full < 20, "{}", mid.summary());
}

#[test]
fn taylorseer_forecasts_between_full_steps_and_runs_no_block_there() {
    // interval 4, first_enhance 2: full at 0, 1, 5, 9, 13, 17 (20 steps)
    let (x, trace, per_step) = run("sd15_tiny", &accel("taylorseer:interval=4,max_order=2,first_enhance=2"));
    let full: Vec<usize> = (0..20).filter(|&s| per_step[s] == SD15_FULL).collect();
    assert_eq!(full, vec![0, 1, 5, 9, 13, 17]);
    for (s, &resnets) in per_step.iter().enumerate().take(20) {
        assert!(resnets == SD15_FULL || resnets == 0, "step {s}: {resnets}");
        assert_eq!(trace.steps[s].decision == Decision::Partial, resnets == 0);
    }
    let (base, _, _) = run("sd15_tiny", &Acceleration::default());
    let e = rel_err(&x, &base);
    assert!(e > 0.0 && e.is_finite(), "{e}");
}

#[test]
fn cache_methods_run_one_image_per_core_as_they_run_whole() {
    // On two threads the guided batch runs one image per core (denoiser::batch): DeepCache and
    // TaylorSeer keep each image's cached features by its index (Site::images); for
    // First-Block-Cache, which decides over the whole batch after the first block, the images
    // meet at that site and the hook sees the whole batch (SiteHook::batch_wide). Every ResNet
    // span is then counted per image, twice the one-thread count, and the result is the
    // whole-batch one up to GEMM rounding, with the same decisions.
    let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for spec in ["deepcache:interval=3,branch=1", "taylorseer:interval=4,max_order=2,first_enhance=2", "fbcache:threshold=0.08"] {
        let (whole, t1, per1) = run("sd15_tiny", &accel(spec));
        let (split, t2, per2) = two.install(|| run_here("sd15_tiny", &accel(spec)));
        assert_eq!(t1.summary(), t2.summary(), "{spec}");
        let want: Vec<usize> = per1.iter().map(|n| 2 * n).collect();
        assert_eq!(per2, want, "{spec}: ResNet blocks per step, split against whole {per1:?}");
        let e = rel_err(&split, &whole);
        eprintln!("{spec}: split vs whole relative {e:e} ({})", t2.summary());
        assert!(e <= 1e-5, "{spec}: {e:e}");
    }
}
