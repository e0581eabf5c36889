//! Solvers against diffusers 0.34.0 (fixtures from `tools/gen_scheduler_fixtures.py`).
//!
//! Tolerances: timesteps must match exactly; sigmas, alphas_cumprod and init_noise_sigma within
//! 1e-6 relative; every step's model input and output sample within 1e-5 relative, measured as
//! max |rust - diffusers| / max |diffusers| over the tensor. The Rust trajectory runs on its own
//! samples (errors would accumulate), fed the same synthetic model outputs as diffusers.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use sada::solvers::{build_solver, FlowTimesteps, Prediction, SolverKind};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/schedulers").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn tensor(v: &Value, shape: &[usize]) -> Tensor {
    let data: Vec<f32> = floats(v).into_iter().map(|x| x as f32).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(g.len(), w.len());
    let scale = w.iter().fold(0f64, |m, x| m.max(x.abs() as f64)).max(1e-30);
    g.iter().zip(&w).fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs())) / scale
}

fn assert_close_slice(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1e-12);
        assert!(err <= tol, "{what}[{i}]: got {g}, diffusers {w} (relative error {err:e} > {tol:e})");
    }
}

fn run(name: &str) {
    let f = fixture(name);
    let kind = SolverKind::from_class_name(f["class"].as_str().unwrap()).unwrap();
    let n = f["num_inference_steps"].as_u64().unwrap() as usize;
    let kw = &f["set_timesteps_kwargs"];
    let mut flow = FlowTimesteps { sigmas: kw.get("sigmas").map(floats), mu: kw.get("mu").and_then(|m| m.as_f64()) };
    if let (Some(seq), Some(mu)) = (f["image_seq_len"].as_u64(), flow.mu) {
        // our mu must equal the Flux pipeline's, then use ours
        let cfg: sada::solvers::FlowMatchEulerDiscreteConfig = serde_json::from_value(f["source_config"].clone()).unwrap();
        let ours = cfg.mu(seq as usize);
        assert!((ours - mu).abs() < 1e-12, "mu: ours {ours}, diffusers {mu}");
        flow.mu = Some(ours);
    }
    let mut solver = build_solver(kind, f["source_config"].as_object().unwrap(), f["overrides"].as_object().unwrap(), n, &flow).unwrap();

    let want_ts = floats(&f["timesteps"]);
    if name == "euler_sd15_karras" {
        // Euler's Karras timesteps are fractional, interpolated in a float32 log-sigma table that
        // numpy computes with a vectorised log that is not correctly rounded (189 of 1000 entries
        // differ from the exact float32 log in the last bit), so here they agree to 1e-6, not bitwise.
        assert_close_slice("timesteps", solver.timesteps(), &want_ts, 1e-6);
    } else {
        assert_eq!(solver.timesteps(), &want_ts[..], "{name}: timesteps");
    }
    let want_init = f["init_noise_sigma"].as_f64().unwrap();
    assert_close_slice("init_noise_sigma", &[solver.init_noise_sigma()], &[want_init], 1e-6);
    let want_sigmas = floats(&f["sigmas"]);
    let got_sigmas: Vec<f64> = (0..=n).map(|i| solver.noise(i).sigma).collect();
    for (i, (g, w)) in got_sigmas.iter().zip(&want_sigmas).enumerate() {
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-6), "{name}: sigma[{i}] got {g}, diffusers {w}");
    }

    check_steps(name, &f, solver.as_mut());
}

/// The fixture's sampling loop through `solver`: every model input and next sample within 1e-5
/// (relative) of diffusers'.
fn check_steps(name: &str, f: &Value, solver: &mut dyn sada::solvers::Solver) {
    let shape: Vec<usize> = f["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let mut sample = tensor(&f["initial_sample"], &shape);
    let mut worst = 0f64;
    for (i, step) in f["steps"].as_array().unwrap().iter().enumerate() {
        let input = solver.scale_model_input(&sample, i).unwrap();
        let e_in = rel_err(&input, &tensor(&step["model_input"], &shape));
        assert!(e_in <= 1e-5, "{name}: step {i} model input relative error {e_in:e}");
        let out = tensor(&step["model_output"], &shape);
        let next = solver.step(i, &sample, Prediction::ModelOutput(out)).unwrap().prev_sample;
        let e = rel_err(&next, &tensor(&step["prev_sample"], &shape));
        worst = worst.max(e);
        assert!(e <= 1e-5, "{name}: step {i} prev_sample relative error {e:e} > 1e-5");
        sample = next;
    }
    eprintln!("{name}: worst step relative error {worst:e}");
}

fn alphas_cumprod_match(name: &str) {
    let f = fixture(name);
    let want = floats(&f["alphas_cumprod"]);
    let cfg: sada::solvers::DpmSolverConfig =
        sada::solvers::config::from_config(f["source_config"].as_object().unwrap(), f["overrides"].as_object().unwrap()).unwrap();
    let got: Vec<f64> = sada::schedule::NoiseSchedule::new(&cfg.schedule).unwrap().alphas_cumprod.iter().map(|&x| x as f64).collect();
    assert_close_slice(&format!("{name} alphas_cumprod"), &got, &want, 1e-6);
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => { $( #[test] fn $name() { run(stringify!($name)); } )* };
}

cases!(
    dpm_sd21_v,
    dpm_sdxl_leading,
    dpm_sd15_karras,
    dpm_order1,
    dpm_order3,
    dpm_order3_heun_trailing,
    dpm_heun_v_sigmamin,
    dpm_euler_at_final_linear,
    dpm_cosine_sample,
    dpm_lower_order_final_short,
    euler_sd21_v,
    euler_sdxl_leading,
    euler_sd15_karras,
    euler_trailing_v,
    flow_flux_1024,
    flow_flux_512,
    flow_sd3_shift,
);

#[test]
fn alphas_cumprod_scaled_linear_linear_and_cosine() {
    alphas_cumprod_match("dpm_sd21_v");
    alphas_cumprod_match("dpm_euler_at_final_linear");
    alphas_cumprod_match("dpm_cosine_sample");
}

#[test]
fn ddim_config_becomes_linspace_dpm_solver() {
    // SD-2.1 ships a DDIM config without timestep_spacing: from_config must fall back to
    // DPM-Solver's default `linspace`, not the file's class's behaviour.
    let f = fixture("dpm_sd21_v");
    let cfg: sada::solvers::DpmSolverConfig = sada::solvers::config::from_config(f["source_config"].as_object().unwrap(), &Default::default()).unwrap();
    assert_eq!(cfg.timestep_spacing.as_str(), f["config"]["timestep_spacing"].as_str().unwrap());
    assert_eq!(cfg.solver_order as u64, f["config"]["solver_order"].as_u64().unwrap());
    assert_eq!(cfg.prediction_type.as_str(), "v_prediction");
    assert_eq!(cfg.steps_offset, 1);
}

/// DDIM (eta 0) against diffusers' `DDIMScheduler` (not yet a `--solver` choice: built directly).
fn run_ddim(name: &str) {
    use sada::solvers::ddim::{Ddim, DdimConfig};
    use sada::solvers::Solver;
    let f = fixture(name);
    let mut config = f["source_config"].as_object().unwrap().clone();
    config.extend(f["overrides"].as_object().unwrap().clone());
    let config: DdimConfig = serde_json::from_value(serde_json::Value::Object(config)).unwrap();
    let n = f["num_inference_steps"].as_u64().unwrap() as usize;
    let mut solver = Ddim::new(&config, n).unwrap();
    assert_eq!(solver.timesteps(), &floats(&f["timesteps"])[..], "{name}: timesteps");
    assert_eq!(solver.init_noise_sigma(), f["init_noise_sigma"].as_f64().unwrap());
    let want_sigmas = floats(&f["sigmas"]);
    let got_sigmas: Vec<f64> = (0..=n).map(|i| solver.noise(i).sigma).collect();
    assert_close_slice("sigmas", &got_sigmas, &want_sigmas, 1e-6);
    check_steps(name, &f, &mut solver);
}

#[test]
fn ddim_sd21_v() {
    run_ddim("ddim_sd21_v");
}

#[test]
fn ddim_sd15_trailing_alpha_one() {
    run_ddim("ddim_sd15_trailing_alpha_one");
}

#[test]
fn ddim_linear_linspace_clip() {
    run_ddim("ddim_linear_linspace_clip");
}

#[test]
fn ddim_cosine_sample() {
    run_ddim("ddim_cosine_sample");
}
