//! The one trait every network implements, what a network can offer an accelerator, and
//! classifier-free guidance on top of it.
//!
//! Models hold weights only. Everything that lives for one image (the token caches of SADA's
//! pruning) or one call (which tokens to compute, what an accelerator serves at a cache site)
//! comes in through a [`ForwardContext`], so a model is shared by reference and never reset.

pub mod batch;
pub mod conditioning;
pub mod context;
mod gather;
pub mod guided;
pub mod site;
pub mod token_cache;
pub mod tokens;

use candle_core::Tensor;

use crate::error::Result;

pub use conditioning::Conditioning;
pub use context::ForwardContext;
pub use guided::Guided;
pub use site::{Site, SiteHook, SiteKind};
pub use token_cache::{BlockTokens, TokenCache};
pub use tokens::{TokenPlan, TokenSelection};

/// What a denoiser lets an accelerator do inside its forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Transformer blocks compute a token subset and read the rest from a per-block cache
    /// ([`TokenPlan::Pruned`]).
    pub token_pruning: bool,
    /// Skip connections 0..n whose deep branch can be served from a cache
    /// ([`SiteKind::Deep`]): the U-Net's skips; 0 for networks without them.
    pub deep_branches: usize,
    /// The network after its input layer ([`SiteKind::Rest`]`(0)`) and after its first block
    /// (`Rest(1)`, with the first block's residual as the signal) can be replaced by a residual.
    pub residual_sites: bool,
    /// The side of the latent patch one token of the pruning blocks covers at their finest
    /// level: 1 for a U-Net (a token per latent pixel), 2 for Flux (2 x 2 patches); 0 reads as 1.
    pub token_patch: usize,
    /// The `Rest(0)` site carries a probe: the first block's timestep-modulated input (a DiT's
    /// adaLN input, TeaCache's signal).
    pub input_probe: bool,
}

impl Capabilities {
    /// Every branch site a model with these capabilities may consult a hook at: both `Rest`
    /// sites (whether or not it offers them as residuals, a model may still pass them) and its
    /// deep branches. The batch executor reads it to see where a hook decides batch-wide.
    pub fn branch_sites(&self) -> Vec<SiteKind> {
        [SiteKind::Rest(0), SiteKind::Rest(1)].into_iter().chain((0..self.deep_branches).map(SiteKind::Deep)).collect()
    }
}

/// A denoising network: given a batch of (scaled) latents at a timestep, return the raw
/// prediction (epsilon, v or velocity, per its `prediction_type`).
pub trait Denoiser: Sync {
    /// What this network lets an accelerator do; nothing by default.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// The raw prediction for `latents` at `timestep` under `cond`; `ctx` says which tokens to
    /// compute and may serve branches of the network from caches.
    fn predict(&self, latents: &Tensor, timestep: f64, cond: &Conditioning, ctx: &mut ForwardContext) -> Result<Tensor>;

    /// Whether the images of a batch may be predicted one per call ([`batch::predict`]): true
    /// unless they take different paths through the network (a ControlNet in guess mode skips
    /// the unconditional image), which would leave their token caches unlike each other.
    fn splits(&self, _cond: &Conditioning) -> Result<bool> {
        Ok(true)
    }

    /// One evaluation with every token computed and nothing served from a cache.
    fn predict_full(&self, latents: &Tensor, timestep: f64, cond: &Conditioning) -> Result<Tensor> {
        let mut cache = TokenCache::default();
        self.predict(latents, timestep, cond, &mut ForwardContext::full(&mut cache))
    }
}
