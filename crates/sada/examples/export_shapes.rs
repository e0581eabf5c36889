//! Export the captioned shapes set for training the embedded default model (tools/
//! train_default_model.py): `cargo run -p sada --example export_shapes -- OUT_DIR [side]`
//! writes `train.safetensors` / `heldout.safetensors` (u8 images [N, side, side, 3]) and
//! `train.txt` / `heldout.txt` (one caption per line, same order).

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
        let mut captions = String::new();
        for s in &scenes {
            pixels.extend_from_slice(&s.render(side).pixels);
            captions.push_str(&s.caption());
            captions.push('\n');
        }
        let images = Tensor::from_vec(pixels, (scenes.len(), side, side, 3), &Device::Cpu)?;
        let tensors: HashMap<String, Tensor> = [("images".to_string(), images)].into();
        candle_core::safetensors::save(&tensors, out.join(format!("{name}.safetensors")))?;
        std::fs::write(out.join(format!("{name}.txt")), captions)?;
        println!("{name}: {} scenes", scenes.len());
    }
    Ok(())
}
