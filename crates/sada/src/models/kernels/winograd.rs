//! 3x3 convolution (stride 1, padding 1) by Winograd's minimal filtering F(m x m, 3 x 3).
//!
//! Each m x m output tile comes from an (m+2) x (m+2) input tile: both are taken into a
//! transformed space where the convolution becomes (m+2)^2 independent channel-mixing matrix
//! products, one per transformed position: [C_out x C_in] times [C_in x tiles]. F(4x4, 3x3)
//! does 36 multiplies per tile and channel pair where im2col's GEMM does 144, at the price of
//! three cheap linear transforms (input, weights, output) and a larger rounding error (see
//! `tests`: below 1e-5 of the output's scale, where F(2x2) and the GEMM stay near 1e-6). The weights are
//! transformed on every call, vectorised over input channels, so no transformed copy (four
//! times the 3x3 weights' memory) is kept; that costs as much as a few output tiles, so small
//! feature maps keep im2col (`worthwhile`).
//!
//! All transforms run with the tile index (or the channel index) innermost and contiguous, so
//! the constant-coefficient loops vectorise.

use gemm::Parallelism;
use rayon::prelude::*;

use super::rows::WeightRows;
use super::vmath::dispatch;

/// The transform matrices of F(m x m, 3 x 3), row-major: Bᵀ (a x a), G (a x 3), Aᵀ (m x a),
/// with a = m + 2.
#[derive(Clone, Copy)]
pub struct Winograd {
    m: usize,
    bt: &'static [f32],
    g: &'static [f32],
    at: &'static [f32],
}

/// F(4x4, 3x3) on the points 0, ±1, ±2 and infinity (Lavin & Gray, 2016).
pub static F4: Winograd = Winograd {
    m: 4,
    #[rustfmt::skip]
    bt: &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0,
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0,
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0,
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0,
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0,
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    g: &[
        1.0 / 4.0, 0.0, 0.0,
        -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0,
        -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0,
        1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0,
        1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0,
        0.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, 2.0, -2.0, 0.0,
        0.0, 1.0, 1.0, 4.0, 4.0, 0.0,
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ],
};

/// F(2x2, 3x3) on the points 0, ±1 and infinity: 16 multiplies instead of 36, exact in the
/// transforms (coefficients 0, ±1/2, ±1).
pub static F2: Winograd = Winograd {
    m: 2,
    #[rustfmt::skip]
    bt: &[
        1.0, 0.0, -1.0, 0.0,
        0.0, 1.0, 1.0, 0.0,
        0.0, -1.0, 1.0, 0.0,
        0.0, 1.0, 0.0, -1.0,
    ],
    #[rustfmt::skip]
    g: &[
        1.0, 0.0, 0.0,
        0.5, 0.5, 0.5,
        0.5, -0.5, 0.5,
        0.0, 0.0, 1.0,
    ],
    #[rustfmt::skip]
    at: &[
        1.0, 1.0, 1.0, 0.0,
        0.0, 1.0, -1.0, -1.0,
    ],
};

impl Winograd {
    fn a(&self) -> usize {
        self.m + 2
    }

    /// Whether this transform beats im2col + GEMM on an h x w map: with fewer than 64 tiles an
    /// image the per-position products are too thin to win (measured with
    /// `cargo run -p sada --example kernels`; figures in docs/performance.md).
    pub fn worthwhile(&self, h: usize, w: usize) -> bool {
        h.div_ceil(self.m) * w.div_ceil(self.m) >= 64
    }

    /// `x`: `[batch, cin, h, w]`; `weight`: `[cout, cin, 3, 3]`; `bias`: `[cout]`. Returns
    /// [batch, cout, h, w] (stride 1, zero padding 1).
    pub fn conv3x3(&self, x: &[f32], dims: (usize, usize, usize, usize), weight: WeightRows<'_>, bias: Option<&[f32]>, cout: usize) -> Vec<f32> {
        self.conv3x3_banded(x, dims, weight, bias, cout, BAND_FLOATS)
    }

    /// Large maps in bands of rows, each with a row of its neighbours' input above and below:
    /// the transformed input of a whole 1024 x 1024 map of 256 channels is 2.4 GB, and a band's
    /// is at most `band_floats`. Rows at a band's edge see their real neighbours, so only the
    /// rounding of the tiles differs from one pass (within the same bound).
    fn conv3x3_banded(
        &self,
        x: &[f32],
        dims: (usize, usize, usize, usize),
        weight: WeightRows<'_>,
        bias: Option<&[f32]>,
        cout: usize,
        band_floats: usize,
    ) -> Vec<f32> {
        let (batch, cin, h, w) = dims;
        // output channels in blocks whose transformed weights and products stay near 8 MB (under
        // the allocator's mmap threshold: fresh pages cost a fault each; closer to cache), but
        // never fewer than MIN_BLOCK channels, however large the map
        let blocking = (2 << 20, MIN_BLOCK);
        let per_tile_row = batch * cin * self.a() * self.a() * w.div_ceil(self.m);
        if per_tile_row * h.div_ceil(self.m) <= band_floats {
            return self.conv3x3_blocked(x, dims, weight, bias, cout, blocking);
        }
        // input rows per band: whole tiles, at least two tile rows
        let band_in = (band_floats / per_tile_row.max(1)).max(2) * self.m;
        let mut y = vec![0f32; batch * cout * h * w];
        let mut r0 = 0;
        while r0 < h {
            let r1 = (r0 + band_in - 2).min(h);
            let (i0, i1) = (r0.saturating_sub(1), (r1 + 1).min(h));
            let bh = i1 - i0;
            let mut xb = vec![0f32; batch * cin * bh * w];
            xb.par_chunks_mut(bh * w).enumerate().for_each(|(bc, dst)| dst.copy_from_slice(&x[bc * h * w + i0 * w..bc * h * w + i1 * w]));
            let yb = self.conv3x3_blocked(&xb, (batch, cin, bh, w), weight, bias, cout, blocking);
            let skip = r0 - i0;
            y.par_chunks_mut(h * w).enumerate().for_each(|(bc, dst)| {
                dst[r0 * w..r1 * w].copy_from_slice(&yb[(bc * bh + skip) * w..(bc * bh + skip + r1 - r0) * w]);
            });
            r0 = r1;
        }
        y
    }

    fn conv3x3_blocked(
        &self,
        x: &[f32],
        (batch, cin, h, w): (usize, usize, usize, usize),
        weight: WeightRows<'_>,
        bias: Option<&[f32]>,
        cout: usize,
        (block_floats, min_block): (usize, usize),
    ) -> Vec<f32> {
        let (m, a) = (self.m, self.a());
        let (th, tw) = (h.div_ceil(m), w.div_ceil(m));
        let (aa, local) = (a * a, th * tw);
        // V [image][ci][p][tile]: each (image, channel) plane's transform is one contiguous block
        let mut v = vec![0f32; batch * cin * aa * local];
        v.par_chunks_mut(aa * local).enumerate().for_each(|(bc, out)| input_transform(self.bt, m, &x[bc * h * w..(bc + 1) * h * w], (h, w), (th, tw), out));
        let mut y = vec![0f32; batch * cout * h * w];
        // at least `min_block` output channels a block, whatever the map's size: thinner products
        // starve the GEMM's register tiles (the VAE's 512 x 512 level got 8 and decoded 2.3x slower)
        let cb = (block_floats / (aa * cin)).min(block_floats / (batch * aa * local)).max(min_block).min(cout);
        let mut uc = vec![0f32; cb * aa * cin];
        let mut u = vec![0f32; aa * cb * cin];
        let mut mm = vec![0f32; batch * cb * aa * local];
        // the block's 3x3 kernels, widened here when held in a smaller type
        let mut widened = Vec::new();
        for co0 in (0..cout).step_by(cb) {
            let nb = cb.min(cout - co0);
            let wb = weight.get(co0, nb, &mut widened);
            // U [p][co][ci] for this block (transformed per channel, then regrouped by position
            // so each product's left operand is contiguous)
            uc[..nb * aa * cin].fill(0.0);
            uc[..nb * aa * cin]
                .par_chunks_mut(aa * cin)
                .enumerate()
                .for_each(|(j, out)| weight_transform(self.g, a, &wb[j * cin * 9..(j + 1) * cin * 9], cin, out));
            u[..aa * nb * cin].par_chunks_mut(nb * cin).enumerate().for_each(|(p, up)| {
                for (j, dst) in up.chunks_exact_mut(cin).enumerate() {
                    dst.copy_from_slice(&uc[(j * aa + p) * cin..][..cin]);
                }
            });
            // M [image][co][p][tile] = U[p] V[image][.][p]: one product per (position, image)
            let mm_ptr = SendPtr(mm.as_mut_ptr());
            (0..aa * batch).into_par_iter().for_each(|job| {
                let (p, img) = (job / batch, job % batch);
                let dst = &mm_ptr;
                // SAFETY: each job writes the disjoint nb x local block at (img, ., p, .) of mm;
                // U and V are read within their bounds through the same strides.
                unsafe {
                    gemm::gemm(
                        nb,
                        local,
                        cin,
                        dst.0.add(img * nb * aa * local + p * local),
                        1,
                        (aa * local) as isize,
                        false,
                        u.as_ptr().add(p * nb * cin),
                        1,
                        cin as isize,
                        v.as_ptr().add(img * cin * aa * local + p * local),
                        1,
                        (aa * local) as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            });
            // Y = Aᵀ M A per tile, plus bias, into this block's [image][co] planes
            y.par_chunks_mut(h * w).enumerate().filter(|(bc, _)| (co0..co0 + nb).contains(&(bc % cout))).for_each(|(bc, out)| {
                let (img, co) = (bc / cout, bc % cout);
                let mb = &mm[(img * nb + co - co0) * aa * local..][..aa * local];
                output_transform(self.at, m, mb, (h, w), (th, tw), bias.map_or(0.0, |b| b[co]), out);
            });
        }
        y
    }
}

/// Fewest output channels per block of the blocked product (see `conv3x3_blocked`).
const MIN_BLOCK: usize = 64;

/// Most floats of transformed input one pass holds (128 MB); larger maps go in bands.
const BAND_FLOATS: usize = 32 << 20;

/// A raw pointer handed to parallel jobs that write disjoint parts of one buffer.
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint writes, see the product loop.
unsafe impl Sync for SendPtr {}

dispatch!(
/// Adds G k Gᵀ (`g`: G, a x 3) to `out` (`[a x a][cin]`, expected zeroed) for one output
/// channel's 3x3 weights `wco` (`[cin][3][3]`), with the input channel innermost.
weight_transform(g: &[f32], a: usize, wco: &[f32], cin: usize, out: &mut [f32]) -> () {
    // k[r][s][ci] from the [ci][r][s] layout, then G k Gᵀ with ci innermost
    let mut k = vec![0f32; 9 * cin];
    for ci in 0..cin {
        for rs in 0..9 {
            k[rs * cin + ci] = wco[ci * 9 + rs];
        }
    }
    let mut t = vec![0f32; a * 3 * cin];
    for i in 0..a {
        for s in 0..3 {
            let dst = &mut t[(i * 3 + s) * cin..][..cin];
            for r in 0..3 {
                let c = g[i * 3 + r];
                if c != 0.0 {
                    let src = &k[(r * 3 + s) * cin..][..cin];
                    for (d, &x) in dst.iter_mut().zip(src) {
                        *d += c * x;
                    }
                }
            }
        }
    }
    for i in 0..a {
        for j in 0..a {
            let dst = &mut out[(i * a + j) * cin..][..cin];
            for s in 0..3 {
                let c = g[j * 3 + s];
                if c != 0.0 {
                    let src = &t[(i * 3 + s) * cin..][..cin];
                    for (d, &x) in dst.iter_mut().zip(src) {
                        *d += c * x;
                    }
                }
            }
        }
    }
});

/// out[i * a + j][tile] += Σ_k coef[i][k] src[k * a + j][tile] (left product, `left`) or
/// Σ_k src[i * a + k][tile] coef[j][k] (right product): a constant small matrix applied to
/// rows of `n` tiles, so the innermost loop runs over all of a plane's tiles.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // a hot inner kernel: its operands as plain slices and sizes
fn small_product(coef: &[f32], (rows, a): (usize, usize), src: &[f32], src_cols: usize, out: &mut [f32], out_cols: usize, n: usize, left: bool) {
    for i in 0..rows {
        for j in 0..out_cols {
            let dst = &mut out[(i * out_cols + j) * n..][..n];
            for k in 0..a {
                let (c, s) = if left { (coef[i * a + k], k * src_cols + j) } else { (coef[j * a + k], i * src_cols + k) };
                if c != 0.0 {
                    for (o, &x) in dst.iter_mut().zip(&src[s * n..][..n]) {
                        *o += c * x;
                    }
                }
            }
        }
    }
}

dispatch!(
/// Writes V = Bᵀ d B (`bt`: Bᵀ, a x a with a = m + 2) into `out` as `[a x a][tile]`, for every
/// a x a input tile d of one h x w `plane` (`hw`, zero padding 1; `thw` tiles down and across).
input_transform(bt: &[f32], m: usize, plane: &[f32], hw: (usize, usize), thw: (usize, usize), out: &mut [f32]) -> () {
    let ((h, w), (th, tw)) = (hw, thw);
    let (a, n) = (m + 2, th * tw);
    // the plane zero-padded (one before, enough after for the ragged last tiles), so the tile
    // gather has no bounds tests
    let (ph, pw) = (th * m + 2, tw * m + 2);
    let mut padded = vec![0f32; ph * pw];
    for y in 0..h {
        padded[(y + 1) * pw + 1..][..w].copy_from_slice(&plane[y * w..(y + 1) * w]);
    }
    // d[i][j][tile], then V = Bᵀ d B over all tiles at once
    let mut d = vec![0f32; a * a * n];
    for i in 0..a {
        for j in 0..a {
            let row = &mut d[(i * a + j) * n..][..n];
            for ty in 0..th {
                let src = &padded[(ty * m + i) * pw + j..];
                for (tx, dv) in row[ty * tw..(ty + 1) * tw].iter_mut().enumerate() {
                    *dv = src[tx * m];
                }
            }
        }
    }
    let mut t = vec![0f32; a * a * n];
    small_product(bt, (a, a), &d, a, &mut t, a, n, true);
    out.fill(0.0);
    small_product(bt, (a, a), &t, a, out, a, n, false);
});

dispatch!(
/// Computes Y = Aᵀ M A + `bias` (`at`: Aᵀ, m x a) for every tile of one plane's products `mm`
/// (`[a x a][tile]`) and writes the m x m tiles into the h x w output plane `out`, cropping the
/// ragged last tiles.
output_transform(at: &[f32], m: usize, mm: &[f32], hw: (usize, usize), thw: (usize, usize), bias: f32, out: &mut [f32]) -> () {
    let ((h, w), (th, tw)) = (hw, thw);
    let (a, n) = (m + 2, th * tw);
    // Y = Aᵀ M A over all tiles at once (t: m x a, y: m x m), then scattered into the plane
    let mut t = vec![0f32; m * a * n];
    small_product(at, (m, a), mm, a, &mut t, a, n, true);
    let mut y = vec![bias; m * m * n];
    small_product(at, (m, a), &t, a, &mut y, m, n, false);
    for ty in 0..th {
        for i in 0..m {
            let oy = ty * m + i;
            if oy >= h {
                break;
            }
            let row = &mut out[oy * w..(oy + 1) * w];
            for j in 0..m {
                let src = &y[(i * m + j) * n + ty * tw..][..tw];
                for (tx, &val) in src.iter().enumerate() {
                    let ox = tx * m + j;
                    if ox < w {
                        row[ox] = val;
                    }
                }
            }
        }
    }
});

struct WinogradConv<'a> {
    weight: WeightRows<'a>,
    transform: &'static Winograd,
    has_bias: bool,
}

/// `x`: `[B, C_in, H, W]`; `weight`: `[C_out, C_in * 3 * 3]` rows; `bias`: `[C_out]` (read when
/// `has_bias`). f32 CPU tensors; stride 1, padding 1.
pub fn conv3x3(
    x: &candle_core::Tensor,
    weight: WeightRows<'_>,
    bias: &candle_core::Tensor,
    has_bias: bool,
    transform: &'static Winograd,
) -> candle_core::Result<candle_core::Tensor> {
    x.apply_op2_no_bwd(bias, &WinogradConv { weight, transform, has_bias })
}

impl candle_core::CustomOp2 for WinogradConv<'_> {
    fn name(&self) -> &'static str {
        "winograd-conv3x3"
    }

    fn cpu_fwd(
        &self,
        sx: &candle_core::CpuStorage,
        lx: &candle_core::Layout,
        sb: &candle_core::CpuStorage,
        lb: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (b, cin, h, w) = lx.shape().dims4()?;
        let (cout, row) = self.weight.dims();
        if row != cin * 9 || (self.has_bias && lb.shape().dims() != [cout]) {
            candle_core::bail!("winograd convolution: input {:?}, weight [{cout}, {row}]", lx.shape());
        }
        let (x, bias) = (super::contiguous(sx, lx, "winograd convolution: input")?, super::contiguous(sb, lb, "winograd convolution: bias")?);
        let y = self.transform.conv3x3(x, (b, cin, h, w), self.weight, self.has_bias.then_some(bias), cout);
        Ok((candle_core::CpuStorage::F32(y), candle_core::Shape::from((b, cout, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution in f64: the exact reference.
    fn direct(x: &[f32], (b, cin, h, w): (usize, usize, usize, usize), wt: &[f32], bias: &[f32], cout: usize) -> Vec<f64> {
        let mut y = vec![0f64; b * cout * h * w];
        for i in 0..b {
            for co in 0..cout {
                for oy in 0..h {
                    for ox in 0..w {
                        let mut s = bias[co] as f64;
                        for ci in 0..cin {
                            for r in 0..3 {
                                for q in 0..3 {
                                    let (iy, ix) = (oy as isize + r as isize - 1, ox as isize + q as isize - 1);
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                        s += x[((i * cin + ci) * h + iy as usize) * w + ix as usize] as f64 * wt[((co * cin + ci) * 3 + r) * 3 + q] as f64;
                                    }
                                }
                            }
                        }
                        y[((i * cout + co) * h + oy) * w + ox] = s;
                    }
                }
            }
        }
        y
    }

    /// Largest error relative to the output's largest magnitude.
    fn error(t: &Winograd, dims: (usize, usize, usize, usize), cout: usize, seed: u64) -> f64 {
        let (b, cin, h, w) = dims;
        let x = crate::noise::normal_samples(b * cin * h * w, seed);
        let wt: Vec<f32> = crate::noise::normal_samples(cout * cin * 9, seed + 1).iter().map(|v| v / (cin as f32 * 9.0).sqrt()).collect();
        let bias = crate::noise::normal_samples(cout, seed + 2);
        let rows = WeightRows::f32(&wt, cout, cin * 9).unwrap();
        let ours = t.conv3x3(&x, dims, rows, Some(&bias), cout);
        // output channels in blocks of 8 (the last one partial) give the same numbers
        assert_eq!(ours, t.conv3x3_blocked(&x, dims, rows, Some(&bias), cout, (1, 8)), "blocked {dims:?}");
        let want = direct(&x, dims, &wt, &bias, cout);
        let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        let error = |y: &[f32]| y.iter().zip(&want).fold(0f64, |a, (&o, &e)| a.max((o as f64 - e).abs())) / scale;
        // in bands of two tile rows (the smallest): the same convolution within the same bound
        let banded = t.conv3x3_banded(&x, dims, rows, Some(&bias), cout, 1);
        error(&ours).max(error(&banded))
    }

    #[test]
    fn winograd_equals_direct_convolution() {
        // odd and non-square maps (ragged last tiles), batch 1 and 2, one and many channels
        for (dims, cout) in [((1, 1, 1, 1), 1), ((2, 3, 7, 9), 5), ((1, 16, 13, 4), 3), ((2, 64, 12, 12), 32), ((1, 5, 9, 10), 21)] {
            let e2 = error(&F2, dims, cout, 7);
            let e4 = error(&F4, dims, cout, 7);
            // F(2x2)'s transforms are exact: GEMM-level error. F(4x4)'s coefficients up to 8
            // and 1/24 amplify rounding: still within 1e-5 of the output's scale.
            assert!(e2 < 2e-6, "F2 {dims:?}: {e2}");
            assert!(e4 < 1e-5, "F4 {dims:?}: {e4}");
        }
    }
}
