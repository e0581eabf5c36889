//! Writing GGUF (version 3): the header, metadata and tensor table first, then each tensor's
//! bytes, made one at a time by the caller, so a model larger than memory streams through.

use std::io::Write;

use super::{GgmlType, GgufValue};

/// GGUF's default alignment of the data section and of each tensor in it.
const ALIGNMENT: usize = 32;

/// A tensor of the file to write.
#[derive(Debug, Clone)]
pub struct TensorToWrite {
    /// Its name.
    pub name: String,
    /// Its shape, outermost first (written innermost first, as GGUF stores it).
    pub shape: Vec<usize>,
    /// How its values are stored.
    pub dtype: GgmlType,
}

impl TensorToWrite {
    /// Its size in bytes, when its rows are whole blocks of its type.
    pub fn bytes(&self) -> Option<usize> {
        let row = *self.shape.last()?;
        if !row.is_multiple_of(self.dtype.block_size()) {
            return None;
        }
        self.dtype.bytes_for(self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?)
    }
}

fn string(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// GGUF's type id of a metadata value and its bytes (the types written here).
fn value(w: &mut impl Write, v: &GgufValue) -> std::io::Result<()> {
    match v {
        GgufValue::U32(x) => {
            w.write_all(&4u32.to_le_bytes())?;
            w.write_all(&x.to_le_bytes())
        }
        GgufValue::String(s) => {
            w.write_all(&8u32.to_le_bytes())?;
            string(w, s)
        }
        GgufValue::U64(x) => {
            w.write_all(&10u32.to_le_bytes())?;
            w.write_all(&x.to_le_bytes())
        }
        other => Err(std::io::Error::other(format!("metadata of type {other:?} is not written"))),
    }
}

/// `n` rounded up to the alignment.
fn padded(n: usize) -> usize {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// The header, metadata and tensor table, padded to where the data begins, and each tensor's
/// size in bytes.
fn header(metadata: &[(&str, GgufValue)], tensors: &[TensorToWrite]) -> Result<(Vec<u8>, Vec<usize>), String> {
    let io = |e: std::io::Error| format!("cannot write: {e}");
    let mut head = Vec::new();
    head.extend(b"GGUF");
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        string(&mut head, k).map_err(io)?;
        value(&mut head, v).map_err(io)?;
    }
    let mut offset = 0usize;
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        let len = t.bytes().ok_or_else(|| format!("tensor `{}` of shape {:?}: its rows are not whole {:?} blocks", t.name, t.shape, t.dtype))?;
        string(&mut head, &t.name).map_err(io)?;
        head.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            head.extend((*d as u64).to_le_bytes());
        }
        head.extend(t.dtype.id().to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        sizes.push(len);
        offset = padded(offset + len);
    }
    head.resize(padded(head.len()), 0);
    Ok((head, sizes))
}

/// Write a GGUF file to `w`: `metadata`, the table of `tensors`, then tensor i's bytes from
/// `data(i)` (which must be exactly [`TensorToWrite::bytes`] long). Returns the bytes written.
pub fn write_gguf<W: Write>(
    w: &mut W,
    metadata: &[(&str, GgufValue)],
    tensors: &[TensorToWrite],
    mut data: impl FnMut(usize) -> Result<Vec<u8>, String>,
) -> Result<u64, String> {
    let io = |e: std::io::Error| format!("cannot write: {e}");
    let (head, sizes) = header(metadata, tensors)?;
    w.write_all(&head).map_err(io)?;
    let mut written = head.len() as u64;
    for (i, (t, &len)) in tensors.iter().zip(&sizes).enumerate() {
        let bytes = data(i)?;
        if bytes.len() != len {
            return Err(format!("tensor `{}`: {} bytes made, {len} expected", t.name, bytes.len()));
        }
        w.write_all(&bytes).map_err(io)?;
        let pad = padded(len) - len;
        w.write_all(&[0u8; ALIGNMENT][..pad]).map_err(io)?;
        written += (len + pad) as u64;
    }
    w.flush().map_err(io)?;
    Ok(written)
}

/// The size of the GGUF file [`write_gguf`] writes (to check the disk has room first).
pub fn gguf_size(metadata: &[(&str, GgufValue)], tensors: &[TensorToWrite]) -> Option<u64> {
    let (head, sizes) = header(metadata, tensors).ok()?;
    Some(head.len() as u64 + sizes.iter().map(|&s| padded(s) as u64).sum::<u64>())
}

#[cfg(test)]
mod tests {
    use super::super::GgufFile;
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let tensors = vec![
            TensorToWrite { name: "a.weight".into(), shape: vec![2, 32], dtype: GgmlType::Q8_0 },
            TensorToWrite { name: "a.bias".into(), shape: vec![3], dtype: GgmlType::F32 },
        ];
        let values: Vec<Vec<f32>> = vec![(0..64).map(|i| i as f32 / 7.0 - 4.0).collect(), vec![1.0, -2.0, 0.5]];
        let meta = [("general.architecture", GgufValue::String("flux".into())), ("general.quantization_version", GgufValue::U32(2))];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let mut f = std::fs::File::create(&path).unwrap();
        let n = write_gguf(&mut f, &meta, &tensors, |i| {
            let mut out = Vec::new();
            super::super::quantize(tensors[i].dtype, &values[i], &mut out).unwrap();
            Ok(out)
        })
        .unwrap();
        drop(f);
        assert_eq!(n, std::fs::metadata(&path).unwrap().len());
        assert_eq!(Some(n), gguf_size(&meta, &tensors));
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.metadata["general.architecture"].as_str(), Some("flux"));
        assert_eq!(g.metadata["general.quantization_version"].as_u64(), Some(2));
        assert_eq!(g.info("a.weight").unwrap().shape, vec![2, 32]);
        assert_eq!(g.dequantize("a.bias").unwrap(), values[1]);
        let q = g.dequantize("a.weight").unwrap();
        assert!(q.iter().zip(&values[0]).all(|(a, b)| (a - b).abs() < 0.02));
    }

    #[test]
    fn rows_that_are_not_whole_blocks_are_refused_by_name() {
        let tensors = vec![TensorToWrite { name: "conv.weight".into(), shape: vec![4, 4, 3, 3], dtype: GgmlType::Q8_0 }];
        let err = write_gguf(&mut Vec::new(), &[], &tensors, |_| Ok(vec![])).unwrap_err();
        assert!(err.contains("conv.weight") && err.contains("Q8_0"), "{err}");
    }
}
