//! LPIPS against the `lpips` package (0.1.4) on AlexNet and VGG-16 backbones with weights set
//! from a formula (`tools/gen_lpips_fixtures.py`): distances within 1e-5 relative.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use sada::metrics::lpips::{Lpips, LpipsNet};

/// The fixture script's weight formula for tensor number `t` (see its docstring).
fn formula(t: usize, shape: &[usize], kind: &str) -> Tensor {
    let n: usize = shape.iter().product();
    let fan_in: usize = shape[1..].iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let h = (i.wrapping_mul(2654435761).wrapping_add((t as u64 + 1) * 97531 + 12345)) & 0xFFFF_FFFF;
            let u = h as f64 / 2f64.powi(32);
            (match kind {
                "weight" => (2.0 * u - 1.0) * (6.0 / fan_in as f64).sqrt(),
                "bias" => (2.0 * u - 1.0) * 0.05,
                _ => 0.1 * u,
            }) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Weights named as the lpips state dict names them: `net.slice{k}.{i}.*`, `lin{k}.model.1.weight`.
fn weights(net: LpipsNet) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    let mut t = 0;
    for (k, i, shape) in net.convolutions() {
        out.insert(format!("net.slice{}.{i}.weight", k + 1), formula(t, &shape, "weight"));
        out.insert(format!("net.slice{}.{i}.bias", k + 1), formula(t + 1, &shape[..1], "bias"));
        t += 2;
    }
    for (k, c) in net.channels().iter().enumerate() {
        out.insert(format!("lin{k}.model.1.weight"), formula(t, &[1, *c, 1, 1], "lin"));
        t += 1;
    }
    out
}

fn fixture() -> HashMap<String, Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/metrics/lpips.safetensors");
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

#[test]
fn alexnet_and_vgg_lpips_match_the_lpips_package() {
    let f = fixture();
    for (net, name) in [(LpipsNet::Alex, "alex"), (LpipsNet::Vgg, "vgg")] {
        let model = Lpips::from_tensors(weights(net), &Device::Cpu).unwrap();
        assert_eq!(model.net, net);
        let got = model.distance(&f[&format!("{name}_a")], &f[&format!("{name}_b")]).unwrap();
        let want: Vec<f32> = f[&format!("{name}_d")].to_vec1().unwrap();
        for (g, w) in got.iter().zip(&want) {
            let e = ((g - w) / w).abs();
            eprintln!("{name}: ours {g}, lpips {w}, relative error {e:e}");
            assert!(e <= 1e-5, "{name}: {g} vs {w}");
        }
        // identical images are at distance 0
        let a = &f[&format!("{name}_a")];
        assert!(model.distance(a, a).unwrap().iter().all(|&d| d == 0.0));
    }
}

#[test]
fn weights_with_a_missing_or_misshapen_tensor_are_named() {
    let mut w = weights(LpipsNet::Alex);
    w.remove("lin3.model.1.weight");
    let e = Lpips::from_tensors(w, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("lin3.model.1.weight"), "{e}");
    let mut w = weights(LpipsNet::Alex);
    w.insert("net.slice2.3.weight".into(), Tensor::zeros((192, 64, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap());
    let e = Lpips::from_tensors(w, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("features.3.weight") && e.contains("[192, 64, 5, 5]"), "{e}");
    let e = Lpips::from_tensors(HashMap::new(), &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("no backbone"), "{e}");
}
