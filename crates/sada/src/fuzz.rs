//! Entry points for fuzzing the paths that read user files: every config a model folder holds,
//! safetensors weights and pipeline inputs, and single-file checkpoints (whose architecture is
//! inferred from the tensors' shapes). They must return (never panic, never allocate without
//! bound) whatever the bytes. `fuzz/` runs them under cargo-fuzz; the test suite runs them on
//! mutated fixtures for a bounded time.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::parse_config;
use crate::denoiser::{Conditioning, Denoiser};
use crate::models::controlnet::ControlNetExtra;
use crate::models::flux::FluxTransformerConfig;
use crate::models::single_file::{open_controlnet, Checkpoint};
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
    // the checks the opener makes before it maps a file (another format, the header's length,
    // a name listed twice), then the slice read as the mapped file is
    let header_ok = crate::models::weights::check_safetensors_header(data, data.len() as u64).is_ok();
    let st = if header_ok { candle_core::safetensors::SliceSafetensors::new(data).ok() } else { None };
    if let Some(st) = st {
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

/// Write `data` to a file and read it as a single-file checkpoint, as the pipelines do:
/// [`Checkpoint::open`] recognises the family (SD-1, SD-2, SDXL or FLUX.1), renames the tensors
/// and infers each component's configuration from their shapes; each configuration is then
/// parsed and checked, and each renamed tensor made (split, narrowed, transposed, squeezed or
/// its halves swapped). Then as an original-layout ControlNet ([`open_controlnet`]).
pub fn single_file_bytes(data: &[u8]) {
    use std::io::Write;
    let Ok(mut f) = tempfile::Builder::new().suffix(".safetensors").tempfile() else {
        return;
    };
    if f.write_all(data).and_then(|()| f.flush()).is_err() {
        return;
    }
    let (path, dev) = (f.path(), Device::Cpu);
    if let Ok(ck) = Checkpoint::open(path) {
        if let Some(c) = ck.file("unet/config.json").and_then(|t| parse_config::<UNet2DConditionConfig>(t, path).ok()) {
            let _ = c.resolve();
        }
        if let Some(c) = ck.file("vae/config.json").and_then(|t| parse_config::<AutoencoderKlConfig>(t, path).ok()) {
            let _ = c.validate();
        }
        for comp in ["text_encoder", "text_encoder_2"] {
            if let Some(t) = ck.file(&format!("{comp}/config.json")) {
                let _ = parse_config::<TextEncoderConfig>(t, path);
            }
        }
        if let Some(c) = ck.file("transformer/config.json").and_then(|t| parse_config::<FluxTransformerConfig>(t, path).ok()) {
            let _ = c.validate();
        }
        for comp in ["unet", "vae", "text_encoder", "text_encoder_2", "transformer"] {
            if let Ok(vb) = ck.var_builder(comp, DType::F32, &dev) {
                for name in ck.tensor_names(comp) {
                    let _ = vb.get_unchecked(&name);
                }
            }
        }
    }
    if let Ok((config, _weights)) = open_controlnet(path, DType::F32, &dev) {
        if let Ok(c) = crate::config::from_value::<UNet2DConditionConfig>(config.clone()) {
            let _ = c.resolve();
        }
        let _ = crate::config::from_value::<ControlNetExtra>(config);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }

    /// The single-file entry on each single-file fixture, then on mutations of them for a
    /// bounded time: bytes of the header flipped, spans of it dropped, the file cut short. The
    /// same mutations repeat (a fixed xorshift seed), so a failure reproduces.
    #[test]
    fn single_file_reader_survives_mutated_checkpoints() {
        let seeds: Vec<Vec<u8>> =
            ["sd/sd15.safetensors", "sd/sd2.safetensors", "sd/sdxl.safetensors", "flux/flux_dev_single.safetensors", "controlnet/sd15_canny.safetensors"]
                .iter()
                .map(|p| std::fs::read(fixtures().join(p)).unwrap())
                .collect();
        for s in &seeds {
            super::single_file_bytes(s);
        }
        let mut state = 0x5eed_f11e_u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let (start, mut n) = (Instant::now(), 0);
        while start.elapsed() < Duration::from_secs(10) {
            let seed = &seeds[next() as usize % seeds.len()];
            // mutate the header (the 8-byte length and the JSON): where the shapes are
            let header = 8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
            let mut v = seed.clone();
            match next() % 3 {
                0 => {
                    let at = next() as usize % header;
                    v[at] ^= 1 << (next() % 8);
                }
                1 => {
                    let at = 8 + next() as usize % (header - 8);
                    let end = (at + 1 + next() as usize % 16).min(header);
                    v.drain(at..end);
                }
                _ => v.truncate(next() as usize % v.len()),
            }
            super::single_file_bytes(&v);
            n += 1;
        }
        eprintln!("{n} mutated single-file checkpoints read without a panic");
        assert!(n > 10);
    }
}
