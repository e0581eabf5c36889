//! Fidelity metrics between an accelerated result and its unaccelerated baseline.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// Mean squared error.
pub fn mse(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        return Err(Error::Shape { what: "mse".into(), expected: format!("{:?}", b.dims()), got: format!("{:?}", a.dims()) });
    }
    Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.sqr()?.mean_all()?.to_scalar::<f64>()?)
}

/// Peak signal-to-noise ratio in dB, `10 log10(data_range^2 / mse)` (infinite for identical inputs).
pub fn psnr(a: &Tensor, reference: &Tensor, data_range: f64) -> Result<f64> {
    let e = mse(a, reference)?;
    Ok(10.0 * (data_range * data_range / e).log10())
}

/// max - min of a tensor: the data range used for latent-space PSNR.
pub fn data_range(t: &Tensor) -> Result<f64> {
    let t = t.to_dtype(DType::F64)?.flatten_all()?;
    Ok(t.max(0)?.to_scalar::<f64>()? - t.min(0)?.to_scalar::<f64>()?)
}
