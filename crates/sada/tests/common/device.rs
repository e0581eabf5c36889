//! Where the fixture tests run the networks: the CPU unless `SADA_TEST_DEVICE` names another
//! device (`cuda`, `cuda:N`, `metal`) of a build with that backend. tools/gpu_check.sh re-runs
//! the fixture comparisons on the GPU this way, with the CPU's tolerances.

use candle_core::Device;

pub fn device() -> Device {
    let name = std::env::var("SADA_TEST_DEVICE").unwrap_or_default();
    let ordinal = |rest: &str| -> usize {
        rest.strip_prefix(':').map_or(0, |n| n.parse().unwrap_or_else(|_| panic!("SADA_TEST_DEVICE={name}: expected cuda:N")))
    };
    match name.as_str() {
        "" | "cpu" => Device::Cpu,
        d if d.starts_with("cuda") => Device::new_cuda(ordinal(&d[4..])).unwrap_or_else(|e| panic!("SADA_TEST_DEVICE={name}: {e}")),
        d if d.starts_with("metal") => Device::new_metal(ordinal(&d[5..])).unwrap_or_else(|e| panic!("SADA_TEST_DEVICE={name}: {e}")),
        _ => panic!("SADA_TEST_DEVICE={name}: expected cpu, cuda, cuda:N or metal"),
    }
}
