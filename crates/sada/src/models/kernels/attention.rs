//! Fused multi-head attention on the CPU: softmax(Q Kᵀ · scale) V computed tile by tile with an
//! online softmax, so the N x M score matrix never exists. The matrix products run on gemm's
//! microkernels; the exponentials on the vectorised `exp`. Q, K and V are read straight from
//! the projections' `[B, tokens, heads * head_dim]` layout and the output is written in the
//! same layout, so no head split or merge copies are needed.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{contiguous, vmath};

/// Queries per tile and keys per tile: a 256 x 1024 score tile is 1 MB, an L2's worth; of the
/// sizes tried (64-512 x 256-1024) the fastest on a 2-core AVX2 host at 77-4096 keys.
const BLOCK_Q: usize = 256;
const BLOCK_K: usize = 1024;

struct FusedAttention {
    heads: usize,
    scale: f32,
}

/// `q`: [B, N, H*D], `k`, `v`: [B, M, H*D], f32 on the CPU; returns [B, N, H*D].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32) -> candle_core::Result<Tensor> {
    q.apply_op3_no_bwd(k, v, &FusedAttention { heads, scale })
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, sq: &CpuStorage, lq: &Layout, sk: &CpuStorage, lk: &Layout, sv: &CpuStorage, lv: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, n, c) = lq.shape().dims3()?;
        let (bk, m, ck) = lk.shape().dims3()?;
        if lv.shape().dims() != lk.shape().dims() || bk != b || ck != c || self.heads == 0 || c % self.heads != 0 || m == 0 {
            candle_core::bail!("fused attention: q {:?}, k {:?}, v {:?} with {} heads", lq.shape(), lk.shape(), lv.shape(), self.heads);
        }
        let (q, k, v) = (contiguous(sq, lq, "fused attention: q")?, contiguous(sk, lk, "fused attention: k")?, contiguous(sv, lv, "fused attention: v")?);
        let mut out = vec![0f32; b * n * c];
        if out.is_empty() {
            // no queries (every token pruned) or no channels: nothing to attend
            return Ok((CpuStorage::F32(out), Shape::from((b, n, c))));
        }
        // one task per (image, query tile): its output rows are one contiguous chunk
        out.par_chunks_mut(n * c).enumerate().for_each(|(img, o_img)| {
            o_img.par_chunks_mut(BLOCK_Q * c).enumerate().for_each_init(
                || vec![0f32; BLOCK_Q * BLOCK_K.min(m) + 2 * BLOCK_Q],
                |scratch, (t, o)| {
                    let q0 = t * BLOCK_Q;
                    let rows = o.len() / c;
                    let q_img = &q[(img * n + q0) * c..(img * n + q0 + rows) * c];
                    let k_img = &k[img * m * c..(img + 1) * m * c];
                    let v_img = &v[img * m * c..(img + 1) * m * c];
                    for h in 0..self.heads {
                        attend_tile(q_img, k_img, v_img, o, rows, m, c, h * (c / self.heads), c / self.heads, self.scale, scratch);
                    }
                },
            );
        });
        Ok((CpuStorage::F32(out), Shape::from((b, n, c))))
    }
}

/// One head of one query tile: rows x d queries (row stride c, starting at column `col`) against
/// all m keys, accumulated into the same columns of `o`.
#[allow(clippy::too_many_arguments)]
fn attend_tile(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], rows: usize, m: usize, c: usize, col: usize, d: usize, scale: f32, scratch: &mut [f32]) {
    let bk_max = BLOCK_K.min(m);
    let (s, rest) = scratch.split_at_mut(BLOCK_Q * bk_max);
    let (row_max, row_sum) = rest.split_at_mut(BLOCK_Q);
    row_max[..rows].fill(f32::NEG_INFINITY);
    row_sum[..rows].fill(0.0);
    let mut k0 = 0;
    while k0 < m {
        let bk = bk_max.min(m - k0);
        // S = scale * Q Kᵀ: Kᵀ read from K's rows through swapped strides
        // SAFETY: every pointer/stride pair addresses only elements inside its slice: rows x d
        // of q from `col`, bk x d of k from row k0, and the rows x bk prefix of s.
        unsafe {
            gemm::gemm(
                rows,
                bk,
                d,
                s.as_mut_ptr(),
                1,
                bk as isize,
                false,
                q.as_ptr().add(col),
                1,
                c as isize,
                k.as_ptr().add(k0 * c + col),
                c as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        for r in 0..rows {
            let srow = &mut s[r * bk..(r + 1) * bk];
            let new_max = row_max[r].max(vmath::row_max(srow));
            let sum = vmath::exp_sub_sum(srow, new_max);
            if row_max[r] != f32::NEG_INFINITY {
                // rescale what earlier key tiles accumulated to the new maximum
                let corr = (row_max[r] - new_max).exp();
                row_sum[r] *= corr;
                vmath::scale_in_place(&mut o[r * c + col..r * c + col + d], corr);
            }
            row_sum[r] += sum;
            row_max[r] = new_max;
        }
        // O += P V
        // SAFETY: rows x bk of s, bk x d of v from row k0, rows x d of o from `col`.
        unsafe {
            gemm::gemm(
                rows,
                d,
                bk,
                o.as_mut_ptr().add(col),
                1,
                c as isize,
                k0 > 0,
                s.as_ptr(),
                1,
                bk as isize,
                v.as_ptr().add(k0 * c + col),
                1,
                c as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        k0 += bk;
    }
    for r in 0..rows {
        vmath::scale_in_place(&mut o[r * c + col..r * c + col + d], 1.0 / row_sum[r]);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use crate::models::layers::attention::scaled_dot_product_attention;

    fn randn(shape: (usize, usize, usize), seed: u64) -> Tensor {
        let n = shape.0 * shape.1 * shape.2;
        Tensor::from_vec(crate::noise::normal_samples(n, seed), shape, &Device::Cpu).unwrap()
    }

    /// The unfused reference: heads split out, chunked matmul + softmax, heads merged back.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32) -> Tensor {
        let split = |t: &Tensor| {
            let (b, n, c) = t.dims3().unwrap();
            t.reshape((b, n, heads, c / heads)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
        };
        let o = scaled_dot_product_attention(&split(q), &split(k), &split(v), scale as f64).unwrap();
        let (b, h, n, d) = o.dims4().unwrap();
        o.transpose(1, 2).unwrap().reshape((b, n, h * d)).unwrap()
    }

    #[test]
    fn fused_attention_equals_the_unfused_form() {
        // (batch, queries, keys, heads, head_dim): odd sizes, several key tiles, non-square,
        // a single query, more queries than a tile, cross-attention's 77 keys
        let cases = [(1, 1, 1, 1, 8), (2, 7, 77, 3, 8), (1, 130, 600, 2, 16), (2, 300, 1030, 5, 64), (2, 1024, 77, 5, 64), (1, 513, 513, 1, 40)];
        for (i, &(b, n, m, h, d)) in cases.iter().enumerate() {
            let seed = 10 * i as u64;
            // large logits (x3) so the online softmax's rescaling across key tiles matters
            let q = (randn((b, n, h * d), seed) * 3.0).unwrap();
            let (k, v) = (randn((b, m, h * d), seed + 1), randn((b, m, h * d), seed + 2));
            let scale = (d as f32).powf(-0.5);
            let ours = super::attention(&q, &k, &v, h, scale).unwrap();
            let want = reference(&q, &k, &v, h, scale);
            assert_eq!(ours.dims(), want.dims());
            let err = (&ours - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let mag = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err <= 1e-5 * mag, "case {:?}: max error {err} against max |out| {mag}", cases[i]);
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error_not_a_panic() {
        let q = randn((1, 4, 8), 1);
        assert!(super::attention(&q, &randn((1, 5, 6), 2), &randn((1, 5, 6), 3), 2, 1.0).is_err());
        assert!(super::attention(&q, &randn((1, 5, 8), 2), &randn((1, 4, 8), 3), 2, 1.0).is_err());
        assert!(super::attention(&q, &randn((1, 5, 8), 2), &randn((1, 5, 8), 3), 3, 1.0).is_err());
        assert!(super::attention(&q, &randn((1, 5, 8), 2), &randn((1, 5, 8), 3), 0, 1.0).is_err());
        let none = super::attention(&randn((2, 0, 8), 1), &randn((2, 5, 8), 2), &randn((2, 5, 8), 3), 2, 1.0).unwrap();
        assert_eq!(none.dims(), &[2, 0, 8]);
    }
}
