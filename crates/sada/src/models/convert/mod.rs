//! `sada convert`: any model sada loads, written as one file in the original single-file layout
//! (Stable Diffusion's LDM / SGM names, FLUX.1's Black Forest Labs names) — as GGUF with its
//! weights in a smaller type (what stable-diffusion.cpp and ComfyUI-GGUF load), or as
//! safetensors in f16 / bf16 / f32 (what ComfyUI, A1111 and diffusers' `from_single_file` load).
//!
//! The denoiser alone by default (ComfyUI's "diffusion model" file, read back by sada's
//! `--denoiser`); with every component (VAE and text encoders too) for a full Stable Diffusion
//! checkpoint. Tensors stream through one at a time: the model is never held in memory whole.

pub mod layout;
mod safetensors_out;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::family::Architecture;
use crate::models::gguf::{self, GgmlType, GgufValue, TensorToWrite};
use crate::models::layers::weight::WeightType;
use crate::models::ModelSource;
pub use layout::{Make, Target};

/// The file format written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// GGUF, weights in any type sada quantises to.
    Gguf,
    /// safetensors: f32, f16 or bf16.
    Safetensors,
}

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct ConvertOptions {
    /// The file format.
    pub format: Format,
    /// The type of the weights (matrices and convolution kernels; GGUF keeps vectors in f32, and
    /// a tensor whose rows are not whole blocks of this type in the nearest wider one that fits).
    pub weights: WeightType,
    /// Every component (a full Stable Diffusion checkpoint), not only the denoiser.
    pub all_components: bool,
}

/// A conversion planned: the file's tensors, their types, and where their values come from.
pub struct Plan {
    source: ModelSource,
    /// The model's architecture.
    pub family: Architecture,
    /// The components written (diffusers names: `unet`, `vae`, `text_encoder`, ...).
    pub components: Vec<String>,
    /// The tensors written, in order.
    pub tensors: Vec<Target>,
    dtypes: Vec<GgmlType>,
    options: ConvertOptions,
}

/// The weights file stem of a component.
fn stem(component: &str) -> &'static str {
    if component.starts_with("text_encoder") {
        "model"
    } else {
        "diffusion_pytorch_model"
    }
}

/// The architecture of the model in `source`, as its files tell it.
fn family_of(source: &ModelSource) -> Result<Architecture> {
    if let ModelSource::SingleFile(ck) = source {
        return Ok(ck.family);
    }
    if crate::pipelines::Flux::detect(source) {
        return Ok(Architecture::Flux);
    }
    let index: serde_json::Value = if source.exists("model_index.json") { source.read_json("model_index.json")? } else { serde_json::Value::Null };
    let class = index.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
    if !class.starts_with("StableDiffusion") || !source.exists("unet/config.json") {
        return Err(Error::file(
            source.path("model_index.json"),
            format!("a `{class}`: only Stable Diffusion 1.x / 2.x / XL and FLUX.1 models have a single-file layout to write"),
        ));
    }
    let unet: serde_json::Value = source.read_json("unet/config.json")?;
    if unet.get("addition_embed_type").and_then(|v| v.as_str()) == Some("text_time") {
        return Ok(Architecture::Sdxl);
    }
    // SD-2's text encoder is OpenCLIP's (gelu); SD-1's OpenAI CLIP (quick_gelu)
    let text: serde_json::Value =
        if source.exists("text_encoder/config.json") { source.read_json("text_encoder/config.json")? } else { serde_json::Value::Null };
    let openclip = text.get("hidden_act").and_then(|v| v.as_str()) == Some("gelu");
    let context = unet.get("cross_attention_dim").and_then(|v| v.as_u64());
    Ok(if openclip || (text.is_null() && context == Some(1024)) { Architecture::Sd2 } else { Architecture::Sd1 })
}

/// The type a tensor of `shape` is written in.
fn stored_type(options: &ConvertOptions, shape: &[usize]) -> GgmlType {
    match options.format {
        Format::Safetensors => options.weights.ggml(0),
        // vectors (biases, norms) stay f32, as in city96's and stable-diffusion.cpp's files;
        // GGUF's blocks run along the innermost axis
        Format::Gguf if shape.len() < 2 => GgmlType::F32,
        Format::Gguf => options.weights.ggml(shape.last().copied().unwrap_or(1)),
    }
}

impl Plan {
    /// Plan writing the model in `source`: its architecture, the components to write, every
    /// tensor's name and type. Errors name what has no single-file layout.
    pub fn new(source: &ModelSource, options: ConvertOptions) -> Result<Self> {
        if options.format == Format::Safetensors && !matches!(options.weights, WeightType::F32 | WeightType::F16 | WeightType::Bf16) {
            return Err(Error::param(
                "weights",
                format!("{}: safetensors holds f32, f16 or bf16; write a .gguf file for ggml's blocks", options.weights.name()),
            ));
        }
        let family = family_of(source)?;
        let mut components = vec![if family == Architecture::Flux { "transformer" } else { "unet" }.to_owned()];
        if options.all_components {
            if family == Architecture::Flux {
                return Err(Error::Config(
                    "a FLUX.1 single file holds the transformer alone (city96's layout); its text encoders and VAE stay in the model folder".into(),
                ));
            }
            for c in ["vae", "text_encoder", "text_encoder_2"] {
                if source.exists(c) {
                    components.push(c.to_owned());
                }
            }
        }
        let mut shapes: Vec<(String, layout::Shapes)> = Vec::new();
        for c in &components {
            let list = source.tensor_shapes(c, stem(c))?;
            let mut map = BTreeMap::new();
            for (name, shape) in list {
                if map.insert(name.clone(), shape).is_some() {
                    return Err(Error::file(source.path(c), format!("tensor `{name}` appears twice")));
                }
            }
            shapes.push((c.clone(), map));
        }
        let refs: Vec<(&str, &layout::Shapes)> = shapes.iter().map(|(c, s)| (c.as_str(), s)).collect();
        let tensors = layout::targets(family, &refs).map_err(|m| Error::file(source.path(""), m))?;
        let dtypes = tensors.iter().map(|t| stored_type(&options, &t.shape)).collect();
        Ok(Self { source: source.clone(), family, components, tensors, dtypes, options })
    }

    /// The type each tensor is written in.
    pub fn dtypes(&self) -> &[GgmlType] {
        &self.dtypes
    }

    fn table(&self) -> Vec<TensorToWrite> {
        self.tensors.iter().zip(&self.dtypes).map(|(t, &dtype)| TensorToWrite { name: t.key.clone(), shape: t.shape.clone(), dtype }).collect()
    }

    /// GGUF's `general.architecture`: the names ComfyUI-GGUF gives these layouts (SD-1 and
    /// SD-2 share the LDM UNet layout).
    fn metadata(&self) -> Vec<(&'static str, GgufValue)> {
        let arch = match self.family {
            Architecture::Flux => "flux",
            Architecture::Sdxl => "sdxl",
            Architecture::Sd1 | Architecture::Sd2 => "sd1",
        };
        vec![("general.architecture", GgufValue::String(arch.into())), ("general.quantization_version", GgufValue::U32(2))]
    }

    /// The size of the file written, in bytes.
    pub fn file_size(&self) -> u64 {
        let table = self.table();
        match self.options.format {
            Format::Gguf => gguf::gguf_size(&self.metadata(), &table).unwrap_or(u64::MAX),
            Format::Safetensors => safetensors_out::size(&table).unwrap_or(u64::MAX),
        }
    }

    /// Write the file to `w`, one tensor at a time; `progress(i, n)` after each. Returns the
    /// bytes written.
    pub fn write(&self, w: &mut impl Write, mut progress: impl FnMut(usize, usize)) -> Result<u64> {
        let table = self.table();
        let mut vbs: HashMap<String, VarBuilder<'static>> = HashMap::new();
        for c in &self.components {
            vbs.insert(c.clone(), self.source.var_builder(c, stem(c), DType::F32, &Device::Cpu)?.0);
        }
        let n = table.len();
        let mut data = |i: usize| -> std::result::Result<Vec<u8>, String> {
            let values = self.values(&self.tensors[i], &vbs).map_err(|e| e.to_string())?;
            let mut out = Vec::with_capacity(table[i].bytes().unwrap_or(0));
            gguf::quantize(table[i].dtype, &values, &mut out).ok_or_else(|| format!("tensor `{}`: {:?} is not written", table[i].name, table[i].dtype))?;
            progress(i + 1, n);
            Ok(out)
        };
        let path = self.source.path("");
        match self.options.format {
            Format::Gguf => gguf::write_gguf(w, &self.metadata(), &table, data),
            Format::Safetensors => safetensors_out::write(w, &table, &mut data),
        }
        .map_err(|m| Error::file(path, m))
    }

    /// The values of one written tensor, row-major, f32.
    fn values(&self, t: &Target, vbs: &HashMap<String, VarBuilder<'static>>) -> Result<Vec<f32>> {
        let load = |c: &str, n: &str| -> Result<Tensor> {
            let vb = vbs.get(c).ok_or_else(|| Error::Config(format!("no weights for the {c}")))?;
            Ok(vb.get_unchecked(n)?)
        };
        let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let n: usize = t.shape.iter().product();
        let values = match &t.make {
            Make::Same(c, name) => flat(&load(c, name)?)?,
            Make::Transpose(c, name) => flat(&load(c, name)?.t()?.contiguous()?)?,
            Make::SwapHalves(c, name) => {
                let x = load(c, name)?;
                let h = x.dim(0)? / 2;
                flat(&Tensor::cat(&[x.narrow(0, h, h)?, x.narrow(0, 0, h)?], 0)?)?
            }
            Make::Join(parts) => {
                let mut v = Vec::with_capacity(n);
                for (c, name) in parts {
                    v.extend(flat(&load(c, name)?)?);
                }
                v
            }
            Make::Zeros => vec![0f32; n],
        };
        if values.len() != n {
            return Err(Error::file(self.source.path(""), format!("`{}`: {} values made for a shape of {:?}", t.key, values.len(), t.shape)));
        }
        Ok(values)
    }
}
