//! Pipelines: assemble a model folder's parts (denoiser, scheduler config, decoder) with a solver
//! and a policy. No numerics here.

pub mod default_model;
pub mod image;
pub mod stable_diffusion;

pub use stable_diffusion::{GenerateOptions, PipelineInputs, StableDiffusion};
