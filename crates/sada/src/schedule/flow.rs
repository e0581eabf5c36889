//! Flow-matching sigmas (FlowMatchEulerDiscreteScheduler) and the resolution-dependent shift
//! `mu` that diffusers' Flux pipeline computes from the image's token count.

/// `calculate_shift` from diffusers' Flux pipeline: mu grows linearly with the number of
/// image tokens, from `base_shift` at `base_seq_len` to `max_shift` at `max_seq_len`.
pub fn calculate_shift(image_seq_len: usize, base_seq_len: usize, max_seq_len: usize, base_shift: f64, max_shift: f64) -> f64 {
    let m = (max_shift - base_shift) / (max_seq_len as f64 - base_seq_len as f64);
    let b = base_shift - m * base_seq_len as f64;
    image_seq_len as f64 * m + b
}

/// Flux's default sigma grid before shifting: `np.linspace(1.0, 1 / n, n)`.
pub fn flux_default_sigmas(n: usize) -> Vec<f64> {
    super::np_linspace(1.0, 1.0 / n as f64, n)
}

/// Static shift `shift * s / (1 + (shift - 1) * s)`.
pub fn static_shift(shift: f64, s: f64) -> f64 {
    shift * s / (1.0 + (shift - 1.0) * s)
}

/// Exponential dynamic shift `e^mu / (e^mu + (1/s - 1)^sigma)` (float32 arithmetic on the array, as numpy does).
pub fn exponential_shift(mu: f64, sigma: f64, s: f32) -> f32 {
    let e = mu.exp() as f32;
    e / (e + (1.0f32 / s - 1.0).powf(sigma as f32))
}

/// Linear dynamic shift `mu / (mu + (1/s - 1)^sigma)`.
pub fn linear_shift(mu: f64, sigma: f64, s: f32) -> f32 {
    let m = mu as f32;
    m / (m + (1.0f32 / s - 1.0).powf(sigma as f32))
}
