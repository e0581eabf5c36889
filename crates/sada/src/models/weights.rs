//! Finding and opening a model component's safetensors weights the way diffusers does:
//! `diffusion_pytorch_model.safetensors`, its `.fp16` variant, or shards listed in an index.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

/// The weight files of a component folder (e.g. `unet/`), in load order.
pub fn weight_files(dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "model component folder not found"));
    }
    for variant in ["", ".fp16"] {
        let single = dir.join(format!("{stem}{variant}.safetensors"));
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join(format!("{stem}.safetensors{variant}.index.json"));
        let index = if index.is_file() { index } else { dir.join(format!("{stem}{variant}.safetensors.index.json")) };
        if index.is_file() {
            return shards(&index);
        }
    }
    Err(Error::file(dir, format!("no weights: expected {stem}.safetensors, {stem}.fp16.safetensors or a sharded {stem}.safetensors.index.json")))
}

fn shards(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::file(index, format!("cannot read: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(index, format!("invalid JSON: {e}")))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::file(index, "missing `weight_map` object"))?;
    let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_owned)).collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(Error::file(index, "`weight_map` lists no weight files"));
    }
    if let Some(bad) = files.iter().find(|f| Path::new(f).components().count() != 1) {
        return Err(Error::file(index, format!("`weight_map` names `{bad}`; shards must be file names in the same folder")));
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
        return Err(Error::file(missing, format!("shard listed in {} is missing", index.display())));
    }
    Ok(paths)
}

/// Memory-map the files; a file that is not valid safetensors, or holds a tensor that is not
/// floating point or not finite, is an error naming it.
pub fn var_builder(files: &[PathBuf], dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    for f in files {
        // Validate each file up front so the error names the corrupt one.
        // SAFETY: the file is only read; concurrent modification by another process is the
        // caller's responsibility, as with any memory-mapped model file.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(f) }.map_err(|e| Error::file(f, format!("not a valid safetensors file: {e}")))?;
        check_tensors(st.tensors(), f)?;
    }
    // SAFETY: as above.
    unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }.map_err(|e| Error::file(&files[0], format!("cannot open weights: {e}")))
}

/// Names (suffixes) of integer buffers saved by older transformers / LDM training code:
/// CLIP's `position_ids`, the EMA's `num_updates`, batch norm's `num_batches_tracked`.
const INTEGER_BUFFERS: [&str; 3] = ["position_ids", "num_updates", "num_batches_tracked"];

/// Weights must be floating point (an integer tensor would be cast silently) and finite; the
/// error names the tensor and the file.
pub fn check_tensors(tensors: Vec<(String, safetensors::tensor::TensorView<'_>)>, path: &Path) -> Result<()> {
    use rayon::prelude::*;
    use safetensors::Dtype;
    for (name, view) in tensors {
        let data = view.data();
        // non-finite: every exponent bit set
        let finite = match view.dtype() {
            // integer buffers real checkpoints carry beside the weights; no model reads them
            Dtype::I64 | Dtype::I32 if INTEGER_BUFFERS.iter().any(|b| name.ends_with(b)) => true,
            Dtype::F32 => {
                data.par_chunks(1 << 16).all(|c| c.chunks_exact(4).all(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 != 0x7f80_0000))
            }
            Dtype::F16 => data.par_chunks(1 << 16).all(|c| c.chunks_exact(2).all(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 != 0x7c00)),
            Dtype::BF16 => data.par_chunks(1 << 16).all(|c| c.chunks_exact(2).all(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 != 0x7f80)),
            Dtype::F64 => data.par_chunks(1 << 16).all(|c| {
                c.chunks_exact(8).all(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) & 0x7ff0_0000_0000_0000 != 0x7ff0_0000_0000_0000)
            }),
            other => return Err(Error::file(path, format!("tensor `{name}` is {other:?}; weights must be floating point (f16, bf16, f32 or f64)"))),
        };
        if !finite {
            return Err(Error::file(path, format!("tensor `{name}` holds NaN or infinite values")));
        }
    }
    Ok(())
}
