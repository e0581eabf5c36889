//! y = x Wᵀ + b on the CPU as one GEMM over all leading dimensions, the bias written first and
//! accumulated into (candle's `Linear` runs one product per batch entry against a broadcast,
//! transposed weight and adds the bias in a second pass), and the GEGLU gate as one
//! vectorised pass.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::rows::WeightRows;
use super::{contiguous, gemm_parallelism, matmul, vmath, View};

struct Dense<'a> {
    w: WeightRows<'a>,
    has_bias: bool,
}

/// `x`: [..., in]; `w`: [out, in] (diffusers' layout: the product reads it transposed through
/// strides, so no transposed copy is made); `bias`: `[out]` (used only when `has_bias`). f32 CPU
/// tensors; a weight held in blocks is widened piece by piece (`rows::WeightRows::for_each_piece`).
pub fn dense(x: &Tensor, w: WeightRows<'_>, bias: &Tensor, has_bias: bool) -> candle_core::Result<Tensor> {
    x.apply_op2_no_bwd(bias, &Dense { w, has_bias })
}

impl CustomOp2 for Dense<'_> {
    fn name(&self) -> &'static str {
        "dense"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sb: &CpuStorage, lb: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (cout, cin) = self.w.dims();
        let dims = lx.shape().dims();
        if dims.last() != Some(&cin) || (self.has_bias && lb.shape().dims() != [cout]) {
            candle_core::bail!("dense: input {:?} against weight [out {cout}, in {cin}]", lx.shape());
        }
        let (x, b) = (contiguous(sx, lx, "dense input")?, contiguous(sb, lb, "dense bias")?);
        let rows = x.len() / cin.max(1);
        let mut out = vec![0f32; rows * cout];
        if self.has_bias {
            out.par_chunks_mut(cout.max(1)).for_each(|r| r.copy_from_slice(b));
        }
        if rows > 0 && cout > 0 && cin > 0 {
            // out (+)= x wᵀ: w (cout x cin, row-major) read as its cin x cout transpose
            let wt = |cols: usize| View { offset: 0, rs: 1, cs: cols };
            match self.w.as_f32() {
                Some(w) => matmul(
                    &mut out,
                    View::rows(0, cout),
                    x,
                    View::rows(0, cin),
                    w,
                    wt(cin),
                    (rows, cout, cin),
                    self.has_bias,
                    gemm_parallelism(rows * cout * cin),
                ),
                // a weight held in blocks: piece by piece, each accumulated into its columns
                None => self.w.for_each_piece(|p| {
                    let (n, kc) = (p.rows.len(), p.cols.len());
                    let (dst, lhs) = (View::rows(p.rows.start, cout), View::rows(p.cols.start, cin));
                    matmul(&mut out, dst, x, lhs, p.values, wt(kc), (rows, n, kc), self.has_bias || p.cols.start > 0, gemm_parallelism(rows * n * kc))
                }),
            }
        }
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("checked above") = cout;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

struct Geglu;

/// value * gelu(gate), elementwise, f32 CPU tensors of one shape.
pub fn geglu(value: &Tensor, gate: &Tensor) -> candle_core::Result<Tensor> {
    value.apply_op2_no_bwd(gate, &Geglu)
}

impl CustomOp2 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, sv: &CpuStorage, lv: &Layout, sg: &CpuStorage, lg: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if lv.shape() != lg.shape() {
            candle_core::bail!("geglu: value {:?} and gate {:?} differ", lv.shape(), lg.shape());
        }
        let (v, g) = (contiguous(sv, lv, "geglu value")?, contiguous(sg, lg, "geglu gate")?);
        let mut out = v.to_vec();
        const CHUNK: usize = 1 << 14;
        out.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(o, g)| vmath::geglu(o, g));
        Ok((CpuStorage::F32(out), lv.shape().clone()))
    }
}
