//! Convolution as matrix products on the CPU: each image's patches (im2col; none needed for a
//! 1x1 stride-1 kernel, whose input already is the patch matrix) times the kernel flattened to
//! `[c_out, c_in k k]`, written straight into the `[B, c_out, oh, ow]` output with the bias
//! filled in first and accumulated into (candle's matmul would need a broadcast bias pass and a
//! batch transpose copy after it).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::rows::WeightRows;
use super::{contiguous, gemm_parallelism, matmul, View};

/// Kernel size, stride and padding of a convolution.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Kernel size (k x k).
    pub k: usize,
    /// Stride, the same along both axes.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

struct Im2colConv<'a> {
    flat: WeightRows<'a>,
    geometry: Geometry,
    has_bias: bool,
}

/// `x`: `[B, C, H, W]`; `flat`: `[c_out, C k k]` (rows in (c, kh, kw) order); `bias`: `[c_out]`
/// (read only with `has_bias`). f32 CPU tensors; a kernel held in blocks is widened piece by
/// piece (`rows::WeightRows::for_each_piece`).
pub fn conv2d(x: &Tensor, flat: WeightRows<'_>, bias: &Tensor, has_bias: bool, geometry: Geometry) -> candle_core::Result<Tensor> {
    x.apply_op2_no_bwd(bias, &Im2colConv { flat, geometry, has_bias })
}

impl CustomOp2 for Im2colConv<'_> {
    fn name(&self) -> &'static str {
        "im2col-conv"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sb: &CpuStorage, lb: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = lx.shape().dims4()?;
        let (cout, kk) = self.flat.dims();
        let Geometry { k, stride: s, padding: p } = self.geometry;
        if kk != c * k * k || s == 0 || h + 2 * p < k || w + 2 * p < k || (self.has_bias && lb.shape().dims() != [cout]) {
            candle_core::bail!("im2col convolution: input {:?} against kernel [{cout}, {kk}] (k {k}, stride {s}, padding {p})", lx.shape());
        }
        let (x, bias) = (contiguous(sx, lx, "convolution input")?, contiguous(sb, lb, "convolution bias")?);
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let n = oh * ow;
        let direct = k == 1 && s == 1 && p == 0;
        let mut cols = Vec::new();
        if !direct {
            // one input channel's k*k rows of one image at a time, in parallel (memory-bound)
            cols = vec![0f32; b * kk * n];
            cols.par_chunks_mut(k * k * n).enumerate().for_each(|(ic, rows)| {
                let plane = &x[ic * h * w..(ic + 1) * h * w];
                im2col(plane, (h, w), self.geometry, (oh, ow), rows);
            });
        }
        let mut out = vec![0f32; b * cout * n];
        if self.has_bias {
            out.par_chunks_mut(n.max(1)).enumerate().for_each(|(row, o)| o.fill(bias[row % cout]));
        }
        let patches: &[f32] = if direct { x } else { &cols };
        // each image's output (cout x n) (+)= kernel rows x its patches (kk x n)
        match self.flat.as_f32() {
            Some(wt) => {
                for (img, o) in out.chunks_mut(cout * n).enumerate() {
                    let rhs = View::rows(img * kk * n, n);
                    matmul(o, View::rows(0, n), wt, View::rows(0, kk), patches, rhs, (cout, n, kk), self.has_bias, gemm_parallelism(cout * n * kk));
                }
            }
            // a kernel held in blocks: piece by piece, each used for every image while cached
            None => self.flat.for_each_piece(|p| {
                let (m, kc) = (p.rows.len(), p.cols.len());
                for (img, o) in out.chunks_mut(cout * n).enumerate() {
                    let rhs = View::rows((img * kk + p.cols.start) * n, n);
                    matmul(
                        o,
                        View::rows(p.rows.start * n, n),
                        p.values,
                        View::rows(0, kc),
                        patches,
                        rhs,
                        (m, n, kc),
                        self.has_bias || p.cols.start > 0,
                        gemm_parallelism(m * n * kc),
                    );
                }
            }),
        }
        Ok((CpuStorage::F32(out), Shape::from((b, cout, oh, ow))))
    }
}

/// Write the patches of one `[H, W]` channel plane (zero padding) into its k*k rows of the
/// patch matrix (`rows`, each oh*ow long): row (kh, kw), column (oy, ox).
fn im2col(plane: &[f32], (h, w): (usize, usize), Geometry { k, stride: s, padding: p }: Geometry, (oh, ow): (usize, usize), rows: &mut [f32]) {
    for kh in 0..k {
        for kw in 0..k {
            let row = &mut rows[(kh * k + kw) * oh * ow..][..oh * ow];
            for oy in 0..oh {
                let iy = (oy * s + kh) as isize - p as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let src_row = &plane[iy as usize * w..(iy as usize + 1) * w];
                let dst = &mut row[oy * ow..(oy + 1) * ow];
                if s == 1 {
                    // contiguous run: output x maps to input x + kw - p
                    let lo = p.saturating_sub(kw);
                    let hi = ow.min((w + p).saturating_sub(kw));
                    if lo < hi {
                        dst[lo..hi].copy_from_slice(&src_row[lo + kw - p..hi + kw - p]);
                    }
                } else {
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = (ox * s + kw) as isize - p as isize;
                        if ix >= 0 && (ix as usize) < w {
                            *d = src_row[ix as usize];
                        }
                    }
                }
            }
        }
    }
}
