//! Write a grid of the procedural captioned training scenes, with their captions on stdout:
//! `cargo run -p sada --example shapes_grid -- out.png [count] [side]`.

use sada::data::shapes::Scene;
use sada::image::{hstack, png_bytes, RgbImage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).cloned().unwrap_or_else(|| "shapes.png".into());
    let count: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let side: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let scenes: Vec<Scene> = (0..count).map(|i| Scene::nth(0, i)).collect();
    for (i, s) in scenes.iter().enumerate() {
        println!("{i:3}: {}", s.caption());
    }
    let images: Vec<RgbImage> = scenes.iter().map(|s| s.render(side)).collect();
    let refs: Vec<&RgbImage> = images.iter().collect();
    std::fs::write(&out, png_bytes(&hstack(&refs), &[])?)?;
    Ok(())
}
