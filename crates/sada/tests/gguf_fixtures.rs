//! GGUF reading against the `gguf` Python package (tools/gen_gguf_fixtures.py): every block type
//! sada reads, dequantised to exactly the f32 values the package computes, in the shapes it
//! gives, with the file's metadata.

use std::path::PathBuf;

use candle_core::Device;
use sada::models::gguf::{GgmlType, GgufFile, GgufValue};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

#[test]
fn every_block_type_dequantises_bit_for_bit_as_gguf_py() {
    let file = GgufFile::open(&fixtures().join("types.gguf")).unwrap();
    let expected = candle_core::safetensors::load(fixtures().join("types_expected.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(file.tensors.len(), expected.len());
    let mut types = std::collections::HashSet::new();
    for info in &file.tensors {
        let want = &expected[&info.name];
        assert_eq!(info.shape, want.dims(), "{}", info.name);
        let got = file.dequantize(&info.name).unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{} ({:?}): {differ} of {} values differ", info.name, info.dtype, want.len());
        types.insert(info.dtype);
    }
    use GgmlType::*;
    for t in [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K] {
        assert!(types.contains(&t), "{t:?} not covered by the fixture");
    }
    assert_eq!(file.metadata["general.architecture"].as_str(), Some("flux"));
    assert_eq!(file.metadata["sada.test.shape"], GgufValue::Array(vec![GgufValue::I32(3), GgufValue::I32(64)]));
    let conv = file.tensor("conv.F32", &Device::Cpu).unwrap();
    assert_eq!(conv.dims(), [4, 2, 3, 3]);
}

#[test]
fn f16_bf16_q8_0_and_q4_0_quantise_byte_for_byte_as_gguf_py() {
    let file = GgufFile::open(&fixtures().join("types.gguf")).unwrap();
    let values = file.dequantize("values.F32").unwrap();
    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0] {
        let want = file.bytes(file.info(&format!("quantized.{ty:?}")).unwrap());
        let mut got = Vec::new();
        sada::models::gguf::quantize(ty, &values, &mut got).unwrap();
        assert_eq!(got.len(), want.len(), "{ty:?}");
        let differ = got.iter().zip(want).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{ty:?}: {differ} bytes differ");
    }
}
