//! Where a UNet evaluation spends its time: cumulative wall time per part, for `sada bench-unet`.
//! (CPU tensor ops are synchronous, so timing around a call measures that call.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub enum Part {
    /// ResnetBlock2D (two 3x3 convolutions, group norms)
    Resnet,
    /// Self-attention (attn1)
    SelfAttention,
    /// Cross-attention (attn2)
    CrossAttention,
    /// GEGLU feed-forward
    FeedForward,
    /// Transformer2DModel in total (norms, projections, all of the above three)
    Transformer,
    /// Down/upsampling convolutions
    Resample,
}

const PARTS: [Part; 6] = [Part::Resnet, Part::SelfAttention, Part::CrossAttention, Part::FeedForward, Part::Transformer, Part::Resample];
static NANOS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Run `f`, adding its wall time to `part`.
pub fn timed<T>(part: Part, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    NANOS[part as usize].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}

/// Seconds per part since the last reset.
pub fn snapshot() -> Vec<(Part, f64)> {
    PARTS.iter().map(|&p| (p, NANOS[p as usize].load(Ordering::Relaxed) as f64 * 1e-9)).collect()
}

pub fn reset() {
    NANOS.iter().for_each(|n| n.store(0, Ordering::Relaxed));
}

/// Add an already measured duration to `part`.
pub fn add(part: Part, d: std::time::Duration) {
    NANOS[part as usize].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}
