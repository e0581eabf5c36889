//! Writing safetensors one tensor at a time: the JSON header (names, dtypes, shapes, byte
//! ranges) is known from the shapes alone, so it goes first and the tensors stream after it.

use std::io::Write;

use crate::models::gguf::{GgmlType, TensorToWrite};

fn dtype_name(ty: GgmlType) -> Option<&'static str> {
    match ty {
        GgmlType::F32 => Some("F32"),
        GgmlType::F16 => Some("F16"),
        GgmlType::BF16 => Some("BF16"),
        _ => None,
    }
}

/// The header bytes (length prefix included) and each tensor's size.
fn header(tensors: &[TensorToWrite]) -> Result<(Vec<u8>, Vec<usize>), String> {
    let mut entries = serde_json::Map::new();
    // what PyTorch's `save_file` records; some loaders check it
    entries.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let (mut offset, mut sizes) = (0usize, Vec::with_capacity(tensors.len()));
    for t in tensors {
        let dtype = dtype_name(t.dtype).ok_or_else(|| format!("tensor `{}`: safetensors holds f32, f16 or bf16, not {:?}", t.name, t.dtype))?;
        let len = t.bytes().ok_or_else(|| format!("tensor `{}`: shape {:?} overflows", t.name, t.shape))?;
        entries.insert(t.name.clone(), serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, offset + len]}));
        sizes.push(len);
        offset += len;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(entries)).map_err(|e| e.to_string())?;
    // the data section starts 8-aligned, as the reference writer pads it (with spaces)
    json.resize((8 + json.len()).next_multiple_of(8) - 8, b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    Ok((out, sizes))
}

/// The size of the file [`write`] writes.
pub fn size(tensors: &[TensorToWrite]) -> Option<u64> {
    let (head, sizes) = header(tensors).ok()?;
    Some(head.len() as u64 + sizes.iter().map(|&s| s as u64).sum::<u64>())
}

/// Write `tensors` to `w`, tensor i's bytes from `data(i)`. Returns the bytes written.
pub fn write<W: Write>(w: &mut W, tensors: &[TensorToWrite], data: &mut impl FnMut(usize) -> Result<Vec<u8>, String>) -> Result<u64, String> {
    let io = |e: std::io::Error| format!("cannot write: {e}");
    let (head, sizes) = header(tensors)?;
    w.write_all(&head).map_err(io)?;
    let mut written = head.len() as u64;
    for (i, &len) in sizes.iter().enumerate() {
        let bytes = data(i)?;
        if bytes.len() != len {
            return Err(format!("tensor `{}`: {} bytes made, {len} expected", tensors[i].name, bytes.len()));
        }
        w.write_all(&bytes).map_err(io)?;
        written += len as u64;
    }
    w.flush().map_err(io)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_with_the_safetensors_crate() {
        let tensors = vec![
            TensorToWrite { name: "b".into(), shape: vec![2, 3], dtype: GgmlType::F16 },
            TensorToWrite { name: "a".into(), shape: vec![3], dtype: GgmlType::F32 },
        ];
        let values = [vec![1.0f32, 2.0, -3.0, 0.5, 0.25, 8.0], vec![7.0f32, -1.0, 0.0]];
        let mut file = Vec::new();
        let n = write(&mut file, &tensors, &mut |i| {
            let mut out = Vec::new();
            crate::models::gguf::quantize(tensors[i].dtype, &values[i], &mut out).unwrap();
            Ok(out)
        })
        .unwrap();
        assert_eq!(n as usize, file.len());
        assert_eq!(Some(n), size(&tensors));
        let st = safetensors::SafeTensors::deserialize(&file).unwrap();
        let b = st.tensor("b").unwrap();
        assert_eq!((b.dtype(), b.shape()), (safetensors::Dtype::F16, &[2usize, 3][..]));
        let halves: Vec<f32> = b.data().chunks(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        assert_eq!(halves, values[0]);
        let a = st.tensor("a").unwrap();
        let floats: Vec<f32> = a.data().chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(floats, values[1]);
        // the data section begins 8-aligned
        assert_eq!((8 + u64::from_le_bytes(file[..8].try_into().unwrap())) % 8, 0);
    }
}
