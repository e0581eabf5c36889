//! Every config reader of a model folder on arbitrary bytes (see `sada::fuzz::config_bytes`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sada::fuzz::config_bytes(data));
