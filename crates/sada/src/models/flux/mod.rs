//! Flux's denoiser (diffusers' `FluxTransformer2DModel`): a rectified-flow transformer over 2 x 2
//! latent patches, conditioned on T5 token embeddings (joint attention), CLIP's pooled embedding
//! and the timestep (and, for FLUX.1-dev, the guidance scale) through adaLN modulation.
//!
//! The sampler keeps latents unpacked (`[B, C, H, W]`, as for every other model); packing into
//! tokens and back happens here. Accelerators act at the same places as in the U-Net: every
//! block is a token site for its image tokens (text tokens are always computed), and the network
//! after its patch embedding and after its first block are residual sites.

pub mod blocks;
pub mod config;
pub mod embedding;
pub mod rope;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::denoiser::{Capabilities, Conditioning, Denoiser, ForwardContext, Site, SiteKind};
use crate::error::{Error, Result};
use crate::models::layers::linear::{linear, Linear};
use crate::models::ModelSource;
use blocks::{DoubleStreamBlock, Modulation, PlainLayerNorm, SingleStreamBlock};
pub use config::FluxTransformerConfig;
use embedding::TimeTextEmbedding;
use rope::Rope;

/// diffusers' `FluxTransformer2DModel`: double-stream (joint text-image) blocks, then
/// single-stream blocks, predicting the flow-matching velocity.
pub struct FluxTransformer2DModel {
    /// The configuration it was built from.
    pub config: FluxTransformerConfig,
    x_embedder: Linear,
    context_embedder: Linear,
    time_text_embed: TimeTextEmbedding,
    double: Vec<DoubleStreamBlock>,
    single: Vec<SingleStreamBlock>,
    norm_out: Modulation,
    norm: PlainLayerNorm,
    proj_out: Linear,
    dtype: DType,
}

/// `[B, C, H, W]` latents -> `[B, H/2 * W/2, 4C]` tokens, each a 2 x 2 patch (channel-major), as
/// diffusers' `FluxPipeline._pack_latents`.
pub fn pack_latents(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h / 2, 2, w / 2, 2))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b, (h / 2) * (w / 2), c * 4))
}

/// The inverse of [`pack_latents`] for an `h x w` latent.
pub fn unpack_latents(x: &Tensor, h: usize, w: usize) -> candle_core::Result<Tensor> {
    let (b, _, c4) = x.dims3()?;
    x.reshape((b, h / 2, w / 2, c4 / 4, 2, 2))?.permute((0, 3, 1, 4, 2, 5))?.reshape((b, c4 / 4, h, w))
}

/// One block of either stream on (image tokens, text tokens, `temb`, rotary positions).
type BlockFn<'a> = dyn Fn(&Tensor, &Tensor, &Tensor, &Rope) -> candle_core::Result<(Tensor, Tensor)> + 'a;

impl FluxTransformer2DModel {
    /// Load from a diffusers `transformer/` folder (config.json + safetensors, sharded or not).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (source, component) = ModelSource::component_dir(dir);
        Self::load_from(&source, &component, dtype, device)
    }

    /// Load the `component` folder (usually `transformer`) of a model.
    pub fn load_from(source: &ModelSource, component: &str, dtype: DType, device: &Device) -> Result<Self> {
        let config = Self::read_config(source, component)?;
        let (vb, weights_path) = source.var_builder(component, "diffusion_pytorch_model", dtype, device)?;
        Self::new(config, vb).map_err(|e| match e {
            Error::Candle(c) => Error::file(&weights_path, format!("weights do not match config.json: {c}")),
            other => other,
        })
    }

    /// The `component` folder's config.json, checked against what this implementation builds.
    pub fn read_config(source: &ModelSource, component: &str) -> Result<FluxTransformerConfig> {
        let config_rel = format!("{component}/config.json");
        let config: FluxTransformerConfig = source.read_json(&config_rel)?;
        config.validate().map_err(|msg| Error::file(source.path(&config_rel), format!("unsupported config: {msg}")))?;
        Ok(config)
    }

    /// Build from a configuration and weights in diffusers' key layout.
    pub fn new(config: FluxTransformerConfig, vb: VarBuilder) -> Result<Self> {
        config.validate().map_err(|msg| Error::unsupported("transformer config", msg, "a FLUX.1-style transformer"))?;
        let dim = config.inner_dim();
        let (heads, head_dim) = (config.num_attention_heads, config.attention_head_dim);
        let double = (0..config.num_layers)
            .map(|i| DoubleStreamBlock::new(vb.pp("transformer_blocks").pp(i), dim, heads, head_dim))
            .collect::<candle_core::Result<_>>()?;
        let single = (0..config.num_single_layers)
            .map(|i| SingleStreamBlock::new(vb.pp("single_transformer_blocks").pp(i), dim, heads, head_dim))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            x_embedder: linear(config.in_channels, dim, vb.pp("x_embedder"))?,
            context_embedder: linear(config.joint_attention_dim, dim, vb.pp("context_embedder"))?,
            time_text_embed: TimeTextEmbedding::new(vb.pp("time_text_embed"), dim, config.pooled_projection_dim, config.guidance_embeds)?,
            double,
            single,
            norm_out: Modulation::new(vb.pp("norm_out").pp("linear"), dim, 2)?,
            norm: PlainLayerNorm::new(dim, vb.dtype(), vb.device())?,
            proj_out: linear(dim, config.in_channels, vb.pp("proj_out"))?,
            dtype: vb.dtype(),
            config,
        })
    }

    /// Whether the network takes the guidance scale as an input (FLUX.1-dev).
    pub fn guidance_embeds(&self) -> bool {
        self.config.guidance_embeds
    }

    /// The velocity for unpacked `latents` `[B, C, H, W]` at `timestep` (the scheduler's, in
    /// [0, 1000]), T5 token embeddings `encoder_hidden_states` `[B, T, joint_attention_dim]`,
    /// CLIP's `pooled_projections` `[B, pooled_projection_dim]` and, for dev, `guidance` `[B]`.
    pub fn forward(
        &self,
        latents: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        pooled: &Tensor,
        guidance: Option<&Tensor>,
        ctx: &mut ForwardContext,
    ) -> Result<Tensor> {
        let (b, _, h, w) = latents.dims4()?;
        let device = latents.device();
        // the pipeline hands the network t / 1000 in the latents' dtype and the network scales it
        // back; doing both in f32 keeps diffusers' rounding
        let t = ((timestep as f32) / 1000.0) * 1000.0;
        let temb = self
            .time_text_embed
            .forward(&Tensor::full(t, b, device)?, guidance.map(|g| g.affine(1000.0, 0.0)).transpose()?.as_ref(), pooled)?
            .to_dtype(self.dtype)?;
        let img = self.x_embedder.forward(&pack_latents(&latents.to_dtype(self.dtype)?)?)?;
        let txt = self.context_embedder.forward(&encoder_hidden_states.to_dtype(self.dtype)?)?;
        let text_len = txt.dim(1)?;
        let grid = (h / 2, w / 2);
        let rope = Rope::flux(text_len, grid.0, grid.1, &self.config.axes_dims_rope, device)?;
        let step = Step { temb: &temb, rope: &rope, grid };

        // TeaCache's signal: the first block's modulated image input, only when asked for
        let probe = match self.double.first() {
            Some(first) if ctx.uses(SiteKind::Rest(0)) => Some(first.modulated_input(&img, &temb)?),
            _ => None,
        };
        let img = ctx.branch(Site::new(SiteKind::Rest(0), &img, probe.as_ref()), |ctx| {
            let Some((first, _)) = self.double.split_first().filter(|_| ctx.uses(SiteKind::Rest(1))) else {
                return self.blocks(0, img.clone(), txt.clone(), &step, ctx);
            };
            // the first block runs outside the site: its image residual is the site's signal
            let (txt1, img1) = first.forward(&img, &txt, &temb, &rope)?;
            let probe = (&img1 - &img)?;
            ctx.branch(Site::new(SiteKind::Rest(1), &img1, Some(&probe)), |ctx| self.blocks(1, img1.clone(), txt1.clone(), &step, ctx))
        })?;
        let m = self.norm_out.forward(&temb)?;
        let out = self.proj_out.forward(&self.norm.modulate(&img, &m[1], &m[0])?)?;
        Ok(unpack_latents(&out, h, w)?)
    }

    /// The image tokens after every block from block `from` on (double-stream blocks first).
    fn blocks(&self, from: usize, mut img: Tensor, mut txt: Tensor, step: &Step, ctx: &mut ForwardContext) -> Result<Tensor> {
        let n_double = self.double.len();
        for i in from..n_double + self.single.len() {
            let (name, run): (String, &BlockFn) = if i < n_double {
                (format!("transformer_blocks.{i}"), &|a, b, c, d| self.double[i].forward(a, b, c, d))
            } else {
                (format!("single_transformer_blocks.{}", i - n_double), &|a, b, c, d| self.single[i - n_double].forward(a, b, c, d))
            };
            let mut txt_out = None;
            let text_len = txt.dim(1)?;
            img = ctx.token_site_indexed(&name, step.grid, &img, |x, indices| {
                let rope = step.rope.select(text_len, indices)?;
                let (t, i) = run(x, &txt, step.temb, &rope)?;
                txt_out = Some(t);
                Ok(i)
            })?;
            txt = txt_out.ok_or_else(|| Error::internal(format!("{name} did not run")))?;
        }
        Ok(img)
    }

    pub(crate) fn check_inputs(&self, latents: &Tensor, cond: &Conditioning) -> Result<()> {
        let dims = latents.dims();
        let c = self.config.latent_channels();
        if dims.len() != 4 || dims[1] != c || !dims[2].is_multiple_of(2) || !dims[3].is_multiple_of(2) || dims[2] == 0 || dims[3] == 0 {
            return Err(Error::Shape {
                what: "Flux latents".into(),
                expected: format!("[batch, {c}, height, width] with even height and width"),
                got: format!("{dims:?}"),
            });
        }
        let b = dims[0];
        let ehs = cond.get("encoder_hidden_states")?;
        let d = self.config.joint_attention_dim;
        if ehs.rank() != 3 || ehs.dim(0)? != b || ehs.dim(2)? != d || ehs.dim(1)? == 0 {
            return Err(Error::Shape {
                what: "encoder_hidden_states (prompt_embeds)".into(),
                expected: format!("[{b}, tokens, {d}]"),
                got: format!("{:?}", ehs.dims()),
            });
        }
        let pooled = cond.get("pooled_projections")?;
        let p = self.config.pooled_projection_dim;
        if pooled.dims() != [b, p] {
            return Err(Error::Shape {
                what: "pooled_projections (pooled_prompt_embeds)".into(),
                expected: format!("[{b}, {p}]"),
                got: format!("{:?}", pooled.dims()),
            });
        }
        if self.guidance_embeds() {
            let g = cond.get("guidance")?;
            if g.dims() != [b] {
                return Err(Error::Shape { what: "guidance".into(), expected: format!("[{b}]"), got: format!("{:?}", g.dims()) });
            }
        }
        Ok(())
    }
}

/// What every block of one forward pass reads besides its tokens.
struct Step<'a> {
    temb: &'a Tensor,
    rope: &'a Rope,
    grid: (usize, usize),
}

impl Denoiser for FluxTransformer2DModel {
    fn capabilities(&self) -> Capabilities {
        self.config.capabilities()
    }

    fn predict(&self, latents: &Tensor, timestep: f64, cond: &Conditioning, ctx: &mut ForwardContext) -> Result<Tensor> {
        self.check_inputs(latents, cond)?;
        let guidance = if self.guidance_embeds() { Some(cond.get("guidance")?) } else { None };
        let out = self.forward(latents, timestep, cond.get("encoder_hidden_states")?, cond.get("pooled_projections")?, guidance, ctx)?;
        Ok(out.to_dtype(latents.dtype())?)
    }
}
