//! GroupNorm, optionally followed by SiLU, in one parallel pass per (image, group): candle's
//! `GroupNorm` runs about ten separate ops (reshapes, means, variance, broadcasts), each a full
//! pass over the feature map, and the SiLU after it is one more.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous;
use super::vmath::{self, dispatch};

struct GroupNormOp {
    groups: usize,
    eps: f32,
    silu: bool,
}

/// `x`: `[B, C, ...]` f32 CPU; `gamma`, `beta`: `[C]`.
pub fn group_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, groups: usize, eps: f64, silu: bool) -> candle_core::Result<Tensor> {
    x.apply_op3_no_bwd(gamma, beta, &GroupNormOp { groups, eps: eps as f32, silu })
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "group-norm"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sg: &CpuStorage, lg: &Layout, sb: &CpuStorage, lb: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = lx.shape().dims();
        if dims.len() < 2 || self.groups == 0 || !dims[1].is_multiple_of(self.groups) || lg.shape().dims() != [dims[1]] || lb.shape().dims() != [dims[1]] {
            candle_core::bail!("group norm: input {:?} with {} groups and {:?} / {:?} affine", lx.shape(), self.groups, lg.shape(), lb.shape());
        }
        let (x, gamma, beta) = (contiguous(sx, lx, "group norm: input")?, contiguous(sg, lg, "group norm: weight")?, contiguous(sb, lb, "group norm: bias")?);
        let c = dims[1];
        let spatial: usize = dims[2..].iter().product();
        let cpg = c / self.groups;
        let mut out = vec![0f32; x.len()];
        if spatial * cpg > 0 {
            out.par_chunks_mut(cpg * spatial).zip(x.par_chunks(cpg * spatial)).enumerate().for_each(|(i, (o, xg))| {
                let c0 = (i % self.groups) * cpg;
                normalise_group(xg, o, &gamma[c0..c0 + cpg], &beta[c0..c0 + cpg], spatial, self.eps, self.silu);
            });
        }
        Ok((CpuStorage::F32(out), lx.shape().clone()))
    }
}

dispatch!(
/// Normalises one group `x` (its channels' `spatial`-long maps, back to back) to zero mean and
/// unit variance, then applies each channel's `gamma` / `beta` (and SiLU when `silu`) into `out`.
normalise_group(x: &[f32], out: &mut [f32], gamma: &[f32], beta: &[f32], spatial: usize, eps: f32, silu: bool) -> () {
    // mean and variance in f64 over eight f32 lanes: the group can hold 10^5 values, and a
    // one-pass f32 sum of squares would lose the variance of an offset map
    let n = x.len() as f64;
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        for i in 0..8 {
            acc[i] += ch[i];
        }
    }
    let mean = (acc.iter().map(|&v| v as f64).sum::<f64>() + chunks.remainder().iter().map(|&v| v as f64).sum::<f64>()) / n;
    let m = mean as f32;
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        for i in 0..8 {
            let d = ch[i] - m;
            acc[i] += d * d;
        }
    }
    let var = (acc.iter().map(|&v| v as f64).sum::<f64>() + chunks.remainder().iter().map(|&v| ((v - m) as f64).powi(2)).sum::<f64>()) / n;
    let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
    for (ci, (o, xc)) in out.chunks_exact_mut(spatial).zip(x.chunks_exact(spatial)).enumerate() {
        let scale = gamma[ci] * inv;
        let shift = beta[ci] - m * scale;
        vmath::affine(o, xc, scale, shift, silu);
    }
});

#[cfg(test)]
mod tests {
    use candle_core::{Device, Module, Tensor};

    #[test]
    fn fused_group_norm_equals_candles() {
        let dev = Device::Cpu;
        // odd spatial sizes, one group, one channel per group, an offset map (mean far from 0)
        for (b, c, h, w, groups, offset) in [(2, 6, 5, 3, 3, 0.0), (1, 4, 1, 1, 1, 0.0), (2, 8, 9, 7, 8, 0.0), (1, 32, 16, 16, 8, 100.0)] {
            let n = b * c * h * w;
            let x = (Tensor::from_vec(crate::noise::normal_samples(n, 1), (b, c, h, w), &dev).unwrap() + offset).unwrap();
            let gamma = Tensor::from_vec(crate::noise::normal_samples(c, 2), c, &dev).unwrap();
            let beta = Tensor::from_vec(crate::noise::normal_samples(c, 3), c, &dev).unwrap();
            let reference = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), c, groups, 1e-5).unwrap();
            let want = reference.forward(&x).unwrap();
            for silu in [false, true] {
                let ours = super::group_norm(&x, &gamma, &beta, groups, 1e-5, silu).unwrap();
                let want = if silu { want.silu().unwrap() } else { want.clone() };
                let err = (ours - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let tol = if offset > 0.0 { 1e-3 } else { 1e-5 };
                assert!(err < tol, "{b}x{c}x{h}x{w} groups {groups} offset {offset} silu {silu}: {err}");
            }
        }
        let x = Tensor::zeros((1, 6, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let g = Tensor::ones(6, candle_core::DType::F32, &dev).unwrap();
        assert!(super::group_norm(&x, &g, &g, 4, 1e-5, false).is_err());
    }
}
