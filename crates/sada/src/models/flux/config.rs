//! `transformer/config.json` of diffusers' `FluxTransformer2DModel`, with its defaults (those of
//! FLUX.1: 19 double-stream and 38 single-stream blocks, 24 heads of 128 channels).

use serde::Deserialize;

/// diffusers' `FluxTransformer2DModel` configuration; keys the file leaves out take FLUX.1's
/// values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct FluxTransformerConfig {
    /// Patch size of the embedding; only 1 (the default) is supported, the 2 x 2 packing being done
    /// outside.
    pub patch_size: usize,
    /// Channels of a packed token: the latent's channels times the 2 x 2 patch.
    pub in_channels: usize,
    /// Channels of an output token: null (the default) or `in_channels`.
    pub out_channels: Option<usize>,
    /// Double-stream blocks (default 19).
    pub num_layers: usize,
    /// Single-stream blocks (default 38).
    pub num_single_layers: usize,
    /// Channels per attention head (default 128).
    pub attention_head_dim: usize,
    /// Attention heads; times `attention_head_dim`, the width of the token stream (default 24).
    pub num_attention_heads: usize,
    /// Width of the T5 text embeddings `context_embedder` projects (default 4096).
    pub joint_attention_dim: usize,
    /// Width of CLIP's pooled text embedding (default 768).
    pub pooled_projection_dim: usize,
    /// FLUX.1-dev: the guidance scale is an input of the network (distilled guidance).
    pub guidance_embeds: bool,
    /// Rotary dimensions per position axis (text index, image row, image column).
    pub axes_dims_rope: Vec<usize>,
}

impl Default for FluxTransformerConfig {
    fn default() -> Self {
        Self {
            patch_size: 1,
            in_channels: 64,
            out_channels: None,
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: false,
            axes_dims_rope: vec![16, 56, 56],
        }
    }
}

impl FluxTransformerConfig {
    /// Width of the token stream.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Channels of the unpacked latent the sampler holds.
    pub fn latent_channels(&self) -> usize {
        self.in_channels / 4
    }

    /// A generous estimate of one forward pass's activation memory in bytes for `batch` latents
    /// of `h x w` with `text_len` text tokens: the token stream, the widest intermediate (the
    /// single block's attention + MLP concatenation) twice over, and the attention's tiles.
    pub fn activation_bytes(&self, batch: usize, h: usize, w: usize, text_len: usize) -> u128 {
        let tokens = (h as u128 / 2) * (w as u128 / 2) + text_len as u128;
        let dim = self.inner_dim() as u128;
        let per_token = dim.saturating_mul(4 + 2 * 5 + 4);
        tokens.saturating_mul(per_token).saturating_add(16 << 20).saturating_mul(batch as u128).saturating_mul(4)
    }

    /// What accelerators may do inside the network this configuration builds (the residual
    /// sites and the input probe are in the double-stream blocks).
    pub fn capabilities(&self) -> crate::denoiser::Capabilities {
        let double = self.num_layers > 0;
        crate::denoiser::Capabilities { token_pruning: true, deep_branches: 0, residual_sites: double, token_patch: 2, input_probe: double }
    }

    /// What this implementation can build.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.patch_size != 1 {
            return Err(format!(
                "`patch_size` = {}: only 1 is supported (the 2 x 2 packing is done outside the patch embedding, as in FLUX.1)",
                self.patch_size
            ));
        }
        if self.in_channels == 0 || !self.in_channels.is_multiple_of(4) {
            return Err(format!("`in_channels` = {} must be a positive multiple of 4 (latent channels x 2 x 2 patch)", self.in_channels));
        }
        if let Some(o) = self.out_channels.filter(|&o| o != self.in_channels) {
            return Err(format!("`out_channels` = {o} differs from `in_channels` = {}; the sampler needs the output shaped as its input", self.in_channels));
        }
        if self.num_attention_heads == 0 || self.attention_head_dim == 0 || !self.attention_head_dim.is_multiple_of(2) {
            return Err(format!(
                "`num_attention_heads` = {} and `attention_head_dim` = {} must be positive, the head dimension even",
                self.num_attention_heads, self.attention_head_dim
            ));
        }
        if self.axes_dims_rope.is_empty()
            || self.axes_dims_rope.iter().any(|d| d % 2 != 0)
            || self.axes_dims_rope.iter().sum::<usize>() != self.attention_head_dim
        {
            return Err(format!(
                "`axes_dims_rope` = {:?} must be even sizes adding up to `attention_head_dim` = {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        if self.axes_dims_rope.len() != 3 {
            return Err(format!("`axes_dims_rope` = {:?}: three axes (text, row, column) are expected", self.axes_dims_rope));
        }
        if self.joint_attention_dim == 0 || self.pooled_projection_dim == 0 {
            return Err("`joint_attention_dim` and `pooled_projection_dim` must be positive".into());
        }
        let blocks = self.num_layers + self.num_single_layers;
        if blocks == 0 || blocks > 1000 {
            return Err(format!("{blocks} transformer blocks: expected 1 to 1000"));
        }
        Ok(())
    }
}
