//! The fixture comparisons against diffusers, gathered into one test binary for GPU builds, so
//! tools/gpu_check.sh carries one binary to the GPU machine and runs them there with
//! `SADA_TEST_DEVICE=cuda` (same tolerances as on the CPU). Empty in CPU-only builds, where the
//! files run as their own test binaries.
#![cfg(any(feature = "cuda", feature = "metal"))]

#[path = "unet_fixtures.rs"]
mod unet_fixtures;

#[path = "sd_pipelines.rs"]
mod sd_pipelines;

#[path = "text_fixtures.rs"]
mod text_fixtures;

#[path = "rival_fixtures.rs"]
mod rival_fixtures;

#[path = "default_model.rs"]
mod default_model;
