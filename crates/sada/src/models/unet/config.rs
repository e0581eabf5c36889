//! `unet/config.json` of diffusers' `UNet2DConditionModel`, with its defaults.

use serde::Deserialize;

use crate::error::{Error, Result};

/// An int or a per-level list, as several diffusers keys allow.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerLevel {
    /// One value for every level.
    One(usize),
    /// One value per level (per entry of `block_out_channels`).
    Each(Vec<usize>),
}

impl PerLevel {
    /// The values of `n` levels; a list of another length is an error naming config key `key`.
    pub fn levels(&self, key: &str, n: usize) -> Result<Vec<usize>> {
        match self {
            PerLevel::One(v) => Ok(vec![*v; n]),
            PerLevel::Each(v) if v.len() == n => Ok(v.clone()),
            PerLevel::Each(v) => Err(Error::unsupported(key, format!("{v:?}"), format!("expected one value or {n} (one per level)"))),
        }
    }
}

/// diffusers' `UNet2DConditionModel` configuration; keys the file leaves out take diffusers'
/// defaults, and [`resolve`](Self::resolve) refuses the values this implementation cannot build.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    /// Latent size the model was trained at; times the VAE factor, the pipelines' default image
    /// size (default null: 64 is assumed).
    pub sample_size: Option<serde_json::Value>,
    /// Channels of the input latent (default 4).
    pub in_channels: usize,
    /// Channels of the output (default 4).
    pub out_channels: usize,
    /// Whether the input is mapped to `2 * x - 1` first; only false (the default) is supported.
    pub center_input_sample: bool,
    /// Whether the sinusoidal timestep embedding puts cos before sin (default true).
    pub flip_sin_to_cos: bool,
    /// The sinusoidal timestep embedding's frequency shift (default 0).
    pub freq_shift: f64,
    /// Block type per level, finest first: `CrossAttnDownBlock2D` or `DownBlock2D` (default three
    /// cross-attention levels, then one without).
    pub down_block_types: Vec<String>,
    /// The mid block; only `UNetMidBlock2DCrossAttn` (the default) is supported.
    pub mid_block_type: Option<String>,
    /// Block type per level, coarsest first, mirroring `down_block_types`: `CrossAttnUpBlock2D` or
    /// `UpBlock2D`.
    pub up_block_types: Vec<String>,
    /// Whether transformer blocks drop self-attention (a bool or one per level); only false or null
    /// (the default) is supported.
    pub only_cross_attention: serde_json::Value,
    /// Channels of each level, finest first (default `[320, 640, 1280, 1280]`).
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks (each with a transformer at cross-attention levels) per down block; up blocks
    /// have one more (default 2).
    pub layers_per_block: PerLevel,
    /// Padding of the downsamplers' convolutions; only 1 (the default) is supported.
    pub downsample_padding: f64,
    /// Output scale of the mid block's ResNets; only 1 (the default) is supported.
    pub mid_block_scale_factor: f64,
    /// Activation of the ResNet blocks; only `silu` (the default) is supported.
    pub act_fn: String,
    /// GroupNorm groups, dividing every entry of `block_out_channels` (default 32; null is
    /// refused).
    pub norm_num_groups: Option<usize>,
    /// Epsilon of the ResNet blocks' GroupNorms and `conv_norm_out` (default 1e-5).
    pub norm_eps: f64,
    /// Width of the text embeddings cross-attention reads, the same at every level (default 1280).
    pub cross_attention_dim: PerLevel,
    /// `BasicTransformerBlock`s per transformer, per level (default 1; SDXL: `[1, 2, 10]`).
    pub transformer_layers_per_block: PerLevel,
    /// Transformer depths of the up path where they differ from the down path's; only null (the
    /// default) is supported.
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Width the text embeddings are projected from before cross-attention; only null (the default)
    /// is supported.
    pub encoder_hid_dim: Option<usize>,
    /// Attention heads per level when `num_attention_heads` is null: despite its name, diffusers
    /// reads it as a head count (default 8).
    pub attention_head_dim: PerLevel,
    /// Attention heads per level; when null (the default), `attention_head_dim` gives them.
    pub num_attention_heads: Option<PerLevel>,
    /// Whether the transformers run two cross-attentions; only false (the default) is supported.
    pub dual_cross_attention: bool,
    /// Whether the transformers' `proj_in` and `proj_out` are linear layers (SD-2, SDXL) rather
    /// than 1x1 convolutions (default false).
    pub use_linear_projection: bool,
    /// A class embedding added to the timestep embedding; only null (the default) is supported.
    pub class_embed_type: Option<String>,
    /// Extra conditioning added to the timestep embedding: null (the default) or `text_time`
    /// (SDXL's pooled text embedding and size conditioning).
    pub addition_embed_type: Option<String>,
    /// With `text_time`: width of the sinusoidal embedding of each `time_ids` entry (SDXL: 256).
    pub addition_time_embed_dim: Option<usize>,
    /// Classes of a class embedding; only null (the default) is supported.
    pub num_class_embeds: Option<usize>,
    /// Whether attention runs in float32 (SD-2.1); attention here always does, so either value is
    /// accepted (default false).
    pub upcast_attention: bool,
    /// How the ResNet blocks apply the timestep embedding; only `default` (added) is supported.
    pub resnet_time_scale_shift: String,
    /// The timestep embedding; only `positional` (sinusoidal, the default) is supported.
    pub time_embedding_type: String,
    /// Width of an extra timestep condition (the guidance embedding of LCM-distilled models); only
    /// null (the default) is supported.
    pub time_cond_proj_dim: Option<usize>,
    /// Kernel size of `conv_in`; only 3 (the default) is supported.
    pub conv_in_kernel: usize,
    /// Kernel size of `conv_out`; only 3 (the default) is supported.
    pub conv_out_kernel: usize,
    /// With `text_time`: input width of `add_embedding`, the pooled text embedding plus the
    /// embedded `time_ids` (SDXL: 2816).
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Attention variant; only `default` (or null, the default) is supported.
    pub attention_type: Option<String>,
    /// Whether a class embedding is concatenated to the timestep embedding instead of added; only
    /// false (the default) is supported.
    pub class_embeddings_concat: bool,
    /// Normalisation of the cross-attention context; only null (the default) is supported.
    pub cross_attention_norm: Option<String>,
    /// Heads of the `text` addition embedding's attention pooling; ignored (`text_time` has none).
    pub addition_embed_type_num_heads: Option<usize>,
    /// Width of the timestep embedding when not 4 x `block_out_channels[0]`; only null (the
    /// default) is supported.
    pub time_embedding_dim: Option<usize>,
    /// Activation applied to the timestep embedding before the blocks; only null (the default) is
    /// supported.
    pub time_embedding_act_fn: Option<String>,
    /// Activation after `time_embedding`'s second linear layer; only null (the default) is
    /// supported.
    pub timestep_post_act: Option<String>,
    /// The kind of `encoder_hid_dim` projection; only null (the default) is supported.
    pub encoder_hid_dim_type: Option<String>,
    /// Whether the ResNet blocks skip the SiLU before `time_emb_proj`; only false (the default) is
    /// supported.
    pub resnet_skip_time_act: bool,
    /// Divisor of the ResNet blocks' output; only 1.0 (the default) is supported.
    pub resnet_out_scale_factor: f64,
}

impl Default for UNet2DConditionConfig {
    /// diffusers' `UNet2DConditionModel` constructor defaults.
    fn default() -> Self {
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"].map(String::from).to_vec(),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"].map(String::from).to_vec(),
            only_cross_attention: serde_json::Value::Null,
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerLevel::One(2),
            downsample_padding: 1.0,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerLevel::One(1280),
            transformer_layers_per_block: PerLevel::One(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            attention_head_dim: PerLevel::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            time_embedding_type: "positional".into(),
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            projection_class_embeddings_input_dim: None,
            attention_type: None,
            class_embeddings_concat: false,
            cross_attention_norm: None,
            addition_embed_type_num_heads: None,
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            encoder_hid_dim_type: None,
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
        }
    }
}

/// The same configuration resolved per level, after every unsupported value has been refused.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Number of levels (entries of `block_out_channels`).
    pub levels: usize,
    /// Channels per level, finest first (`block_out_channels`).
    pub channels: Vec<usize>,
    /// Whether each level's blocks have transformers (the cross-attention block types).
    pub cross_attn: Vec<bool>,
    /// ResNet blocks per down block, per level (each at least 1).
    pub layers_per_block: Vec<usize>,
    /// `BasicTransformerBlock`s per transformer, per level.
    pub transformer_layers: Vec<usize>,
    /// Attention heads per level (diffusers' `attention_head_dim` really counts heads).
    pub heads: Vec<usize>,
    /// Width of the text embeddings cross-attention reads (the same at every level).
    pub cross_attention_dim: usize,
    /// GroupNorm groups (`norm_num_groups`).
    pub groups: usize,
    /// (addition_time_embed_dim, projection_class_embeddings_input_dim) for SDXL's text_time.
    pub text_time: Option<(usize, usize)>,
}

impl UNet2DConditionConfig {
    /// Check every value against what this implementation builds and resolve the per-level ones; an
    /// error names the first unsupported key.
    pub fn resolve(&self) -> Result<Resolved> {
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return Err(Error::unsupported("block_out_channels", "[]", "expected at least one level"));
        }
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return Err(Error::unsupported(
                "down_block_types",
                format!("{} down / {} up", self.down_block_types.len(), self.up_block_types.len()),
                format!("expected one down and one up block per entry of block_out_channels ({levels})"),
            ));
        }
        let mut cross_attn = Vec::with_capacity(levels);
        for t in &self.down_block_types {
            cross_attn.push(match t.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => return Err(Error::unsupported("down_block_types", other, "expected CrossAttnDownBlock2D or DownBlock2D")),
            });
        }
        for (i, t) in self.up_block_types.iter().enumerate() {
            let want = if cross_attn[levels - 1 - i] { "CrossAttnUpBlock2D" } else { "UpBlock2D" };
            if t != want {
                return Err(Error::unsupported("up_block_types", t, format!("expected {want} to mirror down block {}", levels - 1 - i)));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            other => return Err(Error::unsupported("mid_block_type", format!("{other:?}"), "only UNetMidBlock2DCrossAttn is supported")),
        }
        let unsupported_bool = [
            ("center_input_sample", self.center_input_sample),
            ("dual_cross_attention", self.dual_cross_attention),
            ("class_embeddings_concat", self.class_embeddings_concat),
            ("resnet_skip_time_act", self.resnet_skip_time_act),
        ];
        for (k, v) in unsupported_bool {
            if v {
                return Err(Error::unsupported(k, true, "only false is supported"));
            }
        }
        if !matches!(self.only_cross_attention, serde_json::Value::Null | serde_json::Value::Bool(false)) {
            return Err(Error::unsupported("only_cross_attention", &self.only_cross_attention, "only false is supported"));
        }
        let unsupported_opt: [(&str, Option<String>); 10] = [
            ("class_embed_type", self.class_embed_type.clone()),
            ("encoder_hid_dim", self.encoder_hid_dim.map(|v| v.to_string())),
            ("num_class_embeds", self.num_class_embeds.map(|v| v.to_string())),
            ("time_cond_proj_dim", self.time_cond_proj_dim.map(|v| v.to_string())),
            ("cross_attention_norm", self.cross_attention_norm.clone()),
            ("reverse_transformer_layers_per_block", self.reverse_transformer_layers_per_block.as_ref().map(|v| v.to_string())),
            ("time_embedding_dim", self.time_embedding_dim.map(|v| v.to_string())),
            ("time_embedding_act_fn", self.time_embedding_act_fn.clone()),
            ("timestep_post_act", self.timestep_post_act.clone()),
            ("encoder_hid_dim_type", self.encoder_hid_dim_type.clone()),
        ];
        for (k, v) in unsupported_opt {
            if let Some(v) = v {
                return Err(Error::unsupported(k, v, "only null is supported"));
            }
        }
        let checks = [
            ("act_fn", self.act_fn.as_str(), "silu"),
            ("resnet_time_scale_shift", self.resnet_time_scale_shift.as_str(), "default"),
            ("time_embedding_type", self.time_embedding_type.as_str(), "positional"),
            ("attention_type", self.attention_type.as_deref().unwrap_or("default"), "default"),
        ];
        for (k, v, want) in checks {
            if v != want {
                return Err(Error::unsupported(k, v, format!("only {want} is supported")));
            }
        }
        if self.resnet_out_scale_factor != 1.0 {
            return Err(Error::unsupported("resnet_out_scale_factor", self.resnet_out_scale_factor, "only 1.0 is supported"));
        }
        if self.conv_in_kernel != 3 || self.conv_out_kernel != 3 {
            return Err(Error::unsupported("conv_in_kernel", self.conv_in_kernel, "only 3 x 3 conv_in/conv_out are supported"));
        }
        if self.downsample_padding != 1.0 || self.mid_block_scale_factor != 1.0 {
            return Err(Error::unsupported(
                "downsample_padding",
                self.downsample_padding,
                "only downsample_padding 1 and mid_block_scale_factor 1 are supported",
            ));
        }
        for (k, v) in [("in_channels", self.in_channels), ("out_channels", self.out_channels)] {
            if v == 0 {
                return Err(Error::unsupported(k, 0, "must be at least 1"));
            }
        }
        if let Some(c) = self.block_out_channels.iter().find(|&&c| c == 0) {
            return Err(Error::unsupported("block_out_channels", c, "every level needs at least 1 channel"));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(Error::unsupported("norm_eps", self.norm_eps, "must be a positive number"));
        }
        let groups = self.norm_num_groups.ok_or_else(|| Error::unsupported("norm_num_groups", "null", "expected a group count"))?;
        if groups == 0 {
            return Err(Error::unsupported("norm_num_groups", 0, "must be at least 1"));
        }
        for &c in &self.block_out_channels {
            if c % groups != 0 {
                return Err(Error::unsupported("norm_num_groups", groups, format!("must divide every block_out_channels entry ({c})")));
            }
        }
        let heads = match &self.num_attention_heads {
            Some(h) => h.levels("num_attention_heads", levels)?,
            None => self.attention_head_dim.levels("attention_head_dim", levels)?,
        };
        for (i, (&h, &c)) in heads.iter().zip(&self.block_out_channels).enumerate() {
            if h == 0 || c % h != 0 {
                return Err(Error::unsupported("attention_head_dim", h, format!("heads must divide the {c} channels of level {i}")));
            }
        }
        let cross: Vec<usize> = self.cross_attention_dim.levels("cross_attention_dim", levels)?;
        if cross.contains(&0) {
            return Err(Error::unsupported("cross_attention_dim", 0, "must be at least 1"));
        }
        if cross.iter().any(|&c| c != cross[0]) {
            return Err(Error::unsupported("cross_attention_dim", format!("{cross:?}"), "per-level cross_attention_dim is not supported"));
        }
        let text_time = match self.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => Some((
                self.addition_time_embed_dim
                    .ok_or_else(|| Error::unsupported("addition_time_embed_dim", "null", "required with addition_embed_type text_time"))?,
                self.projection_class_embeddings_input_dim
                    .ok_or_else(|| Error::unsupported("projection_class_embeddings_input_dim", "null", "required with addition_embed_type text_time"))?,
            )),
            Some(other) => return Err(Error::unsupported("addition_embed_type", other, "only null or text_time are supported")),
        };
        Ok(Resolved {
            levels,
            channels: self.block_out_channels.clone(),
            cross_attn,
            layers_per_block: {
                let l = self.layers_per_block.levels("layers_per_block", levels)?;
                if l.contains(&0) {
                    return Err(Error::unsupported("layers_per_block", format!("{l:?}"), "every level needs at least 1 layer"));
                }
                l
            },
            transformer_layers: self.transformer_layers_per_block.levels("transformer_layers_per_block", levels)?,
            heads,
            cross_attention_dim: cross[0],
            groups,
            text_time,
        })
    }
}
