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

/// A strided matrix view over a slice: element (i, j) at `offset + i * rs + j * cs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View {
    /// Row-major rows of `row_len`, starting at `offset`.
    pub fn rows(offset: usize, row_len: usize) -> Self {
        Self { offset, rs: row_len, cs: 1 }
    }

    /// Whether a `rows x cols` matrix through this view stays inside `len` elements.
    fn fits(&self, rows: usize, cols: usize, len: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1)
                .checked_mul(self.rs)
                .zip((cols - 1).checked_mul(self.cs))
                .and_then(|(r, c)| self.offset.checked_add(r)?.checked_add(c))
                .is_some_and(|last| last < len)
    }
}

/// `c (+)= a b` for an `m x k` times `k x n` product on strided views of slices, every view
/// checked against its slice first: the one place the kernels call gemm on views.
#[allow(clippy::too_many_arguments)] // three operands with their views, the sizes and the mode
pub(crate) fn matmul(
    c: &mut [f32],
    cv: View,
    a: &[f32],
    av: View,
    b: &[f32],
    bv: View,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    par: gemm::Parallelism,
) {
    assert!(cv.fits(m, n, c.len()) && av.fits(m, k, a.len()) && bv.fits(k, n, b.len()), "matmul: a {m}x{k} by {k}x{n} view outside its slice");
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    // SAFETY: the assert above keeps every element each view reaches inside its slice, and c is
    // borrowed mutably, so nothing else reads or writes it meanwhile.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(cv.offset),
            cv.cs as isize,
            cv.rs as isize,
            accumulate,
            a.as_ptr().add(av.offset),
            av.cs as isize,
            av.rs as isize,
            b.as_ptr().add(bv.offset),
            bv.cs as isize,
            bv.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
