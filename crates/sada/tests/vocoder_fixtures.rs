//! The HiFi-GAN vocoder against transformers' `SpeechT5HifiGan` on a tiny random model
//! (tools/gen_vocoder_fixtures.py): the same waveform from the same spectrograms.

use std::path::PathBuf;

use candle_core::Device;
use sada::models::vocoder::HifiGan;
use sada::models::ModelSource;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vocoder")
}

#[test]
fn waveforms_match_transformers() {
    let dev = Device::Cpu;
    let vocoder = HifiGan::load_from(&ModelSource::Dir(fixtures()), "tiny", &dev).unwrap();
    assert_eq!((vocoder.config.hop(), vocoder.config.sampling_rate), (8, 16000));
    let expected = candle_core::safetensors::load(fixtures().join("expected.safetensors"), &dev).unwrap();
    let got = vocoder.forward(&expected["spectrogram"]).unwrap();
    let want = &expected["waveform"];
    assert_eq!(got.dims(), want.dims());
    let diff = (&got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    eprintln!("max |ours - transformers| = {diff:.2e}");
    assert!(diff < 1e-5, "max |ours - transformers| = {diff:.2e}");
}

#[test]
fn bad_spectrograms_and_configs_are_refused_by_name() {
    let dev = Device::Cpu;
    let vocoder = HifiGan::load_from(&ModelSource::Dir(fixtures()), "tiny", &dev).unwrap();
    let wrong = candle_core::Tensor::zeros((1, 5, 12), candle_core::DType::F32, &dev).unwrap();
    let e = vocoder.forward(&wrong).unwrap_err().to_string();
    assert!(e.contains("spectrogram") && e.contains("16"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("vocoder")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny/config.json")).unwrap()).unwrap();
    cfg["upsample_kernel_sizes"] = serde_json::json!([8]);
    std::fs::write(dir.path().join("vocoder/config.json"), cfg.to_string()).unwrap();
    let e = HifiGan::load_from(&ModelSource::Dir(dir.path().to_path_buf()), "vocoder", &dev).err().unwrap().to_string();
    assert!(e.contains("config.json") && e.contains("upsample_kernel_sizes"), "{e}");
}
