//! Where the images of a batch that runs one image per call meet at a site whose hook decides
//! over the whole batch: the last image to arrive asks the hook with every image's rows, and
//! each image takes its row of the answer; after the branch is computed, the last image to
//! finish shows the hook the whole batch's output.
//!
//! Waiting images keep their thread busy with other queued work (`rayon::yield_now`), so an
//! image whose task is still queued behind a waiting one gets to run, even on fewer threads
//! than images. That holds because a batch meets at most once per call (the executor runs a
//! call whole when its hook is batch-wide at more than one site) and showing the output never
//! waits.

use std::sync::{Mutex, MutexGuard};

use candle_core::Tensor;

use super::site::{Site, SiteHook};
use crate::error::{Error, Result};

/// What an image that waited reports when another image failed: the executor reports that
/// image's own error instead.
pub(super) const ANOTHER_IMAGE_FAILED: &str = "another image of the batch failed";

pub(crate) struct Gather {
    n: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each image's base and probe at the site, by image.
    arrived: Vec<Option<(Tensor, Option<Tensor>)>>,
    /// The hook's answer for the whole batch, once the last image has arrived.
    answer: Option<std::result::Result<Option<Tensor>, String>>,
    /// Each image's branch output, until the last one has been shown to the hook.
    outputs: Vec<Option<Tensor>>,
    /// An image ended without reaching the site (an error or a panic): nobody waits any more.
    failed: bool,
}

impl Gather {
    pub(super) fn new(n: usize) -> Self {
        Self { n, state: Mutex::new(State { arrived: vec![None; n], outputs: vec![None; n], ..Default::default() }) }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| Error::internal(ANOTHER_IMAGE_FAILED))
    }

    /// Image `i` ended early: release the images waiting for it.
    pub(super) fn fail(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.failed = true;
        }
    }

    /// Image `i`'s row of the hook's answer at `site` for the whole batch.
    pub(super) fn replace(&self, i: usize, hook: &dyn SiteHook, step: usize, site: &Site) -> Result<Option<Tensor>> {
        {
            let mut s = self.lock()?;
            if s.answer.is_some() {
                return Err(Error::internal("a batch met twice in one call; the executor runs such calls whole"));
            }
            s.arrived[i] = Some((site.base.clone(), site.probe.cloned()));
            if s.arrived.iter().all(Option::is_some) {
                let rows: Vec<(Tensor, Option<Tensor>)> = s.arrived.iter().flatten().cloned().collect();
                let (base, probe) = join(&rows)?;
                return match hook.replace(step, &Site { kind: site.kind, base: &base, probe: probe.as_ref(), images: 0..self.n }) {
                    Ok(answer) => {
                        s.answer = Some(Ok(answer.clone()));
                        drop(s);
                        row(answer, i)
                    }
                    Err(e) => {
                        s.answer = Some(Err(e.to_string()));
                        Err(e)
                    }
                };
            }
        }
        loop {
            {
                let s = self.lock()?;
                if let Some(answer) = &s.answer {
                    let answer = answer.clone().map_err(|_| Error::internal(ANOTHER_IMAGE_FAILED))?;
                    return row(answer, i);
                }
                if s.failed {
                    return Err(Error::internal(ANOTHER_IMAGE_FAILED));
                }
            }
            if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                std::thread::yield_now();
            }
        }
    }

    /// Image `i`'s branch output at `site`; the last image shows the hook the whole batch's.
    pub(super) fn record(&self, i: usize, hook: &dyn SiteHook, step: usize, site: &Site, output: &Tensor) -> Result<()> {
        let mut s = self.lock()?;
        s.outputs[i] = Some(output.clone());
        if !s.outputs.iter().all(Option::is_some) {
            return Ok(());
        }
        let outputs: Vec<Tensor> = s.outputs.iter().flatten().cloned().collect();
        let rows: Vec<(Tensor, Option<Tensor>)> = s.arrived.iter().flatten().cloned().collect();
        drop(s);
        let (base, probe) = join(&rows)?;
        let output = Tensor::cat(&outputs, 0)?;
        hook.record(step, &Site { kind: site.kind, base: &base, probe: probe.as_ref(), images: 0..self.n }, &output)
    }
}

/// The images' bases and probes joined along the batch.
fn join(rows: &[(Tensor, Option<Tensor>)]) -> Result<(Tensor, Option<Tensor>)> {
    let base = Tensor::cat(&rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), 0)?;
    let probes: Option<Vec<Tensor>> = rows.iter().map(|r| r.1.clone()).collect();
    Ok((base, probes.map(|p| Tensor::cat(&p, 0)).transpose()?))
}

/// Row `i` of a batch answer.
fn row(answer: Option<Tensor>, i: usize) -> Result<Option<Tensor>> {
    Ok(answer.map(|t| t.narrow(0, i, 1)).transpose()?)
}
