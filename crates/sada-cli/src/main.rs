//! `sada`: SADA-accelerated diffusion sampling from the command line.

mod args;
mod bench;
mod bench_unet;
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
    /// folder, from a prompt or precomputed conditioning), with SADA or as the unaccelerated
    /// baseline; --compare runs both
    Generate(Box<generate::GenerateArgs>),
    /// Benchmark SADA on a prompt list x seeds against the unaccelerated baseline and the plain
    /// solver at SADA's evaluation count: evaluations, wall time, speedup, PSNR and SSIM, as
    /// Markdown, JSON, an image grid and a criterion plot (resumable output folder)
    Bench(bench::BenchArgs),
    /// Time our UNet on the full SD-2.1 configuration with random weights (seconds per guided
    /// evaluation, peak memory) and, optionally, full sampling with and without SADA
    BenchUnet(bench_unet::BenchUnetArgs),
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

fn main() {
    if std::env::var_os("SADA_NO_MALLOPT").is_none() {
        keep_freed_memory();
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Gmm(a) => gmm::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchUnet(a) => bench_unet::run(a),
    };
    if let Err(e) = result {
        // One line: the chain of causes, outermost first (candle appends a backtrace on later
        // lines when RUST_BACKTRACE is set; it is dropped here).
        let msg: Vec<String> = e.chain().map(|c| c.to_string().lines().next().unwrap_or("").to_owned()).collect();
        eprintln!("error: {}", msg.join(": "));
        std::process::exit(1);
    }
}
