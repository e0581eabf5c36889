//! `sada`: SADA-accelerated diffusion sampling from the command line.

mod args;
mod bench;
mod bench_flux;
mod bench_unet;
mod bench_vae;
mod control;
mod convert;
mod generate;
mod gmm;
mod output;
mod profile;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "sada", version, about = "Stability-guided Adaptive Diffusion Acceleration (SADA, ICML 2025) for diffusion and flow-matching samplers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sample the exact Gaussian-mixture denoiser with and without SADA; print the evaluations
    /// saved and the PSNR of the accelerated result against the unaccelerated one
    Gmm(gmm::GmmArgs),
    /// Generate an image from a prompt with the embedded default model (or a diffusers model
    /// folder, from a prompt or precomputed conditioning), with SADA, one of its rivals or as the
    /// unaccelerated baseline; --compare also runs the baseline
    Generate(Box<generate::GenerateArgs>),
    /// Benchmark SADA and its rivals on a prompt list x seeds against the unaccelerated
    /// baseline and the plain solver at the same cost: evaluations, wall time, speedup, PSNR,
    /// SSIM (and LPIPS), as Markdown, JSON, an image grid and plots (resumable, shardable;
    /// `sada bench merge` joins shards)
    Bench(Box<bench::BenchArgs>),
    /// Time our UNet on the full SD-2.1 or SDXL configuration with random weights (seconds per guided
    /// evaluation, peak memory) and, optionally, full sampling with and without SADA
    BenchUnet(bench_unet::BenchUnetArgs),
    /// Time our Flux transformer at FLUX.1-dev's width with random weights, a few blocks deep:
    /// one forward and one token-pruned forward (compare with tools/bench_flux.sh)
    BenchFlux(bench_flux::BenchFluxArgs),
    /// Time our autoencoder (SD, SDXL or Flux configuration, random weights): decoding, and
    /// optionally encoding, an image of a size, plain or tiled (compare with tools/bench_vae.sh)
    BenchVae(bench_vae::BenchVaeArgs),
    /// Write a model (folder, single file, GGUF or id) as one file in the original single-file
    /// layout: GGUF with f16 / q8_0 / q4 weights (stable-diffusion.cpp, ComfyUI-GGUF, sada's
    /// --denoiser), or f16 / bf16 / f32 safetensors; the denoiser alone, or with --all the whole
    /// Stable Diffusion checkpoint
    Convert(convert::ConvertArgs),
}

/// Keep freed memory in the process: a UNet evaluation allocates and frees the same large
/// activation buffers hundreds of times, and glibc's default of returning them to the kernel
/// made page clearing about a sixth of the run time.
fn keep_freed_memory() {
    #[cfg(target_os = "linux")]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Hand the heap's free pages back to the kernel (glibc's malloc_trim; the thresholds above
/// keep them otherwise): after a large model is dropped, so that what follows does not grow
/// beside its freed, fragmented memory (SDXL's decode at 1024 px after its q8_0 UNet was
/// dropped: 1.9 GiB above the sampling peak without it).
pub(crate) fn trim_heap() {
    #[cfg(target_os = "linux")]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// clap's message up to its usage block, as one line.
fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:")).map(str::trim).collect();
    let first = lines.first().copied().unwrap_or("error: invalid arguments");
    match &lines[1..] {
        [] => first.to_owned(),
        rest if first.ends_with(':') => format!("{first} {}", rest.join(", ")),
        rest => format!("{first} {}", rest.join(" ")),
    }
}

fn main() {
    if std::env::var_os("SADA_NO_MALLOPT").is_none() {
        keep_freed_memory();
    }
    output::install_signal_cleanup();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
                e.exit();
            }
            // one line, as every other error: clap's message without the usage block (its
            // indented lines, such as the missing arguments' names, joined to the first)
            eprintln!("{} (see --help)", one_line(&e.to_string()));
            std::process::exit(2);
        }
    };
    let result = match &cli.command {
        Command::Gmm(a) => gmm::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchUnet(a) => bench_unet::run(a),
        Command::BenchFlux(a) => bench_flux::run(a),
        Command::BenchVae(a) => bench_vae::run(a),
        Command::Convert(a) => convert::run(a),
    };
    if let Err(e) = result {
        // One line: the chain of causes, outermost first (candle appends a backtrace on later
        // lines when RUST_BACKTRACE is set; it is dropped here).
        let msg: Vec<String> = e.chain().map(|c| c.to_string().lines().next().unwrap_or("").to_owned()).collect();
        eprintln!("error: {}", msg.join(": "));
        std::process::exit(1);
    }
}
