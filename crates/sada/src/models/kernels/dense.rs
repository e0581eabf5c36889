//! y = x Wᵀ + b on the CPU as one GEMM over all leading dimensions, the bias written first and
//! accumulated into (candle's `Linear` runs one product per batch entry against a broadcast,
//! transposed weight and adds the bias in a second pass), and the GEGLU gate as one
//! vectorised pass.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous, gemm_parallelism, vmath};

struct Dense {
    has_bias: bool,
}

/// `x`: [..., in]; `w`: [out, in] (diffusers' layout: the product reads it transposed through
/// strides, so no transposed copy is made); `bias`: `[out]` (used only when `has_bias`). f32 CPU
/// tensors.
pub fn dense(x: &Tensor, w: &Tensor, bias: &Tensor, has_bias: bool) -> candle_core::Result<Tensor> {
    x.apply_op3_no_bwd(w, bias, &Dense { has_bias })
}

impl CustomOp3 for Dense {
    fn name(&self) -> &'static str {
        "dense"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sw: &CpuStorage, lw: &Layout, sb: &CpuStorage, lb: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (cout, cin) = lw.shape().dims2()?;
        let dims = lx.shape().dims();
        if dims.last() != Some(&cin) || (self.has_bias && lb.shape().dims() != [cout]) {
            candle_core::bail!("dense: input {:?} against weight [out {cout}, in {cin}]", lx.shape());
        }
        let (x, w, b) = (contiguous(sx, lx, "dense input")?, contiguous(sw, lw, "dense weight")?, contiguous(sb, lb, "dense bias")?);
        let rows = x.len() / cin.max(1);
        let mut out = vec![0f32; rows * cout];
        if self.has_bias {
            out.par_chunks_mut(cout.max(1)).for_each(|r| r.copy_from_slice(b));
        }
        if rows > 0 && cout > 0 && cin > 0 {
            // SAFETY: out is rows x cout and x rows x cin, row-major; w is cout x cin row-major, read
            // as its cin x cout transpose (row stride 1, column stride cin). All in bounds.
            unsafe {
                gemm::gemm(
                    rows,
                    cout,
                    cin,
                    out.as_mut_ptr(),
                    1,
                    cout as isize,
                    self.has_bias,
                    x.as_ptr(),
                    1,
                    cin as isize,
                    w.as_ptr(),
                    cin as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm_parallelism(rows * cout * cin),
                );
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
