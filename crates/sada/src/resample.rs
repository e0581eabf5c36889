//! Image resizing as PIL's `Image.resize(..., resample=LANCZOS)` computes it for 8-bit images,
//! which is what diffusers' image processors call: a separable Lanczos-3 filter stretched by
//! the downscale factor (so shrinking also low-passes), horizontal pass first, each pass rounded
//! to 8 bits with 22-bit fixed-point weights. Following it to the bit keeps control images
//! (and anything else diffusers resizes) identical to the reference.

use crate::image::RgbImage;

/// PIL's `PRECISION_BITS` for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// For each output index: the first input index and its fixed-point weights.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 3.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // PIL truncates towards zero (C int casts); both bounds are non-negative here
            let xmin = ((center - support + 0.5).max(0.0)) as usize;
            let xmax = ((center + support + 0.5) as usize).min(in_size);
            let k: Vec<f64> = (xmin..xmax).map(|x| lanczos((x as f64 - center + 0.5) * ss)).collect();
            let ww: f64 = k.iter().sum();
            let k = k.iter().map(|w| if ww != 0.0 { w / ww } else { *w });
            let fixed = k.map(|w| (w * (1u64 << PRECISION_BITS) as f64 + if w < 0.0 { -0.5 } else { 0.5 }) as i64).collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass over `count` lines: `get(line, i, channel)` reads input sample i of a line.
fn pass(coeffs: &[(usize, Vec<i64>)], lines: usize, get: impl Fn(usize, usize, usize) -> u8, mut put: impl FnMut(usize, usize, usize, u8)) {
    for line in 0..lines {
        for (o, (start, k)) in coeffs.iter().enumerate() {
            for c in 0..3 {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (j, w) in k.iter().enumerate() {
                    acc += get(line, start + j, c) as i64 * w;
                }
                put(line, o, c, clip8(acc));
            }
        }
    }
}

/// `img` resized to `width x height` (a copy when the size is unchanged, as PIL).
pub fn resize_lanczos(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    let mut cur = img.clone();
    if width != cur.width {
        let coeffs = coefficients(cur.width, width);
        let mut out = vec![0u8; width * cur.height * 3];
        let src = &cur;
        pass(&coeffs, cur.height, |y, x, c| src.pixels[(y * src.width + x) * 3 + c], |y, x, c, v| out[(y * width + x) * 3 + c] = v);
        cur = RgbImage { width, height: cur.height, pixels: out };
    }
    if height != cur.height {
        let coeffs = coefficients(cur.height, height);
        let mut out = vec![0u8; width * height * 3];
        let src = &cur;
        pass(&coeffs, width, |x, y, c| src.pixels[(y * src.width + x) * 3 + c], |x, y, c, v| out[(y * width + x) * 3 + c] = v);
        cur = RgbImage { width, height, pixels: out };
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(40, 32), (24, 32), (7, 3), (3, 7), (512, 64)] {
            for (_, k) in coefficients(i, o) {
                let s: i64 = k.iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= k.len() as i64, "{i}->{o}: {s}");
            }
        }
    }

    #[test]
    fn flat_image_stays_flat_and_same_size_is_a_copy() {
        let img = RgbImage { width: 5, height: 4, pixels: [10u8, 200, 77].repeat(20) };
        let r = resize_lanczos(&img, 9, 3);
        assert!(r.pixels.chunks(3).all(|p| p == [10, 200, 77]));
        assert_eq!(resize_lanczos(&img, 5, 4).pixels, img.pixels);
    }
}
