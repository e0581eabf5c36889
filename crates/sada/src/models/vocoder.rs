//! HiFi-GAN, as transformers' `SpeechT5HifiGan` (the `vocoder/` of MusicLDM and AudioLDM): a
//! log-mel spectrogram `[B, frames, mels]` to a waveform `[B, frames x prod(upsample_rates)]`.
//!
//! A 7-tap convolution into `upsample_initial_channel` channels; per upsampling stage a leaky
//! ReLU, a transposed convolution (stride = the rate, halving the channels) and the mean of one
//! multi-receptive-field residual block per kernel size (each: pairs of a dilated and a plain
//! convolution, leaky ReLUs before each, the input added back); then a leaky ReLU with PyTorch's
//! default slope 0.01 (not the config's, as transformers has it), a 7-tap convolution to one
//! channel and tanh. With `normalize_before` the spectrogram is first standardised by the
//! checkpoint's `mean` and `scale` buffers.

use candle_core::{DType, Device, Tensor};
use candle_nn::ops::leaky_relu;
use candle_nn::{Conv1d, Conv1dConfig, ConvTranspose1d, ConvTranspose1dConfig, Module, VarBuilder};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::ModelSource;

fn slope() -> f64 {
    0.1
}

fn yes() -> bool {
    true
}

/// `SpeechT5HifiGanConfig`'s fields (transformers' defaults where the file omits them).
#[derive(Debug, Clone, Deserialize)]
pub struct HifiGanConfig {
    /// Mel bins of the input spectrogram.
    pub model_in_dim: usize,
    /// Samples per second of the waveform.
    pub sampling_rate: usize,
    /// Channels after the first convolution; each upsampling stage halves them.
    pub upsample_initial_channel: usize,
    /// Waveform samples per input frame, per stage.
    pub upsample_rates: Vec<usize>,
    /// Kernel size of each stage's transposed convolution.
    pub upsample_kernel_sizes: Vec<usize>,
    /// Kernel size of each residual block (one block of each per stage).
    pub resblock_kernel_sizes: Vec<usize>,
    /// Dilations of each residual block's convolution pairs.
    pub resblock_dilation_sizes: Vec<Vec<usize>>,
    /// Negative slope of the leaky ReLUs (all but the last).
    #[serde(default = "slope")]
    pub leaky_relu_slope: f64,
    /// Standardise the spectrogram by the `mean` and `scale` buffers first.
    #[serde(default = "yes")]
    pub normalize_before: bool,
}

impl HifiGanConfig {
    /// What this implementation builds; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.model_in_dim == 0 || self.sampling_rate == 0 {
            return Err("`model_in_dim` and `sampling_rate` must be positive".into());
        }
        let stages = self.upsample_rates.len();
        if stages == 0 || self.upsample_kernel_sizes.len() != stages {
            return Err(format!("{stages} `upsample_rates` and {} `upsample_kernel_sizes`: expected as many, at least one", self.upsample_kernel_sizes.len()));
        }
        if self.upsample_initial_channel >> stages == 0 || !self.upsample_initial_channel.is_multiple_of(1 << stages) {
            return Err(format!("`upsample_initial_channel` {} cannot be halved {stages} times", self.upsample_initial_channel));
        }
        if let Some((r, k)) = self.upsample_rates.iter().zip(&self.upsample_kernel_sizes).find(|(r, k)| **r == 0 || **k < **r || (**k - **r) % 2 != 0) {
            return Err(format!("an upsampling stage of rate {r} with kernel {k}: expected a kernel at least the rate, differing by an even number"));
        }
        if self.resblock_kernel_sizes.is_empty() || self.resblock_dilation_sizes.len() != self.resblock_kernel_sizes.len() {
            return Err("`resblock_kernel_sizes` and `resblock_dilation_sizes` must be non-empty and of one length".into());
        }
        if self.resblock_kernel_sizes.iter().any(|k| k % 2 == 0) || self.resblock_dilation_sizes.iter().flatten().any(|&d| d == 0) {
            return Err("residual blocks need odd kernel sizes and positive dilations (the output keeps its length)".into());
        }
        Ok(())
    }

    /// Waveform samples per spectrogram frame.
    pub fn hop(&self) -> usize {
        self.upsample_rates.iter().product()
    }
}

/// One multi-receptive-field residual block.
struct ResBlock {
    pairs: Vec<(Conv1d, Conv1d)>,
    slope: f64,
}

impl ResBlock {
    fn new(vb: VarBuilder, channels: usize, kernel: usize, dilations: &[usize], slope: f64) -> candle_core::Result<Self> {
        let conv = |vb: VarBuilder, dilation: usize| {
            let cfg = Conv1dConfig { padding: (kernel * dilation - dilation) / 2, stride: 1, dilation, groups: 1, cudnn_fwd_algo: None };
            candle_nn::conv1d(channels, channels, kernel, cfg, vb)
        };
        let pairs = dilations
            .iter()
            .enumerate()
            .map(|(i, &d)| Ok((conv(vb.pp("convs1").pp(i), d)?, conv(vb.pp("convs2").pp(i), 1)?)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { pairs, slope })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for (c1, c2) in &self.pairs {
            let h = c2.forward(&leaky_relu(&c1.forward(&leaky_relu(&x, self.slope)?)?, self.slope)?)?;
            x = (h + x)?;
        }
        Ok(x)
    }
}

/// The vocoder, loaded.
pub struct HifiGan {
    /// Its configuration.
    pub config: HifiGanConfig,
    conv_pre: Conv1d,
    upsampler: Vec<ConvTranspose1d>,
    resblocks: Vec<ResBlock>,
    conv_post: Conv1d,
    mean: Tensor,
    scale: Tensor,
}

impl HifiGan {
    /// Load the `component` folder (usually `vocoder`): config.json and model.safetensors.
    pub fn load_from(source: &ModelSource, component: &str, device: &Device) -> Result<Self> {
        let rel = format!("{component}/config.json");
        let config: HifiGanConfig = source.read_json(&rel)?;
        config.validate().map_err(|m| Error::file(source.path(&rel), format!("unsupported config: {m}")))?;
        let (vb, path) = source.var_builder(component, "model", DType::F32, device)?;
        Self::new(config, vb).map_err(|e| Error::file(path, format!("weights do not match config.json: {e}")))
    }

    /// Build from a checked configuration and weights under transformers' names.
    pub fn new(config: HifiGanConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let pre = Conv1dConfig { padding: 3, stride: 1, dilation: 1, groups: 1, cudnn_fwd_algo: None };
        let conv_pre = candle_nn::conv1d(config.model_in_dim, config.upsample_initial_channel, 7, pre, vb.pp("conv_pre"))?;
        let (mut upsampler, mut resblocks) = (Vec::new(), Vec::new());
        let mut channels = config.upsample_initial_channel;
        for (i, (&rate, &kernel)) in config.upsample_rates.iter().zip(&config.upsample_kernel_sizes).enumerate() {
            let cfg = ConvTranspose1dConfig { padding: (kernel - rate) / 2, output_padding: 0, stride: rate, dilation: 1, groups: 1 };
            upsampler.push(candle_nn::conv_transpose1d(channels, channels / 2, kernel, cfg, vb.pp("upsampler").pp(i))?);
            channels /= 2;
            for (k, d) in config.resblock_kernel_sizes.iter().zip(&config.resblock_dilation_sizes) {
                let n = resblocks.len();
                resblocks.push(ResBlock::new(vb.pp("resblocks").pp(n), channels, *k, d, config.leaky_relu_slope)?);
            }
        }
        let conv_post = candle_nn::conv1d(channels, 1, 7, pre, vb.pp("conv_post"))?;
        let mean = vb.get(config.model_in_dim, "mean")?;
        let scale = vb.get(config.model_in_dim, "scale")?;
        Ok(Self { config, conv_pre, upsampler, resblocks, conv_post, mean, scale })
    }

    /// The waveform `[B, frames x hop]` of log-mel spectrograms `[B, frames, model_in_dim]`.
    pub fn forward(&self, spectrogram: &Tensor) -> Result<Tensor> {
        let dims = spectrogram.dims();
        if dims.len() != 3 || dims[2] != self.config.model_in_dim || dims[1] == 0 || dims[0] == 0 {
            return Err(Error::Shape {
                what: "vocoder spectrogram".into(),
                expected: format!("[batch, frames, {}] with frames >= 1", self.config.model_in_dim),
                got: format!("{dims:?}"),
            });
        }
        let mut x = spectrogram.to_dtype(DType::F32)?;
        if self.config.normalize_before {
            x = x.broadcast_sub(&self.mean)?.broadcast_div(&self.scale)?;
        }
        let mut x = self.conv_pre.forward(&x.transpose(1, 2)?.contiguous()?)?;
        let per_stage = self.config.resblock_kernel_sizes.len();
        for (i, up) in self.upsampler.iter().enumerate() {
            x = up.forward(&leaky_relu(&x, self.config.leaky_relu_slope)?)?;
            let blocks = &self.resblocks[i * per_stage..(i + 1) * per_stage];
            let mut sum = blocks[0].forward(&x)?;
            for b in &blocks[1..] {
                sum = (sum + b.forward(&x)?)?;
            }
            x = (sum / per_stage as f64)?;
        }
        // PyTorch's default slope here, as transformers calls it
        let x = self.conv_post.forward(&leaky_relu(&x, 0.01)?)?.tanh()?;
        Ok(x.squeeze(1)?)
    }
}
