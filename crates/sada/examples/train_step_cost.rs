//! How long one training step of a small pixel-space text-to-image UNet takes on this machine
//! (forward + backward + AdamW through candle's autograd): the budget question for training the
//! embedded default model. `cargo run -p sada --example train_step_cost -- [batch] [side]`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use sada::denoiser::{Conditioning, Denoiser};
use sada::models::{UNet2DConditionConfig, UNet2DConditionModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let side: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let config: UNet2DConditionConfig = serde_json::from_str(
        r#"{"in_channels": 3, "out_channels": 3, "block_out_channels": [32, 64, 64],
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "layers_per_block": 1, "attention_head_dim": [2, 4, 4], "cross_attention_dim": 64,
            "norm_num_groups": 16, "use_linear_projection": true, "sample_size": 32}"#,
    )?;
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let unet = UNet2DConditionModel::new(config, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-4, ..Default::default() })?;
    let x = Tensor::randn(0f32, 1f32, (batch, 3, side, side), &dev)?;
    let target = Tensor::randn(0f32, 1f32, (batch, 3, side, side), &dev)?;
    let cond = Conditioning::new().with("encoder_hidden_states", Tensor::randn(0f32, 1f32, (batch, 8, 64), &dev)?);
    for i in 0..4 {
        let t = Instant::now();
        let out = unet.predict_full(&x, 500.0, &cond)?;
        let loss = (out - &target)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)?;
        println!(
            "step {i}: {:.3} s (batch {batch}, {side}x{side}, {:.2}M parameters, loss {:.4})",
            t.elapsed().as_secs_f64(),
            params as f64 / 1e6,
            loss.to_scalar::<f32>()?
        );
    }
    Ok(())
}
