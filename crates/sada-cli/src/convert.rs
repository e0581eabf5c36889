//! `sada convert`: write a model sada loads as one GGUF or safetensors file in the original
//! single-file layout (the library's `models::convert`), staged so that no partial file is left.

use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use sada::files::human_bytes;
use sada::models::convert::{ConvertOptions, Format, Plan};
use sada::models::layers::weight::WeightType;

use crate::args::ModelArgs;
use crate::output;

/// `sada convert`'s flags.
#[derive(Debug, Args)]
#[command(mut_arg("model", |a| a.required(true).help(
    "The model to write: a diffusers folder, a single-file checkpoint (safetensors or GGUF), or a Hugging Face id (org/name) looked up in the \
     local Hugging Face cache and downloaded when missing unless --offline"
)))]
pub struct ConvertArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The file to write: `.gguf` (stable-diffusion.cpp, ComfyUI-GGUF, `sada --denoiser`) or
    /// `.safetensors` (ComfyUI, A1111, diffusers' from_single_file); the extension picks the format
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// The weights' type: f32, f16, bf16, and for GGUF also q8_0, q4_0, q4_k (ggml's blocks). GGUF
    /// keeps vectors (biases, norms) in f32 and gives a tensor whose rows are not whole blocks
    /// (3x3 convolutions) the nearest wider type that fits (q8_0, else f16)
    #[arg(long, value_name = "TYPE", default_value = "f16", value_parser = parse_type)]
    pub weights: WeightType,
    /// Write the whole Stable Diffusion checkpoint (UNet, VAE, text encoders), as a single-file
    /// checkpoint holds it, not only the denoiser
    #[arg(long)]
    pub all: bool,
}

fn parse_type(s: &str) -> Result<WeightType, String> {
    WeightType::parse(s).map_err(|e| e.to_string())
}

/// Free bytes in the folder `dir`, where the system says.
fn free_space(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct it is given; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut s) == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
    }
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    let format = match args.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("gguf") => Format::Gguf,
        Some("safetensors") => Format::Safetensors,
        _ => bail!("--out {}: expected a .gguf or .safetensors file name", args.out.display()),
    };
    output::check_writable("--out", &args.out)?;
    let Some((source, name)) = crate::args::model_source(&args.model)? else {
        bail!("--model is required: the model to convert (a diffusers folder, a single file or a Hugging Face id)");
    };
    // the output must not replace a file it is read from
    let inputs: Vec<PathBuf> = [args.model.model.as_ref().map(PathBuf::from), args.model.denoiser.clone()].into_iter().flatten().collect();
    // (an input named through a link counts as the file it resolves to)
    if inputs.iter().any(|i| i.canonicalize().is_ok_and(|i| output::same_file(&i, &args.out))) {
        bail!("--out {} is the model being read; write to another file", args.out.display());
    }
    let options = ConvertOptions { format, weights: args.weights, all_components: args.all };
    let plan = Plan::new(&source, options).with_context(|| format!("--model {name}"))?;
    let size = plan.file_size();
    let dir = output::folder(&args.out);
    if let Some(free) = free_space(dir) {
        if size > free {
            bail!("--out {}: the file takes {}, and {} has {} free", args.out.display(), human_bytes(size), dir.display(), human_bytes(free));
        }
    }
    eprintln!(
        "writing {} ({:?}; {}): {} tensors, {}, weights {}",
        args.out.display(),
        plan.family,
        plan.components.join(", "),
        plan.tensors.len(),
        human_bytes(size),
        args.weights.name()
    );
    let start = Instant::now();
    let bar = crate::args::progress_of(plan.tensors.len(), "convert", "tensors");
    let staged = output::stage(&args.out, |tmp| {
        let file = std::fs::OpenOptions::new().write(true).truncate(true).open(tmp)?;
        let mut w = BufWriter::with_capacity(8 << 20, file);
        plan.write(&mut w, |i, _| bar.set_position(i as u64))?;
        Ok(())
    })?;
    staged.commit()?;
    bar.finish_and_clear();
    eprintln!("wrote {} ({}) in {:.1} s", args.out.display(), human_bytes(size), start.elapsed().as_secs_f64());
    Ok(())
}
