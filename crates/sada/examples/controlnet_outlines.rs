//! How well the embedded model's ControlNet makes shapes follow their outline, on held-out
//! captions (docs/default-model/CONTROLNET.md): `cargo run --release -p sada --example
//! controlnet_outlines -- [CONTROLNET_DIR|embedded] [CASES] [STEPS]` (default: the embedded
//! ControlNet, 40 cases, 15 steps). Three settings, each with and without the ControlNet:
//! - `matching`: a caption and its own shape's outline;
//! - `moved`: a caption and the outline of the same shape at another position;
//! - `empty prompt`: no caption, the outline alone.

use candle_core::{DType, Device};
use sada::data::shapes::Scene;
use sada::models::controlnet::ControlNetModel;
use sada::pipelines::default_model;

/// A caption, the scene it describes, and the scene whose outline steers it.
type Case = (String, Scene, Scene);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let device = Device::Cpu;
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(40);
    let steps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(15);
    let held: Vec<Scene> = Scene::all().into_iter().filter(|s| s.is_held_out()).collect();
    let scenes: Vec<Scene> = (0..n).map(|i| held[i * held.len() / n]).collect();
    let settings: [(&str, Vec<Case>); 3] = [
        ("matching", scenes.iter().map(|s| (s.caption(), *s, *s)).collect()),
        ("moved", scenes.iter().map(|s| (s.caption(), *s, s.moved())).collect()),
        ("empty prompt", scenes.iter().map(|s| (String::new(), *s, *s)).collect()),
    ];
    let mut plain = default_model::load(&device)?;
    let mut controlled = default_model::load(&device)?;
    let cn = match args.get(1).filter(|a| *a != "embedded") {
        Some(dir) => ControlNetModel::load(std::path::Path::new(dir), DType::F32, &device)?,
        None => sada::pipelines::Pipeline::bundled_controlnet(&controlled, DType::F32, &device)?.ok_or("the embedded model has no ControlNet")?,
    };
    controlled.add_controlnet(cn)?;
    println!("| setting | cases | IoU with the outline, ControlNet | without (untrained) | IoU with the caption's shape, ControlNet | without |");
    println!("|---|---|---|---|---|---|");
    for (name, cases) in &settings {
        let with = default_model::outline_overlap(&mut controlled, cases, steps)?;
        let without = default_model::outline_overlap(&mut plain, cases, steps)?;
        let mean = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
        println!(
            "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            cases.len(),
            mean(&with, |x| x.0),
            mean(&without, |x| x.0),
            mean(&with, |x| x.1),
            mean(&without, |x| x.1)
        );
    }
    Ok(())
}
