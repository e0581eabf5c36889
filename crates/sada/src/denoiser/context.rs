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

use super::tokens::TokenPlan;
use crate::error::Result;
use super::token_cache::{BlockTokens, TokenCache};

/// Where in a network a branch site sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SiteKind {
    /// The deep branch of a U-Net below skip connection `k`: everything computed after skip k
    /// is produced and before it is consumed, i.e. the input of the up layer that takes skip k
    /// (DeepCache's cached feature; skip 0 is the input layer's output). Not combined with
    /// `Rest(1)`: a model that is asked for both serves `Rest(1)`.
    Deep(usize),
    /// Everything after the network's first `n` blocks up to its output head, as a residual on
    /// the state there: 0 = after the input layer, 1 = after the first block
    /// (First-Block-Cache, TaylorSeer).
    Rest(usize),
}

/// A branch site as the model reaches it.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    pub kind: SiteKind,
    /// The state the branch starts from; a [`SiteKind::Rest`] branch's output is `base` plus
    /// what the rest of the network adds.
    pub base: &'a Tensor,
    /// `Rest(1)`: the first block's residual (its output minus its input).
    pub probe: Option<&'a Tensor>,
}

/// An accelerator's say at branch sites. Every method has a do-nothing default.
pub trait SiteHook {
    /// Whether this hook acts at sites of `kind` (models skip a site's bookkeeping otherwise).
    fn uses(&self, _kind: SiteKind) -> bool {
        false
    }
    /// Before the branch runs at solver step `step`: its output, to skip computing it; None
    /// computes it.
    fn replace(&mut self, _step: usize, _site: &Site) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// After the branch was computed at solver step `step`: its output.
    fn record(&mut self, _step: usize, _site: &Site, _output: &Tensor) -> Result<()> {
        Ok(())
    }
    /// This hook's state for each image of a batch of `n`, so that a call can run one image per
    /// core ([`ForwardContext::per_image`]) with one part per image; taken back by
    /// [`Self::merge_batch`] after the call. None (the default): the hook's decisions or state
    /// span the batch, and calls it acts in run whole.
    fn split_batch(&self, _n: usize) -> Result<Option<Vec<Box<dyn ImageHook>>>> {
        Ok(None)
    }
    /// The parts [`Self::split_batch`] made, in image order, after the call they served.
    fn merge_batch(&mut self, _parts: Vec<Box<dyn ImageHook>>) -> Result<()> {
        Ok(())
    }
}

/// One image's part of a split [`SiteHook`]: sent to the image's thread, and handed back to
/// the hook that made it (which knows its concrete type).
pub trait ImageHook: SiteHook + Send {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
}

impl<T: SiteHook + Send + 'static> ImageHook for T {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// The parts of a split hook as their concrete type `T` (what [`SiteHook::merge_batch`] needs).
pub fn downcast_parts<T: 'static>(parts: Vec<Box<dyn ImageHook>>) -> Result<Vec<T>> {
    parts
        .into_iter()
        .map(|p| p.into_any().downcast::<T>().map(|b| *b).map_err(|_| crate::error::Error::internal("a split hook was handed parts of another type")))
        .collect()
}

pub struct ForwardContext<'a> {
    /// The solver step this evaluation belongs to.
    step: usize,
    plan: &'a TokenPlan,
    /// What the token sites of each grid size compute this call, derived once per size.
    routes: HashMap<(usize, usize), BlockTokens>,
    token_cache: &'a mut TokenCache,
    hook: Option<&'a mut dyn SiteHook>,
    replaced: usize,
}

impl<'a> ForwardContext<'a> {
    pub fn new(step: usize, plan: &'a TokenPlan, token_cache: &'a mut TokenCache, hook: Option<&'a mut dyn SiteHook>) -> Self {
        Self { step, plan, routes: HashMap::new(), token_cache, hook, replaced: 0 }
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

    pub fn uses(&self, kind: SiteKind) -> bool {
        self.hook.as_ref().is_some_and(|h| h.uses(kind))
    }

    /// The hook's replacement for the branch at `site`, if it gives one.
    pub fn replace(&mut self, site: &Site) -> Result<Option<Tensor>> {
        let Some(hook) = self.hook.as_deref_mut() else { return Ok(None) };
        let out = hook.replace(self.step, site)?;
        self.replaced += out.is_some() as usize;
        Ok(out)
    }

    /// Show the hook a computed branch output.
    pub fn record(&mut self, site: &Site, output: &Tensor) -> Result<()> {
        match self.hook.as_deref_mut() {
            Some(hook) => hook.record(self.step, site, output),
            None => Ok(()),
        }
    }

    /// The branch at `site`: served by the hook, or computed by `compute` and shown to it.
    pub fn branch(&mut self, site: Site, compute: impl FnOnce(&mut Self) -> Result<Tensor>) -> Result<Tensor> {
        if !self.uses(site.kind) {
            return compute(self);
        }
        if let Some(out) = self.replace(&site)? {
            return Ok(out);
        }
        let out = compute(self)?;
        self.record(&site, &out)?;
        Ok(out)
    }

    /// Run `f` once per image of `batch` (the call's leading tensor; only its batch size and
    /// device are read), the images in parallel on rayon's threads, each with its own slice of the token cache and its own part of the hook (merged
    /// back afterwards). On a multi-core CPU a whole image per core beats splitting every op
    /// across the cores: no hand-over between threads inside an op, and small ops stay on one
    /// core (docs/performance.md). `sites`: every branch site the model has. None, with nothing
    /// run, when the call cannot or need not be split: a single image, a GPU or a single
    /// thread; the hook acts at one of the sites and cannot be split
    /// ([`SiteHook::split_batch`]); or the token cache holds another batch size. A hook that acts
    /// at none of them is never consulted by the model, so the per-image calls run without it.
    pub fn per_image<T: Send>(&mut self, batch: &Tensor, sites: &[SiteKind], f: impl Fn(usize, &mut ForwardContext) -> Result<T> + Sync) -> Result<Option<Vec<T>>> {
        use rayon::prelude::*;
        let n = batch.dim(0)?;
        if n < 2 || !batch.device().is_cpu() || rayon::current_num_threads() < 2 {
            return Ok(None);
        }
        let hook_parts: Vec<Option<Box<dyn ImageHook>>> = match self.hook.as_deref() {
            Some(hook) if sites.iter().any(|&k| hook.uses(k)) => match hook.split_batch(n)? {
                Some(parts) if parts.len() == n => parts.into_iter().map(Some).collect(),
                _ => return Ok(None),
            },
            _ => (0..n).map(|_| None).collect(),
        };
        let Some(caches) = self.token_cache.split_batch(n)? else { return Ok(None) };
        let (step, plan) = (self.step, self.plan);
        // a subscriber set for this thread only (tracing's with_default) also sees the images' spans
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        type Done<T> = (T, TokenCache, Option<Box<dyn ImageHook>>, usize);
        let done: Vec<Result<Done<T>>> = caches
            .into_par_iter()
            .zip(hook_parts)
            .enumerate()
            .map(|(i, (mut cache, mut part))| {
                tracing::dispatcher::with_default(&dispatch, || {
                    let mut ctx = ForwardContext::new(step, plan, &mut cache, part.as_deref_mut().map(|h| h as &mut dyn SiteHook));
                    let out = f(i, &mut ctx)?;
                    let replaced = ctx.replaced;
                    Ok((out, cache, part, replaced))
                })
            })
            .collect();
        let mut outs = Vec::with_capacity(n);
        let (mut caches, mut parts) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut replaced = 0;
        for d in done {
            let (out, cache, part, r) = d?;
            outs.push(out);
            caches.push(cache);
            parts.extend(part);
            // every image meets the same sites: a branch served for all of them counts once
            replaced = replaced.max(r);
        }
        *self.token_cache = TokenCache::merge_batch(caches)?;
        if let (Some(hook), false) = (self.hook.as_deref_mut(), parts.is_empty()) {
            hook.merge_batch(parts)?;
        }
        self.replaced += replaced;
        Ok(Some(outs))
    }

    /// Branches served by the hook during this call.
    pub fn replaced(&self) -> usize {
        self.replaced
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::denoiser::token_cache::BlockTokens;

    struct Watches(Option<SiteKind>);

    impl SiteHook for Watches {
        fn uses(&self, kind: SiteKind) -> bool {
            self.0 == Some(kind)
        }
    }

    #[test]
    fn per_image_runs_unless_the_hook_acts_at_a_site_of_the_model_or_the_cache_holds_another_batch() {
        let sites = [SiteKind::Rest(0), SiteKind::Deep(0)];
        let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let pair = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        for (watched, split) in [(None, true), (Some(SiteKind::Rest(1)), true), (Some(SiteKind::Deep(0)), false)] {
            let out = two.install(|| {
                let mut hook = Watches(watched);
                let mut cache = TokenCache::default();
                ForwardContext::new(0, &TokenPlan::Full, &mut cache, Some(&mut hook)).per_image(&pair, &sites, |i, _| Ok(i)).unwrap()
            });
            assert_eq!(out, split.then(|| vec![0, 1]), "{watched:?}");
        }
        // one image, or one thread: nothing to split
        let bare = |images: &Tensor| {
            let mut cache = TokenCache::default();
            ForwardContext::full(&mut cache).per_image(images, &sites, |i, _| Ok(i)).unwrap()
        };
        assert!(two.install(|| bare(&pair.narrow(0, 0, 1).unwrap())).is_none());
        assert!(two.install(|| bare(&pair)).is_some());
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert!(one.install(|| bare(&pair)).is_none());
        // a cache kept for a batch of 3 cannot be split in 2; one kept for 2 is, and comes back whole
        for (batch, split) in [(3, false), (2, true)] {
            let mut cache = TokenCache::default();
            let x = Tensor::arange(0f32, (batch * 4) as f32, &Device::Cpu).unwrap().reshape((batch, 2, 2)).unwrap();
            cache.apply("block", &BlockTokens::All, &x, |x| Ok(x.clone())).unwrap();
            let out = two.install(|| {
                ForwardContext::full(&mut cache).per_image(&pair, &sites, |i, ctx| {
                    // each image sees its own slice of the cache and writes its own output back
                    let mine = Tensor::full(i as f32, (1, 2, 2), &Device::Cpu)?;
                    ctx.token_site("block", (1, 2), &mine, |t| Ok(t.clone()))?;
                    Ok(i)
                })
            });
            assert_eq!(out.unwrap().is_some(), split);
            if split {
                let merged = cache.output("block").expect("the merged cache keeps the site");
                assert_eq!(merged.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0., 0., 0., 0., 1., 1., 1., 1.]);
            }
        }
    }
}
