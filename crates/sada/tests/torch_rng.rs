//! `--seed` draws what `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`
//! draws in torch 2.7.1 (`tools/gen_noise_fixtures.py`), so a seed gives diffusers' noise:
//! bit for bit from 16 values up (the path every latent takes), within one float32 ulp below
//! (there torch calls the C library's log1p, sin and cos, whose last bit may vary by platform).

use std::path::PathBuf;

use candle_core::Device;
use sada::torch_rng::TorchGenerator;

fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

fn check(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let worst = got.iter().zip(want).map(|(a, b)| ulps(*a, *b)).max().unwrap_or(0);
    let limit = if got.len() >= 16 { 0 } else { 1 };
    assert!(worst <= limit, "{what}: {worst} ulps apart");
}

#[test]
fn seeds_draw_torchs_noise() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/noise/torch_randn.safetensors");
    let f = candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let mut cases = 0;
    for (name, t) in &f {
        let Some((seed, shape)) = name.strip_prefix('s').and_then(|r| r.split_once('_')) else { continue };
        let seed: u64 = seed.parse().unwrap();
        let n: usize = shape.split('x').map(|d| d.parse::<usize>().unwrap()).product();
        let want: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        check(&TorchGenerator::new(seed).randn(n), &want, name);
        cases += 1;
    }
    assert_eq!(cases, 40);
    // one generator, three calls: the stream and the cached normal carry over
    let mut g = TorchGenerator::new(7);
    for (i, n) in [5, 256, 3].into_iter().enumerate() {
        let want: Vec<f32> = f[&format!("seq{i}")].flatten_all().unwrap().to_vec1().unwrap();
        check(&g.randn(n), &want, &format!("call {i}"));
    }
}
