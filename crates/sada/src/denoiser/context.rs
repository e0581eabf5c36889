//! The per-call state of one denoiser evaluation.
//!
//! A model declares where a sub-network may be served from a cache and the calling side decides
//! what happens there:
//! - at a **token site** (one transformer block), [`ForwardContext::token_site`] runs the block on
//!   the tokens this step computes and fills the rest from the block's cache
//!   ([`TokenCache`], SADA's pruning);
//! - at a **branch site** ([`Site`]), the accelerator's [`SiteHook`] may hand back the branch's
//!   output (cached, or extrapolated) so the model skips computing it, and is shown the output
//!   whenever the branch was computed.

use std::collections::HashMap;

use candle_core::Tensor;

use super::gather::Gather;
use super::site::{Site, SiteHook, SiteKind};
use super::token_cache::{BlockTokens, TokenCache};
use super::tokens::TokenPlan;
use crate::error::Result;

/// The per-call state of one denoiser evaluation: the step's token plan and token caches, the
/// accelerator's hook, and, for a call that computes one image of a batch, which one.
pub struct ForwardContext<'a> {
    /// The solver step this evaluation belongs to.
    pub(super) step: usize,
    pub(super) plan: &'a TokenPlan,
    /// What the token sites of each grid size compute this call, derived once per size.
    routes: HashMap<(usize, usize), BlockTokens>,
    pub(super) token_cache: &'a mut TokenCache,
    pub(super) hook: Option<&'a dyn SiteHook>,
    /// The image this call computes and where the batch's images meet at batch-wide sites,
    /// when the batch runs one image per call.
    image: Option<(usize, &'a Gather)>,
    pub(super) replaced: usize,
}

impl<'a> ForwardContext<'a> {
    /// A context for solver step `step`: the token sites compute what `plan` selects and keep
    /// the rest in `token_cache`; the accelerator's `hook` (if any) is consulted at branch sites.
    pub fn new(step: usize, plan: &'a TokenPlan, token_cache: &'a mut TokenCache, hook: Option<&'a dyn SiteHook>) -> Self {
        Self { step, plan, routes: HashMap::new(), token_cache, hook, image: None, replaced: 0 }
    }

    /// The context of image `index` of a batch run one image per call.
    pub(super) fn for_image(
        step: usize,
        plan: &'a TokenPlan,
        token_cache: &'a mut TokenCache,
        hook: Option<&'a dyn SiteHook>,
        index: usize,
        gather: &'a Gather,
    ) -> Self {
        Self { image: Some((index, gather)), ..Self::new(step, plan, token_cache, hook) }
    }

    /// Every token computed, no hook.
    pub fn full(token_cache: &'a mut TokenCache) -> Self {
        Self::new(0, &TokenPlan::Full, token_cache, None)
    }

    /// The solver step this evaluation belongs to.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Which tokens this call computes.
    pub fn plan(&self) -> &TokenPlan {
        self.plan
    }

    /// Run `block` (one transformer block on `[B, N, C]` tokens of an `h x w` grid) as this
    /// call's token plan says; `name` identifies the block's cache.
    pub fn token_site(
        &mut self,
        name: &str,
        (h, w): (usize, usize),
        x: &Tensor,
        block: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        self.token_site_indexed(name, (h, w), x, |x, _| block(x))
    }

    /// As [`Self::token_site`], for a block that needs the indices (u32, ascending, into the
    /// `h x w` grid) of the tokens it is given; None when it is given all of them.
    pub fn token_site_indexed(
        &mut self,
        name: &str,
        (h, w): (usize, usize),
        x: &Tensor,
        block: impl FnOnce(&Tensor, Option<&Tensor>) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        if !self.routes.contains_key(&(h, w)) {
            let t = BlockTokens::route(self.plan, h, w, x.device())?;
            self.routes.insert((h, w), t);
        }
        self.token_cache.apply_indexed(name, &self.routes[&(h, w)], x, block)
    }

    /// Whether the hook acts at sites of `kind`.
    pub fn uses(&self, kind: SiteKind) -> bool {
        self.hook.is_some_and(|h| h.uses(kind))
    }

    /// The branch at `site`: served by the hook, or computed by `compute` and shown to it.
    pub fn branch(&mut self, site: Site, compute: impl FnOnce(&mut Self) -> Result<Tensor>) -> Result<Tensor> {
        let Some(hook) = self.hook.filter(|h| h.uses(site.kind)) else { return compute(self) };
        let images = match self.image {
            Some((i, _)) => i..i + 1,
            None => site.images.clone(),
        };
        let site = Site { images, ..site };
        let gather = self.image.filter(|_| hook.batch_wide(site.kind));
        let served = match gather {
            Some((i, g)) => g.replace(i, hook, self.step, &site)?,
            None => hook.replace(self.step, &site)?,
        };
        if let Some(out) = served {
            self.replaced += 1;
            return Ok(out);
        }
        let out = compute(self)?;
        match gather {
            Some((i, g)) => g.record(i, hook, self.step, &site, &out)?,
            None => hook.record(self.step, &site, &out)?,
        }
        Ok(out)
    }

    /// Branches served by the hook during this call.
    pub fn replaced(&self) -> usize {
        self.replaced
    }
}
