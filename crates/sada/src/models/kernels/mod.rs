//! CPU kernels for the hot paths of the denoisers, where candle's generic ops leave speed on
//! the table (see docs/performance.md). Each is checked against the unfused candle ops.

pub mod attention;
pub mod dense;
pub mod group_norm;
pub mod im2col;
pub mod rows;
pub mod vmath;
pub mod winograd;

use candle_core::{CpuStorage, Layout};

/// The f32 elements a contiguous layout covers (the kernels read their operands as flat slices).
pub(crate) fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// Threads for a product of `work` multiply-adds: small ones are faster on one.
pub(crate) fn gemm_parallelism(work: usize) -> gemm::Parallelism {
    if work >= 1 << 20 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    }
}
