//! # sada
//!
//! Stability-guided Adaptive Diffusion Acceleration (SADA, Jiang et al., ICML 2025) for
//! diffusion and flow-matching samplers.
//!
//! The crate is laid out the way the method is:
//! - [`schedule`] and [`solvers`]: noise schedules and ODE solvers, exact ports of diffusers;
//!   they know nothing about networks.
//! - [`policy`]: what each step costs. [`policy::Sada`] reads the solver's trajectory, decides
//!   whether the next step is computed in full, computed on a subset of tokens, or skipped, and
//!   supplies the approximation for skipped steps; its rivals sit beside it, and
//!   [`policy::Acceleration`] names them all as values.
//! - [`denoiser`]: the one trait every network implements, what a network lets an accelerator
//!   do inside it, the per-call context that carries it, and classifier-free guidance.
//! - [`models`]: the networks (UNet, autoencoder) and the token-cache layer SADA's pruning uses.
//! - [`pipelines`]: text encoder + denoiser + solver + accelerator + decoder, from a model folder.
//! - [`sampling`]: the loop that runs solver + policy + denoiser and records a [`sampling::Trace`].
//! - [`gmm`]: the exact posterior-mean denoiser of a Gaussian mixture, for tests and benchmarks.
//! - [`family`]: the model families the published settings and default solvers are chosen by.
//! - [`compare`]: a method against the unaccelerated baseline (speedup, PSNR, SSIM, LPIPS).
//!
//! # Quick start
//!
//! An image from a prompt with the embedded model, SADA at its published settings, offline:
//!
//! ```
//! use sada::pipelines::{default_model, Pipeline, PromptOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = sada::device::by_name("cpu")?;
//! let mut pipe = default_model::load(&device)?;
//! let prompt = "a large red circle in the center on a blue background".to_string();
//! let inputs = pipe.encode_prompts(&[prompt], &PromptOptions::default())?;
//! let opts = pipe.default_options(); // 50 DPM-Solver++ steps, SADA
//! let (latents, trace) = pipe.generate(&inputs, &opts, &mut |_done, _total| {})?;
//! let image = sada::image::to_rgb(&pipe.decode(&latents)?.expect("the embedded model decodes"))?;
//! assert_eq!((image.width, image.height), (32, 32));
//! assert!(trace.evaluations < 50, "SADA skipped steps: {}", trace.summary());
//! # Ok(())
//! # }
//! ```
//!
//! Other models load from a folder, a single file or a Hugging Face id through
//! [`models::ModelRef`] and [`pipelines::load_pipeline`]; an accelerator of your own runs
//! through [`pipelines::Pipeline::generate_with`].

#![warn(missing_docs)]

pub mod compare;
pub mod config;
pub mod data;
pub mod denoiser;
pub mod device;
pub mod error;
pub mod family;
pub mod files;
pub mod finite;
#[doc(hidden)]
pub mod fuzz;
pub mod gmm;
pub mod image;
pub mod metrics;
pub mod models;
pub mod noise;
pub mod pipelines;
pub mod policy;
pub mod resample;
pub mod sampling;
pub mod schedule;
pub mod solvers;
pub mod text;
pub mod torch_rng;

pub use error::{Error, Result};
pub use family::Family;
