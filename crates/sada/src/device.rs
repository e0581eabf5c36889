//! Devices by name, as the command line's `--device` and the tests' `SADA_TEST_DEVICE` spell
//! them: `auto`, `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N`. Errors carry no prefix; the
//! caller names where the name came from.

use candle_core::Device;

use crate::error::{Error, Result};

const EXPECTED: &str = "expected cpu, cuda, cuda:N or metal";

/// The device `name` stands for. `auto` is the first GPU this build has a backend for and the
/// machine has, else the CPU.
pub fn by_name(name: &str) -> Result<Device> {
    let name = name.trim();
    let ordinal = |rest: &str| -> Result<usize> {
        match rest.strip_prefix(':') {
            None if rest.is_empty() => Ok(0),
            Some(n) => n.parse().map_err(|_| Error::Config(format!("`{n}` is not a device number"))),
            None => Err(Error::Config(EXPECTED.into())),
        }
    };
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    if name == "auto" {
        let gpu = if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0).ok()
        } else if candle_core::utils::metal_is_available() {
            Device::new_metal(0).ok()
        } else {
            None
        };
        return Ok(gpu.unwrap_or(Device::Cpu));
    }
    if let Some(rest) = name.strip_prefix("cuda") {
        let n = ordinal(rest)?;
        if !candle_core::utils::cuda_is_available() {
            return Err(Error::Config("this sada was built without CUDA support (rebuild with --features cuda)".into()));
        }
        return Device::new_cuda(n).map_err(|e| Error::Config(format!("cannot open the CUDA device: {e}")));
    }
    if let Some(rest) = name.strip_prefix("metal") {
        let n = ordinal(rest)?;
        if !candle_core::utils::metal_is_available() {
            return Err(Error::Config("this sada was built without Metal support (rebuild with --features metal)".into()));
        }
        return Device::new_metal(n).map_err(|e| Error::Config(format!("cannot open the Metal device: {e}")));
    }
    Err(Error::Config(EXPECTED.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_and_refusals_name_the_problem() {
        assert!(by_name("cpu").unwrap().is_cpu());
        assert!(by_name(" cpu ").unwrap().is_cpu());
        assert_eq!(by_name("tpu").unwrap_err().to_string(), EXPECTED);
        assert_eq!(by_name("cuda:x").unwrap_err().to_string(), "`x` is not a device number");
        assert_eq!(by_name("cudax").unwrap_err().to_string(), EXPECTED);
        if !candle_core::utils::cuda_is_available() {
            assert!(by_name("cuda:0").unwrap_err().to_string().contains("built without CUDA support"));
        }
        if !candle_core::utils::cuda_is_available() && !candle_core::utils::metal_is_available() {
            assert!(by_name("auto").unwrap().is_cpu());
        }
    }
}
