//! `sada`: SADA-accelerated diffusion sampling from the command line.

mod args;
mod generate;
mod gmm;
mod output;

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
    /// Generate with a Stable Diffusion model folder (diffusers layout) from precomputed
    /// conditioning, with SADA or as the unaccelerated baseline
    Generate(Box<generate::GenerateArgs>),
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Gmm(a) => gmm::run(a),
        Command::Generate(a) => generate::run(a),
    };
    if let Err(e) = result {
        // One line: the chain of causes, outermost first.
        let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", msg.join(": "));
        std::process::exit(1);
    }
}
