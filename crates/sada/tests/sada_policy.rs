//! The SADA policy end to end on the Gaussian-mixture denoiser: formulas re-derived here from
//! `docs/method.md` in scalar float64 and compared with what the policy hands the solver, the
//! baseline loop against the plain solver, and the published settings' effect.

use candle_core::{Device, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sada::denoiser::token_cache::TokenCache;
use sada::denoiser::{Capabilities, Conditioning, Denoiser, ForwardContext, Guided};
use sada::gmm::{class_weights, uniform_weights, GaussianMixture, GmmSchedule};
use sada::metrics::{data_range, psnr};
use sada::noise::normal_samples;
use sada::policy::{Decision, NoAcceleration, Observation, Policy, Sada, SadaConfig, SkipKind, StepPlan};
use sada::sampling::sample;
use sada::schedule::NoiseSchedule;
use sada::solvers::{build_solver, presets, FlowTimesteps, LatentScale, Prediction, PredictionType, Solver, SolverKind};

fn solver(kind: SolverKind, preset: &str, overrides: serde_json::Value, steps: usize) -> Box<dyn Solver> {
    let flow = if kind == SolverKind::FlowMatchEulerDiscrete {
        FlowTimesteps { sigmas: Some(sada::schedule::flow::flux_default_sigmas(steps)), mu: Some(0.8) }
    } else {
        FlowTimesteps::default()
    };
    build_solver(kind, &presets::parse(preset), overrides.as_object().unwrap(), steps, &flow).unwrap()
}

fn gmm(shape: &[usize], preset: &str, pt: PredictionType) -> GaussianMixture {
    let schedule = if pt == PredictionType::FlowVelocity {
        GmmSchedule::Flow { num_train_timesteps: 1000 }
    } else {
        let train: sada::schedule::TrainingSchedule = sada::solvers::config::from_config(&presets::parse(preset), &Default::default()).unwrap();
        GmmSchedule::Discrete(NoiseSchedule::new(&train).unwrap())
    };
    GaussianMixture::image_like(shape, 4, 4, 0.15, 1234, schedule, pt)
}

fn noise(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(normal_samples(n, seed), shape, &Device::Cpu).unwrap().affine(scale, 0.0).unwrap()
}

fn conds(batch: usize) -> (Conditioning, Conditioning) {
    (
        Conditioning::new().with("class_weights", class_weights(16, 1, 0.3, batch).unwrap()),
        Conditioning::new().with("class_weights", uniform_weights(16, batch).unwrap()),
    )
}

/// One guided evaluation with every token computed.
fn model_full(guided: &Guided, x: &Tensor, t: f64) -> Tensor {
    let mut cache = TokenCache::default();
    guided.predict(x, t, &mut ForwardContext::full(&mut cache)).unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(|v| v as f64).collect()
}

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    let err = got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}\n got  {got:?}\n want {want:?}");
}

/// §2: the drift f_k in VP scale from the recorded sample and (bookkeeping) output of step k.
fn spec_drift(s: &dyn Solver, xs: &[Vec<f64>], outs: &[Vec<f64>], k: usize) -> Vec<f64> {
    let ve = s.latent_scale() == LatentScale::VarianceExploding;
    let z = s.noise(k);
    let table = s.noise_schedule().expect("a diffusion solver");
    let coef = 0.5 * table.beta_at(z.timestep) * s.num_steps() as f64;
    let scale = if ve { z.alpha_t } else { 1.0 };
    let a = if ve { z.alpha_t } else { table.sqrt_alphas_cumprod_at(z.timestep) };
    (0..xs[k].len())
        .map(|i| match s.prediction_type() {
            PredictionType::Epsilon => -coef * xs[k][i] * scale + coef / z.sigma_t * outs[k][i],
            _ => coef / z.sigma_t * a * outs[k][i],
        })
        .collect()
}

/// §3: the predictor x̂_{k+1} in the solver's own scale.
fn spec_xhat(s: &dyn Solver, xs: &[Vec<f64>], outs: &[Vec<f64>], k: usize) -> Vec<f64> {
    let ve = s.latent_scale() == LatentScale::VarianceExploding;
    let (f0, f1, f2) = (spec_drift(s, xs, outs, k), spec_drift(s, xs, outs, k - 1), spec_drift(s, xs, outs, k - 2));
    let d = 1.0 / s.num_steps() as f64;
    let scale = if ve { s.noise(k).alpha_t } else { 1.0 };
    (0..f0.len())
        .map(|i| {
            let v = xs[k][i] * scale - d * (0.625 * f0[i] + 0.75 * f1[i] - 0.375 * f2[i]);
            if ve {
                v / s.noise(k + 1).alpha_t
            } else {
                v
            }
        })
        .collect()
}

/// Drive solver + SADA by hand, recording everything, and check each skipped step's substitute
/// against the formulas of docs/method.md §2-§5 recomputed in float64 from the recorded scalars.
fn check_substitutes(kind: SolverKind, preset: &str, overrides: serde_json::Value) -> (usize, usize) {
    let shape = [1usize, 4, 2, 2];
    let mut s = solver(kind, preset, overrides, 50);
    let model = gmm(&shape[1..], preset, s.prediction_type());
    let (cond, uncond) = conds(1);
    let guided = Guided::new(&model, cond, Some(uncond), 7.5).unwrap();
    let mut policy = Sada::new(SadaConfig::sd2(), 0);
    policy.begin(s.as_ref(), &shape, &Capabilities::default()).unwrap();
    let n_steps = s.num_steps();
    let ve = s.latent_scale() == LatentScale::VarianceExploding;
    let pt = s.prediction_type();

    let mut x = noise(&shape, 3, s.init_noise_sigma());
    // per step: the sample, the bookkeeping output and the x0 the solver used
    let mut xs: Vec<Vec<f64>> = vec![];
    let mut outs: Vec<Vec<f64>> = vec![];
    let mut x0s: Vec<Vec<f64>> = vec![];
    let mut last_real: Option<Vec<f64>> = None;
    let (mut am, mut lag) = (0, 0);
    for n in 0..n_steps {
        let nz = s.noise(n);
        let plan = policy.plan(n);
        let (output, pred) = match &plan {
            StepPlan::Compute(tp) => {
                let input = s.scale_model_input(&x, n).unwrap();
                let mut cache = TokenCache::default();
                let o = guided.predict(&input, s.timesteps()[n], &mut ForwardContext::new(n, tp, &mut cache, None)).unwrap();
                last_real = Some(vals(&o));
                (Some(o.clone()), Prediction::ModelOutput(o))
            }
            StepPlan::Skip(kind) => {
                let sub = policy.substitute(n, &x, s.as_ref()).unwrap();
                let Prediction::DataPrediction(x0) = &sub else { panic!("VP solvers get x0") };
                let got = vals(x0);
                let (sigma, alpha_t, sigma_t) = (nz.sigma, nz.alpha_t, nz.sigma_t);
                let o: &Vec<f64> = outs.last().unwrap();
                let want: Vec<f64> = match kind {
                    SkipKind::AdamsMoulton => {
                        am += 1;
                        // x̂_n from x_{n-1} and the drifts f_{n-1}, f_{n-2}, f_{n-3} (§2, §3)
                        let xhat = spec_xhat(s.as_ref(), &xs, &outs, n - 1);
                        (0..xhat.len())
                            .map(|i| match (ve, pt) {
                                (false, PredictionType::Epsilon) => (xhat[i] - sigma_t * o[i]) / alpha_t,
                                (false, _) => alpha_t * xhat[i] - sigma_t * o[i],
                                (true, PredictionType::Epsilon) => xhat[i] - sigma * o[i],
                                (true, _) => -sigma / (sigma * sigma + 1.0).sqrt() * o[i] + vals(&x)[i] / (sigma * sigma + 1.0),
                            })
                            .collect()
                    }
                    SkipKind::Lagrange => {
                        lag += 1;
                        // anchors: the last 4 steps k < n with k % 4 == 1 (§5)
                        let ks: Vec<usize> = (0..n).filter(|k| k % 4 == 1).rev().take(4).collect();
                        (0..got.len())
                            .map(|i| {
                                ks.iter()
                                    .map(|&k| {
                                        let w: f64 = ks.iter().filter(|&&j| j != k).map(|&j| (n as f64 - j as f64) / (k as f64 - j as f64)).product();
                                        let unscale = if ve { s.noise(k).alpha_t } else { 1.0 };
                                        w * x0s[k][i] / unscale
                                    })
                                    .sum::<f64>()
                                    * if ve { alpha_t } else { 1.0 }
                            })
                            .collect()
                    }
                    SkipKind::Reuse | SkipKind::Extrapolate => panic!("SADA never plans {kind:?}"),
                };
                close(&got, &want, 1e-5, &format!("{kind:?} substitute at step {n}"));
                (None, sub)
            }
        };
        xs.push(vals(&x));
        // bookkeeping output: the real one, or the last real one on skips (§5)
        outs.push(last_real.clone().unwrap());
        let st = s.step(n, &x, pred).unwrap();
        x0s.push(vals(&st.data_prediction));
        let obs = Observation { sample: &x, prev_sample: &st.prev_sample, output: output.as_ref(), data_prediction: &st.data_prediction };
        let criterion = policy.observe(n, &obs, s.as_ref()).unwrap();
        if n >= 2 && n + 1 < n_steps {
            // §3: m = (x_{n+1} - x̂_{n+1}) * (f_n - 2 f_{n-1} + f_{n-2}), criterion = mean(m)
            let xhat = spec_xhat(s.as_ref(), &xs, &outs, n);
            let (f0, f1, f2) = (spec_drift(s.as_ref(), &xs, &outs, n), spec_drift(s.as_ref(), &xs, &outs, n - 1), spec_drift(s.as_ref(), &xs, &outs, n - 2));
            let next = vals(&st.prev_sample);
            let m: Vec<f64> = (0..next.len()).map(|i| (next[i] - xhat[i]) * (f0[i] - 2.0 * f1[i] + f2[i])).collect();
            let want = m.iter().sum::<f64>() / m.len() as f64;
            let scale = m.iter().map(|v| v.abs()).sum::<f64>() / m.len() as f64;
            let got = criterion.expect("criterion from step 2 on");
            // float32 cancellation in x_{n+1} - x̂ limits agreement to about 1e-3 of mean |m|
            assert!((got - want).abs() <= 1e-2 * scale + 1e-12, "criterion at step {n}: {got} vs spec {want} (mean |m| {scale})");
        }
        x = st.prev_sample;
    }
    (am, lag)
}

#[test]
fn substitutes_match_the_spec_dpm_solver_v_prediction() {
    let (am, lag) = check_substitutes(SolverKind::DpmSolverMultistep, presets::SD21, serde_json::json!({}));
    assert!(am > 0 && lag > 0, "AM skips {am}, Lagrange skips {lag}");
}

#[test]
fn substitutes_match_the_spec_dpm_solver_epsilon() {
    let (am, lag) = check_substitutes(SolverKind::DpmSolverMultistep, presets::SDXL, serde_json::json!({}));
    assert!(am > 0 && lag > 0, "AM skips {am}, Lagrange skips {lag}");
}

#[test]
fn substitutes_match_the_spec_euler_epsilon() {
    let (am, lag) = check_substitutes(SolverKind::EulerDiscrete, presets::SDXL, serde_json::json!({}));
    assert!(am > 0 && lag > 0, "AM skips {am}, Lagrange skips {lag}");
}

#[test]
fn substitutes_match_the_spec_euler_v_prediction() {
    let (am, lag) = check_substitutes(SolverKind::EulerDiscrete, presets::SD21, serde_json::json!({}));
    assert!(am > 0 && lag > 0, "AM skips {am}, Lagrange skips {lag}");
}

/// Run the loop with a policy on the Gaussian mixture (4 x 16 x 16 latents, CFG 7.5).
fn run(kind: SolverKind, preset: &str, steps: usize, policy: &mut dyn Policy, batch: usize) -> (Tensor, sada::sampling::Trace) {
    let shape = [batch, 4, 16, 16];
    let mut s = solver(kind, preset, serde_json::json!({}), steps);
    let model = gmm(&shape[1..], preset, s.prediction_type());
    let (cond, uncond) = conds(batch);
    let guided = Guided::new(&model, cond, Some(uncond), 7.5).unwrap();
    let x = noise(&shape, 11, s.init_noise_sigma());
    sample(&guided, s.as_mut(), policy, x, &mut |_, _| {}).unwrap()
}

#[test]
fn baseline_loop_is_bit_identical_to_the_plain_solver() {
    for (kind, preset) in
        [(SolverKind::DpmSolverMultistep, presets::SD21), (SolverKind::EulerDiscrete, presets::SDXL), (SolverKind::FlowMatchEulerDiscrete, presets::FLUX)]
    {
        let (looped, trace) = run(kind, preset, 20, &mut NoAcceleration, 1);
        assert_eq!(trace.evaluations, 20);
        // the same thing by hand: scale, predict, step
        let shape = [1usize, 4, 16, 16];
        let mut s = solver(kind, preset, serde_json::json!({}), 20);
        let model = gmm(&shape[1..], preset, s.prediction_type());
        let (cond, uncond) = conds(1);
        let guided = Guided::new(&model, cond, Some(uncond), 7.5).unwrap();
        let mut x = noise(&shape, 11, s.init_noise_sigma());
        for n in 0..20 {
            let input = s.scale_model_input(&x, n).unwrap();
            let o = model_full(&guided, &input, s.timesteps()[n]);
            x = s.step(n, &x, Prediction::ModelOutput(o)).unwrap().prev_sample;
        }
        assert_eq!(vals(&looped), vals(&x), "{kind:?}");
    }
}

fn published_effect(kind: SolverKind, preset: &str, cfg: SadaConfig, min_psnr: f64) {
    let (base, base_trace) = run(kind, preset, 50, &mut NoAcceleration, 1);
    let (fast, trace) = run(kind, preset, 50, &mut Sada::new(cfg, 0), 1);
    let ratio = base_trace.evaluations as f64 / trace.evaluations as f64;
    let p = psnr(&fast, &base, data_range(&base).unwrap()).unwrap();
    eprintln!("{kind:?}: {} -> {} evaluations ({ratio:.2}x), PSNR {p:.2} dB [{}]", base_trace.evaluations, trace.evaluations, trace.summary());
    assert!(trace.count(Decision::SkipAm) > 0, "no criterion-driven skips");
    assert!(trace.count(Decision::SkipLagrange) > 0, "no Lagrange skips");
    assert!(ratio >= 1.5, "only {ratio:.2}x fewer evaluations");
    assert!(p >= min_psnr, "PSNR {p:.2} dB below {min_psnr}");
    assert_eq!(trace.evaluations, trace.steps.iter().filter(|s| !matches!(s.decision, Decision::SkipAm | Decision::SkipLagrange)).count());
}

#[test]
fn published_sd2_settings_save_evaluations_and_stay_close_dpm_solver() {
    published_effect(SolverKind::DpmSolverMultistep, presets::SD21, SadaConfig::sd2(), 30.0);
}

#[test]
fn published_sd2_settings_save_evaluations_and_stay_close_euler() {
    published_effect(SolverKind::EulerDiscrete, presets::SD21, SadaConfig::sd2(), 30.0);
}

#[test]
fn published_flux_settings_save_evaluations_and_stay_close_flow() {
    published_effect(SolverKind::FlowMatchEulerDiscrete, presets::FLUX, SadaConfig::flux(), 30.0);
}

#[test]
fn sada_is_deterministic_and_works_with_batches() {
    let (a, ta) = run(SolverKind::DpmSolverMultistep, presets::SD21, 50, &mut Sada::new(SadaConfig::sd2(), 0), 2);
    let (b, tb) = run(SolverKind::DpmSolverMultistep, presets::SD21, 50, &mut Sada::new(SadaConfig::sd2(), 0), 2);
    assert_eq!(vals(&a), vals(&b));
    assert_eq!(ta.evaluations, tb.evaluations);
    assert_eq!(a.dims(), &[2, 4, 16, 16]);
}

#[test]
fn trace_serialises_with_the_documented_fields() {
    let (_, trace) = run(SolverKind::DpmSolverMultistep, presets::SD21, 50, &mut Sada::new(SadaConfig::sd2(), 0), 1);
    let v = serde_json::to_value(&trace).unwrap();
    assert_eq!(v["evaluations"].as_u64().unwrap() as usize, trace.evaluations);
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 50);
    for (i, s) in steps.iter().enumerate() {
        let keys: Vec<&str> = s.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["criterion", "decision", "index", "seconds", "timestep", "tokens_computed"]);
        assert_eq!(s["index"].as_u64().unwrap() as usize, i);
        let d = s["decision"].as_str().unwrap();
        assert!(["full", "refresh", "pruned", "skip-am", "skip-lagrange"].contains(&d), "{d}");
    }
    // criterion exists from step 2 on (three drifts), not after the last step
    assert!(steps[1]["criterion"].is_null() && steps[2]["criterion"].is_number() && steps[49]["criterion"].is_null());
}

/// A denoiser that claims to prune, so the policy plans refresh/pruned steps; it records the
/// step of every call it gets (one per image when the batch runs one image per core).
struct PruningGmm(GaussianMixture, Mutex<Vec<usize>>);
impl Denoiser for PruningGmm {
    fn predict(&self, l: &Tensor, t: f64, c: &Conditioning, ctx: &mut ForwardContext) -> sada::Result<Tensor> {
        self.1.lock().unwrap().push(ctx.step());
        self.0.predict(l, t, c, ctx)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { token_pruning: true, ..Default::default() }
    }
}

#[test]
fn token_plans_follow_the_refresh_schedule_with_a_pruning_denoiser() {
    let shape = [1usize, 4, 16, 16];
    let mut s = solver(SolverKind::DpmSolverMultistep, presets::SD21, serde_json::json!({}), 50);
    // pruning needs computed steps that do not directly follow a skip: no Lagrange phase, long runs
    let cfg = SadaConfig { lagrange_term: 0, max_interval: 2, ..SadaConfig::sd2() };
    let model = PruningGmm(gmm(&shape[1..], presets::SD21, s.prediction_type()), Mutex::new(vec![]));
    let (cond, uncond) = conds(1);
    let guided = Guided::new(&model, cond, Some(uncond), 7.5).unwrap();
    let x = noise(&shape, 11, s.init_noise_sigma());
    let (_, trace) = sample(&guided, s.as_mut(), &mut Sada::new(cfg, 0), x, &mut |_, _| {}).unwrap();
    for st in &trace.steps {
        let inside = (10..47).contains(&st.index);
        match st.decision {
            Decision::Full => assert!(!inside, "step {} full inside acc_range", st.index),
            Decision::Refresh | Decision::Pruned => assert!(inside),
            _ => {}
        }
        assert_eq!(st.tokens_computed.is_some(), st.decision == Decision::Pruned);
        if let Some(k) = st.tokens_computed {
            // at least one token per 3x3 cell of the 16 x 16 grid
            assert!((25..=256).contains(&k), "{k}");
        }
    }
    assert_eq!(trace.steps[10].decision, Decision::Refresh);
    let mut called = model.1.lock().unwrap().clone();
    called.dedup();
    assert_eq!(called.len(), trace.evaluations);
}

#[test]
fn invalid_parameters_are_refused_with_their_name() {
    let mut s = solver(SolverKind::DpmSolverMultistep, presets::SD21, serde_json::json!({}), 20);
    let cases = [
        (SadaConfig { acc_range: (4, 18), lagrange_step: 8, ..SadaConfig::sd2() }, "lagrange_term"),
        (SadaConfig::sd2(), "acc_range"), // (10, 47) does not fit 20 steps
        (SadaConfig { acc_range: (4, 18), lagrange_step: 10, ..SadaConfig::sd2() }, "lagrange_step"),
        (SadaConfig { acc_range: (4, 18), lagrange_step: 12, max_interval: 0, ..SadaConfig::sd2() }, "max_interval"),
        (SadaConfig { acc_range: (0, 3), lagrange_term: 0, ..SadaConfig::sd2() }, "acc_range"),
    ];
    for (cfg, name) in cases {
        let err = Sada::new(cfg, 0).begin(s.as_mut(), &[1, 4, 8, 8], &Capabilities::default()).unwrap_err().to_string();
        assert!(err.contains(&format!("`{name}`")), "{err}");
        assert!(!err.contains('\n'));
    }
    // The example: 20 steps, acc_range (4, 18), lagrange_step 8, int 4 -> 3 anchors only.
    let ok = SadaConfig { acc_range: (4, 18), lagrange_step: 8, lagrange_term: 3, ..SadaConfig::sd2() };
    Sada::new(ok, 0).begin(s.as_mut(), &[1, 4, 8, 8], &Capabilities::default()).unwrap();
}

/// A network that returns NaN from some step on.
struct Broken(AtomicUsize);
impl Denoiser for Broken {
    fn predict(&self, l: &Tensor, _: f64, _: &Conditioning, _: &mut ForwardContext) -> sada::Result<Tensor> {
        let calls = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let v = if calls > 3 { f32::NAN } else { 0.1 };
        Ok(Tensor::full(v, l.shape(), l.device())?)
    }
}

#[test]
fn nan_model_output_is_an_error_naming_the_step() {
    let mut s = solver(SolverKind::DpmSolverMultistep, presets::SD21, serde_json::json!({}), 10);
    let net = Broken(AtomicUsize::new(0));
    let g = Guided::new(&net, Conditioning::new(), None, 1.0).unwrap();
    let err = sample(&g, s.as_mut(), &mut NoAcceleration, noise(&[1, 4, 4, 4], 0, 1.0), &mut |_, _| {}).unwrap_err();
    assert_eq!(err.to_string(), "non-finite values (NaN or inf) in denoiser output at step 3");
}

#[test]
fn guidance_combines_uncond_plus_scale_times_difference() {
    struct Echo;
    impl Denoiser for Echo {
        fn predict(&self, l: &Tensor, _: f64, c: &Conditioning, _: &mut ForwardContext) -> sada::Result<Tensor> {
            // output = latents * w, w from the conditioning (batch, 1, 1, 1)
            Ok(l.broadcast_mul(c.get("w")?)?)
        }
    }
    let w = |v: f32| Tensor::full(v, (1, 1, 1, 1), &Device::Cpu).unwrap();
    let g = Guided::new(&Echo, Conditioning::new().with("w", w(3.0)), Some(Conditioning::new().with("w", w(1.0))), 7.5).unwrap();
    let out = model_full(&g, &Tensor::full(2.0f32, (1, 1, 2, 2), &Device::Cpu).unwrap(), 0.0);
    // u = 2, c = 6: 2 + 7.5 * 4 = 32
    assert_eq!(vals(&out), vec![32.0; 4]);
}

/// §6: after a skipped flow step the criterion is zero by construction (the step used
/// 2 h[-2] - h[-3] and the history repeats h[-2]); it is reported as exactly 0, so runs in f32
/// and f64 (and on other devices) take the same decisions instead of following rounding noise.
#[test]
fn flow_criterion_after_a_skip_is_exactly_zero_so_f32_and_f64_take_one_path() {
    let mut paths = Vec::new();
    for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
        let shape = [1usize, 4, 16, 16];
        let mut s = solver(SolverKind::FlowMatchEulerDiscrete, presets::FLUX, serde_json::json!({}), 50);
        let model = gmm(&shape[1..], presets::FLUX, s.prediction_type());
        let (cond, uncond) = conds(1);
        let guided = Guided::new(&model, cond, Some(uncond), 7.5).unwrap();
        let x = noise(&shape, 11, s.init_noise_sigma()).to_dtype(dtype).unwrap();
        let (_, trace) = sample(&guided, s.as_mut(), &mut Sada::new(SadaConfig::flux(), 0), x, &mut |_, _| {}).unwrap();
        let skipped: Vec<_> = trace.steps.iter().filter(|st| !st.decision.computed()).collect();
        assert!(!skipped.is_empty(), "{dtype:?}: no skips");
        for st in skipped {
            assert_eq!(st.criterion, Some(0.0), "{dtype:?}: step {} was skipped", st.index);
        }
        paths.push(trace.steps.iter().map(|st| st.decision).collect::<Vec<_>>());
    }
    assert_eq!(paths[0], paths[1]);
}
