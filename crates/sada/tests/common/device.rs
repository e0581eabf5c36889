//! Where the fixture tests run the networks: the CPU unless `SADA_TEST_DEVICE` names another
//! device (`cuda`, `cuda:N`, `metal`; `sada::device::by_name`) of a build with that backend.
//! tools/gpu_check.sh re-runs the fixture comparisons on the GPU this way, with the CPU's
//! tolerances.

use std::sync::OnceLock;

use candle_core::Device;

/// One device for the whole test binary: each `Device::new_cuda`/`new_metal` opens a new
/// handle (Metal refuses to mix tensors from two of them), so it is opened once.
pub fn device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let name = std::env::var("SADA_TEST_DEVICE").unwrap_or_default();
            let name = if name.trim().is_empty() { "cpu" } else { name.as_str() };
            sada::device::by_name(name).unwrap_or_else(|e| panic!("SADA_TEST_DEVICE={name}: {e}"))
        })
        .clone()
}
