//! A model you have (a diffusers folder, a single-file checkpoint or a Hugging Face id in the
//! local cache) with SADA, against the unaccelerated baseline from the same noise:
//! `cargo run -p sada --example model_folder -- MODEL "a prompt"`.

use candle_core::DType;
use sada::compare::{Fidelity, Run};
use sada::models::hub::HubOptions;
use sada::models::ModelRef;
use sada::pipelines::{load_pipeline, GenerateOptions, PromptOptions};
use sada::policy::Acceleration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(model), Some(prompt)) = (args.get(1), args.get(2)) else {
        return Err("usage: model_folder MODEL PROMPT (MODEL: a diffusers folder, a .safetensors checkpoint or org/name)".into());
    };
    let device = sada::device::by_name("auto")?;
    let model_ref = ModelRef::parse(model).ok_or("MODEL is no folder, no file and no Hugging Face id")?;
    let mut pipe = load_pipeline(model_ref.pipeline_source(&HubOptions::default())?, DType::F32, &device)?;
    let inputs = pipe.encode_prompts(std::slice::from_ref(prompt), &PromptOptions::default())?;
    let sada = pipe.default_options();
    pipe.validate(&sada)?;
    let baseline = Run::sample(pipe.as_mut(), &inputs, &GenerateOptions { acceleration: Acceleration::default(), ..sada.clone() }, &mut |_, _| {})?;
    let run = Run::sample(pipe.as_mut(), &inputs, &sada, &mut |_, _| {})?;
    let (image, base) = (run.image(pipe.as_ref())?, baseline.image(pipe.as_ref())?);
    let fidelity = Fidelity::of(&image, &base, None)?;
    let speedup = run.speedup_over(&baseline);
    println!(
        "SADA: {} of {} evaluations, {:.2}x faster, PSNR {:.2} dB, SSIM {:.4} against the baseline",
        run.trace.evaluations, baseline.trace.evaluations, speedup.wall, fidelity.psnr_db, fidelity.ssim
    );
    std::fs::write("sada.png", sada::image::png_bytes(&image, &[])?)?;
    std::fs::write("baseline.png", sada::image::png_bytes(&base, &[])?)?;
    Ok(())
}
