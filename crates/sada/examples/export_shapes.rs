//! Export the captioned shapes set for training the embedded default model (tools/
//! train_default_model.py): `cargo run -p sada --example export_shapes -- OUT_DIR [side]`
//! writes `train.safetensors` / `heldout.safetensors` (u8 images [N, side, side, 3]) and
//! `train.txt` / `heldout.txt` (one caption per line, same order); each safetensors file also
//! holds `outlines` (u8 [N, side, side, 3], `Scene::outline`: the embedded ControlNet's control
//! images).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use sada::data::shapes::Scene;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = std::path::PathBuf::from(args.get(1).ok_or("usage: export_shapes OUT_DIR [side]")?);
    let side: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    std::fs::create_dir_all(&out)?;
    let (held, train): (Vec<Scene>, Vec<Scene>) = Scene::all().into_iter().partition(|s| s.is_held_out());
    for (name, scenes) in [("train", train), ("heldout", held)] {
        let mut pixels = Vec::with_capacity(scenes.len() * side * side * 3);
        let mut outlines = Vec::with_capacity(pixels.capacity());
        let mut captions = String::new();
        for s in &scenes {
            pixels.extend_from_slice(&s.render(side).pixels);
            outlines.extend_from_slice(&s.outline(side).pixels);
            captions.push_str(&s.caption());
            captions.push('\n');
        }
        let images = Tensor::from_vec(pixels, (scenes.len(), side, side, 3), &Device::Cpu)?;
        let outlines = Tensor::from_vec(outlines, (scenes.len(), side, side, 3), &Device::Cpu)?;
        let tensors: HashMap<String, Tensor> = [("images".to_string(), images), ("outlines".to_string(), outlines)].into();
        candle_core::safetensors::save(&tensors, out.join(format!("{name}.safetensors")))?;
        std::fs::write(out.join(format!("{name}.txt")), captions)?;
        println!("{name}: {} scenes", scenes.len());
    }
    Ok(())
}
