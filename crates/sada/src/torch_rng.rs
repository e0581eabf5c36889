//! `torch.Generator("cpu").manual_seed(seed)` and `torch.randn(shape, generator=..., dtype=float32)`
//! as torch 2.7 computes them on x86-64 CPUs, so that `--seed N` gives the noise diffusers'
//! `randn_tensor` draws for the same seed, and so the same image.
//!
//! The generator is MT19937 seeded with the seed's low 32 bits. For 16 or more values torch
//! draws all the float uniforms first (the low 24 bits of each 32-bit draw), then turns each
//! block of 16 into normals by Box-Muller with lane j paired with lane j+8 (cos into the first
//! eight, sin into the second); a tail that does not fill a block is redrawn as a whole block
//! over the last 16 values. It computes log, sin and cos with the Cephes-style float32
//! polynomials of its AVX2 kernel, with the compiler's fused multiply-adds, which are
//! reproduced here to the bit. Fewer than 16 values come one by one from a double-precision
//! Box-Muller pair, the second value cached in the generator.

/// torch's CPU generator: the MT19937 engine and the cached second normal of a pair.
#[derive(Clone)]
pub struct TorchGenerator {
    state: [u32; 624],
    /// Index of the next tempered word in the current state block (624: twist first).
    next: usize,
    cached_normal: Option<f64>,
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)` (negative Python seeds are their u64 bits).
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed as u32; // only the low 32 bits are used
        for j in 1..624 {
            let p = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(p ^ (p >> 30)).wrapping_add(j as u32);
        }
        Self { state, next: 624, cached_normal: None }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        for i in 0..624 {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % 624] & LOWER);
            let mag = if self.state[(i + 1) % 624] & 1 != 0 { 0x9908_b0df } else { 0 };
            self.state[i] = self.state[(i + 397) % 624] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    /// One 32-bit draw (`CPUGeneratorImpl::random`).
    pub fn random(&mut self) -> u32 {
        if self.next >= 624 {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn random64(&mut self) -> u64 {
        let hi = self.random() as u64;
        let lo = self.random() as u64;
        (hi << 32) | lo
    }

    fn uniform_f32(&mut self) -> f32 {
        (self.random() & 0xff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.cached_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.randn(n values, generator=self, dtype=float32)`; further calls continue the stream.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            normal_fill_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16(tail);
        }
        data
    }
}

/// `normal_fill_16_AVX2`: 16 uniforms -> 16 standard normals in place.
fn normal_fill_16(block: &mut [f32]) {
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0 - block[j];
        let u2 = block[j + 8];
        let radius = (-2.0 * log(u1)).sqrt();
        let (s, c) = sincos(two_pi * u2);
        // the kernel's explicit fmadd with std 1 and mean 0
        block[j] = (radius * c).mul_add(1.0, 0.0);
        block[j + 8] = (radius * s).mul_add(1.0, 0.0);
    }
}

// avx_mathfun.h constants, rounded to float32 from their double literals as C does; spelled as
// that header spells them (clippy would have std's constant and fewer digits: the same values)
#[allow(clippy::approx_constant, clippy::excessive_precision)]
const SQRTHF: f32 = 0.707106781186547524_f64 as f32;
const LOG_P: [f32; 9] = [
    7.0376836292E-2_f64 as f32,
    -1.1514610310E-1_f64 as f32,
    1.1676998740E-1_f64 as f32,
    -1.2420140846E-1_f64 as f32,
    1.4249322787E-1_f64 as f32,
    -1.6668057665E-1_f64 as f32,
    2.0000714765E-1_f64 as f32,
    -2.4999993993E-1_f64 as f32,
    3.3333331174E-1_f64 as f32,
];
const LOG_Q1: f32 = -2.12194440e-4_f64 as f32;
const LOG_Q2: f32 = 0.693359375_f64 as f32;
const DP1: f32 = -0.78515625_f64 as f32;
#[allow(clippy::excessive_precision)]
const DP2: f32 = -2.4187564849853515625e-4_f64 as f32;
#[allow(clippy::excessive_precision)]
const DP3: f32 = -3.77489497744594108e-8_f64 as f32;
const SINC: [f32; 3] = [-1.9515295891E-4_f64 as f32, 8.3321608736E-3_f64 as f32, -1.6666654611E-1_f64 as f32];
const COSC: [f32; 3] = [2.443315711809948E-005_f64 as f32, -1.388731625493765E-003_f64 as f32, 4.166664568298827E-002_f64 as f32];
const FOPI: f32 = 1.27323954473516_f64 as f32;

/// `log256_ps` for one lane (inputs here lie in (0, 1]).
fn log(x: f32) -> f32 {
    if x <= 0.0 {
        return f32::NAN;
    }
    let x = x.max(f32::from_bits(0x0080_0000));
    let imm0 = (x.to_bits() >> 23) as i32;
    let mut x = f32::from_bits((x.to_bits() & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = (imm0 - 127) as f32 + 1.0;
    let mask = x < SQRTHF;
    let tmp = if mask { x } else { 0.0 };
    x -= 1.0;
    e -= if mask { 1.0 } else { 0.0 };
    x += tmp;
    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y = y.mul_add(z, LOG_Q1 * e);
    y = (-z).mul_add(0.5, y);
    x += y;
    e.mul_add(LOG_Q2, x)
}

/// `sincos256_ps` for one lane: (sin, cos).
fn sincos(x: f32) -> (f32, f32) {
    let mut sign_sin = x.to_bits() & 0x8000_0000;
    let mut x = x.abs();
    let j = ((x * FOPI) as i32 + 1) & !1;
    let y = j as f32;
    let swap_sin = ((j & 4) as u32) << 29;
    let poly = j & 2 == 0;
    x = y.mul_add(DP1, x);
    x = y.mul_add(DP2, x);
    x = y.mul_add(DP3, x);
    let sign_cos = ((!(j - 2) & 4) as u32) << 29;
    sign_sin ^= swap_sin;
    let z = x * x;
    let mut yc = COSC[0].mul_add(z, COSC[1]);
    yc = yc.mul_add(z, COSC[2]);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;
    let mut ys = SINC[0].mul_add(z, SINC[1]);
    ys = ys.mul_add(z, SINC[2]);
    ys *= z;
    ys = ys.mul_add(x, x);
    let (ysin2, ysin1) = if poly { (ys, 0.0) } else { (0.0, yc) };
    let ys = ys - ysin2;
    let yc = yc - ysin1;
    let s = ysin1 + ysin2;
    let c = yc + ys;
    (f32::from_bits(s.to_bits() ^ sign_sin), f32::from_bits(c.to_bits() ^ sign_cos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_u32_stream_is_mt19937_and_uniforms_take_the_low_24_bits() {
        // reference MT19937 (init_genrand(42)), as torch's engine draws it
        let mut g = TorchGenerator::new(42);
        assert_eq!([g.random(), g.random(), g.random(), g.random()], [0x5fe1dc66, 0xcbea3db3, 0xf362035c, 0x2ef5950e]);
        let mut g = TorchGenerator::new(42);
        assert_eq!(g.uniform_f32(), 0.882_269_26);
        // only the low 32 bits of the seed count
        assert_eq!(TorchGenerator::new(5).randn(20), TorchGenerator::new((1 << 32) + 5).randn(20));
    }
}
