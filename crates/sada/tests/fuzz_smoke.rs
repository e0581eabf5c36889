//! The fuzz targets (`sada::fuzz`, run under cargo-fuzz in `fuzz/`) on mutations of the
//! fixtures for a bounded time: every config reader and the weights / inputs readers must
//! return, never panic, on whatever bytes they get. The same mutations repeat from the same
//! seed, so a failure here reproduces.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// xorshift64*: a small deterministic generator for the mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that break naive config handling.
const NASTY: [&str; 12] = ["0", "-1", "1e308", "-1e308", "18446744073709551615", "1e20", "null", "[]", "{}", "\"\"", "true", "0.5"];

/// One mutation of `seed`: byte flips, insertions, deletions, duplicated spans, or a JSON
/// value (a run of digits, or what follows a colon) replaced by a nasty one.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if v.is_empty() {
            v.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(v.len());
        match rng.below(6) {
            0 => v[at] ^= 1 << rng.below(8),
            1 => v.insert(at, rng.next() as u8),
            2 => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at..end);
            }
            3 => {
                let end = (at + 1 + rng.below(64)).min(v.len());
                let span: Vec<u8> = v[at..end].to_vec();
                let to = rng.below(v.len());
                v.splice(to..to, span);
            }
            _ => {
                // the value after the next ':' (JSON) or the next run of digits
                let start = v[at..].iter().position(|&b| b == b':' || b.is_ascii_digit()).map(|p| at + p + usize::from(v[at + p] == b':'));
                if let Some(s) = start {
                    let len = v[s..].iter().position(|&b| matches!(b, b',' | b'}' | b']' | b'\n')).unwrap_or(v.len() - s);
                    let nasty = NASTY[rng.below(NASTY.len())].as_bytes();
                    v.splice(s..s + len, nasty.iter().copied());
                }
            }
        }
    }
    v
}

fn fuzz_for(seeds: &[Vec<u8>], budget: Duration, rng_seed: u64, target: fn(&[u8])) -> usize {
    let mut rng = Rng(rng_seed);
    for s in seeds {
        target(s);
    }
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < budget {
        let input = mutate(&seeds[rng.below(seeds.len())], &mut rng);
        target(&input);
        n += 1;
    }
    n
}

#[test]
fn config_readers_survive_mutated_configs() {
    let f = fixtures();
    let mut seeds: Vec<Vec<u8>> = [
        "unet/sd15_tiny/unet/config.json",
        "unet/sd2_tiny/unet/config.json",
        "unet/sdxl_tiny/unet/config.json",
        "unet/sd2_tiny/scheduler/scheduler_config.json",
        "unet/sdxl_tiny/scheduler/scheduler_config.json",
        "vae/tiny/vae/config.json",
        "text/text_encoder/config.json",
        "text/tokenizer/tokenizer.json",
    ]
    .iter()
    .map(|p| std::fs::read(f.join(p)).unwrap())
    .collect();
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/default_model");
    seeds.push(std::fs::read(assets.join("scheduler/scheduler_config.json")).unwrap());
    seeds.push(std::fs::read(assets.join("tokenizer/tokenizer_config.json")).unwrap());
    let n = fuzz_for(&seeds, Duration::from_secs(20), 0x5ada, sada::fuzz::config_bytes);
    eprintln!("{n} mutated configs read without a panic");
    assert!(n > 100);
}

#[test]
fn weight_and_input_readers_survive_mutated_safetensors() {
    // a seed that loads into the fuzz target's tiny UNet, so mutations reach the forward pass
    let varmap = VarMap::new();
    let config: sada::models::UNet2DConditionConfig = serde_json::from_str(
        r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [8, 8],
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "layers_per_block": 1, "attention_head_dim": 2, "cross_attention_dim": 8, "norm_num_groups": 4}"#,
    )
    .unwrap();
    sada::models::UNet2DConditionModel::new(config, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let dir = std::env::temp_dir().join(format!("sada-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    varmap.save(dir.join("tiny.safetensors")).unwrap();
    let seeds: Vec<Vec<u8>> = vec![
        std::fs::read(dir.join("tiny.safetensors")).unwrap(),
        std::fs::read(fixtures().join("unet/sd2_tiny/pipeline.safetensors")).unwrap(),
        std::fs::read(fixtures().join("unet/sdxl_tiny/pipeline.safetensors")).unwrap(),
    ];
    std::fs::remove_dir_all(&dir).ok();
    let n = fuzz_for(&seeds, Duration::from_secs(20), 0xfeed, sada::fuzz::safetensors_bytes);
    eprintln!("{n} mutated safetensors files read without a panic");
    assert!(n > 20);
}
