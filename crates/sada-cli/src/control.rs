//! ControlNet flags shared by `generate` and `bench`: which ControlNets, their control images
//! and settings, attached to a loaded pipeline.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use sada::image::{read_png, RgbImage};
use sada::models::controlnet::{ControlNetModel, ControlSettings};
use sada::models::hub::HubOptions;
use sada::models::ModelRef;
use sada::pipelines::{ControlInput, Pipeline};

#[derive(Debug, Clone, Default, Args)]
pub struct ControlArgs {
    /// A ControlNet to steer the image with: a diffusers ControlNet folder (config.json +
    /// diffusion_pytorch_model.safetensors), an original single-file checkpoint
    /// (control_model.* safetensors) or a Hugging Face id; repeat for several
    /// (diffusers' MultiControlNetModel), each with its own --control-image [default with
    /// --control-image: the model folder's controlnet/, as the embedded model ships one that
    /// reads shape outlines]
    #[arg(long, value_name = "DIR|FILE|ID")]
    pub controlnet: Vec<String>,
    /// The control image for each ControlNet, in order (PNG: an edge map, depth map, pose...),
    /// resized to the output size with Lanczos as diffusers' control image processor does
    #[arg(long, value_name = "FILE.png")]
    pub control_image: Vec<PathBuf>,
    /// controlnet_conditioning_scale: how strongly the ControlNets steer; one value, or one per
    /// ControlNet comma-separated [1.0]
    #[arg(long, value_name = "S[,S..]", value_delimiter = ',', allow_negative_numbers = true)]
    pub controlnet_scale: Vec<f64>,
    /// control_guidance_start: the fraction of the steps before a ControlNet starts acting;
    /// one value, or one per ControlNet [0.0]
    #[arg(long, value_name = "F[,F..]", value_delimiter = ',', allow_negative_numbers = true)]
    pub control_guidance_start: Vec<f64>,
    /// control_guidance_end: the fraction of the steps after which a ControlNet stops acting;
    /// one value, or one per ControlNet [1.0]
    #[arg(long, value_name = "F[,F..]", value_delimiter = ',', allow_negative_numbers = true)]
    pub control_guidance_end: Vec<f64>,
    /// diffusers' guess_mode: the ControlNets see only the prompt's half of classifier-free
    /// guidance and their shallow residuals are weighted down, so the control image is
    /// followed even with an empty prompt (diffusers suggests guidance 3 to 5)
    #[arg(long)]
    pub guess_mode: bool,
}

/// What was attached, for the PNG's settings, with the control image given for it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attached {
    pub controlnet: String,
    pub control_image: Option<String>,
    #[serde(flatten)]
    pub settings: ControlSettings,
    #[serde(skip)]
    pub image: Option<RgbImage>,
}

/// The control inputs of a run: each attached ControlNet's settings with `images[i]`, or
/// with the image given for it when `images` is None.
pub fn control_inputs(attached: &[Attached], images: Option<&[RgbImage]>) -> Result<Vec<ControlInput>> {
    attached
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let image = match images {
                Some(all) => all.get(i).cloned(),
                None => a.image.clone(),
            };
            let image = image.with_context(|| format!("--controlnet {}: no control image", a.controlnet))?;
            Ok(ControlInput { image, settings: a.settings })
        })
        .collect()
}

/// One value per ControlNet from a flag given zero (default), one (for all) or n times.
fn per_net(flag: &str, given: &[f64], n: usize, default: f64) -> Result<Vec<f64>> {
    match given.len() {
        0 => Ok(vec![default; n]),
        1 => Ok(vec![given[0]; n]),
        k if k == n => Ok(given.to_vec()),
        k => bail!("{flag}: {k} values for {n} ControlNets; give one, or one per ControlNet"),
    }
}

impl ControlArgs {
    pub fn any(&self) -> bool {
        !self.controlnet.is_empty() || !self.control_image.is_empty()
    }

    /// Refuse combinations that need no model to judge, before anything loads.
    pub fn check(&self, images_from_elsewhere: bool) -> Result<()> {
        let settings = !self.controlnet_scale.is_empty() || !self.control_guidance_start.is_empty() || !self.control_guidance_end.is_empty() || self.guess_mode;
        if settings && !self.any() && !images_from_elsewhere {
            bail!("--controlnet-scale, --control-guidance-start/end and --guess-mode need --control-image");
        }
        if images_from_elsewhere && !self.control_image.is_empty() {
            bail!("--control-image and --control-outlines both give the control images; give one of them");
        }
        if !self.controlnet.is_empty() && !images_from_elsewhere && self.control_image.len() != self.controlnet.len() {
            bail!("{} --controlnet but {} --control-image: give one control image per ControlNet, in order", self.controlnet.len(), self.control_image.len());
        }
        for p in &self.control_image {
            if !p.is_file() {
                bail!("--control-image {}: no such file", p.display());
            }
        }
        Ok(())
    }

    /// Load the ControlNets (or the model's own) and attach them to `pipe` with their images;
    /// `images_from_elsewhere`: the caller sets the images later (bench: one per prompt).
    pub fn attach(&self, pipe: &mut dyn Pipeline, hub_opts: &HubOptions, dtype: DType, device: &Device, images_from_elsewhere: bool) -> Result<Vec<Attached>> {
        let mut models: Vec<(String, ControlNetModel)> = Vec::new();
        if self.controlnet.is_empty() {
            let own = pipe.bundled_controlnet(dtype, device)?;
            match own {
                Some(m) => models.push(("the model's controlnet/".to_owned(), m)),
                None => bail!(
                    "{}: this model has no controlnet/ folder; name one with --controlnet DIR|ID",
                    if images_from_elsewhere { "--control-outlines" } else { "--control-image" }
                ),
            }
        }
        for name in &self.controlnet {
            models.push((name.clone(), load_controlnet(name, hub_opts, dtype, device)?));
        }
        let n = models.len();
        if !images_from_elsewhere && self.control_image.len() != n {
            bail!("{} control images for {n} ControlNet(s): give one --control-image per ControlNet, in order", self.control_image.len());
        }
        let scale = per_net("--controlnet-scale", &self.controlnet_scale, n, 1.0)?;
        let start = per_net("--control-guidance-start", &self.control_guidance_start, n, 0.0)?;
        let end = per_net("--control-guidance-end", &self.control_guidance_end, n, 1.0)?;
        let mut attached = Vec::new();
        for (i, (name, model)) in models.into_iter().enumerate() {
            let path = self.control_image.get(i);
            // without a path the caller gives an image per run (bench: one per prompt)
            let image = path.map(|p| read_png(p)).transpose()?;
            pipe.add_controlnet(model).with_context(|| format!("--controlnet {name}"))?;
            let settings = ControlSettings { scale: scale[i], start: start[i], end: end[i] };
            settings.validate().with_context(|| format!("--controlnet {name}"))?;
            attached.push(Attached { controlnet: name, control_image: path.map(|p| p.display().to_string()), settings, image });
        }
        Ok(attached)
    }
}

/// A ControlNet from a folder, a single file or a Hugging Face id (cached, or downloaded unless
/// offline).
fn load_controlnet(name: &str, hub_opts: &HubOptions, dtype: DType, device: &Device) -> Result<ControlNetModel> {
    let Some(model_ref) = ModelRef::parse(name) else { bail!("--controlnet {name}: no such folder, and not a Hugging Face id (org/name)") };
    let path = model_ref.controlnet_path(hub_opts)?;
    if model_ref.is_hub() {
        return ControlNetModel::load(&path, dtype, device).with_context(|| format!("--controlnet {name} (revision {})", hub_opts.revision()));
    }
    Ok(ControlNetModel::load(&path, dtype, device)?)
}
