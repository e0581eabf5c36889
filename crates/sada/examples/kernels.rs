//! Micro-benchmark of the CPU kernels against candle's ops: `cargo run -p sada --example kernels`
//! (GFLOP/s counted as the direct algorithm's flops).
use candle_core::{DType, Device, Module, Tensor};
use sada::models::gguf::{quantize, GgmlType};
use sada::models::kernels::{self, rows::WeightRows};
use std::time::Instant;

fn t<F: FnMut() -> Tensor>(name: &str, flop: f64, mut f: F) {
    f();
    let n = 5;
    let s = Instant::now();
    for _ in 0..n {
        f();
    }
    let dt = s.elapsed().as_secs_f64() / n as f64;
    println!("{name}: {:.2} ms  {:.1} GFLOP/s", dt * 1e3, flop / dt / 1e9);
}

fn main() {
    let dev = Device::Cpu;
    for (rows, cin, cout) in [(2048, 320, 2560), (2048, 1280, 320), (512, 640, 5120), (128, 1280, 10240), (2048, 320, 320)] {
        let x = Tensor::randn(0f32, 1., (2, rows / 2, cin), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (cout, cin), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., cout, &dev).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        let fl = 2.0 * (rows * cin * cout) as f64;
        let values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rows_f32 = WeightRows::f32(&values, cout, cin).unwrap();
        t(&format!("dense {rows}x{cin}->{cout}"), fl, || kernels::dense::dense(&x, rows_f32, &b, true).unwrap());
        // the same product with the weight held in blocks, widened piece by piece
        for ty in [GgmlType::F16, GgmlType::Q8_0] {
            let mut bytes = Vec::new();
            quantize(ty, &values, &mut bytes).unwrap();
            let packed = WeightRows::blocks(ty, &bytes, cout, cin).unwrap();
            t(&format!("dense {rows}x{cin}->{cout} ({ty:?} weights)"), fl, || kernels::dense::dense(&x, packed, &b, true).unwrap());
        }
        let l = candle_nn::Linear::new(w.clone(), Some(b.clone()));
        t(&format!("candle linear {rows}x{cin}->{cout}"), fl, || l.forward(&x).unwrap());
        let x2 = x.reshape((rows, cin)).unwrap();
        t(&format!("candle 2d matmul {rows}x{cin}->{cout}"), fl, || x2.matmul(&wt).unwrap());
    }
    for (n, m, h) in [(1024, 1024, 5), (1024, 77, 5), (256, 256, 10), (4096, 4096, 5)] {
        let q = Tensor::randn(0f32, 1., (2, n, h * 64), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, m, h * 64), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (2, m, h * 64), &dev).unwrap();
        let fl = 4.0 * (2 * h * n * m * 64) as f64;
        t(&format!("fused attention n{n} m{m} h{h}"), fl, || kernels::attention::attention(&q, &k, &v, h, 0.125).unwrap());
        let split = |t: &Tensor| {
            let (b, n, c) = t.dims3().unwrap();
            t.reshape((b, n, h, c / h)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
        };
        let (qs, ks, vs) = (split(&q), split(&k), split(&v));
        t(&format!("unfused attention n{n} m{m} h{h}"), fl, || sada::models::layers::attention::scaled_dot_product_attention(&qs, &ks, &vs, 0.125).unwrap());
    }
    for (c, hw) in [(320, 32), (640, 16), (1280, 8), (320, 64)] {
        let x = Tensor::randn(0f32, 1., (2, c, hw, hw), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (c, c, 3, 3), &dev).unwrap();
        let b = Tensor::zeros(c, DType::F32, &dev).unwrap();
        let values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rows = WeightRows::f32(&values, c, c * 9).unwrap();
        let fl = 2.0 * (2 * c * c * 9 * hw * hw) as f64;
        t(&format!("winograd F4 {c}ch {hw}x{hw}"), fl, || kernels::winograd::conv3x3(&x, rows, &b, false, &kernels::winograd::F4).unwrap());
        t(&format!("winograd F2 {c}ch {hw}x{hw}"), fl, || kernels::winograd::conv3x3(&x, rows, &b, false, &kernels::winograd::F2).unwrap());
        let flat = w.reshape((c, c * 9)).unwrap();
        t(&format!("im2col gemm {c}ch {hw}x{hw}"), fl, || {
            // the GEMM stage alone, as a lower bound for im2col
            let cols = Tensor::zeros((c * 9, 2 * hw * hw), DType::F32, &dev).unwrap();
            flat.matmul(&cols).unwrap()
        });
    }
}
