//! Finding and opening a model component's safetensors weights the way diffusers does:
//! `diffusion_pytorch_model.safetensors`, its `.fp16` variant, or shards listed in an index.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
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
    let text = crate::files::read_text(index, crate::files::MAX_TEXT_FILE)?;
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
        check_mapped(&open_safetensors(f)?, f)?;
    }
    // SAFETY: the files are only read; concurrent modification by another process is the
    // caller's responsibility, as with any memory-mapped model file.
    let st = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| Error::file(&files[0], format!("cannot open weights: {e}")))?;
    Ok(VarBuilder::from_backend(Box::new(Releasing(st)), dtype, device.clone()))
}

/// [`check_tensors`] on a mapped file, handing each tensor's pages back once it is checked.
pub fn check_mapped(st: &MmapedSafetensors, path: &Path) -> Result<()> {
    for (name, view) in st.tensors() {
        let data = view.data();
        check_tensors(vec![(name, view)], path)?;
        release_pages(data);
    }
    Ok(())
}

/// Hand the pages under `data`, part of a read-only file mapping, back to the kernel: they
/// leave this process's resident memory (staying in the page cache) and are read from the file
/// again if touched. Loading reads each tensor once and converts it, so without this the mapped
/// file stayed resident beside the converted weights: SDXL's f16 UNet (5.1 GB) next to its
/// q8_0 copy (2.7 GB) was the whole run's peak. Only for file mappings: on anonymous memory
/// the kernel would zero the pages.
pub(crate) fn release_pages(data: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
        let start = data.as_ptr() as usize / page * page;
        let end = (data.as_ptr() as usize + data.len()).div_ceil(page) * page;
        if data.len() >= page {
            // SAFETY: [start, end) lies within the mapping that holds `data` (mappings are whole
            // pages); MADV_DONTNEED on a read-only file mapping only drops resident pages, which
            // are read back from the unchanged file on the next access.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
}

/// candle's mapped safetensors as a VarBuilder backend that releases each tensor's pages once
/// it is loaded (see [`release_pages`]).
struct Releasing(MmapedSafetensors);

impl Releasing {
    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<candle_core::Tensor> {
        let t = self.0.load(name, dev)?.to_dtype(dtype)?;
        release_pages(self.0.get(name)?.data());
        Ok(t)
    }
}

impl candle_nn::var_builder::SimpleBackend for Releasing {
    fn get(&self, s: candle_core::Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<candle_core::Tensor> {
        let t = self.load(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("shape mismatch for {name}: expected {:?}, got {:?}", s.dims(), t.dims());
        }
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<candle_core::Tensor> {
        self.load(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.get(name).is_ok()
    }
}

/// Release the pages of tensor `name` of a mapped file (see [`release_pages`]).
pub(crate) fn release_tensor(st: &MmapedSafetensors, name: &str) {
    if let Ok(view) = st.get(name) {
        release_pages(view.data());
    }
}

/// The largest header (the JSON that lists the tensors) a safetensors file may have: the
/// safetensors crate's own bound.
const MAX_HEADER: u64 = 100_000_000;

/// Open and memory-map the safetensors file `path`: the one way weights, single-file
/// checkpoints and pipeline inputs are opened. Only a regular file is opened (a FIFO would
/// block, a device never end); its first bytes and header are read first, bounded, so that
/// another format is named as such (GGUF, a PyTorch zip or pickle) and a header that is too
/// large, not JSON or that names a tensor twice is refused before the file is mapped. Every
/// error is one line that names the path once.
pub fn open_safetensors(path: &Path) -> Result<MmapedSafetensors> {
    crate::files::check_regular(path)?;
    read_and_check_header(path)?;
    // SAFETY: the file is only read; concurrent modification by another process is the
    // caller's responsibility, as with any memory-mapped model file.
    unsafe { MmapedSafetensors::new(path) }.map_err(|e| Error::file(path, format!("not a valid safetensors file: {}", without_path(e))))
}

/// Read the first 8 bytes of the file at `path` and then the header they state (never more
/// than the file holds, nor 100 MB), and check them ([`check_safetensors_header`]).
fn read_and_check_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let io = |e: std::io::Error| Error::file(path, format!("cannot read: {e}"));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut prefix = Vec::with_capacity(8);
    file.by_ref().take(8).read_to_end(&mut prefix).map_err(io)?;
    let n = header_len(&prefix, len).map_err(|m| Error::file(path, m))?;
    prefix.reserve_exact(n);
    file.take(n as u64).read_to_end(&mut prefix).map_err(io)?;
    check_safetensors_header(&prefix, len).map_err(|m| Error::file(path, m))
}

/// The checks [`open_safetensors`] makes before it maps a file, on `prefix`, the file's first
/// bytes (its 8-byte header length and the header, where the file holds them), for a file of
/// `file_len` bytes: not another format, a header length within the file and 100 MB, a header
/// that is a JSON object naming each tensor once. The fuzz entry runs them on a whole file.
pub fn check_safetensors_header(prefix: &[u8], file_len: u64) -> std::result::Result<(), String> {
    let n = header_len(prefix, file_len)?;
    // `n` is at most 100 MB: no overflow
    let header = prefix.get(8..8 + n).ok_or("not a valid safetensors file: it ends inside its header")?;
    match first_repeated_name(header) {
        Ok(None) => Ok(()),
        Ok(Some(name)) if name == "__metadata__" => Err("not a valid safetensors file: `__metadata__` appears twice in the header".to_owned()),
        Ok(Some(name)) => Err(format!("tensor `{name}` appears twice in the header")),
        Err(e) => Err(format!("not a valid safetensors file: its header is not a JSON object ({e})")),
    }
}

/// The header length the first 8 bytes of `first` state, for a file of `file_len` bytes. A
/// length past the end of the file or beyond 100 MB is an error, which names the format where
/// the first bytes are another format's magic. None of those states a length that fits (GGUF's
/// `GGUF` and version, a zip's `PK\x03\x04` and version, a pickle's protocol and first opcodes,
/// read as a length, are gigabytes, or more than the file), so the magic is only looked at
/// where the length does not fit: a safetensors file whose header is 640 bytes long begins as a
/// pickle does (`\x80\x02`), and is read as safetensors.
fn header_len(first: &[u8], file_len: u64) -> std::result::Result<usize, String> {
    let foreign = || foreign_format(first).map(str::to_owned);
    let Some(bytes) = first.first_chunk::<8>() else {
        return Err(foreign().unwrap_or_else(|| format!("not a valid safetensors file: its header is cut short ({file_len} bytes)")));
    };
    let n = u64::from_le_bytes(*bytes);
    if n > MAX_HEADER {
        return Err(foreign().unwrap_or_else(|| {
            format!(
                "not a valid safetensors file: its header would be {} long, more than the {} a header may have",
                crate::files::human_bytes(n),
                crate::files::human_bytes(MAX_HEADER)
            )
        }));
    }
    if n > file_len.saturating_sub(8) {
        return Err(foreign()
            .unwrap_or_else(|| format!("not a valid safetensors file: its header would be {n} bytes long, more than the file holds ({file_len} bytes)")));
    }
    usize::try_from(n).map_err(|_| format!("not a valid safetensors file: a header of {n} bytes"))
}

/// The format the first bytes of a file are the magic of, as a message, where it is one a
/// checkpoint is commonly saved in.
fn foreign_format(first: &[u8]) -> Option<&'static str> {
    if first.starts_with(b"GGUF") {
        Some("a GGUF file, not safetensors; a GGUF checkpoint is read as a single file (--model FILE.gguf)")
    } else if first.starts_with(b"PK\x03\x04") {
        Some("a zip archive (a PyTorch .pt/.pth/.ckpt checkpoint?), not safetensors; convert it to safetensors")
    } else if first.first() == Some(&0x80) && first.get(1).is_some_and(|p| (2..=5).contains(p)) {
        Some("a Python pickle (a PyTorch checkpoint?), not safetensors")
    } else {
        None
    }
}

/// The first key of the JSON object `header` that appears a second time (a tensor listed twice;
/// deserialized into a map or a `serde_json::Value`, the last would silently win).
fn first_repeated_name(header: &[u8]) -> std::result::Result<Option<String>, serde_json::Error> {
    use serde::Deserializer as _;
    let mut de = serde_json::Deserializer::from_slice(header);
    (&mut de).deserialize_map(FirstRepeat)
}

/// Visits a JSON object's keys, skipping the values, and keeps the first that repeats.
struct FirstRepeat;

impl<'de> serde::de::Visitor<'de> for FirstRepeat {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object of tensors")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut repeat = None;
        while let Some(name) = map.next_key::<String>()? {
            map.next_value::<serde::de::IgnoredAny>()?;
            if repeat.is_none() && !seen.insert(name.clone()) {
                repeat = Some(name);
            }
        }
        Ok(repeat)
    }
}

/// candle's error without the path it adds (the caller's [`Error::file`] names it once) or a
/// backtrace.
fn without_path(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithPath { inner, .. } | candle_core::Error::WithBacktrace { inner, .. } => without_path(*inner),
        other => other.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file by hand: the 8-byte header length, `header` as given (so it may name
    /// a tensor twice), then `data_len` zero bytes.
    fn raw(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        bytes
    }

    /// The one-line error of opening a file of `bytes`, which names the file exactly once.
    fn open_err(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let e = open_safetensors(&path).err().expect("refused").to_string();
        assert_eq!(e.matches(&path.display().to_string()).count(), 1, "{e}");
        assert!(!e.contains('\n'), "{e}");
        e
    }

    const ONE: &str = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;

    #[test]
    fn other_formats_are_named_not_read_as_safetensors() {
        let mut gguf = b"GGUF\x03\x00\x00\x00".to_vec();
        gguf.resize(64, 0);
        assert!(open_err(&gguf).contains("a GGUF file, not safetensors; a GGUF checkpoint is read as a single file"));
        assert!(open_err(b"GGUF").contains("a GGUF file"));
        let mut zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00".to_vec();
        zip.resize(64, 0);
        assert!(open_err(&zip).contains("a zip archive (a PyTorch .pt/.pth/.ckpt checkpoint?), not safetensors"));
        // torch.save's legacy format (protocol 2, its magic number first) and a protocol-4 pickle
        for pickle in [&b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03."[..], &b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94."[..]] {
            assert!(open_err(pickle).contains("a Python pickle (a PyTorch checkpoint?), not safetensors"));
        }
        // what is not safetensors and no known format: the header is named
        for (bytes, says) in [
            (&b"garbage"[..], "not a valid safetensors file: its header is cut short (7 bytes)"),
            (&b"not safetensors at all"[..], "not a valid safetensors file: its header would be"),
            (&[0xe8, 0x03, 0, 0, 0, 0, 0, 0, b'{', b'}'][..], "more than the file holds (10 bytes)"),
            (&[0, 0, 0, 0, 0, 1, 0, 0][..], "more than the 95.4 MiB a header may have"),
        ] {
            let e = open_err(bytes);
            assert!(e.contains(says), "{e}");
        }
        let e = open_err(&raw("[1, 2]", 0));
        assert!(e.contains("not a valid safetensors file: its header is not a JSON object"), "{e}");
    }

    #[test]
    fn a_tensor_named_twice_is_refused() {
        let twice = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let e = open_err(&raw(twice, 8));
        assert!(e.ends_with("tensor `a` appears twice in the header"), "{e}");
        let bytes = raw(twice, 8);
        assert_eq!(check_safetensors_header(&bytes, bytes.len() as u64).unwrap_err(), "tensor `a` appears twice in the header");
        // the metadata once, as safetensors writes it, is no tensor; twice it is refused
        let meta = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let bytes = raw(meta, 4);
        assert_eq!(check_safetensors_header(&bytes, bytes.len() as u64), Ok(()));
        let meta_twice = r#"{"__metadata__":{"format":"pt"},"__metadata__":{},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        assert!(open_err(&raw(meta_twice, 4)).contains("`__metadata__` appears twice"));
    }

    #[test]
    fn safetensors_files_open_even_when_they_begin_as_a_pickle_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.safetensors");
        std::fs::write(&path, raw(ONE, 4)).unwrap();
        assert_eq!(open_safetensors(&path).unwrap().tensors().len(), 1);
        // a header padded to 640 bytes: its length reads 80 02 00 .., a pickle's first bytes
        let padded = format!("{ONE:<640}");
        let bytes = raw(&padded, 4);
        assert_eq!(bytes[..2], [0x80, 0x02]);
        std::fs::write(&path, &bytes).unwrap();
        let st = open_safetensors(&path).unwrap();
        assert_eq!(st.load("a", &Device::Cpu).unwrap().dims().to_vec(), vec![1]);
    }

    #[test]
    fn errors_name_the_file_once_and_only_regular_files_are_opened() {
        // safetensors' own validation (the offsets do not fit the shape): candle's message
        // without its copy of the path
        let e = open_err(&raw(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, 4));
        assert!(e.contains("not a valid safetensors file: "), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.safetensors");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = open_safetensors(&fifo).err().unwrap().to_string();
        assert!(e.contains("is a named pipe"), "{e}");
        let e = open_safetensors(dir.path()).err().unwrap().to_string();
        assert!(e.contains("is a folder"), "{e}");
        // a weights folder's corrupt file is named
        let bad = dir.path().join("diffusion_pytorch_model.safetensors");
        std::fs::write(&bad, b"not safetensors at all").unwrap();
        let e = var_builder(&[bad], DType::F32, &Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("diffusion_pytorch_model.safetensors: not a valid safetensors file"), "{e}");
    }
}
