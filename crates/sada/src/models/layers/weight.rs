//! Weights kept at rest in a smaller type (`--weights f16|bf16|q8_0|q4_0|q4_k`) and widened to
//! f32 a piece at a time inside the CPU kernels (`kernels::rows`), so a model holds about half
//! (f16, bf16), 0.27 (q8_0) or 0.14 (q4_0, q4_k) of its f32 bytes, and the compute stays f32 on
//! the CPU.
//!
//! The type is chosen where a model is loaded, but the layers are built deep inside
//! `VarBuilder` calls that cannot carry it; so loading runs inside [`at_rest`], which sets it
//! for the loading thread until the returned guard drops. Without it weights are held as the
//! file stores them: a GGUF file's blocks (Q4_K, Q8_0, F16, ...) as they are, anything else f32.

use std::cell::Cell;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::models::gguf::{dequantize, quantize, GgmlType};
use crate::models::kernels::rows::WeightRows;

/// How frozen f32 CPU weights are held between uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightType {
    /// As loaded (no conversion).
    #[default]
    F32,
    /// IEEE half precision (rounded to nearest even).
    F16,
    /// bfloat16 (rounded to nearest even).
    Bf16,
    /// ggml's Q8_0: blocks of 32 int8 values with an f16 scale (8.5 bits a value). Layers whose
    /// rows are not whole blocks are held in f16.
    Q8_0,
    /// ggml's Q4_0: blocks of 32 4-bit values with an f16 scale (4.5 bits a value); f16 where
    /// rows are not whole blocks.
    Q4_0,
    /// ggml's Q4_K: 256-value super-blocks of 4-bit values with a 6-bit scale and minimum per
    /// 32 (4.5 bits a value); rows that are not whole super-blocks take Q8_0, or f16.
    Q4K,
}

impl WeightType {
    /// Every type, with its name as `--weights` reads it.
    pub const ALL: [(&'static str, WeightType); 6] = [
        ("f32", WeightType::F32),
        ("f16", WeightType::F16),
        ("bf16", WeightType::Bf16),
        ("q8_0", WeightType::Q8_0),
        ("q4_0", WeightType::Q4_0),
        ("q4_k", WeightType::Q4K),
    ];

    /// The type named `name` (f32, f16, bf16, q8_0, q4_0, q4_k).
    pub fn parse(name: &str) -> Result<Self> {
        let n = name.trim().to_ascii_lowercase();
        Self::ALL.iter().find(|(k, _)| *k == n).map(|(_, t)| *t).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|(k, _)| *k).collect();
            Error::param("weights", format!("`{name}`: expected one of {}", names.join(", ")))
        })
    }

    /// Its name as `--weights` reads it.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, t)| *t == self).map(|(k, _)| *k).expect("every type is listed")
    }

    /// The type a weight whose rows hold `row` values is kept in: this type, or where the rows
    /// are not whole blocks of it the nearest wider one that fits.
    pub fn ggml(self, row: usize) -> GgmlType {
        match self {
            WeightType::F32 => GgmlType::F32,
            WeightType::F16 => GgmlType::F16,
            WeightType::Bf16 => GgmlType::BF16,
            WeightType::Q8_0 if row.is_multiple_of(32) => GgmlType::Q8_0,
            WeightType::Q4_0 if row.is_multiple_of(32) => GgmlType::Q4_0,
            WeightType::Q4K if row.is_multiple_of(256) => GgmlType::Q4_K,
            WeightType::Q4K if row.is_multiple_of(32) => GgmlType::Q8_0,
            WeightType::Q8_0 | WeightType::Q4_0 | WeightType::Q4K => GgmlType::F16,
        }
    }
}

thread_local! {
    /// None: as the file stores them (a GGUF file's blocks kept, everything else f32).
    static AT_REST: Cell<Option<WeightType>> = const { Cell::new(None) };
    /// Blocks a GGUF file stores for tensors just loaded from it, by tensor, for the layer that
    /// takes the tensor next to keep instead of its f32 values.
    static FILE_BLOCKS: std::cell::RefCell<std::collections::HashMap<candle_core::TensorId, (GgmlType, Vec<u8>)>> = Default::default();
}

/// Restores the previous weight type when dropped.
pub struct AtRest(Option<WeightType>);

impl Drop for AtRest {
    fn drop(&mut self) {
        AT_REST.with(|c| c.set(self.0));
        FILE_BLOCKS.with(|b| b.borrow_mut().clear());
    }
}

/// Hold the weights of layers built on this thread in `ty` until the guard drops (every
/// weight converted; a GGUF file's blocks are kept where they already are what `ty` makes).
pub fn at_rest(ty: WeightType) -> AtRest {
    AtRest(AT_REST.with(|c| c.replace(Some(ty))))
}

/// The weight type layers built now take: None when they are held as stored (the default).
pub fn current() -> Option<WeightType> {
    AT_REST.with(Cell::get)
}

/// Whether a weight of shape `dims` stored in a file as blocks of `ty` is kept in them: when
/// weights are held as stored, or when the type asked for would pack it as `ty` anyway (a Q8_0
/// file's matrices under `--weights q8_0`: no second quantisation, and none of its time).
fn keeps_file_blocks(ty: GgmlType, dims: &[usize]) -> bool {
    current().is_none_or(|asked| asked.ggml(dims.iter().skip(1).product()) == ty)
}

/// `t` was just widened from `bytes`, blocks of `ty` in a GGUF file: when these blocks are what
/// the layer would hold ([`keeps_file_blocks`]), the layer that takes `t` keeps them instead.
pub fn offer_file_blocks(t: &Tensor, ty: GgmlType, bytes: &[u8]) {
    FILE_BLOCKS.with(|b| {
        let mut b = b.borrow_mut();
        // a layer takes its weight right after loading it (a bias between): an offer not taken
        // by then (a tensor sliced or reshaped first, a layer that keeps f32) is dropped here,
        // so at most one stale copy is ever held
        b.clear();
        if ty != GgmlType::F32 && t.rank() >= 2 && keeps_file_blocks(ty, t.dims()) {
            b.insert(t.id(), (ty, bytes.to_vec()));
        }
    });
}

/// A frozen weight: an f32 tensor, or its values packed in a smaller type.
#[derive(Clone)]
pub enum Weight {
    /// As loaded.
    F32(Tensor),
    /// Packed blocks of `ty` over the row-major values (rows: all axes but the first).
    Packed(std::sync::Arc<Packed>),
}

/// A weight's values packed in blocks of a smaller type.
pub struct Packed {
    ty: GgmlType,
    bytes: Vec<u8>,
    shape: Vec<usize>,
    device: Device,
}

impl Weight {
    fn packed(ty: GgmlType, bytes: Vec<u8>, shape: Vec<usize>, device: &Device) -> Self {
        Weight::Packed(std::sync::Arc::new(Packed { ty, bytes, shape, device: device.clone() }))
    }

    /// Hold `w` (a frozen f32 CPU weight) in the current [`at_rest`] type; anything else as it is.
    pub fn at_rest(w: Tensor) -> candle_core::Result<Self> {
        if let Some((ty, bytes)) = FILE_BLOCKS.with(|b| b.borrow_mut().remove(&w.id())) {
            if keeps_file_blocks(ty, w.dims()) && w.device().is_cpu() && !w.is_variable() {
                return Ok(Weight::packed(ty, bytes, w.dims().to_vec(), w.device()));
            }
        }
        let ty = current().unwrap_or(WeightType::F32);
        if ty == WeightType::F32 || w.dtype() != DType::F32 || !w.device().is_cpu() || w.is_variable() {
            return Ok(Weight::F32(w));
        }
        let shape = w.dims().to_vec();
        // a row is everything but the first axis: a linear layer's inputs, a convolution's
        // c_in x k x k patch (what one output reads, as the im2col product does)
        let row = shape.iter().skip(1).product::<usize>();
        let ggml = ty.ggml(row);
        let values = w.flatten_all()?.to_vec1::<f32>()?;
        let mut bytes = Vec::with_capacity(ggml.bytes_for(values.len()).unwrap_or(0));
        quantize(ggml, &values, &mut bytes).ok_or_else(|| candle_core::Error::Msg(format!("cannot pack weights as {ggml:?}")))?;
        Ok(Weight::packed(ggml, bytes, shape, w.device()))
    }

    /// Run `f` on the weight as the CPU kernels read it: `[first axis, the rest]` rows, f32 in
    /// place or blocks the kernel widens a piece at a time.
    pub fn with_rows<R>(&self, f: impl FnOnce(WeightRows<'_>) -> candle_core::Result<R>) -> candle_core::Result<R> {
        match self {
            Weight::F32(t) => {
                let rows = t.dims().first().copied().unwrap_or(1);
                let (storage, layout) = t.storage_and_layout();
                let candle_core::Storage::Cpu(cpu) = &*storage else { candle_core::bail!("the CPU kernels read weights on the CPU") };
                let values = crate::models::kernels::contiguous(cpu, layout, "weight")?;
                f(WeightRows::f32(values, rows, values.len() / rows.max(1))?)
            }
            Weight::Packed(p) => {
                let rows = p.shape.first().copied().unwrap_or(1);
                f(WeightRows::blocks(p.ty, &p.bytes, rows, p.shape.iter().skip(1).product())?)
            }
        }
    }

    /// The weight as an f32 tensor (a packed one widened now, a copy per call: for other
    /// devices and for checks; the CPU kernels read [`Weight::with_rows`]).
    pub fn f32(&self) -> candle_core::Result<Tensor> {
        match self {
            Weight::F32(t) => Ok(t.clone()),
            Weight::Packed(p) => {
                let mut out = vec![0f32; p.shape.iter().product()];
                dequantize(p.ty, &p.bytes, &mut out);
                Tensor::from_vec(out, p.shape.as_slice(), &p.device)
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Weight::F32(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Weight::Packed(p) => p.bytes.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_weights_widen_back_within_their_type_s_rounding() {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(crate::noise::normal_samples(64 * 96, 7), (64, 96), &dev).unwrap();
        let plain = Weight::at_rest(w.clone()).unwrap();
        assert!(matches!(plain, Weight::F32(_)), "f32 unless asked");
        // 96-value rows: Q4_K's 256-value super-blocks do not fit, so it takes Q8_0
        for (ty, bound, ratio) in [
            (WeightType::F16, 1e-3, 0.5),
            (WeightType::Bf16, 8e-3, 0.5),
            (WeightType::Q8_0, 1e-2, 34.0 / 128.0),
            (WeightType::Q4_0, 0.15, 18.0 / 128.0),
            (WeightType::Q4K, 1e-2, 34.0 / 128.0),
        ] {
            let _g = at_rest(ty);
            let p = Weight::at_rest(w.clone()).unwrap();
            assert_eq!(p.bytes() as f64, (64 * 96 * 4) as f64 * ratio, "{ty:?}");
            let back = p.f32().unwrap();
            assert_eq!(back.dims(), w.dims());
            let err = (&back - &w).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let peak = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err > 0.0 && err <= bound as f32 * peak, "{ty:?}: {err} against {peak}");
        }
        assert_eq!(current(), None, "the guard restores the type");
        assert!(WeightType::parse("Q8_0").is_ok() && WeightType::parse("q4").unwrap_err().to_string().contains("f32, f16, bf16, q8_0, q4_0, q4_k"));
    }

    #[test]
    fn a_gguf_file_s_blocks_are_kept_unless_another_type_is_asked_for() {
        let dev = Device::Cpu;
        let values: Vec<f32> = crate::noise::normal_samples(4 * 64, 21);
        let mut blocks = Vec::new();
        quantize(GgmlType::Q8_0, &values, &mut blocks).unwrap();
        let mut widened = vec![0f32; values.len()];
        crate::models::gguf::dequantize(GgmlType::Q8_0, &blocks, &mut widened);
        let load = || Tensor::from_vec(widened.clone(), (4, 64), &dev).unwrap();
        // as stored: the layer keeps the file's blocks
        let t = load();
        offer_file_blocks(&t, GgmlType::Q8_0, &blocks);
        match Weight::at_rest(t).unwrap() {
            Weight::Packed(p) => assert!(p.ty == GgmlType::Q8_0 && p.bytes == blocks),
            Weight::F32(_) => panic!("the file's blocks were not kept"),
        }
        // an offer not taken before the next load is dropped
        let (stale, next) = (load(), load());
        offer_file_blocks(&stale, GgmlType::Q8_0, &blocks);
        offer_file_blocks(&next, GgmlType::F16, &[0; 512]);
        assert!(matches!(Weight::at_rest(stale).unwrap(), Weight::F32(_)));
        // another type asked for converts every weight, the file's included
        {
            let _g = at_rest(WeightType::F32);
            let t = load();
            offer_file_blocks(&t, GgmlType::Q8_0, &blocks);
            assert!(matches!(Weight::at_rest(t).unwrap(), Weight::F32(_)));
            let _g = at_rest(WeightType::Q4_0);
            let t = load();
            offer_file_blocks(&t, GgmlType::Q8_0, &blocks);
            assert!(matches!(Weight::at_rest(t).unwrap(), Weight::Packed(p) if p.ty == GgmlType::Q4_0));
        }
        // the type the file already holds keeps its blocks as they are: these, or f16 blocks
        // for q4_k's fallback where rows are not whole super-blocks (64 values here)
        let _g = at_rest(WeightType::Q8_0);
        let t = load();
        offer_file_blocks(&t, GgmlType::Q8_0, &blocks);
        assert!(matches!(Weight::at_rest(t).unwrap(), Weight::Packed(p) if p.ty == GgmlType::Q8_0 && p.bytes == blocks));
        let _g = at_rest(WeightType::Q4K);
        let t = load();
        offer_file_blocks(&t, GgmlType::Q8_0, &blocks);
        assert!(matches!(Weight::at_rest(t).unwrap(), Weight::Packed(p) if p.bytes == blocks), "q4_k takes q8_0 for 64-value rows");
    }
}
