//! Generate an image from a prompt with the embedded model and SADA, offline:
//! `cargo run -p sada --example quickstart` writes `quickstart.png`.

use sada::pipelines::{default_model, Pipeline, PromptOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = sada::device::by_name("auto")?;
    let mut pipe = default_model::load(&device)?;
    let prompt = "a large red circle in the center on a blue background".to_string();
    let inputs = pipe.encode_prompts(&[prompt], &PromptOptions::default())?;
    // diffusers' defaults for this model, SADA at its published settings
    let opts = pipe.default_options();
    let (latents, trace) = pipe.generate(&inputs, &opts, &mut |_, _| {})?;
    let image = sada::image::to_rgb(&pipe.decode(&latents)?.ok_or("the model has no decoder")?)?;
    std::fs::write("quickstart.png", sada::image::png_bytes(&image, &[])?)?;
    println!("{} network evaluations for {} steps [{}]: quickstart.png", trace.evaluations, trace.steps.len(), trace.summary());
    Ok(())
}
