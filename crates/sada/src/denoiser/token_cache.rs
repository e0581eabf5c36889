//! SADA's token-wise cache-assisted pruning (`docs/method.md` §7) as one reusable layer.
//!
//! A model only marks where a cacheable sub-network is (one transformer block, through
//! [`ForwardContext::token_site`](crate::denoiser::ForwardContext::token_site)); this module does
//! the rest, in one visible place: gather the computed tokens -> run the block on them only ->
//! scatter their outputs into the block's cache -> read every other token from the cache.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::tokens::TokenPlan;

/// What one block computes this call.
#[derive(Debug, Clone)]
pub enum BlockTokens {
    /// Every token; the block's cache is overwritten with its output.
    All,
    /// Only `indices` (u32, ascending) of the N tokens; `mask` ([1, N, 1], u8) flags them.
    Subset {
        /// The computed tokens' indices (u32, ascending) into the N.
        indices: Tensor,
        /// [1, N, 1] u8: 1 for a computed token, 0 for one read from the cache.
        mask: Tensor,
    },
}

impl BlockTokens {
    /// What the blocks on an `h x w` token grid compute under `plan`: a pruned plan prunes the
    /// grids its selection reaches (within `max_downsample` of the latent), all tokens elsewhere.
    pub fn route(plan: &TokenPlan, h: usize, w: usize, device: &Device) -> candle_core::Result<Self> {
        let TokenPlan::Pruned(sel) = plan else { return Ok(BlockTokens::All) };
        let Some(mask) = sel.mask_at(h, w) else { return Ok(BlockTokens::All) };
        let idx: Vec<u32> = mask.iter().enumerate().filter(|(_, &c)| c).map(|(i, _)| i as u32).collect();
        let flags: Vec<u8> = mask.iter().map(|&c| c as u8).collect();
        let n = mask.len();
        Ok(BlockTokens::Subset { indices: Tensor::from_vec(idx.clone(), idx.len(), device)?, mask: Tensor::from_vec(flags, (1, n, 1), device)? })
    }
}

/// Each block's output for every token at the last call that ran it, by block name. One per
/// image: a new image starts from an empty cache.
#[derive(Debug, Default)]
pub struct TokenCache {
    outputs: HashMap<String, Tensor>,
}

impl TokenCache {
    /// Run `block` on `x` ([B, N, C]) computing `tokens`; the output's other tokens come from
    /// the cache of `site`. Without a usable cache (first call, or a new size) every token is
    /// computed.
    pub fn apply(
        &mut self,
        site: &str,
        tokens: &BlockTokens,
        x: &Tensor,
        block: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        self.apply_indexed(site, tokens, x, |x, _| block(x))
    }

    /// As [`Self::apply`], for a block that needs to know which tokens it runs on (a DiT's
    /// rotary positions): `block` gets the indices of the gathered tokens, None for all.
    pub fn apply_indexed(
        &mut self,
        site: &str,
        tokens: &BlockTokens,
        x: &Tensor,
        block: impl FnOnce(&Tensor, Option<&Tensor>) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let out = match (tokens, self.outputs.get(site)) {
            (BlockTokens::Subset { indices, mask }, Some(cache)) if cache.dims() == x.dims() => {
                let computed = block(&x.index_select(indices, 1)?, Some(indices))?.contiguous()?;
                let scattered = x.zeros_like()?.index_add(indices, &computed, 1)?;
                mask.broadcast_as(x.shape())?.where_cond(&scattered, cache)?
            }
            _ => block(x, None)?,
        };
        self.outputs.insert(site.to_owned(), out.clone());
        Ok(out)
    }

    /// Whether no block has a cached output yet (a fresh image).
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// Each image's slice of a cache kept for a batch of `n` (views, no copies), for a call
    /// that runs the images separately; None when some site's cache holds another batch size.
    pub fn split_batch(&self, n: usize) -> candle_core::Result<Option<Vec<TokenCache>>> {
        let mut parts: Vec<TokenCache> = (0..n).map(|_| TokenCache::default()).collect();
        for (site, t) in &self.outputs {
            if t.dim(0)? != n {
                return Ok(None);
            }
            for (i, part) in parts.iter_mut().enumerate() {
                part.outputs.insert(site.clone(), t.narrow(0, i, 1)?);
            }
        }
        Ok(Some(parts))
    }

    /// The batch's cache from its images' caches, in order (the sites every image has).
    pub fn merge_batch(parts: Vec<TokenCache>) -> candle_core::Result<TokenCache> {
        let Some(first) = parts.first() else { return Ok(TokenCache::default()) };
        let mut outputs = HashMap::new();
        for site in first.outputs.keys() {
            if let Some(all) = parts.iter().map(|p| p.outputs.get(site)).collect::<Option<Vec<&Tensor>>>() {
                outputs.insert(site.clone(), Tensor::cat(&all, 0)?);
            }
        }
        Ok(TokenCache { outputs })
    }

    /// The cached output of `site` ([B, N, C]), if any.
    pub fn output(&self, site: &str) -> Option<&Tensor> {
        self.outputs.get(site)
    }

    /// The names of the sites that have a cache.
    pub fn sites(&self) -> impl Iterator<Item = &str> {
        self.outputs.keys().map(String::as_str)
    }
}
