//! The original single-file layout of a model held under diffusers' names: Stable Diffusion's
//! LDM / SGM names (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`,
//! `conditioner.embedders.*`) and Black Forest Labs' FLUX.1 names (city96's GGUF files).
//!
//! Names are turned back here; how each tensor is rebuilt (fused projections joined, a linear
//! layer's matrix transposed or given a 1x1 convolution's shape, the final modulation's halves
//! swapped back) is read from the *forward* maps of `single_file`, run on the names made here:
//! the file written is, by construction, one that reader turns into exactly the tensors it was
//! made from, and a name either side does not account for is an error, never a dropped weight.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::family::Architecture;
use crate::models::single_file::{self, index_rest as index, Source};

/// A tensor of the file to write and how it is made from the model's.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name in the file.
    pub key: String,
    /// Its shape, outermost first.
    pub shape: Vec<usize>,
    /// How its values are made.
    pub make: Make,
}

/// How a written tensor's values are made from the model's tensors (component, diffusers name).
#[derive(Debug, Clone)]
pub enum Make {
    /// One tensor as it is, or reshaped to the target shape (a 1x1 convolution's weight).
    Same(String, String),
    /// One matrix, transposed (OpenCLIP's `text_projection`).
    Transpose(String, String),
    /// One tensor with its two halves along the first axis swapped (FLUX.1's final modulation).
    SwapHalves(String, String),
    /// Tensors joined along the first axis, in this order (fused q, k, v; FLUX.1's linear1).
    Join(Vec<(String, String)>),
    /// Zeros: a part of the original layout diffusers drops and nothing reads (SD-2's last
    /// OpenCLIP layer; SD-2 uses the penultimate layer's output).
    Zeros,
}

/// A component's tensors: diffusers name -> shape.
pub type Shapes = BTreeMap<String, Vec<usize>>;

/// One component of the model to write, with where its tensors go.
struct Part<'a> {
    component: &'a str,
    shapes: &'a Shapes,
    /// diffusers name -> (file key, shape in the file)
    names: BTreeMap<String, (String, Vec<usize>)>,
}

/// The file's tensors for `components` (name, diffusers shapes) of a model of `family`, in the
/// order they are written (sorted by name, as safetensors files are).
pub fn targets(family: Architecture, components: &[(&str, &Shapes)]) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for &(component, shapes) in components {
        let (prefix, kind) = placement(family, component)?;
        let mut part = Part { component, shapes, names: BTreeMap::new() };
        for (name, shape) in shapes {
            if kind == Kind::Clip && name.ends_with("position_ids") {
                continue; // an index buffer, not a weight: every reader makes its own
            }
            let (key, shape) = match kind {
                Kind::Unet => (unet_key(name, shapes)?, shape.clone()),
                Kind::Vae => vae_key(name, shape, shapes)?,
                Kind::Clip => (name.clone(), shape.clone()),
                Kind::OpenClip { .. } => openclip_key(name, shape)?,
                Kind::Flux => flux_key(name)?,
            };
            part.names.insert(name.clone(), (format!("{prefix}{key}"), shape));
        }
        out.extend(build(&part, prefix, kind)?);
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    if let Some(w) = out.windows(2).find(|w| w[0].key == w[1].key) {
        return Err(format!("two tensors would be written as `{}`", w[0].key));
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unet,
    Vae,
    Clip,
    /// `drop_last`: SD-2's text encoder, whose file keeps one layer more than diffusers' model.
    OpenClip {
        drop_last: bool,
    },
    Flux,
}

/// Where a component goes in the original layout of `family`.
fn placement(family: Architecture, component: &str) -> Result<(&'static str, Kind), String> {
    use Architecture::*;
    Ok(match (family, component) {
        (Flux, "transformer") => ("", Kind::Flux),
        (Sd1 | Sd2 | Sdxl, "unet") => (single_file::UNET, Kind::Unet),
        (Sd1 | Sd2 | Sdxl, "vae") => ("first_stage_model.", Kind::Vae),
        (Sd1, "text_encoder") => ("cond_stage_model.transformer.", Kind::Clip),
        (Sd2, "text_encoder") => ("cond_stage_model.model.", Kind::OpenClip { drop_last: true }),
        (Sdxl, "text_encoder") => ("conditioner.embedders.0.transformer.", Kind::Clip),
        (Sdxl, "text_encoder_2") => ("conditioner.embedders.1.model.", Kind::OpenClip { drop_last: false }),
        _ => return Err(format!("a {family:?} model's {component} has no place in the single-file layout")),
    })
}

fn unknown(component: &str, name: &str) -> String {
    format!("the {component}'s tensor `{name}` has no name in the single-file layout")
}

/// The number of distinct `prefix{n}.` indices among `names`.
fn count(names: &Shapes, prefix: &str) -> usize {
    names.keys().filter_map(|k| k.strip_prefix(prefix).and_then(index).map(|(n, _)| n)).collect::<BTreeSet<_>>().len()
}

/// A diffusers ResNet layer name -> the LDM's.
fn resnet(rest: &str) -> Option<String> {
    let (head, tail) = rest.split_once('.')?;
    single_file::RESNET_LAYERS.iter().find(|(_, d)| *d == head).map(|(l, _)| format!("{l}.{tail}"))
}

/// A diffusers UNet name -> its LDM name (below `model.diffusion_model.`).
fn unet_key(name: &str, shapes: &Shapes) -> Result<String, String> {
    let err = || unknown("UNet", name);
    // layers per block, and the stride of the LDM's block numbering (a level's layers and its
    // down- or upsampler)
    let lpb = count(shapes, "down_blocks.0.resnets.");
    let stride = lpb + 1;
    const TOP: [(&str, &str); 7] = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
    ];
    if let Some((d, l)) = TOP.iter().find(|(d, _)| name.starts_with(d)) {
        return Ok(format!("{l}{}", &name[d.len()..]));
    }
    if let Some((b, rest)) = name.strip_prefix("down_blocks.").and_then(index) {
        let block = |j: usize| 1 + b * stride + j;
        return match rest.split_once('.') {
            Some(("resnets", r)) => index(r).and_then(|(j, t)| Some(format!("input_blocks.{}.0.{}", block(j), resnet(t)?))),
            Some(("attentions", r)) => index(r).map(|(j, t)| format!("input_blocks.{}.1.{t}", block(j))),
            Some(("downsamplers", r)) => r.strip_prefix("0.conv.").map(|t| format!("input_blocks.{}.0.op.{t}", block(lpb))),
            _ => None,
        }
        .ok_or_else(err);
    }
    if let Some(r) = name.strip_prefix("mid_block.") {
        return match r.split_once('.') {
            Some(("resnets", r)) => index(r).filter(|&(i, _)| i < 2).and_then(|(i, t)| Some(format!("middle_block.{}.{}", 2 * i, resnet(t)?))),
            Some(("attentions", r)) => r.strip_prefix("0.").map(|t| format!("middle_block.1.{t}")),
            _ => None,
        }
        .ok_or_else(err);
    }
    if let Some((b, rest)) = name.strip_prefix("up_blocks.").and_then(index) {
        let has_attention = shapes.keys().any(|k| k.starts_with(&format!("up_blocks.{b}.attentions.")));
        return match rest.split_once('.') {
            Some(("resnets", r)) => index(r).and_then(|(j, t)| Some(format!("output_blocks.{}.0.{}", b * stride + j, resnet(t)?))),
            Some(("attentions", r)) => index(r).map(|(j, t)| format!("output_blocks.{}.1.{t}", b * stride + j)),
            Some(("upsamplers", r)) => r.strip_prefix("0.").map(|t| format!("output_blocks.{}.{}.{t}", b * stride + lpb, if has_attention { 2 } else { 1 })),
            _ => None,
        }
        .ok_or_else(err);
    }
    Err(err())
}

/// A diffusers AutoencoderKL name -> its LDM name and shape (the mid-block attention's linear
/// layers are 1x1 convolutions there).
fn vae_key(name: &str, shape: &[usize], shapes: &Shapes) -> Result<(String, Vec<usize>), String> {
    let err = || unknown("VAE", name);
    let levels = count(shapes, "encoder.down_blocks.");
    let shortcut = |t: &str| t.replacen("conv_shortcut", "nin_shortcut", 1);
    if name.starts_with("quant_conv.") || name.starts_with("post_quant_conv.") {
        return Ok((name.to_owned(), shape.to_vec()));
    }
    let (side, rest) = name.split_once('.').filter(|(s, _)| *s == "encoder" || *s == "decoder").ok_or_else(err)?;
    let mut shape = shape.to_vec();
    let key = if let Some(t) = rest.strip_prefix("conv_norm_out.") {
        Some(format!("norm_out.{t}"))
    } else if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        Some(rest.to_owned())
    } else if let Some((i, r)) = rest.strip_prefix("down_blocks.").and_then(index) {
        match r.split_once('.') {
            Some(("resnets", r)) => index(r).map(|(j, t)| format!("down.{i}.block.{j}.{}", shortcut(t))),
            Some(("downsamplers", r)) => r.strip_prefix("0.conv.").map(|t| format!("down.{i}.downsample.conv.{t}")),
            _ => None,
        }
    } else if let Some((i, r)) = rest.strip_prefix("up_blocks.").and_then(index) {
        let u = levels.checked_sub(1 + i).ok_or_else(err)?;
        match r.split_once('.') {
            Some(("resnets", r)) => index(r).map(|(j, t)| format!("up.{u}.block.{j}.{}", shortcut(t))),
            Some(("upsamplers", r)) => r.strip_prefix("0.conv.").map(|t| format!("up.{u}.upsample.conv.{t}")),
            _ => None,
        }
    } else if let Some((i, t)) = rest.strip_prefix("mid_block.resnets.").and_then(index).filter(|&(i, _)| i < 2) {
        Some(format!("mid.block_{}.{}", i + 1, shortcut(t)))
    } else if let Some(r) = rest.strip_prefix("mid_block.attentions.0.") {
        let (part, t) = r.rsplit_once('.').ok_or_else(err)?;
        let to = match part {
            "group_norm" => "norm",
            "to_q" => "q",
            "to_k" => "k",
            "to_v" => "v",
            "to_out.0" => "proj_out",
            _ => return Err(err()),
        };
        if to != "norm" && t == "weight" && shape.len() == 2 {
            shape.extend([1, 1]);
        }
        Some(format!("mid.attn_1.{to}.{t}"))
    } else {
        None
    };
    Ok((format!("{side}.{}", key.ok_or_else(err)?), shape))
}

/// A transformers CLIP name -> OpenCLIP's, with its shape (before q, k and v are joined).
fn openclip_key(name: &str, shape: &[usize]) -> Result<(String, Vec<usize>), String> {
    let err = || unknown("text encoder", name);
    let same = |k: &str| Ok((k.to_owned(), shape.to_vec()));
    match name {
        "text_model.embeddings.token_embedding.weight" => return same("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight" => return same("positional_embedding"),
        "text_model.final_layer_norm.weight" => return same("ln_final.weight"),
        "text_model.final_layer_norm.bias" => return same("ln_final.bias"),
        "text_projection.weight" => return Ok(("text_projection".to_owned(), shape.iter().rev().copied().collect())),
        _ => {}
    }
    let (n, rest) = name.strip_prefix("text_model.encoder.layers.").and_then(index).ok_or_else(err)?;
    let l = format!("transformer.resblocks.{n}");
    for (x, _) in [("q", 0), ("k", 1), ("v", 2)] {
        if let Some(t) = rest.strip_prefix(&format!("self_attn.{x}_proj.")) {
            return Ok((format!("{l}.attn.in_proj_{t}"), shape.to_vec()));
        }
    }
    for (d, o) in [
        ("self_attn.out_proj.", "attn.out_proj."),
        ("layer_norm1.", "ln_1."),
        ("layer_norm2.", "ln_2."),
        ("mlp.fc1.", "mlp.c_fc."),
        ("mlp.fc2.", "mlp.c_proj."),
    ] {
        if let Some(t) = rest.strip_prefix(d) {
            return Ok((format!("{l}.{o}{t}"), shape.to_vec()));
        }
    }
    Err(err())
}

/// A diffusers FluxTransformer2DModel name -> Black Forest Labs' (fused tensors share a name).
fn flux_key(name: &str) -> Result<(String, Vec<usize>), String> {
    let err = || unknown("transformer", name);
    let (stem, t) = name.rsplit_once('.').ok_or_else(err)?;
    let top = [
        ("x_embedder", "img_in"),
        ("context_embedder", "txt_in"),
        ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
        ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
        ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
        ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
        ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
        ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
        ("proj_out", "final_layer.linear"),
        ("norm_out.linear", "final_layer.adaLN_modulation.1"),
    ];
    let key = if let Some((_, o)) = top.iter().find(|(d, _)| *d == stem) {
        format!("{o}.{t}")
    } else if let Some((i, r)) = stem.strip_prefix("transformer_blocks.").and_then(index) {
        let b = format!("double_blocks.{i}");
        let o = match r {
            "norm1.linear" => "img_mod.lin",
            "norm1_context.linear" => "txt_mod.lin",
            "attn.to_out.0" => "img_attn.proj",
            "attn.to_add_out" => "txt_attn.proj",
            "ff.net.0.proj" => "img_mlp.0",
            "ff.net.2" => "img_mlp.2",
            "ff_context.net.0.proj" => "txt_mlp.0",
            "ff_context.net.2" => "txt_mlp.2",
            "attn.to_q" | "attn.to_k" | "attn.to_v" => "img_attn.qkv",
            "attn.add_q_proj" | "attn.add_k_proj" | "attn.add_v_proj" => "txt_attn.qkv",
            "attn.norm_q" => return Ok((format!("{b}.img_attn.norm.query_norm.scale"), vec![])),
            "attn.norm_k" => return Ok((format!("{b}.img_attn.norm.key_norm.scale"), vec![])),
            "attn.norm_added_q" => return Ok((format!("{b}.txt_attn.norm.query_norm.scale"), vec![])),
            "attn.norm_added_k" => return Ok((format!("{b}.txt_attn.norm.key_norm.scale"), vec![])),
            _ => return Err(err()),
        };
        format!("{b}.{o}.{t}")
    } else if let Some((i, r)) = stem.strip_prefix("single_transformer_blocks.").and_then(index) {
        let b = format!("single_blocks.{i}");
        let o = match r {
            "norm.linear" => "modulation.lin",
            "proj_out" => "linear2",
            "attn.to_q" | "attn.to_k" | "attn.to_v" | "proj_mlp" => "linear1",
            "attn.norm_q" => return Ok((format!("{b}.norm.query_norm.scale"), vec![])),
            "attn.norm_k" => return Ok((format!("{b}.norm.key_norm.scale"), vec![])),
            _ => return Err(err()),
        };
        format!("{b}.{o}.{t}")
    } else {
        return Err(err());
    };
    // the shape is filled in by the caller (only fused tensors change it)
    Ok((key, vec![]))
}

/// The file's tensors of one component: shapes of joined tensors summed, the forward map run on
/// the names made, and every tensor's recipe read from it.
fn build(part: &Part, prefix: &str, kind: Kind) -> Result<Vec<Target>, String> {
    let comp = part.component;
    // file key -> its parts (diffusers names), and its shape
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, (key, _)) in &part.names {
        groups.entry(key.as_str()).or_default().push(name.as_str());
    }
    let mut file_shapes: HashMap<String, Vec<usize>> = HashMap::new();
    for (key, names) in &groups {
        let own = |n: &str| -> Vec<usize> {
            let (_, s) = &part.names[n];
            if s.is_empty() {
                part.shapes[n].clone() // Flux's names keep their shapes unless joined
            } else {
                s.clone()
            }
        };
        let mut shape = own(names[0]);
        if names.len() > 1 {
            let rows: usize = names.iter().map(|n| own(n).first().copied().unwrap_or(0)).sum();
            if let Some(r) = shape.first_mut() {
                *r = rows;
            }
        }
        file_shapes.insert((*key).to_owned(), shape);
    }
    let mut extra = Vec::new();
    if let Kind::OpenClip { drop_last: true } = kind {
        // SD-2's file holds OpenCLIP-H's last layer too, which diffusers drops (readers of the
        // layout, ours and stable-diffusion.cpp's, expect it): written as zeros
        let layers = count(part.shapes, "text_model.encoder.layers.");
        let first = format!("{prefix}transformer.resblocks.0.");
        let last: Vec<(String, Vec<usize>)> = file_shapes
            .iter()
            .filter_map(|(k, s)| k.strip_prefix(&first).map(|rest| (format!("{prefix}transformer.resblocks.{layers}.{rest}"), s.clone())))
            .collect();
        for (k, s) in last {
            file_shapes.insert(k.clone(), s);
            extra.push(k);
        }
    }
    let keys: BTreeSet<String> = file_shapes.keys().cloned().collect();
    let forward: HashMap<String, Source> = match kind {
        Kind::Unet => single_file::unet_map(&keys, prefix)?,
        Kind::Vae => single_file::vae_map(&keys, prefix, &file_shapes)?,
        Kind::Clip => single_file::clip_map(&keys, prefix),
        Kind::OpenClip { drop_last } => single_file::openclip_map(&keys, prefix, drop_last, &file_shapes)?,
        Kind::Flux => single_file::flux_map(&keys, &file_shapes, prefix)?.0,
    };
    // the reader must give back exactly the tensors written, each from the key made for it
    for (name, (key, _)) in &part.names {
        match forward.get(name) {
            Some(src) if src.key() == key => {}
            Some(src) => return Err(format!("the {comp}'s `{name}` would be written as `{key}` but read back from `{}`", src.key())),
            None => return Err(format!("the {comp}'s `{name}` would be written as `{key}`, which the single-file reader does not read back")),
        }
    }
    if let Some(name) = forward.keys().find(|n| !part.names.contains_key(*n)) {
        return Err(format!("the single-file reader would expect the {comp} to hold `{name}`, which it does not"));
    }
    let own = |n: &str| (comp.to_owned(), n.to_owned());
    let mut out = Vec::with_capacity(groups.len() + extra.len());
    for (key, names) in groups {
        let srcs: Vec<(&str, &Source)> = names.iter().map(|n| (*n, &forward[*n])).collect();
        let make = match srcs.as_slice() {
            [(n, Source::Same(_) | Source::Squeeze(_))] => Make::Same(comp.to_owned(), (*n).to_owned()),
            [(n, Source::Transpose(_))] => Make::Transpose(comp.to_owned(), (*n).to_owned()),
            [(n, Source::SwapHalves(_))] => Make::SwapHalves(comp.to_owned(), (*n).to_owned()),
            parts => {
                // fused: every part a slice of rows, together covering the tensor in order
                let mut order: Vec<(usize, &str)> = Vec::new();
                for (n, src) in parts {
                    match src {
                        Source::Rows(_, p, of) if *of == parts.len() => order.push((*p, n)),
                        Source::Narrow(_, start, _) => order.push((*start, n)),
                        _ => return Err(format!("`{key}` would be made of {} tensors that do not join", parts.len())),
                    }
                }
                order.sort();
                Make::Join(order.into_iter().map(|(_, n)| own(n)).collect())
            }
        };
        out.push(Target { key: key.to_owned(), shape: file_shapes[key].clone(), make });
    }
    out.extend(extra.into_iter().map(|k| Target { shape: file_shapes[&k].clone(), key: k, make: Make::Zeros }));
    Ok(out)
}
