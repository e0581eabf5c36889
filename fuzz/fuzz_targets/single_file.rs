//! The single-file checkpoint reader on arbitrary bytes: the family recognised, the tensors
//! renamed and every configuration inferred from their shapes (see `sada::fuzz::single_file_bytes`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sada::fuzz::single_file_bytes(data));
