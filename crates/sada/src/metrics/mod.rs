//! Fidelity metrics between an accelerated result and its unaccelerated baseline: PSNR and
//! SSIM here, LPIPS in [`lpips`].

pub mod lpips;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::image::RgbImage;

/// Mean squared error.
pub fn mse(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        return Err(Error::Shape { what: "mse".into(), expected: format!("{:?}", b.dims()), got: format!("{:?}", a.dims()) });
    }
    Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.sqr()?.mean_all()?.to_scalar::<f64>()?)
}

/// Peak signal-to-noise ratio in dB, `10 log10(data_range^2 / mse)` (infinite for identical inputs).
pub fn psnr(a: &Tensor, reference: &Tensor, data_range: f64) -> Result<f64> {
    Ok(psnr_from_mse(mse(a, reference)?, data_range))
}

fn psnr_from_mse(mse: f64, data_range: f64) -> f64 {
    10.0 * (data_range * data_range / mse).log10()
}

/// max - min of a tensor: the data range used for latent-space PSNR.
pub fn data_range(t: &Tensor) -> Result<f64> {
    let t = t.to_dtype(DType::F64)?.flatten_all()?;
    Ok(t.max(0)?.to_scalar::<f64>()? - t.min(0)?.to_scalar::<f64>()?)
}

/// Structural similarity of two 8-bit RGB images (Wang et al. 2004) as scikit-image's
/// `structural_similarity(a, b, data_range=255, channel_axis=2, gaussian_weights=True,
/// sigma=1.5, use_sample_covariance=False)` computes it: Gaussian-weighted local statistics
/// (11 x 11 window), K1 = 0.01, K2 = 0.03, averaged over the pixels at least 5 from the border
/// and over channels. Images need at least 11 x 11 pixels.
pub fn ssim(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(Error::Shape { what: "ssim".into(), expected: format!("{}x{}", b.width, b.height), got: format!("{}x{}", a.width, a.height) });
    }
    const RADIUS: usize = 5; // int(truncate 3.5 * sigma 1.5 + 0.5)
    let (w, h) = (a.width, a.height);
    if w < 2 * RADIUS + 1 || h < 2 * RADIUS + 1 {
        return Err(Error::param("ssim", format!("images of {w}x{h} are smaller than the 11x11 window")));
    }
    let kernel: Vec<f64> = {
        let k: Vec<f64> = (0..=2 * RADIUS).map(|i| (-((i as f64 - RADIUS as f64).powi(2)) / (2.0 * 1.5 * 1.5)).exp()).collect();
        let s: f64 = k.iter().sum();
        k.into_iter().map(|v| v / s).collect()
    };
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    // Only pixels whose window lies inside the image are averaged, so no border mode is needed.
    let (ow, oh) = (w - 2 * RADIUS, h - 2 * RADIUS);
    let mut total = 0.0;
    for c in 0..3 {
        let x: Vec<f64> = (0..w * h).map(|i| a.pixels[i * 3 + c] as f64).collect();
        let y: Vec<f64> = (0..w * h).map(|i| b.pixels[i * 3 + c] as f64).collect();
        let filter = |f: &dyn Fn(usize) -> f64| -> Vec<f64> {
            // separable: rows first (all rows), then columns (cropped)
            let mut rows = vec![0.0; ow * h];
            for yy in 0..h {
                for xx in 0..ow {
                    rows[yy * ow + xx] = (0..=2 * RADIUS).map(|k| kernel[k] * f(yy * w + xx + k)).sum();
                }
            }
            let mut out = vec![0.0; ow * oh];
            for yy in 0..oh {
                for xx in 0..ow {
                    out[yy * ow + xx] = (0..=2 * RADIUS).map(|k| kernel[k] * rows[(yy + k) * ow + xx]).sum();
                }
            }
            out
        };
        let ux = filter(&|i| x[i]);
        let uy = filter(&|i| y[i]);
        let uxx = filter(&|i| x[i] * x[i]);
        let uyy = filter(&|i| y[i] * y[i]);
        let uxy = filter(&|i| x[i] * y[i]);
        let mut sum = 0.0;
        for i in 0..ow * oh {
            let (vx, vy, vxy) = (uxx[i] - ux[i] * ux[i], uyy[i] - uy[i] * uy[i], uxy[i] - ux[i] * uy[i]);
            sum += (2.0 * ux[i] * uy[i] + c1) * (2.0 * vxy + c2) / ((ux[i] * ux[i] + uy[i] * uy[i] + c1) * (vx + vy + c2));
        }
        total += sum / (ow * oh) as f64;
    }
    Ok(total / 3.0)
}

/// PSNR of two 8-bit RGB images (data range 255).
pub fn psnr_rgb(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(Error::Shape { what: "psnr".into(), expected: format!("{}x{}", b.width, b.height), got: format!("{}x{}", a.width, a.height) });
    }
    let mse = a.pixels.iter().zip(&b.pixels).map(|(&p, &q)| (p as f64 - q as f64).powi(2)).sum::<f64>() / a.pixels.len() as f64;
    Ok(psnr_from_mse(mse, 255.0))
}
