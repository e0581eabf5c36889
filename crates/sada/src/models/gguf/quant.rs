//! GGML's tensor types and their dequantisation to f32, bit for bit as the `gguf` Python
//! package (and so ggml's reference code) computes it: each block's f16 scales are widened to
//! f32 and every product and sum is one f32 operation in the same order, never fused.
//!
//! A block type packs `block_size` values into `type_size` bytes. The layouts (ggml's
//! `block_q4_0`, `block_q4_K`, ...) are read field by field below; `QK_K` = 256.

use half::f16;

use crate::models::kernels::vmath::dispatch;

/// The tensor types a GGUF file may hold that sada reads (ggml's `GGMLQuantizationType` ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types, missing_docs)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

const QK_K: usize = 256;

impl GgmlType {
    /// The type of ggml's id `id`; `Err` names the ones sada does not read.
    pub fn from_id(id: u32) -> std::result::Result<Self, String> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            9 | 15 => return Err(format!("type {id} (Q8_1 / Q8_K) is ggml's intermediate format, never stored in a model")),
            16..=23 | 29 => return Err(format!("type {id} (an IQ i-quant) is not supported; use F16, Q8_0, Q4_0..Q5_1 or a K-quant")),
            24..=28 => return Err(format!("type {id} is an integer or f64 type, not a weight type")),
            34 | 35 => return Err(format!("type {id} (a ternary TQ type) is not supported")),
            other => return Err(format!("unknown tensor type {other}")),
        })
    }

    /// ggml's id of this type.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 2 + 16,
            GgmlType::Q4_1 => 2 + 2 + 16,
            GgmlType::Q5_0 => 2 + 4 + 16,
            GgmlType::Q5_1 => 2 + 2 + 4 + 16,
            GgmlType::Q8_0 => 2 + 32,
            GgmlType::Q2_K => 2 + 2 + QK_K / 16 + QK_K / 4,
            GgmlType::Q3_K => 2 + QK_K / 4 + QK_K / 8 + 12,
            GgmlType::Q4_K => 2 + 2 + QK_K / 2 + 12,
            GgmlType::Q5_K => 2 + 2 + QK_K / 2 + QK_K / 8 + 12,
            GgmlType::Q6_K => 2 + QK_K / 2 + QK_K / 4 + QK_K / 16,
        }
    }

    /// Bytes of `n` values, None when `n` is not a whole number of blocks (or overflows).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.block_size()).then(|| (n / self.block_size()).checked_mul(self.type_size())).flatten()
    }
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Dequantise `bytes` (whole blocks of `ty`) into `out` (`block_size` values per block), on
/// the rayon pool. The caller has checked that the lengths agree.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    use rayon::prelude::*;
    let (bs, ts) = (ty.block_size(), ty.type_size());
    debug_assert_eq!(bytes.len() / ts * bs, out.len());
    // blocks are independent: spread them over the pool in chunks of a few thousand values
    let per_chunk = (4096 / bs).max(1);
    bytes.par_chunks(ts * per_chunk).zip(out.par_chunks_mut(bs * per_chunk)).for_each(|(b, o)| dequantize_serial(ty, b, o));
}

/// [`dequantize`] on the calling thread.
pub fn dequantize_serial(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let ts = ty.type_size();
    match ty {
        // whole runs at once: F16C / vectorised conversion instead of a call per value
        GgmlType::F16 => {
            // SAFETY: any two bytes are a valid u16; align_to only hands out aligned elements
            let (head, bits, _) = unsafe { bytes.align_to::<u16>() };
            if head.is_empty() && cfg!(target_endian = "little") {
                return f16_bits_to_f32(&bits[..out.len()], out);
            }
            let mut bits = [0u16; 4096];
            for (b, o) in bytes.chunks(2 * 4096).zip(out.chunks_mut(4096)) {
                let bits = &mut bits[..o.len()];
                for (d, s) in bits.iter_mut().zip(b.chunks_exact(2)) {
                    *d = u16::from_le_bytes([s[0], s[1]]);
                }
                f16_bits_to_f32(bits, o);
            }
        }
        GgmlType::BF16 => {
            for (d, s) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = f32::from_bits((u16::from_le_bytes([s[0], s[1]]) as u32) << 16);
            }
        }
        GgmlType::F32 => {
            for (d, s) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        GgmlType::Q8_0 => widen_q8_0(bytes, out),
        _ => {
            for (block, y) in bytes.chunks_exact(ts).zip(out.chunks_exact_mut(ty.block_size())) {
                dequantize_block(ty, block, y);
            }
        }
    }
}

dispatch!(
/// Q8_0 blocks to f32, compiled for AVX2 where the CPU has it (the int8 -> f32 products then
/// run 8 at a time; each is still one f32 multiply, as gguf-py's).
widen_q8_0(bytes: &[u8], out: &mut [f32]) -> () {
    for (block, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = h(block, 0);
        for (v, q) in y.iter_mut().zip(&block[2..34]) {
            *v = (*q as i8) as f32 * d;
        }
    }
});

/// IEEE half bits to f32 (exact), 16 at a time with AVX-512, 8 with F16C: the widening the
/// kernels do for every panel of an f16 weight (half's slice conversion copies each group of
/// 8 through arrays and took a tenth of an f16 evaluation).
fn f16_bits_to_f32(src: &[u16], dst: &mut [f32]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f")]
        unsafe fn wide(src: &[u16], dst: &mut [f32]) -> usize {
            let n = src.len().min(dst.len()) / 16 * 16;
            for i in (0..n).step_by(16) {
                // SAFETY: i + 16 <= n, within both slices; unaligned loads and stores
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(_mm256_loadu_si256(src.as_ptr().add(i).cast()))) };
            }
            n
        }
        #[target_feature(enable = "avx,f16c")]
        unsafe fn narrow(src: &[u16], dst: &mut [f32]) -> usize {
            let n = src.len().min(dst.len()) / 8 * 8;
            for i in (0..n).step_by(8) {
                // SAFETY: as above, 8 at a time
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i).cast()))) };
            }
            n
        }
        let done = if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected
            unsafe { wide(src, dst) }
        } else if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the features were just detected
            unsafe { narrow(src, dst) }
        } else {
            0
        };
        HalfBitsSliceExt::reinterpret_cast::<f16>(&src[done..]).convert_to_f32_slice(&mut dst[done..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    HalfBitsSliceExt::reinterpret_cast::<f16>(src).convert_to_f32_slice(dst);
}

/// One block of a type `dequantize_serial` does not take a run at a time.
fn dequantize_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    match ty {
        // written once, as runs, in dequantize_serial (a block is a run of one)
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 => dequantize_serial(ty, b, y),
        GgmlType::Q4_0 => {
            let d = h(b, 0);
            let qs = &b[2..18];
            for i in 0..32 {
                let q = ((qs[i % 16] >> (4 * (i / 16))) & 0x0F) as i8 - 8;
                y[i] = d * q as f32;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (h(b, 0), h(b, 2));
            let qs = &b[4..20];
            for i in 0..32 {
                let q = (qs[i % 16] >> (4 * (i / 16))) & 0x0F;
                y[i] = d * q as f32 + m;
            }
        }
        GgmlType::Q5_0 => {
            let d = h(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            for i in 0..32 {
                let ql = (qs[i % 16] >> (4 * (i / 16))) & 0x0F;
                let q = (ql | ((((qh >> i) & 1) as u8) << 4)) as i8 - 16;
                y[i] = d * q as f32;
            }
        }
        GgmlType::Q5_1 => {
            let (d, m) = (h(b, 0), h(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let qs = &b[8..24];
            for i in 0..32 {
                let ql = (qs[i % 16] >> (4 * (i / 16))) & 0x0F;
                let q = ql | ((((qh >> i) & 1) as u8) << 4);
                y[i] = d * q as f32 + m;
            }
        }
        GgmlType::Q2_K => {
            // scales[16], qs[64], d, dmin
            let (scales, qs) = (&b[0..16], &b[16..80]);
            let (d, dmin) = (h(b, 80), h(b, 82));
            for e in 0..QK_K {
                let (j, s, l) = (e / 128, (e % 128) / 32, e % 32);
                let q = (qs[j * 32 + l] >> (2 * s)) & 3;
                let sc = scales[e / 16];
                let (dl, ml) = (d * (sc & 0x0F) as f32, dmin * (sc >> 4) as f32);
                y[e] = dl * q as f32 - ml;
            }
        }
        GgmlType::Q3_K => {
            // hmask[32], qs[64], scales[12], d
            let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
            let d = h(b, 108);
            let mut dl = [0f32; 16];
            for (k, v) in dl.iter_mut().enumerate() {
                let low = (sc[k % 8] >> (4 * (k / 8))) & 0x0F;
                let high = (sc[8 + k % 4] >> (2 * (k / 4))) & 0x03;
                *v = d * ((low | (high << 4)) as i8 - 32) as f32;
            }
            for e in 0..QK_K {
                let (j, s, l) = (e / 128, (e % 128) / 32, e % 32);
                let ql = ((qs[j * 32 + l] >> (2 * s)) & 3) as i8;
                let qh = ((hmask[e % 32] >> (e / 32)) & 1) ^ 1;
                y[e] = dl[e / 16] * (ql - ((qh << 2) as i8)) as f32;
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            // d, dmin, scales[12], (Q5_K: qh[32]), qs[128]
            let (d, dmin) = (h(b, 0), h(b, 2));
            let (sc, mn) = scale_min_k4(&b[4..16]);
            let (qh, qs) = if ty == GgmlType::Q5_K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
            for k in 0..8 {
                let (dd, dm) = (d * sc[k] as f32, dmin * mn[k] as f32);
                let (j, half) = (k / 2, k % 2);
                for l in 0..32 {
                    let mut q = (qs[j * 32 + l] >> (4 * half)) & 0x0F;
                    if let Some(qh) = qh {
                        q |= ((qh[l] >> k) & 1) << 4;
                    }
                    y[k * 32 + l] = dd * q as f32 - dm;
                }
            }
        }
        GgmlType::Q6_K => {
            // ql[128], qh[64], scales[16] (i8), d
            let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = h(b, 208);
            for e in 0..QK_K {
                let j = e / 128;
                let (half, m) = ((e % 128) / 64, e % 64);
                let low = (ql[j * 64 + m] >> (4 * half)) & 0x0F;
                let (s, l) = ((e % 128) / 32, e % 32);
                let high = (qh[j * 32 + l] >> (2 * s)) & 0x03;
                let q = (low | (high << 4)) as i8 - 32;
                y[e] = d * scales[e / 16] as i8 as f32 * q as f32;
            }
        }
    }
}

/// The eight 6-bit scales and mins of a Q4_K / Q5_K block, from their 12 packed bytes.
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[4 + j] & 0x3F;
        sc[4 + j] = (s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Quantise `values` (whole blocks) to `ty`, appending the blocks to `out`: F16, BF16, Q8_0
/// and Q4_0 byte for byte as the `gguf` Python package does (halves rounded to nearest even;
/// Q8_0 scaled by `amax / 127`, values rounded half away from zero; Q4_0 scaled by the
/// largest-magnitude value over -8), Q4_K by ggml's reference search (the package has no Q4_K
/// quantiser). `None` for the types sada does not write.
pub fn quantize(ty: GgmlType, values: &[f32], out: &mut Vec<u8>) -> Option<()> {
    use rayon::prelude::*;
    // blocks are independent: large tensors are quantised in parallel runs of whole blocks
    // (Q4_K's search costs some 200 operations a value), joined in order
    const RUN: usize = 1 << 16;
    if values.len() > RUN && values.len().is_multiple_of(ty.block_size()) {
        let run = RUN / ty.block_size() * ty.block_size();
        let parts: Option<Vec<Vec<u8>>> = values
            .par_chunks(run)
            .map(|v| {
                let mut part = Vec::with_capacity(ty.bytes_for(v.len()).unwrap_or(0));
                quantize_serial(ty, v, &mut part).map(|()| part)
            })
            .collect();
        parts?.iter().for_each(|p| out.extend_from_slice(p));
        return Some(());
    }
    quantize_serial(ty, values, out)
}

fn quantize_serial(ty: GgmlType, values: &[f32], out: &mut Vec<u8>) -> Option<()> {
    match ty {
        GgmlType::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        GgmlType::F16 => values.iter().for_each(|v| out.extend(f16::from_f32(*v).to_bits().to_le_bytes())),
        GgmlType::BF16 => values.iter().for_each(|v| out.extend(bf16_bits(*v).to_le_bytes())),
        GgmlType::Q8_0 => quantize_q8_0(values, out),
        GgmlType::Q4_0 => quantize_q4_0(values, out),
        GgmlType::Q4_K => quantize_q4_k(values, out),
        _ => return None,
    }
    Some(())
}

dispatch!(
/// Q8_0 by ggml's reference, compiled for AVX2 where the CPU has it (its `floor` is then one
/// instruction, not a libm call: packing SD-2.1's UNet took 15 s).
quantize_q8_0(values: &[f32], out: &mut Vec<u8>) -> () {
    for block in values.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend(f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(block.iter().map(|v| round_half_away(v * id) as i8 as u8));
    }
});

/// Q4_0 as gguf-py computes it: `d = x_max / -8` (x_max the value of largest magnitude, the
/// first when tied), each value `trunc(x / d + 8.5)` with the sum in f64 and rounded to f32
/// before truncating (the package's stand-in for ggml's fused multiply-add), clipped to 0..=15;
/// value j of a block in the low nibble of byte j, value 16 + j in its high nibble.
fn quantize_q4_0(values: &[f32], out: &mut Vec<u8>) {
    for block in values.chunks(32) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in block {
            if v.abs() > amax {
                (amax, max) = (v.abs(), v);
            }
        }
        let d = max / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend(f16::from_f32(d).to_bits().to_le_bytes());
        let q = |v: f32| ((v as f64 * id as f64 + 8.5) as f32).trunc().clamp(0.0, 15.0) as u8;
        out.extend((0..16).map(|j| q(block[j]) | (q(block[16 + j]) << 4)));
    }
}

/// ggml's `nearest_int`: round half to even through the f32 mantissa, for |x| < 2^22 (beyond
/// that, which ggml asserts against, a saturating round: the callers clamp to a few levels).
fn nearest_int(x: f32) -> i32 {
    if x.abs() < 4_194_303.0 {
        ((x + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
    } else {
        x as i32
    }
}

/// Q4_K by ggml's reference quantiser: in each 256-value super-block, every 32-value
/// sub-block gets a scale and a minimum fitted by weighted least squares over a sweep of
/// candidate scales ([`fit_scale_min`]); those 16 numbers are quantised to 6 bits against the
/// super-block's f16 `d` and `dmin`, and the values requantised to 4 bits against them.
fn quantize_q4_k(values: &[f32], out: &mut Vec<u8>) {
    for x in values.chunks(QK_K) {
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
        for j in 0..8 {
            let xs = &x[32 * j..32 * (j + 1)];
            let av_x = (xs.iter().fold(0f32, |a, v| a + v * v) / 32.0).sqrt();
            let weights: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
            (scales[j], mins[j]) = fit_scale_min(xs, &weights, &mut l[32 * j..32 * (j + 1)]);
        }
        let max_scale = scales.iter().fold(0f32, |m, &v| if v > m { v } else { m });
        let max_min = mins.iter().fold(0f32, |m, &v| if v > m { v } else { m });
        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut packed = [0u8; 12];
        for j in 0..8 {
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                packed[j] = ls;
                packed[j + 4] = lm;
            } else {
                packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
                packed[j - 4] |= (ls >> 4) << 6;
                packed[j] |= (lm >> 4) << 6;
            }
        }
        let (d, dmin) = (f16::from_f32(max_scale / 63.0), f16::from_f32(max_min / 63.0));
        let (sc, mn) = scale_min_k4(&packed);
        for j in 0..8 {
            let dd = d.to_f32() * sc[j] as f32;
            if dd == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * mn[j] as f32;
            for i in 0..32 {
                l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dd).clamp(0, 15) as u8;
            }
        }
        out.extend(d.to_bits().to_le_bytes());
        out.extend(dmin.to_bits().to_le_bytes());
        out.extend(packed);
        for g in (0..QK_K).step_by(64) {
            out.extend((0..32).map(|i| l[g + i] | (l[g + 32 + i] << 4)));
        }
    }
}

/// A scale and a minimum for 32 values with 4-bit levels (ggml's `make_qkx2_quants` with
/// Q4_K's settings): start from the range, then try 21 scales around it, each with the
/// least-squares scale and minimum for its levels (weighted by `w`), keeping the best.
/// Returns (scale, -minimum) and leaves the levels in `l`.
fn fit_scale_min(x: &[f32], w: &[f32; 32], l: &mut [u8]) -> (f32, f32) {
    const NMAX: i32 = 15;
    let (rmin, rdelta, nstep) = (-1.0f32, 0.1f32, 20);
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (w[0], w[0] * x[0]);
    for i in 1..32 {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let iscale = NMAX as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..32 {
        l[i] = nearest_int(iscale * (x[i] - min)).clamp(0, NMAX) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best += w[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for step in 0..=nstep {
        // as the reference does, measured from the best minimum so far
        let iscale = (rmin + rdelta * step as f32 + NMAX as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..32 {
            aux[i] = nearest_int(iscale * (x[i] - min)).clamp(0, NMAX) as u8;
            let li = aux[i] as f32;
            sum_l += w[i] * li;
            sum_l2 += w[i] * li * li;
            sum_xl += w[i] * li * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut err = 0f32;
            for i in 0..32 {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                err += w[i] * (diff * diff);
            }
            if err < best {
                l.copy_from_slice(&aux);
                (best, scale, min) = (err, this_scale, this_min);
            }
        }
    }
    (scale, -min)
}

/// ggml's f32 -> bf16: NaN kept quiet, otherwise rounded to nearest even.
fn bf16_bits(v: f32) -> u16 {
    let n = v.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return ((n & 0xffff_0000) >> 16) as u16 | 64;
    }
    ((n as u64 + (0x7fff + ((n >> 16) & 1)) as u64) >> 16) as u16
}

/// gguf-py's `np_roundf`: |x| rounded half up, the sign put back.
#[inline(always)]
fn round_half_away(x: f32) -> f32 {
    let a = x.abs();
    let floored = a.floor();
    let b = floored + (2.0 * (a - floored)).floor();
    if x > 0.0 {
        b
    } else if x < 0.0 {
        -b
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms_error(ty: GgmlType, values: &[f32]) -> f64 {
        let mut bytes = Vec::new();
        quantize(ty, values, &mut bytes).unwrap();
        assert_eq!(Some(bytes.len()), ty.bytes_for(values.len()), "{ty:?}");
        let mut back = vec![0f32; values.len()];
        dequantize(ty, &bytes, &mut back);
        (values.iter().zip(&back).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
    }

    #[test]
    fn large_tensors_quantise_in_parallel_to_the_same_bytes() {
        let values = crate::noise::normal_samples(5 * 65536 / 2, 9);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::F16] {
            let (mut parallel, mut serial) = (Vec::new(), Vec::new());
            quantize(ty, &values, &mut parallel).unwrap();
            quantize_serial(ty, &values, &mut serial).unwrap();
            assert!(parallel == serial && Some(parallel.len()) == ty.bytes_for(values.len()), "{ty:?}");
        }
    }

    #[test]
    fn q4_k_fits_closer_than_q4_0_and_takes_flat_blocks() {
        // 16 super-blocks of unit normal values, some offset (Q4_K's minimum earns its keep)
        let mut values = crate::noise::normal_samples(16 * QK_K, 3);
        values[8 * QK_K..].iter_mut().for_each(|v| *v += 2.5);
        let (k, zero) = (rms_error(GgmlType::Q4_K, &values), rms_error(GgmlType::Q4_0, &values));
        // a 4-bit grid over a sub-block's range: about range / 15 / sqrt(12), range ~ 4.5
        assert!(k < 0.1 && k < 0.8 * zero, "Q4_K {k} against Q4_0 {zero}");
        // a constant super-block and an all-zero one come back as themselves (up to d's rounding)
        let flat: Vec<f32> = [vec![0.75f32; QK_K], vec![0.0; QK_K]].concat();
        assert!(rms_error(GgmlType::Q4_K, &flat) < 1e-3);
        assert!(quantize(GgmlType::Q5_K, &flat, &mut Vec::new()).is_none(), "types sada does not write are refused");
    }
}
