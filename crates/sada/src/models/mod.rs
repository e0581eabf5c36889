//! Networks, loaded from diffusers-format folders with diffusers' key names unchanged.
//!
//! The denoisers are implemented here (not taken from candle-transformers) because SADA's
//! token pruning and block caches live inside their transformer blocks.

pub mod unet;
pub mod source;
pub mod vae;
pub mod vae_encoder;
pub mod weights;

pub use unet::{UNet2DConditionConfig, UNet2DConditionModel};
pub use vae::AutoencoderKl;
pub use source::ModelSource;
