//! Elementwise math written so the compiler vectorises it: branch-free polynomials over plain
//! slices, compiled twice (baseline x86-64 and AVX2+FMA, picked at run time) because candle's
//! CPU `exp` and `erf` go one scalar libm call at a time, which costs more than the matrix
//! products around them in attention and the feed-forward.

/// Run `$body` (an expression using the function's arguments) compiled for AVX2+FMA when the
/// host has it, else for the baseline target.
macro_rules! dispatch {
    ($name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty $body:block) => {
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { body($($arg),*) }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were just detected on this CPU
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use dispatch;

/// exp(x) to about 2 ulp for x in [-87.3, 88.3] (clamped outside: exp of a very negative
/// number is 0 to f32 precision anyway). Cephes' expf: x = n ln2 + r, |r| <= ln2/2, a degree-6
/// polynomial for exp(r), 2^n through the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer without a branch
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// erf(x), absolute error below 6e-7 in f32 arithmetic (Abramowitz & Stegun 7.1.26: the form
/// PyTorch's vectorised CPU kernels use), odd by construction.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4f32;
    p = p * t - 1.453_152_1;
    p = p * t + 1.421_413_8;
    p = p * t - 0.284_496_74;
    p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

/// The exact (erf) GELU.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// x * sigmoid(x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

dispatch!(row_max(row: &[f32]) -> f32 {
    // eight independent lanes: a single running max would be a serial dependency chain
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &v in chunks.remainder() {
        m = m.max(v);
    }
    m
});

dispatch!(exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp(c[i] - m);
            acc[i] += c[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - m);
        s += *v;
    }
    s
});

dispatch!(scale_in_place(row: &mut [f32], s: f32) -> () {
    for v in row.iter_mut() {
        *v *= s;
    }
});

dispatch!(geglu(value: &mut [f32], gate: &[f32]) -> () {
    for (v, &g) in value.iter_mut().zip(gate) {
        *v *= gelu(g);
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_to_a_few_ulp() {
        let mut worst = 0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let (ours, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(-1000.0), (-87.3f32).exp().max(exp(-1000.0)));
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn erf_and_gelu_match_the_exact_functions() {
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let want = libm_erf(x as f64);
            worst = worst.max((erf(x) as f64 - want).abs());
            let g = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 * std::f64::consts::FRAC_1_SQRT_2));
            assert!((gelu(x) as f64 - g).abs() < 2e-6 * (1.0 + g.abs()), "gelu({x}): {} vs {g}", gelu(x));
        }
        assert!(worst < 6e-7, "worst absolute erf error {worst}");
        assert_eq!(erf(-0.5), -erf(0.5));
    }

    /// erf in f64 by its Taylor series (|x| <= 3) and continued fraction beyond: a reference
    /// independent of the approximation under test.
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let v = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = k as f64 / 2.0 / (a + f);
            }
            1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * (a + f))
        };
        v.copysign(x)
    }

    #[test]
    fn row_helpers_agree_with_plain_loops() {
        let row: Vec<f32> = crate::noise::normal_samples(37, 3);
        assert_eq!(row_max(&row), row.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
        let mut e = row.clone();
        let s = exp_sub_sum(&mut e, 1.5);
        let want: Vec<f64> = row.iter().map(|&x| (x as f64 - 1.5).exp()).collect();
        for (a, b) in e.iter().zip(&want) {
            assert!(((*a as f64 - b) / b).abs() < 3e-7);
        }
        assert!((s as f64 - want.iter().sum::<f64>()).abs() < 1e-5 * s as f64);
        silu(0.3);
    }
}
