//! Whether a tensor holds only finite values (NaN and infinity are refused at every input and
//! checked at every step).

use candle_core::{DType, Tensor};

use crate::error::Result;

/// True when every element is finite. The largest magnitude catches infinities; the sum
/// catches NaN (which a sum propagates) without overflowing into a false alarm, since only NaN
/// is tested there.
pub fn all_finite(t: &Tensor) -> Result<bool> {
    let a = t.to_dtype(DType::F32)?.abs()?;
    let max = a.max_all()?.to_scalar::<f32>()?;
    let sum = a.sum_all()?.to_scalar::<f32>()?;
    Ok(max.is_finite() && !sum.is_nan())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn nan_and_infinity_are_caught_and_large_values_are_not() {
        let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
        assert!(all_finite(&t(&[1.0, -2.0])).unwrap());
        assert!(all_finite(&t(&[3e38, 3e38, -3e38])).unwrap(), "a sum that overflows is not a non-finite value");
        assert!(!all_finite(&t(&[1.0, f32::NAN])).unwrap());
        assert!(!all_finite(&t(&[f32::NEG_INFINITY, 1.0])).unwrap());
    }
}
