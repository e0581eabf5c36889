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

pub mod compare;
pub mod config;
pub mod data;
pub mod denoiser;
pub mod device;
pub mod error;
pub mod family;
pub mod finite;
#[doc(hidden)]
pub mod fuzz;
pub mod gmm;
pub mod image;
pub mod metrics;
pub mod models;
pub mod noise;
pub mod pipelines;
pub mod resample;
pub mod policy;
pub mod sampling;
pub mod schedule;
pub mod solvers;
pub mod text;
pub mod torch_rng;

pub use error::{Error, Result};
pub use family::Family;
