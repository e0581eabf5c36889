//! The weights and pipeline-inputs readers on arbitrary bytes (see `sada::fuzz::safetensors_bytes`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sada::fuzz::safetensors_bytes(data));
