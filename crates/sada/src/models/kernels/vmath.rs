//! Elementwise math written so the compiler vectorises it: branch-free polynomials over plain
//! slices, compiled twice (baseline x86-64 and AVX2+FMA, picked at run time) because candle's
//! CPU `exp` and `erf` go one scalar libm call at a time, which costs more than the matrix
//! products around them in attention and the feed-forward.

/// Run `$body` (an expression using the function's arguments) compiled for AVX2+FMA when the
/// host has it, else for the baseline target.
macro_rules! dispatch {
    ($(#[$meta:meta])* $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { body($($arg),*) }
                if $crate::models::kernels::vmath::avx2_fma() {
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
    p = p * r + 5e-1;
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

/// The largest element (NEG_INFINITY for an empty row).
pub fn row_max(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the features were detected on this CPU
        return unsafe { x86::row_max(row) };
    }
    row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `row[i] = exp(row[i] - m)`; returns the sum of the new row.
pub fn exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: as above
        return unsafe { x86::exp_sub_sum(row, m) };
    }
    let mut s = 0.0;
    for v in row.iter_mut() {
        *v = exp(*v - m);
        s += *v;
    }
    s
}

dispatch!(
/// `row[i] *= s`.
scale_in_place(row: &mut [f32], s: f32) -> () {
    for v in row.iter_mut() {
        *v *= s;
    }
});

/// `value[i] *= gelu(gate[i])` (GEGLU's product).
pub fn geglu(value: &mut [f32], gate: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: as above
        return unsafe { x86::geglu(value, gate) };
    }
    for (v, &g) in value.iter_mut().zip(gate) {
        *v *= gelu(g);
    }
}

/// `out[i] = x[i] * scale + shift`, then SiLU when `silu` (GroupNorm's affine step and the
/// activation that follows it in ResNet blocks).
pub fn affine(out: &mut [f32], x: &[f32], scale: f32, shift: f32, silu: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: as above
        return unsafe { x86::affine(out, x, scale, shift, silu) };
    }
    for (o, &v) in out.iter_mut().zip(x) {
        let y = v * scale + shift;
        *o = if silu { self::silu(y) } else { y };
    }
}

/// Whether this CPU runs the AVX2 + FMA paths (detected once, then a cached load).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// The same functions eight lanes at a time with AVX2 + FMA intrinsics: written out, because
/// the compiler leaves the scalar polynomials above mostly scalar inside reductions (the
/// measured difference is in docs/performance.md). The polynomials are the scalar
/// ones, evaluated with fused multiply-adds (so results may differ from them in the last bit);
/// tails shorter than eight go through the scalar functions.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.3));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5e-1] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let e = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))));
        _mm256_mul_ps(e, pow2n)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn erf8(x: __m256) -> __m256 {
        let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
        let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
        let one = _mm256_set1_ps(1.0);
        let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.327_591_1), a, one));
        let mut p = _mm256_set1_ps(1.061_405_4);
        for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
            p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c));
        }
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
        let y = _mm256_fnmadd_ps(_mm256_mul_ps(p, t), e, one);
        _mm256_or_ps(y, sign)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn silu8(x: __m256) -> __m256 {
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// `super::row_max` eight lanes at a time; the caller must have checked that the CPU has AVX2
    /// and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_max(row: &[f32]) -> f32 {
        let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
        let chunks = row.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            acc = _mm256_max_ps(acc, _mm256_loadu_ps(c.as_ptr()));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().chain(tail).fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    }

    /// `super::exp_sub_sum` eight lanes at a time; the caller must have checked that the CPU has
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
        let (mv, mut acc) = (_mm256_set1_ps(m), _mm256_setzero_ps());
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut s = hsum(acc);
        for v in chunks.into_remainder() {
            *v = super::exp(*v - m);
            s += *v;
        }
        s
    }

    /// `super::geglu` eight lanes at a time; the caller must have checked that the CPU has AVX2 and
    /// FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn geglu(value: &mut [f32], gate: &[f32]) {
        let n = value.len().min(gate.len());
        let (half, inv_sqrt2) = (_mm256_set1_ps(0.5), _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let mut i = 0;
        while i + 8 <= n {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let gelu = _mm256_mul_ps(_mm256_mul_ps(half, g), _mm256_add_ps(_mm256_set1_ps(1.0), erf8(_mm256_mul_ps(g, inv_sqrt2))));
            let v = value.as_mut_ptr().add(i);
            _mm256_storeu_ps(v, _mm256_mul_ps(_mm256_loadu_ps(v), gelu));
            i += 8;
        }
        for j in i..n {
            value[j] *= super::gelu(gate[j]);
        }
    }

    /// `super::affine` eight lanes at a time; the caller must have checked that the CPU has AVX2
    /// and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn affine(out: &mut [f32], x: &[f32], scale: f32, shift: f32, silu: bool) {
        let n = out.len().min(x.len());
        let (sv, hv) = (_mm256_set1_ps(scale), _mm256_set1_ps(shift));
        let mut i = 0;
        while i + 8 <= n {
            let y = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(i)), sv, hv);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), if silu { silu8(y) } else { y });
            i += 8;
        }
        for j in i..n {
            let y = x[j] * scale + shift;
            out[j] = if silu { super::silu(y) } else { y };
        }
    }
}

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
    }

    #[test]
    fn vectorised_paths_match_the_functions_over_their_range() {
        // whole vectors of eight and a scalar tail (odd lengths) through each front end
        let xs: Vec<f32> = (-870_000..=880_003).map(|i| i as f32 * 1e-4).collect();
        let mut e = xs.clone();
        exp_sub_sum(&mut e, 0.0);
        for (&x, &got) in xs.iter().zip(&e) {
            let want = (x as f64).exp();
            assert!(((got as f64 - want) / want).abs() < 3e-7, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(row_max(&xs), 88.0003);
        assert_eq!(row_max(&[]), f32::NEG_INFINITY);
        let gate: Vec<f32> = (-60_000..=60_005).map(|i| i as f32 * 1e-4).collect();
        let mut v = vec![1.5f32; gate.len()];
        geglu(&mut v, &gate);
        let mut out = vec![0f32; gate.len()];
        affine(&mut out, &gate, 0.7, -0.2, true);
        for (i, &g) in gate.iter().enumerate() {
            let want = 1.5 * gelu(g);
            assert!((v[i] - want).abs() <= 2e-6 * (1.0 + want.abs()), "geglu at {g}: {} vs {want}", v[i]);
            let y = g * 0.7 - 0.2;
            let want = y as f64 / (1.0 + (-y as f64).exp());
            assert!((out[i] as f64 - want).abs() <= 2e-6 * (1.0 + want.abs()), "silu({y}): {} vs {want}", out[i]);
        }
        affine(&mut out, &gate, 0.7, -0.2, false);
        assert!(gate.iter().zip(&out).all(|(&g, &o)| (o - (g * 0.7 - 0.2)).abs() <= 1e-6));
    }
}
