//! `unet/config.json` of diffusers' `UNet2DConditionModel`, with its defaults.

use serde::Deserialize;

use crate::error::{Error, Result};

/// An int or a per-level list, as several diffusers keys allow.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerLevel {
    One(usize),
    Each(Vec<usize>),
}

impl PerLevel {
    pub fn levels(&self, key: &str, n: usize) -> Result<Vec<usize>> {
        match self {
            PerLevel::One(v) => Ok(vec![*v; n]),
            PerLevel::Each(v) if v.len() == n => Ok(v.clone()),
            PerLevel::Each(v) => Err(Error::unsupported(key, format!("{v:?}"), format!("expected one value or {n} (one per level)"))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct UNet2DConditionConfig {
    #[serde(default)]
    pub sample_size: Option<serde_json::Value>,
    #[serde(default = "crate::defaults::usize::<4>")]
    pub in_channels: usize,
    #[serde(default = "crate::defaults::usize::<4>")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "crate::defaults::yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "default_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "default_up")]
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default = "default_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "two_levels")]
    pub layers_per_block: PerLevel,
    #[serde(default = "crate::defaults::one_f64")]
    pub downsample_padding: f64,
    #[serde(default = "crate::defaults::one_f64")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "eps")]
    pub norm_eps: f64,
    #[serde(default = "cross_dim")]
    pub cross_attention_dim: PerLevel,
    #[serde(default = "one_level")]
    pub transformer_layers_per_block: PerLevel,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default = "eight_levels")]
    pub attention_head_dim: PerLevel,
    #[serde(default)]
    pub num_attention_heads: Option<PerLevel>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "crate::defaults::usize::<3>")]
    pub conv_in_kernel: usize,
    #[serde(default = "crate::defaults::usize::<3>")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub attention_type: Option<String>,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    #[serde(default)]
    pub addition_embed_type_num_heads: Option<usize>,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "crate::defaults::one_f64")]
    pub resnet_out_scale_factor: f64,
}

fn eps() -> f64 {
    1e-5
}
fn thirty_two() -> Option<usize> {
    Some(32)
}
fn silu() -> String {
    "silu".into()
}
fn default_shift() -> String {
    "default".into()
}
fn positional() -> String {
    "positional".into()
}
fn default_down() -> Vec<String> {
    ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"].map(String::from).to_vec()
}
fn default_up() -> Vec<String> {
    ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"].map(String::from).to_vec()
}
fn default_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn two_levels() -> PerLevel {
    PerLevel::One(2)
}
fn one_level() -> PerLevel {
    PerLevel::One(1)
}
fn eight_levels() -> PerLevel {
    PerLevel::One(8)
}
fn cross_dim() -> PerLevel {
    PerLevel::One(1280)
}

/// The same configuration resolved per level, after every unsupported value has been refused.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub levels: usize,
    pub channels: Vec<usize>,
    pub cross_attn: Vec<bool>,
    pub layers_per_block: Vec<usize>,
    pub transformer_layers: Vec<usize>,
    /// Attention heads per level (diffusers' `attention_head_dim` really counts heads).
    pub heads: Vec<usize>,
    pub cross_attention_dim: usize,
    pub groups: usize,
    /// (addition_time_embed_dim, projection_class_embeddings_input_dim) for SDXL's text_time.
    pub text_time: Option<(usize, usize)>,
}

impl UNet2DConditionConfig {
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
            return Err(Error::unsupported("downsample_padding", self.downsample_padding, "only downsample_padding 1 and mid_block_scale_factor 1 are supported"));
        }
        let groups = self.norm_num_groups.ok_or_else(|| Error::unsupported("norm_num_groups", "null", "expected a group count"))?;
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
        if cross.iter().any(|&c| c != cross[0]) {
            return Err(Error::unsupported("cross_attention_dim", format!("{cross:?}"), "per-level cross_attention_dim is not supported"));
        }
        let text_time = match self.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => Some((
                self.addition_time_embed_dim.ok_or_else(|| Error::unsupported("addition_time_embed_dim", "null", "required with addition_embed_type text_time"))?,
                self.projection_class_embeddings_input_dim
                    .ok_or_else(|| Error::unsupported("projection_class_embeddings_input_dim", "null", "required with addition_embed_type text_time"))?,
            )),
            Some(other) => return Err(Error::unsupported("addition_embed_type", other, "only null or text_time are supported")),
        };
        Ok(Resolved {
            levels,
            channels: self.block_out_channels.clone(),
            cross_attn,
            layers_per_block: self.layers_per_block.levels("layers_per_block", levels)?,
            transformer_layers: self.transformer_layers_per_block.levels("transformer_layers_per_block", levels)?,
            heads,
            cross_attention_dim: cross[0],
            groups,
            text_time,
        })
    }
}
