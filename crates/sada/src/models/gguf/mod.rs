//! GGUF files (llama.cpp / ggml's model format, as city96's Flux files and stable-diffusion.cpp
//! write them): the header, metadata and tensor table read with every count and size checked
//! against the file before anything is allocated, tensors memory-mapped and dequantised to f32.
//!
//! Layout (little-endian): `GGUF`, version (2 or 3), tensor count (u64), metadata count (u64);
//! metadata as key string + type + value; per tensor its name, rank, dims (innermost first),
//! type and offset into the data section, which starts at the next multiple of
//! `general.alignment` (default 32) after the table.

mod quant;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
pub use quant::{dequantize, dequantize_serial, quantize, GgmlType};
pub use write::{gguf_size, write_gguf, TensorToWrite};

use crate::error::{Error, Result};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// The value as text, when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// One tensor of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// Its name (e.g. `double_blocks.0.img_attn.qkv.weight`).
    pub name: String,
    /// Its shape, outermost first (as PyTorch and safetensors give it; GGUF stores it reversed).
    pub shape: Vec<usize>,
    /// How its values are stored.
    pub dtype: GgmlType,
    /// Where its bytes start, from the beginning of the file.
    start: usize,
    /// How many bytes it takes.
    len: usize,
}

impl GgufTensorInfo {
    /// Where its bytes lie in the file.
    pub fn byte_range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }

    /// Number of values.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A GGUF file, memory-mapped.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    /// The metadata, by key.
    pub metadata: BTreeMap<String, GgufValue>,
    /// The tensors, in file order.
    pub tensors: Vec<GgufTensorInfo>,
}

/// ggml's most dimensions a tensor has.
const MAX_DIMS: u32 = 4;
/// Keys and string values longer than this are not metadata any writer makes.
const MAX_STRING: u64 = 64 << 20;
/// Nesting of metadata arrays.
const MAX_DEPTH: usize = 2;

impl GgufFile {
    /// Open and check `path`: its header, metadata and tensor table, and that every tensor's
    /// bytes lie inside the file. Errors name the file (and the tensor or key at fault).
    pub fn open(path: &Path) -> Result<Self> {
        crate::files::check_regular(path)?;
        let file = std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        // SAFETY: the file is only read; concurrent modification by another process is the
        // caller's responsibility, as with any memory-mapped model file.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::file(path, format!("cannot map: {e}")))?;
        let (metadata, tensors) = parse(&mmap).map_err(|msg| Error::file(path, msg))?;
        Ok(Self { path: path.to_path_buf(), mmap, metadata, tensors })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor named `name`.
    pub fn info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The stored bytes of `info` (a tensor of this file).
    pub fn bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        &self.mmap[info.start..info.start + info.len]
    }

    /// Rows `start..start + len` (of the first axis) of tensor `name`, or all of it: their
    /// shape, type and stored bytes (a row is whole blocks, so rows cut cleanly).
    pub fn rows(&self, name: &str, rows: Option<(usize, usize)>) -> Result<(Vec<usize>, GgmlType, &[u8])> {
        let info = self.info(name).ok_or_else(|| Error::file(&self.path, format!("no tensor `{name}`")))?;
        let (mut shape, bytes) = (info.shape.clone(), self.bytes(info));
        let Some((start, len)) = rows else { return Ok((shape, info.dtype, bytes)) };
        let n = shape[0];
        if start.checked_add(len).is_none_or(|end| end > n) {
            return Err(Error::file(&self.path, format!("rows {start}..{} of tensor `{name}`, which has {n}", start.saturating_add(len))));
        }
        let row = bytes.len() / n;
        shape[0] = len;
        Ok((shape, info.dtype, &bytes[start * row..(start + len) * row]))
    }

    /// The values of tensor `name`, dequantised to f32.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let (shape, ty, bytes) = self.rows(name, None)?;
        let mut out = vec![0f32; shape.iter().product()];
        dequantize(ty, bytes, &mut out);
        Ok(out)
    }

    /// Tensor `name` as an f32 tensor of its shape on `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        Ok(self.tensor_rows(name, None, device)?.0)
    }

    /// [`GgufFile::rows`] widened to an f32 tensor on `device`, with the type and bytes it came from.
    pub fn tensor_rows(&self, name: &str, rows: Option<(usize, usize)>, device: &Device) -> Result<(Tensor, GgmlType, &[u8])> {
        let (shape, ty, bytes) = self.rows(name, rows)?;
        let mut out = vec![0f32; shape.iter().product()];
        dequantize(ty, bytes, &mut out);
        Ok((Tensor::from_vec(out, shape.as_slice(), device)?, ty, bytes))
    }
}

/// A bounds-checked reader over the file's bytes.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> std::result::Result<&'a [u8], String> {
        let left = (self.b.len() - self.at) as u64;
        if n > left {
            return Err(format!("{what} at byte {} needs {n} bytes but the file ends {left} bytes later (truncated?)", self.at));
        }
        let s = &self.b[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        let s = self.take(8, what)?;
        Ok(u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
    }
    fn left(&self) -> u64 {
        (self.b.len() - self.at) as u64
    }
    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.u64(what)?;
        if n > MAX_STRING {
            return Err(format!("{what} at byte {} claims {n} bytes of text", self.at));
        }
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| format!("{what} at byte {} is not UTF-8", self.at))
    }
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> std::result::Result<GgufValue, String> {
        let what = format!("metadata `{key}`");
        let fixed = |r: &mut Self, n: u64| r.take(n, &what).map(|s| s.to_vec());
        Ok(match ty {
            0 => GgufValue::U8(fixed(self, 1)?[0]),
            1 => GgufValue::I8(fixed(self, 1)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(fixed(self, 2)?.try_into().expect("2 bytes"))),
            3 => GgufValue::I16(i16::from_le_bytes(fixed(self, 2)?.try_into().expect("2 bytes"))),
            4 => GgufValue::U32(u32::from_le_bytes(fixed(self, 4)?.try_into().expect("4 bytes"))),
            5 => GgufValue::I32(i32::from_le_bytes(fixed(self, 4)?.try_into().expect("4 bytes"))),
            6 => GgufValue::F32(f32::from_le_bytes(fixed(self, 4)?.try_into().expect("4 bytes"))),
            7 => GgufValue::Bool(fixed(self, 1)?[0] != 0),
            8 => GgufValue::String(self.string(&what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("{what}: arrays nested deeper than {MAX_DEPTH}"));
                }
                let elem = self.u32(&what)?;
                let n = self.u64(&what)?;
                // every element takes at least one byte: a count beyond the bytes left is a lie
                if n > self.left() {
                    return Err(format!("{what}: an array of {n} values, more than the {} bytes left in the file", self.left()));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(fixed(self, 8)?.try_into().expect("8 bytes"))),
            11 => GgufValue::I64(i64::from_le_bytes(fixed(self, 8)?.try_into().expect("8 bytes"))),
            12 => GgufValue::F64(f64::from_le_bytes(fixed(self, 8)?.try_into().expect("8 bytes"))),
            other => return Err(format!("{what}: unknown value type {other}")),
        })
    }
}

type Parsed = (BTreeMap<String, GgufValue>, Vec<GgufTensorInfo>);

/// Header, metadata and tensor table of the file's bytes `b`.
fn parse(b: &[u8]) -> std::result::Result<Parsed, String> {
    let mut r = Reader { b, at: 0 };
    let magic = r.take(4, "the GGUF magic").map_err(|_| "not a GGUF file: shorter than its header".to_owned())?;
    if magic != b"GGUF" {
        return Err("not a GGUF file: it does not begin with `GGUF`".to_owned());
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version}; this reader reads versions 2 and 3"));
    }
    let n_tensors = r.u64("the tensor count")?;
    let n_kv = r.u64("the metadata count")?;
    // a tensor's entry takes at least 8 + 4 + 8 + 4 + 8 bytes, a metadata entry 8 + 4 + 1
    if n_tensors > r.left() / 32 || n_kv > r.left() / 13 {
        return Err(format!("the header claims {n_tensors} tensors and {n_kv} metadata entries, more than the file's {} bytes hold", b.len()));
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string("a metadata key")?;
        let ty = r.u32(&format!("the type of metadata `{key}`"))?;
        let value = r.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata `{key}` appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 16 => a as usize,
            _ => return Err(format!("metadata `general.alignment` = {v:?}: expected a power of two up to 65536")),
        },
    };
    let mut table = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = r.string("a tensor name")?;
        let at = |m: String| format!("tensor `{name}`: {m}");
        let n_dims = r.u32(&format!("the rank of tensor `{name}`"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(at(format!("rank {n_dims}; expected 1 to {MAX_DIMS}")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&format!("the dims of tensor `{name}`"))?);
        }
        let ty = r.u32(&format!("the type of tensor `{name}`"))?;
        let dtype = GgmlType::from_id(ty).map_err(at)?;
        let offset = r.u64(&format!("the offset of tensor `{name}`"))?;
        table.push((name, dims, dtype, offset));
    }
    let data_start = r.at.div_ceil(alignment).saturating_mul(alignment);
    let mut tensors = Vec::with_capacity(table.len());
    let mut seen = std::collections::HashSet::new();
    for (name, dims, dtype, offset) in table {
        let at = |m: String| format!("tensor `{name}`: {m}");
        if dims.contains(&0) {
            return Err(at(format!("dims {dims:?} include 0")));
        }
        let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n <= b.len() as u64 * 256);
        let n = n.ok_or_else(|| at(format!("dims {dims:?} hold more values than the file could")))? as usize;
        if !(dims[0] as usize).is_multiple_of(dtype.block_size()) {
            return Err(at(format!("its rows of {} values are not whole {dtype:?} blocks of {}", dims[0], dtype.block_size())));
        }
        let len = dtype.bytes_for(n).ok_or_else(|| at(format!("{n} values are not whole {dtype:?} blocks")))?;
        if !(offset as usize).is_multiple_of(alignment) {
            return Err(at(format!("offset {offset} is not a multiple of the alignment {alignment}")));
        }
        let start = (data_start as u64).checked_add(offset).filter(|s| s.checked_add(len as u64).is_some_and(|e| e <= b.len() as u64));
        let start = start.ok_or_else(|| at(format!("its {len} bytes at offset {offset} lie beyond the end of the file ({} bytes; truncated?)", b.len())))?;
        if !seen.insert(name.clone()) {
            return Err(at("appears twice in the table".to_owned()));
        }
        let shape = dims.iter().rev().map(|&d| d as usize).collect();
        tensors.push(GgufTensorInfo { name, shape, dtype, start: start as usize, len });
    }
    Ok((metadata, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF file of `tensors` (name, dims innermost first, type, raw bytes) and one string
    /// key, laid out as gguf-py writes it.
    pub(crate) fn build(tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
        let mut f = Vec::new();
        let s = |f: &mut Vec<u8>, t: &str| {
            f.extend((t.len() as u64).to_le_bytes());
            f.extend(t.as_bytes());
        };
        f.extend(b"GGUF");
        f.extend(3u32.to_le_bytes());
        f.extend((tensors.len() as u64).to_le_bytes());
        f.extend(1u64.to_le_bytes());
        s(&mut f, "general.architecture");
        f.extend(8u32.to_le_bytes());
        s(&mut f, "flux");
        let mut offset = 0u64;
        for (name, dims, ty, bytes) in tensors {
            s(&mut f, name);
            f.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| f.extend(d.to_le_bytes()));
            f.extend(ty.to_le_bytes());
            f.extend(offset.to_le_bytes());
            offset += (bytes.len() as u64).div_ceil(32) * 32;
        }
        f.resize(f.len().div_ceil(32) * 32, 0);
        for (_, _, _, bytes) in tensors {
            f.extend(bytes);
            f.resize(f.len().div_ceil(32) * 32, 0);
        }
        f
    }

    fn open(bytes: &[u8]) -> std::result::Result<GgufFile, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, bytes).unwrap();
        GgufFile::open(&p).map_err(|e| e.to_string())
    }

    fn q8_block(d: f32, q: i8) -> Vec<u8> {
        let mut b = half::f16::from_f32(d).to_bits().to_le_bytes().to_vec();
        b.extend(std::iter::repeat_n(q as u8, 32));
        b
    }

    #[test]
    fn a_q8_0_tensor_reads_back_with_its_shape_and_values() {
        let bytes = [q8_block(0.5, 3), q8_block(-2.0, -1)].concat();
        let f = open(&build(&[("w", vec![32, 2], 8, bytes)])).unwrap();
        assert_eq!(f.metadata["general.architecture"].as_str(), Some("flux"));
        let t = f.tensor("w", &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [2, 32]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v[..32].iter().all(|&x| x == 1.5) && v[32..].iter().all(|&x| x == 2.0), "{v:?}");
    }

    #[test]
    fn lying_or_truncated_files_are_refused_naming_the_tensor() {
        let good = build(&[("w", vec![32, 2], 8, [q8_block(0.5, 3), q8_block(1.0, 1)].concat())]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 40].to_vec(), "tensor `w`: its 68 bytes at offset 0 lie beyond the end of the file"),
            (build(&[("w", vec![32, 2], 99, vec![0; 68])]), "tensor `w`: unknown tensor type 99"),
            (build(&[("w", vec![32, 2], 16, vec![0; 68])]), "tensor `w`: type 16 (an IQ i-quant) is not supported"),
            (build(&[("w", vec![30, 2], 8, vec![0; 68])]), "tensor `w`: its rows of 30 values are not whole Q8_0 blocks"),
            (build(&[("w", vec![1 << 40, 1 << 40], 0, vec![0; 4])]), "tensor `w`: dims"),
            (build(&[("w", vec![32, 2], 8, vec![0; 68]), ("w", vec![32], 8, vec![0; 34])]), "tensor `w`: appears twice"),
            (b"GGUF\x03\x00\x00\x00".to_vec(), "the tensor count at byte 8 needs 8 bytes"),
            (b"GGML\x03\x00\x00\x00".to_vec(), "does not begin with `GGUF`"),
            (b"PK\x03\x04".to_vec(), "does not begin with `GGUF`"),
        ];
        for (bytes, needle) in cases {
            let e = open(&bytes).err().unwrap_or_else(|| panic!("{needle}: read"));
            assert!(e.contains(needle) && e.contains("m.gguf") && !e.contains('\n'), "{needle}: {e}");
        }
        // counts that would allocate without bound
        let mut huge = good.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(open(&huge).unwrap_err().contains("more than the file's"));
        let mut long_key = good.clone();
        long_key[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(open(&long_key).unwrap_err().contains("claims"));
    }
}
