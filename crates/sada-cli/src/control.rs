//! ControlNet flags shared by `generate` and `bench`: which ControlNets, their control images
//! and settings, attached to a loaded pipeline.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use sada::image::read_png;
use sada::models::controlnet::{ControlNetModel, ControlUnit};
use sada::models::hub::{self, HubOptions};
use sada::pipelines::Pipeline;

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

/// What was attached, for the PNG's settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attached {
    pub controlnet: String,
    pub control_image: Option<String>,
    pub scale: f64,
    pub start: f64,
    pub end: f64,
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
                None => bail!("--control-image: this model has no controlnet/ folder; name one with --controlnet DIR|ID"),
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
            let image = match path {
                Some(p) => read_png(p)?,
                // a placeholder until the caller's per-prompt image replaces it
                None => sada::image::RgbImage { width: 1, height: 1, pixels: vec![0; 3] },
            };
            let unit = ControlUnit { model, scale: scale[i], start: start[i], end: end[i] };
            pipe.add_controlnet(unit, image).with_context(|| format!("--controlnet {name}"))?;
            attached.push(Attached { controlnet: name, control_image: path.map(|p| p.display().to_string()), scale: scale[i], start: start[i], end: end[i] });
        }
        pipe.set_guess_mode(self.guess_mode);
        Ok(attached)
    }
}

/// A ControlNet from a folder or a Hugging Face id (cached, or downloaded unless offline).
fn load_controlnet(name: &str, hub_opts: &HubOptions, dtype: DType, device: &Device) -> Result<ControlNetModel> {
    let path = Path::new(name);
    if path.is_dir() || path.is_file() {
        return Ok(ControlNetModel::load(path, dtype, device)?);
    }
    if hub::is_repo_id(name) && !name.starts_with('.') {
        let files = |_: &Path| vec!["config.json".to_owned(), "diffusion_pytorch_model.safetensors".to_owned()];
        let snapshot = hub::resolve(name, hub_opts, &files)?;
        return ControlNetModel::load(&snapshot, dtype, device).with_context(|| format!("--controlnet {name} (revision {})", hub_opts.revision()));
    }
    bail!("--controlnet {name}: no such folder, and not a Hugging Face id (org/name)")
}
