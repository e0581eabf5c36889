//! Networks, loaded from diffusers-format folders with diffusers' key names unchanged.
//!
//! The denoisers are implemented here (not taken from a model zoo such as candle-transformers) because
//! accelerators act inside them: each marks where its cacheable sub-networks are, and the
//! calling side decides what runs there (see `denoiser::ForwardContext`).

pub mod controlnet;
pub mod convert;
pub mod flux;
pub mod gguf;
pub mod hub;
pub mod kernels;
pub mod layers;
pub mod resolve;
pub mod single_file;
pub mod source;
pub mod unet;
pub mod vae;
pub mod vocoder;
pub mod weights;

pub use controlnet::ControlNetModel;
pub use flux::FluxTransformer2DModel;
pub use resolve::ModelRef;
pub use source::ModelSource;
pub use unet::{AdditionalResiduals, UNet2DConditionConfig, UNet2DConditionModel};
pub use vae::AutoencoderKl;
