//! The batch executor: how a batch of images is spread over the cores.
//!
//! On a multi-core CPU a whole image per core beats splitting every op across the cores: no
//! hand-over between threads inside an op, and small ops stay on one core
//! (docs/performance.md). So [`predict`] runs a batch (a guided batch is two images) one
//! image per call, the calls in parallel, each with its own slice of the token caches (merged
//! back afterwards) and the accelerator's hook shared. Models know nothing of it: they only
//! mark their token and branch sites. A hook that decides over the whole batch at a site
//! ([`SiteHook::batch_wide`](super::SiteHook::batch_wide)) has the images meet there (`denoiser/gather.rs`).

use candle_core::Tensor;
use rayon::prelude::*;

use super::context::ForwardContext;
use super::gather::{Gather, ANOTHER_IMAGE_FAILED};
use super::token_cache::TokenCache;
use super::{Conditioning, Denoiser};
use crate::error::{Error, Result};

/// `denoiser`'s prediction for the batch `latents`, one image per call where that is faster
/// and possible, else as one call. Runs as one call: a single image, a GPU or a single thread;
/// a denoiser whose images take different paths ([`Denoiser::splits`]); a hook that decides
/// over the whole batch at more than one of the model's sites; token caches kept for another
/// batch size.
pub fn predict(denoiser: &dyn Denoiser, latents: &Tensor, timestep: f64, cond: &Conditioning, ctx: &mut ForwardContext) -> Result<Tensor> {
    let n = latents.dim(0)?;
    if n < 2 || !latents.device().is_cpu() || rayon::current_num_threads() < 2 || !denoiser.splits(cond)? {
        return denoiser.predict(latents, timestep, cond, ctx);
    }
    if let Some(hook) = ctx.hook {
        let wide = denoiser.capabilities().branch_sites().into_iter().filter(|&k| hook.uses(k) && hook.batch_wide(k)).count();
        if wide > 1 {
            return denoiser.predict(latents, timestep, cond, ctx);
        }
    }
    let Some(caches) = ctx.token_cache.split_batch(n)? else {
        return denoiser.predict(latents, timestep, cond, ctx);
    };
    let images = (0..n).map(|i| Ok((latents.narrow(0, i, 1)?, cond.image(i)?))).collect::<Result<Vec<_>>>()?;
    let gather = Gather::new(n);
    let (step, plan, hook) = (ctx.step, ctx.plan, ctx.hook);
    // a subscriber set for this thread only (tracing's with_default) also sees the images' spans
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let mut done: Vec<Result<(Tensor, TokenCache, usize)>> = caches
        .into_par_iter()
        .zip(images)
        .enumerate()
        .map(|(i, (mut cache, (x, c)))| {
            tracing::dispatcher::with_default(&dispatch, || {
                // an image that ends early, by an error or a panic, releases those waiting for it
                let guard = FailOnDrop(&gather);
                let mut ctx = ForwardContext::for_image(step, plan, &mut cache, hook, i, &gather);
                let out = denoiser.predict(&x, timestep, &c, &mut ctx)?;
                let replaced = ctx.replaced;
                std::mem::forget(guard);
                Ok((out, cache, replaced))
            })
        })
        .collect();
    // an image's own error, not the note of one that waited for it
    if let Some(k) = done.iter().position(|d| matches!(d, Err(e) if !waited(e))) {
        done.swap_remove(k)?;
    }
    let (mut outs, mut caches, mut replaced) = (Vec::with_capacity(n), Vec::with_capacity(n), 0);
    for d in done {
        let (out, cache, r) = d?;
        outs.push(out);
        caches.push(cache);
        // every image meets the same sites: a branch served for all of them counts once
        replaced = replaced.max(r);
    }
    *ctx.token_cache = TokenCache::merge_batch(caches)?;
    ctx.replaced += replaced;
    Ok(Tensor::cat(&outs, 0)?)
}

struct FailOnDrop<'g>(&'g Gather);

impl Drop for FailOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fail();
    }
}

/// Whether `e` is the note of an image that waited for one that failed.
fn waited(e: &Error) -> bool {
    matches!(e, Error::Internal(m) if m == ANOTHER_IMAGE_FAILED)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use candle_core::{Device, Tensor};

    use super::*;
    use crate::denoiser::{BlockTokens, Capabilities, Site, SiteHook, SiteKind, TokenPlan};

    /// Doubles its input through a `Rest(1)` branch and notes the batch size of every call;
    /// with `fail_below`, an image whose values are all below it fails before the branch.
    struct Doubler {
        calls: Mutex<Vec<usize>>,
        fail_below: Option<f32>,
        split: bool,
    }

    impl Doubler {
        fn new() -> Self {
            Self { calls: Mutex::new(Vec::new()), fail_below: None, split: true }
        }
    }

    impl Denoiser for Doubler {
        fn capabilities(&self) -> Capabilities {
            Capabilities { residual_sites: true, deep_branches: 1, ..Default::default() }
        }
        fn predict(&self, x: &Tensor, _: f64, _: &Conditioning, ctx: &mut ForwardContext) -> Result<Tensor> {
            self.calls.lock().unwrap().push(x.dim(0)?);
            if self.fail_below.is_some_and(|v| x.max_all().and_then(|m| m.to_scalar::<f32>()).is_ok_and(|m| m < v)) {
                return Err(Error::param("x", "this image is refused"));
            }
            let probe = x.clone();
            ctx.branch(Site::new(SiteKind::Rest(1), x, Some(&probe)), |_| Ok((x * 2.0)?))
        }
        fn splits(&self, _: &Conditioning) -> Result<bool> {
            Ok(self.split)
        }
    }

    /// Decides over the whole batch at `Rest(1)` (and, with `also_deep`, at `Deep(0)` too);
    /// notes the batch sizes it is shown and serves base + 100 at step `serve_at`.
    struct Wide {
        seen: Mutex<Vec<(&'static str, usize)>>,
        serve_at: usize,
        also_deep: bool,
    }

    impl SiteHook for Wide {
        fn uses(&self, kind: SiteKind) -> bool {
            kind == SiteKind::Rest(1) || (self.also_deep && kind == SiteKind::Deep(0))
        }
        fn batch_wide(&self, kind: SiteKind) -> bool {
            self.uses(kind)
        }
        fn replace(&self, step: usize, site: &Site) -> Result<Option<Tensor>> {
            self.seen.lock().unwrap().push(("replace", site.base.dim(0)?));
            assert_eq!(site.images.len(), site.base.dim(0)?, "the rows a site holds are its images");
            Ok((step == self.serve_at).then(|| site.base + 100.0).transpose()?)
        }
        fn record(&self, _: usize, site: &Site, output: &Tensor) -> Result<()> {
            self.seen.lock().unwrap().push(("record", output.dim(0)?));
            assert_eq!(site.probe.map(|p| p.dim(0)).transpose()?, Some(output.dim(0)?));
            Ok(())
        }
    }

    fn batch(n: usize) -> Tensor {
        Tensor::arange(0f32, (n * 3) as f32, &Device::Cpu).unwrap().reshape((n, 3)).unwrap()
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    fn run(model: &Doubler, x: &Tensor, step: usize, hook: Option<&dyn SiteHook>, cache: &mut TokenCache) -> Result<(Tensor, usize)> {
        let mut ctx = ForwardContext::new(step, &TokenPlan::Full, cache, hook);
        let out = predict(model, x, 0.0, &Conditioning::new(), &mut ctx)?;
        Ok((out, ctx.replaced()))
    }

    #[test]
    fn a_batch_runs_one_image_per_call_only_where_it_can() {
        let calls = |threads: usize, n: usize, model: Doubler, hook: Option<&dyn SiteHook>, cache: &mut TokenCache| {
            let out = pool(threads).install(|| run(&model, &batch(n), 0, hook, cache)).unwrap().0;
            assert_eq!(out.to_vec2::<f32>().unwrap(), (batch(n) * 2.0).unwrap().to_vec2::<f32>().unwrap());
            model.calls.into_inner().unwrap()
        };
        let fresh = TokenCache::default;
        assert_eq!(calls(2, 2, Doubler::new(), None, &mut fresh()), vec![1, 1]);
        assert_eq!(calls(2, 1, Doubler::new(), None, &mut fresh()), vec![1], "one image");
        assert_eq!(calls(1, 2, Doubler::new(), None, &mut fresh()), vec![2], "one thread");
        assert_eq!(calls(2, 2, Doubler { split: false, ..Doubler::new() }, None, &mut fresh()), vec![2], "the denoiser declines");
        let two_sites = Wide { seen: Mutex::new(Vec::new()), serve_at: usize::MAX, also_deep: true };
        assert_eq!(calls(2, 2, Doubler::new(), Some(&two_sites), &mut fresh()), vec![2], "batch-wide at two sites");
        // token caches kept for a batch of 3 cannot be split in 2
        let mut three = TokenCache::default();
        three.apply("block", &BlockTokens::All, &batch(3).unsqueeze(2).unwrap(), |t| Ok(t.clone())).unwrap();
        assert_eq!(calls(2, 2, Doubler::new(), None, &mut three), vec![2], "a cache of another batch");
    }

    #[test]
    fn a_batch_wide_hook_sees_the_whole_batch_and_each_image_gets_its_row() {
        for (threads, n) in [(2, 2), (2, 5)] {
            let model = Doubler::new();
            let hook = Wide { seen: Mutex::new(Vec::new()), serve_at: 1, also_deep: false };
            let mut cache = TokenCache::default();
            let (computed, replaced) = pool(threads).install(|| run(&model, &batch(n), 0, Some(&hook), &mut cache)).unwrap();
            assert_eq!(computed.to_vec2::<f32>().unwrap(), (batch(n) * 2.0).unwrap().to_vec2::<f32>().unwrap());
            assert_eq!(replaced, 0);
            let (served, replaced) = pool(threads).install(|| run(&model, &batch(n), 1, Some(&hook), &mut cache)).unwrap();
            assert_eq!(served.to_vec2::<f32>().unwrap(), (batch(n) + 100.0).unwrap().to_vec2::<f32>().unwrap(), "{n} images");
            assert_eq!(replaced, 1, "a branch served for every image counts once");
            assert_eq!(model.calls.into_inner().unwrap(), vec![1; 2 * n], "{n} images on {threads} threads, one call each");
            assert_eq!(hook.seen.into_inner().unwrap(), vec![("replace", n), ("record", n), ("replace", n)]);
        }
    }

    #[test]
    fn an_image_that_fails_releases_the_others_and_its_own_error_is_reported() {
        // image 0 (values 0..3) fails before the site; image 1 waits there for it
        let model = Doubler { fail_below: Some(3.0), ..Doubler::new() };
        let hook = Wide { seen: Mutex::new(Vec::new()), serve_at: usize::MAX, also_deep: false };
        let err = pool(2).install(|| run(&model, &batch(2), 0, Some(&hook), &mut TokenCache::default())).unwrap_err().to_string();
        assert!(err.contains("this image is refused"), "{err}");
        assert!(hook.seen.into_inner().unwrap().is_empty(), "the hook was asked without every image");
    }
}
