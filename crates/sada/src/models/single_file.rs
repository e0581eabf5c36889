//! Single-file checkpoints (`model.safetensors` as ComfyUI, A1111 and Forge users keep them):
//! the original LDM / SGM layout of Stable Diffusion 1.x, 2.x and XL, read as a diffusers folder.
//!
//! Every tensor is renamed to diffusers' component layout as diffusers' `from_single_file`
//! renames it (`docs/single-file.md`), lazily, straight from the memory-mapped file (a
//! [`SimpleBackend`] per component), so nothing is copied or converted up front. The
//! architecture of each component is read from the tensors' names and shapes; what the weights
//! do not say (attention heads, `upcast_attention`, the scheduler, the VAE's scaling factor, the
//! tokenizers) is the diffusers configuration of the family, which is recognised from the text
//! encoders the file holds (more reliably than diffusers' own marker keys, which call a
//! UNet-only SDXL file "v1").

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;

use super::gguf::GgufFile;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::family::Architecture;

pub(crate) const UNET: &str = "model.diffusion_model.";

/// How a diffusers tensor is made from the file's.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Same(String),
    /// Rows `part`/`parts` of a fused tensor (OpenCLIP's in_proj into q, k, v).
    Rows(String, usize, usize),
    /// OpenCLIP's `text_projection` is used as x @ P; diffusers' Linear holds P^T.
    Transpose(String),
    /// A 1x1 convolution's weight [C, C, 1, 1] as a Linear's [C, C] (VAE attention).
    Squeeze(String),
    /// Rows `start .. start + len` of a fused tensor (Flux's single blocks' q, k, v and MLP).
    Narrow(String, usize, usize),
    /// The two halves swapped: the original final modulation emits (shift, scale),
    /// diffusers' `AdaLayerNormContinuous` (scale, shift).
    SwapHalves(String),
}

impl Source {
    /// The file's tensor this one is made from.
    pub(crate) fn key(&self) -> &str {
        match self {
            Source::Same(k) | Source::Rows(k, ..) | Source::Transpose(k) | Source::Squeeze(k) | Source::Narrow(k, ..) | Source::SwapHalves(k) => k,
        }
    }
}

/// The tensors of a checkpoint file: safetensors, or GGUF (a stable-diffusion.cpp file or
/// city96's FLUX.1 transformer), dequantised to f32 as each is read.
enum Store {
    Safetensors(MmapedSafetensors),
    Gguf(GgufFile),
}

impl Store {
    /// Open `path` as GGUF when it begins with GGUF's magic, else as safetensors; check it.
    fn open(path: &Path) -> Result<Self> {
        let mut magic = [0u8; 4];
        crate::files::check_regular(path)?;
        let is_gguf = std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok() && &magic == b"GGUF";
        if is_gguf {
            return Ok(Store::Gguf(GgufFile::open(path)?));
        }
        let file = crate::models::weights::open_safetensors(path)?;
        crate::models::weights::check_mapped(&file, path)?;
        Ok(Store::Safetensors(file))
    }

    /// The first dimension of tensor `k`.
    fn rows(&self, k: &str) -> candle_core::Result<usize> {
        let shape = match self {
            Store::Safetensors(f) => f.get(k)?.shape().to_vec(),
            Store::Gguf(f) => f.info(k).map(|i| i.shape.clone()).unwrap_or_default(),
        };
        shape.first().copied().ok_or_else(|| candle_core::Error::Msg(format!("tensor `{k}` has no rows")))
    }

    /// Every tensor's name and shape.
    fn shapes(&self) -> HashMap<String, Vec<usize>> {
        match self {
            Store::Safetensors(f) => f.tensors().into_iter().map(|(k, v)| (k, v.shape().to_vec())).collect(),
            Store::Gguf(f) => f.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect(),
        }
    }

    /// Tensor `k` on `dev`; a GGUF tensor is dequantised and checked for NaN and infinity (a
    /// safetensors file was checked whole when opened).
    fn load(&self, k: &str, dev: &Device) -> candle_core::Result<Tensor> {
        self.load_rows(k, None, false, dev)
    }

    /// Rows `start..start + len` of the 2-d (or more) tensor `k`, or all of it. A GGUF tensor's
    /// rows are whole blocks, so only they are widened; with `offer` (the tensor goes to a layer
    /// as it is) their blocks are offered to that layer (`layers::weight`: held as stored).
    fn load_rows(&self, k: &str, rows: Option<(usize, usize)>, offer: bool, dev: &Device) -> candle_core::Result<Tensor> {
        let msg = |m: String| candle_core::Error::Msg(m);
        let f = match self {
            Store::Safetensors(f) => {
                let t = f.load(k, dev)?;
                crate::models::weights::release_tensor(f, k);
                return match rows {
                    Some((start, len)) => t.narrow(0, start, len)?.contiguous(),
                    None => Ok(t),
                };
            }
            Store::Gguf(f) => f,
        };
        let (t, ty, bytes) = f.tensor_rows(k, rows, dev).map_err(|e| msg(e.to_string()))?;
        if !crate::finite::all_finite(&t).map_err(|e| msg(e.to_string()))? {
            return Err(msg(format!("{}: tensor `{k}` holds NaN or infinite values", f.path().display())));
        }
        if offer {
            crate::models::layers::weight::offer_file_blocks(&t, ty, bytes);
        }
        // read, widened and (where offered) copied: the mapped pages would only double the
        // weights' resident memory (a 12 GB FLUX.1 file beside its blocks)
        crate::models::weights::release_pages(bytes);
        Ok(t)
    }
}

/// A component's tensors under diffusers names, read from the mapped file.
struct Renamed {
    file: Arc<Store>,
    path: PathBuf,
    map: HashMap<String, Source>,
}

impl Renamed {
    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let src = self.map.get(name).ok_or_else(|| candle_core::Error::Msg(format!("{}: no tensor for `{name}`", self.path.display())))?;
        let t = match src {
            Source::Same(k) => self.file.load_rows(k, None, true, dev)?,
            Source::Rows(k, part, parts) => {
                let n = self.file.rows(k)? / parts;
                self.file.load_rows(k, Some((part * n, n)), true, dev)?
            }
            Source::Transpose(k) => self.file.load(k, dev)?.t()?.contiguous()?,
            Source::Narrow(k, start, len) => self.file.load_rows(k, Some((*start, *len)), true, dev)?,
            Source::SwapHalves(k) => {
                let t = self.file.load(k, dev)?;
                let n = t.dim(0)? / 2;
                Tensor::cat(&[t.narrow(0, n, n)?, t.narrow(0, 0, n)?], 0)?
            }
            Source::Squeeze(k) => {
                let t = self.file.load(k, dev)?;
                match t.rank() {
                    4 => t.squeeze(3)?.squeeze(2)?,
                    3 => t.squeeze(2)?,
                    _ => t,
                }
            }
        };
        t.to_dtype(dtype)
    }
}

impl SimpleBackend for Renamed {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.load(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::Msg(format!("{}: `{name}` has shape {:?}, expected {:?}", self.path.display(), t.dims(), s.dims())));
        }
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
}

/// A single-file checkpoint, opened and mapped.
pub struct Checkpoint {
    /// The checkpoint file.
    pub path: PathBuf,
    /// The architecture: FLUX.1 from the transformer's keys, else SD-1, SD-2 or SDXL from the text
    /// encoders the file holds (from the cross-attention width when it holds none).
    pub family: Architecture,
    file: Arc<Store>,
    /// Per diffusers component: tensor name -> where it comes from.
    maps: HashMap<String, HashMap<String, Source>>,
    /// Per component: the shape of every tensor under its diffusers name.
    shapes: HashMap<String, HashMap<String, Dims>>,
    /// Synthesised diffusers files: `model_index.json`, `unet/config.json`, tokenizer files, ...
    files: HashMap<String, String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("path", &self.path).field("family", &self.family).finish()
    }
}

/// A ResNet block's layers: (LDM name, diffusers name).
pub(crate) const RESNET_LAYERS: [(&str, &str); 6] = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
];

fn resnet_tail(t: &str) -> String {
    let mut t = t.to_owned();
    for (a, b) in RESNET_LAYERS {
        if let Some(rest) = t.strip_prefix(a) {
            t = format!("{b}{rest}");
        }
    }
    t
}

/// Block numbers past this are no block number (no checkpoint numbers its blocks past a few
/// hundred), so the counts made from them (`n + 1`) cannot overflow.
const MAX_INDEX: usize = 1 << 20;

/// `a.{n}.rest` -> (n, rest).
pub(crate) fn index_rest(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    let n: usize = n.parse().ok()?;
    (n <= MAX_INDEX).then_some((n, rest))
}

/// Axis `axis` of the tensor `key` of shape `shape`, where a configuration is read from it: the
/// one way a shape is read here. The tensor must be a `rank`-d weight without an empty
/// dimension, else the error names it (a tensor of another rank is an error, never an index out
/// of bounds); each dimension is then at most the tensor's element count, so at most the
/// file's size, and the arithmetic on it cannot overflow.
fn axis_of(key: &str, shape: &[usize], rank: usize, axis: usize) -> std::result::Result<usize, String> {
    if shape.len() != rank {
        return Err(format!("tensor `{key}` has shape {shape:?}; expected a {rank}-d weight"));
    }
    if shape.contains(&0) {
        return Err(format!("tensor `{key}` has shape {shape:?}; expected a {rank}-d weight without an empty dimension"));
    }
    shape.get(axis).copied().ok_or_else(|| format!("tensor `{key}`: no axis {axis} in a {rank}-d weight"))
}

/// The shape of a tensor under a diffusers name, with the file's tensor it is read from (which
/// errors name).
#[derive(Debug, Clone)]
struct Dims {
    key: String,
    shape: Vec<usize>,
}

impl Dims {
    fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Axis `axis` of this `rank`-d weight ([`axis_of`]).
    fn dim(&self, rank: usize, axis: usize) -> std::result::Result<usize, String> {
        axis_of(&self.key, &self.shape, rank, axis)
    }
}

impl Checkpoint {
    /// Open and map a `.safetensors` or GGUF checkpoint (the same layouts: stable-diffusion.cpp's
    /// GGUF files keep the LDM names, city96's FLUX.1 files Black Forest Labs'), recognise its
    /// architecture and rename its tensors to diffusers' layout; GGUF tensors are dequantised to
    /// f32 as they load. Pickled checkpoints (`.ckpt`, `.pt`, `.bin`) are refused.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::file(path, "checkpoint file not found"));
        }
        if path.extension().is_some_and(|e| e == "ckpt" || e == "pt" || e == "bin") {
            return Err(Error::file(path, "pickled PyTorch checkpoints are not read (they can run code); convert it to .safetensors"));
        }
        let file = Store::open(path)?;
        let shapes_of = file.shapes();
        let keys: BTreeSet<String> = shapes_of.keys().cloned().collect();
        if let Some(prefix) = ["", UNET]
            .into_iter()
            .find(|p| keys.contains(&format!("{p}double_blocks.0.img_attn.qkv.weight")) || keys.contains(&format!("{p}single_blocks.0.linear1.weight")))
        {
            return Self::open_flux(path, file, &keys, &shapes_of, prefix);
        }
        let has = |p: &str| keys.iter().any(|k| k.starts_with(p));
        if !has(UNET) {
            return Err(Error::file(path, "no `model.diffusion_model.*` tensors: not a Stable Diffusion (LDM / SGM) checkpoint"));
        }
        let context = keys.iter().find(|k| k.starts_with(UNET) && k.ends_with("attn2.to_k.weight")).and_then(|k| shapes_of[k].get(1).copied());
        let family = if has("conditioner.embedders.") {
            Architecture::Sdxl
        } else if has("cond_stage_model.model.") {
            Architecture::Sd2
        } else if has("cond_stage_model.transformer.") {
            Architecture::Sd1
        } else {
            // no text encoder in the file: the cross-attention width tells
            match context {
                Some(768) => Architecture::Sd1,
                Some(1024) => Architecture::Sd2,
                Some(2048) => Architecture::Sdxl,
                other => {
                    return Err(Error::file(path, format!("no text encoder and a cross-attention width of {other:?}: cannot tell SD-1, SD-2 or SDXL apart")))
                }
            }
        };
        let mut maps: HashMap<String, HashMap<String, Source>> = HashMap::new();
        let err = |m: String| Error::file(path, m);
        maps.insert("unet".into(), unet_map(&keys, UNET).map_err(err)?);
        let vae_prefix = ["first_stage_model.", "vae."].into_iter().find(|p| has(p));
        if let Some(p) = vae_prefix {
            maps.insert("vae".into(), vae_map(&keys, p, &shapes_of).map_err(err)?);
        }
        match family {
            Architecture::Sd1 if has("cond_stage_model.transformer.") => {
                maps.insert("text_encoder".into(), clip_map(&keys, "cond_stage_model.transformer."));
            }
            Architecture::Sd2 if has("cond_stage_model.model.") => {
                maps.insert("text_encoder".into(), openclip_map(&keys, "cond_stage_model.model.", true, &shapes_of).map_err(err)?);
            }
            Architecture::Sdxl => {
                if has("conditioner.embedders.0.transformer.") {
                    maps.insert("text_encoder".into(), clip_map(&keys, "conditioner.embedders.0.transformer."));
                }
                if has("conditioner.embedders.1.model.") {
                    maps.insert("text_encoder_2".into(), openclip_map(&keys, "conditioner.embedders.1.model.", false, &shapes_of).map_err(err)?);
                }
            }
            _ => {}
        }
        let shapes = diffusers_shapes(&maps, &shapes_of);
        let file = Arc::new(file);
        let mut ck = Checkpoint { path: path.to_path_buf(), family, file, maps, shapes, files: HashMap::new() };
        ck.files = ck.synthesise().map_err(err)?;
        Ok(ck)
    }

    /// A FLUX.1 transformer in Black Forest Labs' layout (`flux1-dev.safetensors`, city96's
    /// GGUF files), keys under `prefix` ([`flux_map`]), with its scheduler's configuration.
    fn open_flux(path: &Path, file: Store, keys: &BTreeSet<String>, shapes_of: &HashMap<String, Vec<usize>>, prefix: &str) -> Result<Self> {
        let (map, config) = flux_map(keys, shapes_of, prefix).map_err(|m| Error::file(path, m))?;
        let guidance = config["guidance_embeds"].as_bool().unwrap_or(false);
        let maps: HashMap<String, HashMap<String, Source>> = [("transformer".to_string(), map)].into_iter().collect();
        let shapes = diffusers_shapes(&maps, shapes_of);
        let scheduler = if guidance {
            json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": true})
        } else {
            json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": false})
        };
        let index = json!({"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]});
        let files: HashMap<String, String> = [
            ("model_index.json".to_string(), index.to_string()),
            ("transformer/config.json".to_string(), config.to_string()),
            ("scheduler/scheduler_config.json".to_string(), scheduler.to_string()),
        ]
        .into_iter()
        .collect();
        Ok(Checkpoint { path: path.to_path_buf(), family: Architecture::Flux, file: Arc::new(file), maps, shapes, files })
    }

    /// The diffusers files this checkpoint stands for (configs and tokenizer files).
    pub fn file(&self, rel: &str) -> Option<&str> {
        self.files.get(rel).map(String::as_str)
    }

    /// Whether the checkpoint provides `rel` (a file or a component folder).
    pub fn exists(&self, rel: &str) -> bool {
        self.files.contains_key(rel) || self.files.keys().any(|k| k.starts_with(&format!("{rel}/"))) || self.maps.contains_key(rel)
    }

    /// The weights of `component` under diffusers' names.
    pub fn var_builder(&self, component: &str, dtype: DType, device: &Device) -> Result<candle_nn::VarBuilder<'static>> {
        let map = self.maps.get(component).ok_or_else(|| Error::file(&self.path, format!("the checkpoint holds no {component}")))?;
        let backend = Renamed { file: self.file.clone(), path: self.path.clone(), map: map.clone() };
        Ok(candle_nn::VarBuilder::from_backend(Box::new(backend), dtype, device.clone()))
    }

    /// The diffusers names of `component`'s tensors (the fuzz entry loads each).
    pub(crate) fn tensor_names(&self, component: &str) -> Vec<String> {
        self.maps.get(component).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// The diffusers names and shapes of `component`'s tensors.
    pub(crate) fn tensor_shapes(&self, component: &str) -> Vec<(String, Vec<usize>)> {
        self.shapes.get(component).map(|m| m.iter().map(|(n, d)| (n.clone(), d.shape.clone())).collect()).unwrap_or_default()
    }

    fn shape(&self, comp: &str, name: &str) -> std::result::Result<&Dims, String> {
        self.shapes.get(comp).and_then(|s| s.get(name)).ok_or_else(|| format!("the {comp} has no `{name}`"))
    }

    /// model_index.json, the component configs, the scheduler config and tokenizer files.
    fn synthesise(&self) -> std::result::Result<HashMap<String, String>, String> {
        let fam = self.family;
        let mut files = HashMap::new();
        let mut index = json!({"_class_name": if fam == Architecture::Sdxl { "StableDiffusionXLPipeline" } else { "StableDiffusionPipeline" },
            "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", scheduler(fam)["_class_name"].clone()]});
        files.insert("unet/config.json".into(), self.unet_config()?.to_string());
        files.insert("scheduler/scheduler_config.json".into(), scheduler(fam).to_string());
        if self.maps.contains_key("vae") {
            files.insert("vae/config.json".into(), self.vae_config()?.to_string());
            index["vae"] = json!(["diffusers", "AutoencoderKL"]);
        }
        for (comp, tok, pad) in
            [("text_encoder", "tokenizer", if fam == Architecture::Sd2 { "!" } else { "<|endoftext|>" }), ("text_encoder_2", "tokenizer_2", "!")]
        {
            if self.maps.contains_key(comp) {
                files.insert(format!("{comp}/config.json"), self.text_config(comp)?.to_string());
                index[comp] = json!(["transformers", if comp == "text_encoder_2" { "CLIPTextModelWithProjection" } else { "CLIPTextModel" }]);
                for (name, text) in crate::text::clip_vocab::tokenizer_files(pad) {
                    files.insert(format!("{tok}/{name}"), text);
                }
                index[tok] = json!(["transformers", "CLIPTokenizer"]);
            }
        }
        if fam == Architecture::Sdxl {
            index["force_zeros_for_empty_prompt"] = json!(true);
        }
        files.insert("model_index.json".into(), index.to_string());
        Ok(files)
    }

    fn unet_config(&self) -> std::result::Result<Value, String> {
        let shapes = self.shapes.get("unet").ok_or("the checkpoint holds no unet")?;
        let mut c = unet_config(shapes, self.family == Architecture::Sd2)?;
        c["out_channels"] = json!(self.shape("unet", "conv_out.weight")?.dim(4, 0)?);
        c["sample_size"] = json!(match self.family {
            Architecture::Sd1 => 64,
            Architecture::Sd2 => 96,
            Architecture::Sdxl | Architecture::Flux => 128,
        });
        Ok(c)
    }

    fn vae_config(&self) -> std::result::Result<Value, String> {
        let s = |n: &str| self.shape("vae", n);
        let keys: Vec<&String> = self.maps["vae"].keys().collect();
        let levels = 1 + keys
            .iter()
            .filter_map(|k| k.strip_prefix("encoder.down_blocks.").and_then(index_rest).map(|(n, _)| n))
            .max()
            .ok_or("no encoder.down_blocks")?;
        let lpb = 1 + keys
            .iter()
            .filter_map(|k| k.strip_prefix("encoder.down_blocks.0.resnets.").and_then(index_rest).map(|(n, _)| n))
            .max()
            .ok_or("no encoder resnets")?;
        let channels: Vec<usize> = (0..levels)
            .map(|i| s(&format!("encoder.down_blocks.{i}.resnets.0.conv2.weight")).and_then(|d| d.dim(4, 0)))
            .collect::<std::result::Result<_, _>>()?;
        // the latent's channels: the post-quantisation conv's, else what the decoder takes in
        let latent_channels = match s("post_quant_conv.weight") {
            Ok(d) => d.dim(4, 0)?,
            Err(_) => s("decoder.conv_in.weight")?.dim(4, 1)?,
        };
        let xl = self.family == Architecture::Sdxl;
        Ok(json!({
            "_class_name": "AutoencoderKL",
            "in_channels": s("encoder.conv_in.weight")?.dim(4, 1)?, "out_channels": s("decoder.conv_out.weight")?.dim(4, 0)?,
            "block_out_channels": channels, "layers_per_block": lpb,
            "latent_channels": latent_channels,
            "norm_num_groups": 32,
            "scaling_factor": if xl { 0.13025 } else { 0.18215 },
            "force_upcast": xl,
            "use_quant_conv": self.maps["vae"].contains_key("quant_conv.weight"),
            "use_post_quant_conv": self.maps["vae"].contains_key("post_quant_conv.weight"),
        }))
    }

    fn text_config(&self, comp: &str) -> std::result::Result<Value, String> {
        let s = |n: &str| self.shape(comp, n);
        let keys: Vec<&String> = self.maps[comp].keys().collect();
        let tok = s("text_model.embeddings.token_embedding.weight")?;
        let (vocab, hidden) = (tok.dim(2, 0)?, tok.dim(2, 1)?);
        let layers = keys
            .iter()
            .filter_map(|k| k.strip_prefix("text_model.encoder.layers.").and_then(index_rest).map(|(n, _)| n + 1))
            .max()
            .ok_or("no encoder layers")?;
        let openai = comp == "text_encoder" && self.family != Architecture::Sd2;
        let mut c = json!({
            "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": s("text_model.encoder.layers.0.mlp.fc1.weight")?.dim(2, 0)?,
            "num_hidden_layers": layers, "num_attention_heads": (hidden / 64).max(1),
            "max_position_embeddings": s("text_model.embeddings.position_embedding.weight")?.dim(2, 0)?,
            "hidden_act": if openai { "quick_gelu" } else { "gelu" },
            "layer_norm_eps": 1e-5, "eos_token_id": 2,
        });
        if let Ok(p) = s("text_projection.weight") {
            c["projection_dim"] = json!(p.dim(2, 0)?);
        }
        Ok(c)
    }
}

/// A FLUX.1 transformer's tensors in Black Forest Labs' layout, keys under `prefix`: diffusers'
/// names as `convert_flux_transformer_checkpoint_to_diffusers` makes them (fused projections
/// split, the final modulation's halves swapped), and the config.json read from the shapes
/// (diffusers fixes the width at FLUX.1's 3072).
pub(crate) fn flux_map(
    keys: &BTreeSet<String>,
    shapes_of: &HashMap<String, Vec<usize>>,
    prefix: &str,
) -> std::result::Result<(HashMap<String, Source>, Value), String> {
    // axis `axis` of the `rank`-d weight `k`
    let dim_of = |k: &str, rank: usize, axis: usize| -> std::result::Result<usize, String> {
        let key = format!("{prefix}{k}");
        let shape = shapes_of.get(&key).ok_or_else(|| format!("no `{key}`: not a complete FLUX.1 transformer"))?;
        axis_of(&key, shape, rank, axis)
    };
    let count =
        |block: &str| keys.iter().filter_map(|k| k.strip_prefix(prefix)?.strip_prefix(block).and_then(index_rest).map(|(i, _)| i)).collect::<BTreeSet<_>>();
    let (double, single) = (count("double_blocks."), count("single_blocks."));
    for (name, set) in [("double_blocks", &double), ("single_blocks", &single)] {
        if set.iter().enumerate().any(|(i, &b)| i != b) {
            return Err(format!("{name} are not numbered 0..{}", set.len()));
        }
    }
    let (dim, in_channels) = (dim_of("img_in.weight", 2, 0)?, dim_of("img_in.weight", 2, 1)?);
    let norm = if double.is_empty() { "single_blocks.0.norm.query_norm.scale" } else { "double_blocks.0.img_attn.norm.query_norm.scale" };
    let head_dim = dim_of(norm, 1, 0)?;
    if head_dim == 0 || dim % head_dim != 0 || head_dim % 16 != 0 {
        return Err(format!("a head dimension of {head_dim} for a width of {dim}: expected a multiple of 16 dividing the width"));
    }
    let guidance = keys.contains(&format!("{prefix}guidance_in.in_layer.weight"));
    let config = json!({
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": in_channels,
        "num_layers": double.len(),
        "num_single_layers": single.len(),
        "attention_head_dim": head_dim,
        "num_attention_heads": dim / head_dim,
        "joint_attention_dim": dim_of("txt_in.weight", 2, 1)?,
        "pooled_projection_dim": dim_of("vector_in.in_layer.weight", 2, 1)?,
        "guidance_embeds": guidance,
        // FLUX.1's split of a head over (text, row, column): 16, 56, 56 of 128 (a head is a
        // multiple of 16)
        "axes_dims_rope": [head_dim / 8, head_dim / 16 * 7, head_dim / 16 * 7],
    });
    let mut map = HashMap::new();
    let mut put = |to: String, from: &str| {
        for t in ["weight", "bias"] {
            let k = format!("{prefix}{from}.{t}");
            if keys.contains(&k) {
                map.insert(format!("{to}.{t}"), Source::Same(k));
            }
        }
    };
    put("x_embedder".into(), "img_in");
    put("context_embedder".into(), "txt_in");
    for (to, from) in [("timestep_embedder", "time_in"), ("text_embedder", "vector_in"), ("guidance_embedder", "guidance_in")] {
        put(format!("time_text_embed.{to}.linear_1"), &format!("{from}.in_layer"));
        put(format!("time_text_embed.{to}.linear_2"), &format!("{from}.out_layer"));
    }
    put("proj_out".into(), "final_layer.linear");
    for &i in &double {
        let (d, b) = (format!("transformer_blocks.{i}"), format!("double_blocks.{i}"));
        put(format!("{d}.norm1.linear"), &format!("{b}.img_mod.lin"));
        put(format!("{d}.norm1_context.linear"), &format!("{b}.txt_mod.lin"));
        put(format!("{d}.attn.to_out.0"), &format!("{b}.img_attn.proj"));
        put(format!("{d}.attn.to_add_out"), &format!("{b}.txt_attn.proj"));
        put(format!("{d}.ff.net.0.proj"), &format!("{b}.img_mlp.0"));
        put(format!("{d}.ff.net.2"), &format!("{b}.img_mlp.2"));
        put(format!("{d}.ff_context.net.0.proj"), &format!("{b}.txt_mlp.0"));
        put(format!("{d}.ff_context.net.2"), &format!("{b}.txt_mlp.2"));
    }
    for &i in &single {
        let (d, b) = (format!("single_transformer_blocks.{i}"), format!("single_blocks.{i}"));
        put(format!("{d}.norm.linear"), &format!("{b}.modulation.lin"));
        put(format!("{d}.proj_out"), &format!("{b}.linear2"));
    }
    let scale = |k: String| Source::Same(format!("{prefix}{k}"));
    for &i in &double {
        let (d, b) = (format!("transformer_blocks.{i}.attn"), format!("double_blocks.{i}"));
        for (stream, names) in [("img", ["to_q", "to_k", "to_v"]), ("txt", ["add_q_proj", "add_k_proj", "add_v_proj"])] {
            for (part, n) in names.iter().enumerate() {
                for t in ["weight", "bias"] {
                    map.insert(format!("{d}.{n}.{t}"), Source::Rows(format!("{prefix}{b}.{stream}_attn.qkv.{t}"), part, 3));
                }
            }
        }
        map.insert(format!("{d}.norm_q.weight"), scale(format!("{b}.img_attn.norm.query_norm.scale")));
        map.insert(format!("{d}.norm_k.weight"), scale(format!("{b}.img_attn.norm.key_norm.scale")));
        map.insert(format!("{d}.norm_added_q.weight"), scale(format!("{b}.txt_attn.norm.query_norm.scale")));
        map.insert(format!("{d}.norm_added_k.weight"), scale(format!("{b}.txt_attn.norm.key_norm.scale")));
    }
    for &i in &single {
        let (d, b) = (format!("single_transformer_blocks.{i}"), format!("single_blocks.{i}"));
        let rows = dim_of(&format!("{b}.linear1.weight"), 2, 0)?;
        if dim.checked_mul(7) != Some(rows) {
            return Err(format!("`{b}.linear1.weight` has {rows} rows, expected q, k, v and a 4x MLP: {}", dim.saturating_mul(7)));
        }
        for (n, start, len) in [("attn.to_q", 0, dim), ("attn.to_k", dim, dim), ("attn.to_v", 2 * dim, dim), ("proj_mlp", 3 * dim, 4 * dim)] {
            for t in ["weight", "bias"] {
                map.insert(format!("{d}.{n}.{t}"), Source::Narrow(format!("{prefix}{b}.linear1.{t}"), start, len));
            }
        }
        map.insert(format!("{d}.attn.norm_q.weight"), scale(format!("{b}.norm.query_norm.scale")));
        map.insert(format!("{d}.attn.norm_k.weight"), scale(format!("{b}.norm.key_norm.scale")));
    }
    for t in ["weight", "bias"] {
        map.insert(format!("norm_out.linear.{t}"), Source::SwapHalves(format!("{prefix}final_layer.adaLN_modulation.1.{t}")));
    }
    if let Some((name, src)) = map.iter().find(|(_, src)| !keys.contains(src.key())) {
        return Err(format!("no `{}` (for {name}): not a complete FLUX.1 transformer", src.key()));
    }
    Ok((map, config))
}

/// The scheduler configuration each family ships (diffusers' repos for SD-1.5, SD-2.1, SDXL).
fn scheduler(fam: Architecture) -> Value {
    let common = json!({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1, "set_alpha_to_one": false, "clip_sample": false, "trained_betas": null});
    let mut c = common;
    match fam {
        Architecture::Sd1 => {
            c["_class_name"] = json!("PNDMScheduler");
            c["skip_prk_steps"] = json!(true);
            c["prediction_type"] = json!("epsilon");
        }
        Architecture::Sd2 => {
            c["_class_name"] = json!("DDIMScheduler");
            c["prediction_type"] = json!("v_prediction");
        }
        Architecture::Sdxl => {
            c["_class_name"] = json!("EulerDiscreteScheduler");
            c["prediction_type"] = json!("epsilon");
            c["timestep_spacing"] = json!("leading");
            c["interpolation_type"] = json!("linear");
            c["use_karras_sigmas"] = json!(false);
        }
        // a Flux checkpoint synthesises its own files (`open_flux`)
        Architecture::Flux => {}
    }
    c
}

/// The shape of each diffusers tensor, for config inference.
fn diffusers_shapes(maps: &HashMap<String, HashMap<String, Source>>, shapes_of: &HashMap<String, Vec<usize>>) -> HashMap<String, HashMap<String, Dims>> {
    maps.iter().map(|(comp, map)| (comp.clone(), component_shapes(map, shapes_of))).collect()
}

/// The shape of each of a component's tensors under its diffusers name, as it is made from the
/// file's (a tensor of too low a rank for its change keeps its shape, for [`Dims::dim`] to refuse).
fn component_shapes(map: &HashMap<String, Source>, shapes_of: &HashMap<String, Vec<usize>>) -> HashMap<String, Dims> {
    map.iter()
        .filter_map(|(name, src)| {
            let key = src.key();
            let mut shape = shapes_of.get(key)?.clone();
            match src {
                Source::Same(_) | Source::SwapHalves(_) => {}
                Source::Rows(_, _, parts) => {
                    if let Some(rows) = shape.first_mut() {
                        *rows /= (*parts).max(1);
                    }
                }
                Source::Narrow(_, _, len) => {
                    if let Some(rows) = shape.first_mut() {
                        *rows = *len;
                    }
                }
                Source::Transpose(_) => shape.reverse(),
                Source::Squeeze(_) => shape.truncate(2),
            }
            Some((name.clone(), Dims { key: key.to_owned(), shape }))
        })
        .collect()
}

/// The UNet part of a config.json (also a ControlNet's) from the shapes of its tensors under
/// diffusers names; `upcast_attention` as SD-2 sets it.
fn unet_config(shapes: &HashMap<String, Dims>, upcast_attention: bool) -> std::result::Result<Value, String> {
    let s = |n: &str| shapes.get(n).ok_or_else(|| format!("no `{n}`"));
    let keys: Vec<&String> = shapes.keys().collect();
    let in_channels = s("conv_in.weight")?.dim(4, 1)?;
    let levels = 1 + keys.iter().filter_map(|k| k.strip_prefix("down_blocks.").and_then(index_rest).map(|(n, _)| n)).max().ok_or("no down_blocks")?;
    let lpb = 1 + keys
        .iter()
        .filter_map(|k| k.strip_prefix("down_blocks.0.resnets.").and_then(index_rest).map(|(n, _)| n))
        .max()
        .ok_or("no down_blocks.0.resnets")?;
    let mut channels = Vec::new();
    let mut cross = Vec::new();
    let mut depth = Vec::new();
    for b in 0..levels {
        channels.push(s(&format!("down_blocks.{b}.resnets.0.conv2.weight"))?.dim(4, 0)?);
        let pre = format!("down_blocks.{b}.attentions.0.transformer_blocks.");
        let d = keys.iter().filter_map(|k| k.strip_prefix(pre.as_str()).and_then(index_rest).map(|(n, _)| n + 1)).max();
        cross.push(d.is_some());
        depth.push(d.unwrap_or(1));
    }
    // the mid block's depth is the last level's in diffusers' model
    let mid =
        keys.iter().filter_map(|k| k.strip_prefix("mid_block.attentions.0.transformer_blocks.").and_then(index_rest).map(|(n, _)| n + 1)).max().unwrap_or(1);
    if let Some(last) = depth.last_mut() {
        *last = mid;
    }
    let attn_key = keys.iter().find(|k| k.ends_with("attn2.to_k.weight")).ok_or("no cross-attention")?;
    let context = s(attn_key)?.dim(2, 1)?;
    let proj_in = keys.iter().find(|k| k.ends_with(".proj_in.weight")).ok_or("no proj_in")?;
    let linear = s(proj_in)?.rank() == 2;
    // heads are not in the weights: SD-1 has 8 per level, the linear-projection families 64-wide heads
    let heads: Vec<usize> = if linear { channels.iter().map(|c| (c / 64).max(1)).collect() } else { vec![8; levels] };
    let down: Vec<&str> = cross.iter().map(|&c| if c { "CrossAttnDownBlock2D" } else { "DownBlock2D" }).collect();
    let up: Vec<&str> = cross.iter().rev().map(|&c| if c { "CrossAttnUpBlock2D" } else { "UpBlock2D" }).collect();
    let mut c = json!({
        "_class_name": "UNet2DConditionModel",
        "in_channels": in_channels,
        "block_out_channels": channels, "layers_per_block": lpb,
        "down_block_types": down, "up_block_types": up,
        "transformer_layers_per_block": depth, "attention_head_dim": heads,
        "cross_attention_dim": context, "use_linear_projection": linear,
        "upcast_attention": upcast_attention,
        "norm_num_groups": 32,
    });
    if let Ok(w) = s("add_embedding.linear_1.weight") {
        c["addition_embed_type"] = json!("text_time");
        c["addition_time_embed_dim"] = json!(256);
        c["projection_class_embeddings_input_dim"] = json!(w.dim(2, 1)?);
    }
    Ok(c)
}

/// `model.diffusion_model.*` (or a ControlNet's `control_model.*`: `prefix`) -> diffusers' UNet
/// names (names only; no tensor changes shape).
pub(crate) fn unet_map(keys: &BTreeSet<String>, prefix: &str) -> std::result::Result<HashMap<String, Source>, String> {
    let body: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix(prefix)).collect();
    let n_in = 1 + body.iter().filter_map(|k| k.strip_prefix("input_blocks.").and_then(index_rest).map(|(n, _)| n)).max().ok_or("no input_blocks")?;
    let ops: Vec<usize> =
        body.iter().filter(|k| k.contains(".0.op.weight")).filter_map(|k| k.strip_prefix("input_blocks.").and_then(index_rest).map(|(n, _)| n)).collect();
    let levels = ops.len() + 1;
    if n_in % levels != 0 || n_in / levels < 2 {
        return Err(format!("{n_in} input blocks do not split into {levels} levels"));
    }
    let s = n_in / levels; // layers per level + 1 (the downsampler's slot)
    let lpb = s - 1;
    let mut map = HashMap::new();
    for (full, k) in keys.iter().filter_map(|k| Some((k, k.strip_prefix(prefix)?))) {
        let top = [
            ("time_embed.0.", "time_embedding.linear_1."),
            ("time_embed.2.", "time_embedding.linear_2."),
            ("input_blocks.0.0.", "conv_in."),
            ("out.0.", "conv_norm_out."),
            ("out.2.", "conv_out."),
            ("label_emb.0.0.", "add_embedding.linear_1."),
            ("label_emb.0.2.", "add_embedding.linear_2."),
        ];
        let name = if let Some((a, b)) = top.iter().find(|(a, _)| k.starts_with(a)) {
            Some(format!("{b}{}", &k[a.len()..]))
        } else if let Some((i, rest)) = k.strip_prefix("input_blocks.").and_then(index_rest).filter(|&(i, _)| i > 0) {
            // block 0 is conv_in (above)
            let (b, j) = ((i - 1) / s, (i - 1) % s);
            match index_rest(rest) {
                Some((0, t)) if j < lpb => Some(format!("down_blocks.{b}.resnets.{j}.{}", resnet_tail(t))),
                Some((1, t)) if j < lpb => Some(format!("down_blocks.{b}.attentions.{j}.{t}")),
                Some((0, t)) => t.strip_prefix("op.").map(|t| format!("down_blocks.{b}.downsamplers.0.conv.{t}")),
                _ => None,
            }
        } else if let Some((i, t)) = k.strip_prefix("middle_block.").and_then(index_rest) {
            match i {
                0 => Some(format!("mid_block.resnets.0.{}", resnet_tail(t))),
                1 => Some(format!("mid_block.attentions.0.{t}")),
                2 => Some(format!("mid_block.resnets.1.{}", resnet_tail(t))),
                _ => None,
            }
        } else if let Some((i, rest)) = k.strip_prefix("output_blocks.").and_then(index_rest) {
            let (b, j) = (i / s, i % s);
            match index_rest(rest) {
                Some((0, t)) => Some(format!("up_blocks.{b}.resnets.{j}.{}", resnet_tail(t))),
                Some((1, t)) if t.starts_with("conv.") => Some(format!("up_blocks.{b}.upsamplers.0.{t}")),
                Some((1, t)) => Some(format!("up_blocks.{b}.attentions.{j}.{t}")),
                Some((2, t)) if t.starts_with("conv.") => Some(format!("up_blocks.{b}.upsamplers.0.{t}")),
                _ => None,
            }
        } else {
            None
        };
        if let Some(n) = name {
            map.insert(n, Source::Same(full.clone()));
        }
    }
    Ok(map)
}

/// `first_stage_model.*` -> diffusers' AutoencoderKL names.
pub(crate) fn vae_map(keys: &BTreeSet<String>, prefix: &str, shapes: &HashMap<String, Vec<usize>>) -> std::result::Result<HashMap<String, Source>, String> {
    let body: Vec<(&String, &str)> = keys.iter().filter_map(|k| Some((k, k.strip_prefix(prefix)?))).collect();
    let levels = 1 + body.iter().filter_map(|(_, k)| k.strip_prefix("encoder.down.").and_then(index_rest).map(|(n, _)| n)).max().ok_or("no encoder.down")?;
    let mut map = HashMap::new();
    for (full, k) in body {
        let mut squeeze = false;
        let (side, rest) = match k.split_once('.') {
            Some((s @ ("encoder" | "decoder"), r)) => (s, r),
            _ => {
                if k.starts_with("quant_conv.") || k.starts_with("post_quant_conv.") {
                    map.insert(k.to_owned(), Source::Same(full.clone()));
                }
                continue;
            }
        };
        let tail = |t: &str| t.replacen("nin_shortcut", "conv_shortcut", 1);
        let name = if let Some(t) = rest.strip_prefix("norm_out.") {
            Some(format!("conv_norm_out.{t}"))
        } else if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
            Some(rest.to_owned())
        } else if let Some((i, r)) = rest.strip_prefix("down.").and_then(index_rest) {
            if let Some((j, t)) = r.strip_prefix("block.").and_then(index_rest) {
                Some(format!("down_blocks.{i}.resnets.{j}.{}", tail(t)))
            } else {
                r.strip_prefix("downsample.conv.").map(|t| format!("down_blocks.{i}.downsamplers.0.conv.{t}"))
            }
        } else if let Some((u, r)) = rest.strip_prefix("up.").and_then(index_rest) {
            let i = levels.checked_sub(1 + u).ok_or_else(|| format!("decoder level {u} beyond the encoder's {levels}"))?;
            if let Some((j, t)) = r.strip_prefix("block.").and_then(index_rest) {
                Some(format!("up_blocks.{i}.resnets.{j}.{}", tail(t)))
            } else {
                r.strip_prefix("upsample.conv.").map(|t| format!("up_blocks.{i}.upsamplers.0.conv.{t}"))
            }
        } else if let Some(t) = rest.strip_prefix("mid.block_1.") {
            Some(format!("mid_block.resnets.0.{}", tail(t)))
        } else if let Some(t) = rest.strip_prefix("mid.block_2.") {
            Some(format!("mid_block.resnets.1.{}", tail(t)))
        } else if let Some(t) = rest.strip_prefix("mid.attn_1.") {
            let (part, p) = t.split_once('.').unwrap_or((t, ""));
            squeeze = part != "norm";
            let to = match part {
                "norm" => "group_norm",
                "q" => "to_q",
                "k" => "to_k",
                "v" => "to_v",
                "proj_out" => "to_out.0",
                _ => "",
            };
            (!to.is_empty()).then(|| format!("mid_block.attentions.0.{to}.{p}"))
        } else {
            None
        };
        if let Some(n) = name {
            let src = if squeeze && shapes[full].len() > 2 { Source::Squeeze(full.clone()) } else { Source::Same(full.clone()) };
            map.insert(format!("{side}.{n}"), src);
        }
    }
    Ok(map)
}

/// OpenAI CLIP (already named as transformers names it): the prefix stripped.
pub(crate) fn clip_map(keys: &BTreeSet<String>, prefix: &str) -> HashMap<String, Source> {
    keys.iter()
        .filter_map(|k| Some((k, k.strip_prefix(prefix)?)))
        .filter(|(_, k)| !k.ends_with("position_ids"))
        .map(|(full, k)| (k.to_owned(), Source::Same(full.clone())))
        .collect()
}

/// OpenCLIP -> transformers' CLIP names; `drop_last`: SD-2 reads the penultimate layer, which
/// diffusers' 23-layer text encoder gives as its last (and SD-2 has no projection).
pub(crate) fn openclip_map(
    keys: &BTreeSet<String>,
    prefix: &str,
    drop_last: bool,
    shapes: &HashMap<String, Vec<usize>>,
) -> std::result::Result<HashMap<String, Source>, String> {
    let body: Vec<(&String, &str)> = keys.iter().filter_map(|k| Some((k, k.strip_prefix(prefix)?))).collect();
    let layers = 1 + body
        .iter()
        .filter_map(|(_, k)| k.strip_prefix("transformer.resblocks.").and_then(index_rest).map(|(n, _)| n))
        .max()
        .ok_or("no OpenCLIP resblocks")?;
    let keep = if drop_last { layers - 1 } else { layers };
    let mut map = HashMap::new();
    for (full, k) in body {
        let same = |n: &str| (n.to_owned(), Source::Same(full.clone()));
        let entries: Vec<(String, Source)> = match k {
            "token_embedding.weight" => vec![same("text_model.embeddings.token_embedding.weight")],
            "positional_embedding" => vec![same("text_model.embeddings.position_embedding.weight")],
            "ln_final.weight" => vec![same("text_model.final_layer_norm.weight")],
            "ln_final.bias" => vec![same("text_model.final_layer_norm.bias")],
            "text_projection" if !drop_last => {
                if shapes[full].len() != 2 {
                    return Err(format!("`{full}` should be a matrix"));
                }
                vec![("text_projection.weight".to_owned(), Source::Transpose(full.clone()))]
            }
            _ => match k.strip_prefix("transformer.resblocks.").and_then(index_rest) {
                Some((n, _)) if n >= keep => vec![],
                Some((n, t)) => {
                    let l = format!("text_model.encoder.layers.{n}");
                    match t {
                        "attn.in_proj_weight" | "attn.in_proj_bias" => {
                            let kind = if t.ends_with("weight") { "weight" } else { "bias" };
                            ["q", "k", "v"]
                                .iter()
                                .enumerate()
                                .map(|(p, x)| (format!("{l}.self_attn.{x}_proj.{kind}"), Source::Rows(full.clone(), p, 3)))
                                .collect()
                        }
                        _ => {
                            let renamed = t
                                .replacen("attn.out_proj", "self_attn.out_proj", 1)
                                .replacen("ln_1", "layer_norm1", 1)
                                .replacen("ln_2", "layer_norm2", 1)
                                .replacen("mlp.c_fc", "mlp.fc1", 1)
                                .replacen("mlp.c_proj", "mlp.fc2", 1);
                            vec![(format!("{l}.{renamed}"), Source::Same(full.clone()))]
                        }
                    }
                }
                None => vec![],
            },
        };
        map.extend(entries);
    }
    Ok(map)
}

/// An original-layout ControlNet file (lllyasviel's releases: `control_model.*`; some
/// redistributions drop the prefix): its config.json, inferred from the tensors as for a UNet
/// (SD-2's `upcast_attention` from the 1024-wide cross-attention), and its weights under
/// diffusers' names. The hint block `input_hint_block.{0, 2, ..., 14}` is the conditioning
/// embedding (first conv_in, last conv_out, blocks between), `zero_convs.i.0` and
/// `middle_block_out.0` the zero convolutions.
pub fn open_controlnet(path: &Path, dtype: DType, device: &Device) -> Result<(Value, candle_nn::VarBuilder<'static>)> {
    if path.extension().is_some_and(|e| e == "ckpt" || e == "pt" || e == "pth" || e == "bin") {
        return Err(Error::file(path, "pickled PyTorch checkpoints are not read (they can run code); convert it to .safetensors"));
    }
    let file = Store::open(path)?;
    let shapes_of = file.shapes();
    let keys: BTreeSet<String> = shapes_of.keys().cloned().collect();
    let prefix = if keys.iter().any(|k| k.starts_with("control_model.")) {
        "control_model."
    } else if keys.contains("input_hint_block.0.weight") {
        ""
    } else {
        return Err(Error::file(path, "no `control_model.*` or `input_hint_block.*` tensors: not a ControlNet checkpoint"));
    };
    let err = |m: String| Error::file(path, m);
    let mut map = unet_map(&keys, prefix).map_err(err)?;
    let hint: BTreeSet<usize> =
        keys.iter().filter_map(|k| k.strip_prefix(prefix)?.strip_prefix("input_hint_block.").and_then(index_rest).map(|(n, _)| n)).collect();
    let (first, last) = match (hint.first(), hint.last()) {
        (Some(&a), Some(&b)) if a < b => (a, b),
        _ => return Err(err("the hint block (input_hint_block) needs at least an input and an output convolution".into())),
    };
    for k in &keys {
        let Some(body) = k.strip_prefix(prefix) else { continue };
        let name = if let Some((i, t)) = body.strip_prefix("input_hint_block.").and_then(index_rest) {
            let pos = hint.iter().position(|&h| h == i).expect("collected above");
            Some(match i {
                i if i == first => format!("controlnet_cond_embedding.conv_in.{t}"),
                i if i == last => format!("controlnet_cond_embedding.conv_out.{t}"),
                _ => format!("controlnet_cond_embedding.blocks.{}.{t}", pos - 1),
            })
        } else if let Some((i, t)) = body.strip_prefix("zero_convs.").and_then(index_rest) {
            t.strip_prefix("0.").map(|t| format!("controlnet_down_blocks.{i}.{t}"))
        } else {
            body.strip_prefix("middle_block_out.0.").map(|t| format!("controlnet_mid_block.{t}"))
        };
        if let Some(n) = name {
            map.insert(n, Source::Same(k.clone()));
        }
    }
    // a ControlNet is renamed, never reshaped
    let shapes = component_shapes(&map, &shapes_of);
    let context = shapes.iter().find(|(k, _)| k.ends_with("attn2.to_k.weight")).and_then(|(_, s)| s.shape.get(1).copied());
    let mut config = unet_config(&shapes, context == Some(1024)).map_err(err)?;
    let shape = |n: &str| shapes.get(n).ok_or_else(|| err(format!("no `{n}`")));
    let conv_in = shape("controlnet_cond_embedding.conv_in.weight")?;
    let mut embed = vec![conv_in.dim(4, 0).map_err(err)?];
    for i in (1..hint.len().saturating_sub(2)).step_by(2) {
        embed.push(shape(&format!("controlnet_cond_embedding.blocks.{i}.weight"))?.dim(4, 0).map_err(err)?);
    }
    config["_class_name"] = json!("ControlNetModel");
    config["conditioning_channels"] = json!(conv_in.dim(4, 1).map_err(err)?);
    config["conditioning_embedding_out_channels"] = json!(embed);
    let backend = Renamed { file: Arc::new(file), path: path.to_path_buf(), map };
    Ok((config, candle_nn::VarBuilder::from_backend(Box::new(backend), dtype, device.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel)).unwrap()
    }

    /// The header (parsed) and the data of the safetensors file `bytes`.
    fn split(bytes: &[u8]) -> (serde_json::Map<String, Value>, &[u8]) {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), &bytes[8 + n..])
    }

    /// A safetensors file of `header` (JSON text, as given) and `data`.
    fn join(header: &str, data: &[u8]) -> Vec<u8> {
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(data);
        file
    }

    /// The safetensors file `bytes` with tensor `name` of `shape` instead (its data cut to as
    /// many elements, no more than it had): the file rebuilt, offsets and all.
    fn reshaped(bytes: &[u8], name: &str, shape: &[usize]) -> Vec<u8> {
        let (header, data) = split(bytes);
        let offsets = |v: &Value| (v["data_offsets"][0].as_u64().unwrap_or(0) as usize, v["data_offsets"][1].as_u64().unwrap_or(0) as usize);
        let mut entries: Vec<(String, Value)> = header.into_iter().collect();
        entries.sort_by_key(|(_, v)| offsets(v));
        let (mut out, mut out_data) = (serde_json::Map::new(), Vec::new());
        for (k, mut v) in entries {
            if k != "__metadata__" {
                let (a, b) = offsets(&v);
                let mut t = &data[a..b];
                if k == name {
                    let old: usize = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).product();
                    t = &t[..t.len() / old.max(1) * shape.iter().product::<usize>()];
                    v["shape"] = json!(shape);
                }
                let start = out_data.len();
                out_data.extend_from_slice(t);
                v["data_offsets"] = json!([start, out_data.len()]);
            }
            out.insert(k, v);
        }
        join(&Value::Object(out).to_string(), &out_data)
    }

    /// The number of elements of tensor `name` of the safetensors file `bytes`.
    fn elements(bytes: &[u8], name: &str) -> usize {
        split(bytes).0[name]["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).product()
    }

    /// The error of reading the file `bytes` as the fixture `rel` is read (a ControlNet or a
    /// checkpoint), or None where it reads.
    fn read(dir: &tempfile::TempDir, rel: &str, bytes: &[u8]) -> Option<String> {
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let result =
            if rel.starts_with("controlnet/") { open_controlnet(&path, DType::F32, &Device::Cpu).map(drop) } else { Checkpoint::open(&path).map(drop) };
        result.err().map(|e| e.to_string())
    }

    const FIXTURES: [&str; 5] =
        ["sd/sd15.safetensors", "sd/sd2.safetensors", "sd/sdxl.safetensors", "flux/flux_dev_single.safetensors", "controlnet/sd15_canny.safetensors"];

    #[test]
    fn a_tensor_of_too_low_a_rank_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // (fixture, tensor, the rank it is given, the rank the reader needs): each of these
        // indexed an axis the tensor did not have
        let cases = [
            ("sd/sd15.safetensors", "model.diffusion_model.input_blocks.0.0.weight", 1, 4),
            ("sd/sd15.safetensors", "model.diffusion_model.input_blocks.0.0.weight", 0, 4),
            ("sd/sd15.safetensors", "model.diffusion_model.out.2.weight", 0, 4),
            ("sd/sd15.safetensors", "first_stage_model.encoder.conv_in.weight", 1, 4),
            ("sd/sd15.safetensors", "first_stage_model.post_quant_conv.weight", 0, 4),
            ("sd/sd15.safetensors", "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", 1, 2),
            ("sd/sd2.safetensors", "cond_stage_model.model.positional_embedding", 0, 2),
            ("sd/sdxl.safetensors", "model.diffusion_model.label_emb.0.0.weight", 1, 2),
            ("flux/flux_dev_single.safetensors", "single_blocks.0.linear1.weight", 0, 2),
            ("flux/flux_dev_single.safetensors", "double_blocks.0.img_attn.norm.query_norm.scale", 0, 1),
            ("flux/flux_dev_single.safetensors", "txt_in.weight", 1, 2),
            ("controlnet/sd15_canny.safetensors", "control_model.input_hint_block.0.weight", 1, 4),
            ("controlnet/sd15_canny.safetensors", "control_model.input_hint_block.4.weight", 0, 4),
        ];
        for (rel, name, rank, needs) in cases {
            let bytes = fixture(rel);
            // the rebuilt file reads as the fixture does
            let shape: Vec<usize> = split(&bytes).0[name]["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            assert_eq!(read(&dir, rel, &reshaped(&bytes, name, &shape)), None, "{rel} rebuilt");
            let lower = if rank == 1 { vec![elements(&bytes, name)] } else { vec![] };
            let e = read(&dir, rel, &reshaped(&bytes, name, &lower)).unwrap_or_else(|| panic!("{rel} with a {rank}-d `{name}` was read"));
            assert!(e.ends_with(&format!("tensor `{name}` has shape {lower:?}; expected a {needs}-d weight")), "{e}");
            assert_eq!(e.matches("model.safetensors").count(), 1, "{e}");
        }
    }

    #[test]
    fn no_tensor_of_a_lower_rank_makes_a_reader_panic() {
        // every tensor of every single-file fixture made 0-d, and 1-d where it had more axes
        let dir = tempfile::tempdir().unwrap();
        for rel in FIXTURES {
            let bytes = fixture(rel);
            let (header, _) = split(&bytes);
            for (name, v) in &header {
                let Some(shape) = v["shape"].as_array() else { continue };
                let n: usize = shape.iter().map(|d| d.as_u64().unwrap_or(0) as usize).product();
                if shape.is_empty() || n == 0 {
                    continue;
                }
                let lower: Vec<Vec<usize>> = if shape.len() >= 2 { vec![vec![], vec![n]] } else { vec![vec![]] };
                for s in lower {
                    if let Some(e) = read(&dir, rel, &reshaped(&bytes, name, &s)) {
                        assert!(!e.contains('\n'), "{rel} with `{name}` of shape {s:?}: {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn other_formats_and_repeated_names_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let mut gguf = b"GGUF\x03\x00\x00\x00".to_vec();
        gguf.resize(256, 0);
        std::fs::write(&path, &gguf).unwrap();
        let e = Checkpoint::open(&path).unwrap_err().to_string();
        // read as GGUF whatever its name: an empty one holds no model
        assert!(e.ends_with("model.safetensors: no `model.diffusion_model.*` tensors: not a Stable Diffusion (LDM / SGM) checkpoint"), "{e}");
        let e = open_controlnet(&path, DType::F32, &Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("not a ControlNet checkpoint"), "{e}");
        // a tensor listed twice with the same offsets: safetensors alone would keep one
        let bytes = fixture("sd/sd15.safetensors");
        let (header, data) = split(&bytes);
        let name = "model.diffusion_model.out.2.bias";
        let text = Value::Object(header.clone()).to_string();
        let twice = format!("{{\"{name}\":{},{}", header[name], &text[1..]);
        std::fs::write(&path, join(&twice, data)).unwrap();
        let e = Checkpoint::open(&path).unwrap_err().to_string();
        assert!(e.ends_with(&format!("model.safetensors: tensor `{name}` appears twice in the header")), "{e}");
    }
}
