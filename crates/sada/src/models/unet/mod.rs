//! diffusers' `UNet2DConditionModel` (SD-1.x, SD-2.x, SDXL configurations), with SADA's
//! token-wise pruning in its transformer blocks.

pub mod attention;
pub mod blocks;
pub mod config;
pub mod conv;
pub mod presets;
pub mod profile;
pub mod resnet;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{group_norm, linear, GroupNorm, Linear, VarBuilder};

use self::attention::BlockTokens;
use self::blocks::{DownBlock, LevelSpec, MidBlock, TokenRouter, UpBlock};
pub use self::config::UNet2DConditionConfig;
use self::config::Resolved;
use self::resnet::{conv2d, Conv};
use crate::denoiser::{Conditioning, Denoiser};
use crate::error::{Error, Result};
use crate::models::source::ModelSource;
use crate::policy::TokenPlan;

/// diffusers' `get_timestep_embedding` (sinusoidal, max_period 10000).
pub fn timestep_embedding(timesteps: &Tensor, dim: usize, flip_sin_to_cos: bool, freq_shift: f64) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let exponent: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - freq_shift)) as f32)
        .map(f32::exp)
        .collect();
    let freqs = Tensor::new(exponent, timesteps.device())?;
    let args = timesteps.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs.unsqueeze(0)?)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos { Tensor::cat(&[cos, sin], 1)? } else { Tensor::cat(&[sin, cos], 1)? };
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// `TimestepEmbedding`: linear -> SiLU -> linear.
struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    fn new(vb: VarBuilder, cin: usize, dim: usize) -> candle_core::Result<Self> {
        Ok(Self { linear_1: linear(cin, dim, vb.pp("linear_1"))?, linear_2: linear(dim, dim, vb.pp("linear_2"))? })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

pub struct UNet2DConditionModel {
    pub config: UNet2DConditionConfig,
    resolved: Resolved,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<(TimestepEmbedding, usize, usize)>,
    conv_in: Conv,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv,
    dtype: DType,
}

impl UNet2DConditionModel {
    /// Load from a diffusers `unet/` folder (config.json + safetensors weights).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (parent, name) = match (dir.parent(), dir.file_name().and_then(|n| n.to_str())) {
            (Some(p), Some(n)) => (p.to_path_buf(), n.to_string()),
            _ => (dir.to_path_buf(), String::new()),
        };
        Self::load_from(&ModelSource::Dir(parent), &name, dtype, device)
    }

    /// Load the `component` folder (usually `unet`) of a model.
    pub fn load_from(source: &ModelSource, component: &str, dtype: DType, device: &Device) -> Result<Self> {
        let config_rel = format!("{component}/config.json");
        let config: UNet2DConditionConfig = source.read_json(&config_rel)?;
        config.resolve().map_err(|e| Error::file(source.path(&config_rel), e.to_string()))?;
        let (vb, weights_path) = source.var_builder(component, "diffusion_pytorch_model", dtype, device)?;
        Self::new(config, vb).map_err(|e| match e {
            Error::Candle(c) => Error::file(&weights_path, format!("weights do not match config.json: {c}")),
            other => other,
        })
    }

    pub fn new(config: UNet2DConditionConfig, vb: VarBuilder) -> Result<Self> {
        let r = config.resolve()?;
        let ch = &r.channels;
        let temb = ch[0] * 4;
        let spec = |level: usize| LevelSpec {
            heads: r.heads[level],
            transformer_layers: r.transformer_layers[level],
            cross_attn: r.cross_attn[level],
            context_dim: r.cross_attention_dim,
            groups: r.groups,
            eps: config.norm_eps,
            linear_projection: config.use_linear_projection,
        };
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], temb)?;
        let add_embedding = match r.text_time {
            Some((time_dim, proj_dim)) => Some((TimestepEmbedding::new(vb.pp("add_embedding"), proj_dim, temb)?, time_dim, proj_dim)),
            None => None,
        };
        let conv_in = conv2d(vb.pp("conv_in"), config.in_channels, ch[0], 3, 1, 1)?;
        let mut down = Vec::new();
        for i in 0..r.levels {
            let cin = if i == 0 { ch[0] } else { ch[i - 1] };
            down.push(DownBlock::new(vb.pp("down_blocks").pp(i), cin, ch[i], temb, r.layers_per_block[i], spec(i), i + 1 < r.levels)?);
        }
        let last = r.levels - 1;
        let mid = MidBlock::new(vb.pp("mid_block"), ch[last], temb, LevelSpec { cross_attn: true, ..spec(last) })?;
        let mut up = Vec::new();
        let mut out_ch = ch[last];
        for i in 0..r.levels {
            let level = last - i;
            let prev = out_ch;
            out_ch = ch[level];
            let cin = ch[level.saturating_sub(1)];
            up.push(UpBlock::new(vb.pp("up_blocks").pp(i), cin, out_ch, prev, temb, r.layers_per_block[level] + 1, spec(level), i < last)?);
        }
        let conv_norm_out = group_norm(r.groups, ch[0], config.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = conv2d(vb.pp("conv_out"), ch[0], config.out_channels, 3, 1, 1)?;
        Ok(Self { config, resolved: r, time_embedding, add_embedding, conv_in, down, mid, up, conv_norm_out, conv_out, dtype: vb.dtype() })
    }

    /// The raw UNet output for `sample` at `timestep` (broadcast over the batch).
    pub fn forward(
        &mut self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
        router: &mut dyn TokenRouter,
    ) -> Result<Tensor> {
        let (b, _, h, w) = sample.dims4()?;
        let device = sample.device();
        let ts = Tensor::full(timestep as f32, b, device)?;
        let t_emb = timestep_embedding(&ts, self.resolved.channels[0], self.config.flip_sin_to_cos, self.config.freq_shift)?.to_dtype(self.dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        if let (Some((add, time_dim, _)), Some((text_embeds, time_ids))) = (&self.add_embedding, added) {
            let flat = time_ids.flatten_all()?;
            let time_embeds = timestep_embedding(&flat, *time_dim, self.config.flip_sin_to_cos, self.config.freq_shift)?
                .reshape((b, ()))?
                .to_dtype(self.dtype)?;
            let add_embeds = Tensor::cat(&[&text_embeds.to_dtype(self.dtype)?, &time_embeds], 1)?;
            emb = (emb + add.forward(&add_embeds)?)?;
        }
        let context = encoder_hidden_states.to_dtype(self.dtype)?;
        let mut x = self.conv_in.forward(&sample.to_dtype(self.dtype)?)?;
        let mut skips = vec![x.clone()];
        for block in self.down.iter_mut() {
            let (h2, states) = block.forward(&x, &emb, &context, router)?;
            x = h2;
            skips.extend(states);
        }
        x = self.mid.forward(&x, &emb, &context, router)?;
        let up_factor = 1usize << (self.resolved.levels - 1);
        let odd = h % up_factor != 0 || w % up_factor != 0;
        let n_up = self.up.len();
        for (i, block) in self.up.iter_mut().enumerate() {
            let remaining = skips.len() - block.num_layers();
            // for latents not divisible by the overall factor, upsample to the skip's size
            let size = if odd && i + 1 < n_up {
                let (_, _, sh, sw) = skips[remaining - 1].dims4()?;
                Some((sh, sw))
            } else {
                None
            };
            let mut own: Vec<Tensor> = skips.split_off(remaining);
            x = block.forward(&x, &mut own, &emb, &context, router, size)?;
        }
        let x = self.conv_out.forward(&self.conv_norm_out.forward(&x)?.silu()?)?;
        Ok(x)
    }

    /// Width of the text embeddings the cross-attention expects.
    pub fn cross_attention_dim(&self) -> usize {
        self.resolved.cross_attention_dim
    }

    /// Whether the model takes SDXL's `text_embeds` and `time_ids`.
    pub fn uses_text_time(&self) -> bool {
        self.add_embedding.is_some()
    }

    fn check_inputs(&self, latents: &Tensor, cond: &Conditioning) -> Result<()> {
        let dims = latents.dims();
        let b = dims[0];
        if dims.len() != 4 || dims[1] != self.config.in_channels {
            return Err(Error::Shape {
                what: "UNet latents".into(),
                expected: format!("[batch, {}, height, width]", self.config.in_channels),
                got: format!("{dims:?}"),
            });
        }
        let ehs = cond.get("encoder_hidden_states")?;
        let d = self.resolved.cross_attention_dim;
        if ehs.rank() != 3 || ehs.dim(0)? != b || ehs.dim(2)? != d {
            return Err(Error::Shape {
                what: "encoder_hidden_states".into(),
                expected: format!("[{b}, tokens, {d}]"),
                got: format!("{:?}", ehs.dims()),
            });
        }
        if let Some((_, time_dim, proj_dim)) = &self.add_embedding {
            let (te, ti) = (cond.get("text_embeds")?, cond.get("time_ids")?);
            let ok = te.rank() == 2 && ti.rank() == 2 && te.dim(0)? == b && ti.dim(0)? == b && te.dim(1)? + ti.dim(1)? * time_dim == *proj_dim;
            if !ok {
                return Err(Error::Shape {
                    what: "text_embeds / time_ids".into(),
                    expected: format!("[{b}, P] and [{b}, K] with P + K * {time_dim} = {proj_dim}"),
                    got: format!("{:?} and {:?}", te.dims(), ti.dims()),
                });
            }
        }
        Ok(())
    }
}

/// Turns a step's token plan into per-level block instructions, once per grid size.
struct PlanRouter<'a> {
    plan: &'a TokenPlan,
    device: Device,
    cache: HashMap<(usize, usize), BlockTokens>,
}

impl TokenRouter for PlanRouter<'_> {
    fn tokens(&mut self, h: usize, w: usize) -> candle_core::Result<BlockTokens> {
        if let Some(t) = self.cache.get(&(h, w)) {
            return Ok(t.clone());
        }
        let tokens = match self.plan {
            TokenPlan::Full | TokenPlan::Refresh => BlockTokens::All,
            TokenPlan::Pruned(sel) => match sel.mask_at(h, w) {
                None => BlockTokens::All,
                Some(mask) => {
                    let idx: Vec<u32> = mask.iter().enumerate().filter(|(_, &c)| c).map(|(i, _)| i as u32).collect();
                    let n = mask.len();
                    let flags: Vec<u8> = mask.iter().map(|&c| c as u8).collect();
                    BlockTokens::Subset {
                        indices: Tensor::from_vec(idx.clone(), idx.len(), &self.device)?,
                        mask: Tensor::from_vec(flags, (1, n, 1), &self.device)?,
                    }
                }
            },
        };
        self.cache.insert((h, w), tokens.clone());
        Ok(tokens)
    }
}

impl Denoiser for UNet2DConditionModel {
    fn predict(&mut self, latents: &Tensor, timestep: f64, cond: &Conditioning, plan: &TokenPlan) -> Result<Tensor> {
        self.check_inputs(latents, cond)?;
        let ehs = cond.get("encoder_hidden_states")?;
        let added = if self.uses_text_time() { Some((cond.get("text_embeds")?, cond.get("time_ids")?)) } else { None };
        let mut router = PlanRouter { plan, device: latents.device().clone(), cache: HashMap::new() };
        Ok(self.forward(latents, timestep, ehs, added, &mut router)?.to_dtype(latents.dtype())?)
    }

    fn supports_token_pruning(&self) -> bool {
        true
    }

    fn reset(&mut self) {
        self.down.iter_mut().for_each(DownBlock::reset);
        self.mid.reset();
        self.up.iter_mut().for_each(UpBlock::reset);
    }
}
