//! Branch sites: the places where a network lets an accelerator serve a sub-network from a
//! cache, and the hook through which the accelerator does.

use std::ops::Range;

use candle_core::Tensor;

use crate::error::Result;

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
#[derive(Debug, Clone)]
pub struct Site<'a> {
    /// Which branch this is.
    pub kind: SiteKind,
    /// The state the branch starts from; a [`SiteKind::Rest`] branch's output is `base` plus
    /// what the rest of the network adds.
    pub base: &'a Tensor,
    /// A signal the model computes for the hook: at `Rest(1)`, the first block's residual;
    /// at `Rest(0)` of a model with [`Capabilities::input_probe`](crate::denoiser::Capabilities), the first
    /// block's timestep-modulated input.
    pub probe: Option<&'a Tensor>,
    /// The images of the denoiser's batch that `base` holds, in row order: the whole batch, or
    /// one image when the batch runs one image per call ([`crate::denoiser::batch`]). Hooks keep
    /// their state per image by these indices.
    pub images: Range<usize>,
}

impl<'a> Site<'a> {
    /// A site over every row of `base` (the context narrows `images` for per-image calls).
    pub fn new(kind: SiteKind, base: &'a Tensor, probe: Option<&'a Tensor>) -> Self {
        let rows = base.dims().first().copied().unwrap_or(1);
        Self { kind, base, probe, images: 0..rows }
    }
}

/// An accelerator's say at branch sites. A hook is shared by the calls of one batch that run
/// in parallel, one image each, so it keeps what it must remember per image (by
/// [`Site::images`]) behind its own lock. Every method has a do-nothing default.
pub trait SiteHook: Send + Sync {
    /// Whether this hook acts at sites of `kind` (models skip a site's bookkeeping otherwise).
    fn uses(&self, _kind: SiteKind) -> bool {
        false
    }
    /// Whether this hook decides over the whole batch at sites of `kind` (First-Block-Cache's
    /// test reads every image's residual): calls that run one image each then meet there, and
    /// [`Self::replace`] and [`Self::record`] see the whole batch.
    fn batch_wide(&self, _kind: SiteKind) -> bool {
        false
    }
    /// Before the branch runs at solver step `step`: its output, to skip computing it; None
    /// computes it.
    fn replace(&self, _step: usize, _site: &Site) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// After the branch was computed at solver step `step`: its output.
    fn record(&self, _step: usize, _site: &Site, _output: &Tensor) -> Result<()> {
        Ok(())
    }
}
