//! Entry points for fuzzing the paths that read user files: every config a model folder holds,
//! and safetensors weights and pipeline inputs. They must return (never panic, never allocate
//! without bound) whatever the bytes. `fuzz/` runs them under cargo-fuzz; the test suite runs
//! them on mutated fixtures for a bounded time.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::parse_config;
use crate::denoiser::{Conditioning, Denoiser};
use crate::models::vae::AutoencoderKlConfig;
use crate::models::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::solvers::{build_solver, FlowTimesteps, SolverKind};
use crate::text::clip::TextEncoderConfig;
use crate::text::WordLevelTokenizer;

/// Read `data` as each kind of config file and build what it describes.
pub fn config_bytes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.json");
    if let Ok(c) = parse_config::<UNet2DConditionConfig>(&text, path) {
        let _ = c.resolve();
    }
    if let Ok(c) = parse_config::<AutoencoderKlConfig>(&text, path) {
        let _ = c.validate();
    }
    let _ = parse_config::<TextEncoderConfig>(&text, path);
    if let Ok(serde_json::Value::Object(map)) = parse_config::<serde_json::Value>(&text, path) {
        let steps = 1 + data.first().copied().unwrap_or(0) as usize % 64;
        for kind in [SolverKind::DpmSolverMultistep, SolverKind::EulerDiscrete, SolverKind::FlowMatchEulerDiscrete] {
            let _ = build_solver(kind, &map, &Default::default(), steps, &FlowTimesteps::default());
        }
        let value = serde_json::Value::Object(map);
        if let Ok(tok) = WordLevelTokenizer::from_json(&value, &value) {
            let _ = tok.encode("a red circle on a blue background");
        }
    }
}

/// A tiny UNet configuration the weights are tried against.
const TINY_UNET: &str = r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [8, 8],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1, "attention_head_dim": 2, "cross_attention_dim": 8, "norm_num_groups": 4}"#;

/// Read `data` as safetensors weights (checked as every model's are, then loaded into a tiny
/// UNet and run once) and as a pipeline inputs file.
pub fn safetensors_bytes(data: &[u8]) {
    let path = Path::new("fuzz.safetensors");
    let dev = Device::Cpu;
    if let Ok(st) = candle_core::safetensors::SliceSafetensors::new(data) {
        if crate::models::weights::check_tensors(st.tensors(), path).is_ok() {
            if let Ok(vb) = VarBuilder::from_slice_safetensors(data, DType::F32, &dev) {
                let config: UNet2DConditionConfig = serde_json::from_str(TINY_UNET).expect("a valid config");
                if let Ok(unet) = UNet2DConditionModel::new(config, vb) {
                    let run = || -> crate::Result<Tensor> {
                        let x = Tensor::zeros((1, 4, 4, 4), DType::F32, &dev)?;
                        let cond = Conditioning::new().with("encoder_hidden_states", Tensor::zeros((1, 3, 8), DType::F32, &dev)?);
                        unet.predict_full(&x, 10.0, &cond)
                    };
                    let _ = run();
                }
            }
        }
    }
    // the inputs path reads from a file
    if let Ok(mut f) = tempfile::NamedTempFile::new() {
        use std::io::Write;
        if f.write_all(data).is_ok() {
            let _ = crate::pipelines::PipelineInputs::load(f.path(), &dev);
        }
    }
}
