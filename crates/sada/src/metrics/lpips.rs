//! LPIPS (Zhang et al., CVPR 2018), version 0.1, as the `lpips` package computes it: both images
//! through a frozen backbone (AlexNet's or VGG-16's `features`), each of five layers' activations
//! normalised to unit length per pixel, squared differences weighted per channel by the learned
//! linear layer and averaged over the pixels, and the five layers summed.
//!
//! Weights come from files the user supplies (nothing is downloaded): the `lpips` package's
//! state dict (`net.slice{k}.{i}.*` for the backbone, `lin{k}.model.1.weight` for the linear
//! layers, as `tools/export_lpips.py` saves it), or torchvision's backbone (`features.{i}.*`)
//! plus the package's linear-layer file, in any number of safetensors or PyTorch files.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::image::RgbImage;

/// Which backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LpipsNet {
    /// AlexNet's `features` (the `lpips` package's default, `net='alex'`).
    Alex,
    /// VGG-16's `features` (`net='vgg'`).
    Vgg,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// `features.{index}` convolution (stride, padding), then ReLU.
    Conv { index: usize, stride: usize, padding: usize },
    /// Max pooling (kernel, stride), no padding, floor mode.
    Pool { kernel: usize, stride: usize },
}

impl LpipsNet {
    /// The five slices of torchvision's `features`, each ending at the activation LPIPS reads.
    fn slices(self) -> Vec<Vec<Op>> {
        use Op::*;
        let conv = |index| Conv { index, stride: 1, padding: 1 };
        match self {
            LpipsNet::Alex => vec![
                vec![Conv { index: 0, stride: 4, padding: 2 }],
                vec![Pool { kernel: 3, stride: 2 }, Conv { index: 3, stride: 1, padding: 2 }],
                vec![Pool { kernel: 3, stride: 2 }, conv(6)],
                vec![conv(8)],
                vec![conv(10)],
            ],
            LpipsNet::Vgg => vec![
                vec![conv(0), conv(2)],
                vec![Pool { kernel: 2, stride: 2 }, conv(5), conv(7)],
                vec![Pool { kernel: 2, stride: 2 }, conv(10), conv(12), conv(14)],
                vec![Pool { kernel: 2, stride: 2 }, conv(17), conv(19), conv(21)],
                vec![Pool { kernel: 2, stride: 2 }, conv(24), conv(26), conv(28)],
            ],
        }
    }

    /// Output channels of the five slices.
    pub fn channels(self) -> [usize; 5] {
        match self {
            LpipsNet::Alex => [64, 192, 384, 256, 256],
            LpipsNet::Vgg => [64, 128, 256, 512, 512],
        }
    }

    /// `features.{index}`'s weight shape [out, in, k, k].
    fn conv_shape(self, index: usize) -> [usize; 4] {
        match self {
            LpipsNet::Alex => match index {
                0 => [64, 3, 11, 11],
                3 => [192, 64, 5, 5],
                6 => [384, 192, 3, 3],
                8 => [256, 384, 3, 3],
                _ => [256, 256, 3, 3],
            },
            LpipsNet::Vgg => {
                let (cin, cout) = match index {
                    0 => (3, 64),
                    2 => (64, 64),
                    5 => (64, 128),
                    7 => (128, 128),
                    10 => (128, 256),
                    12 | 14 => (256, 256),
                    17 => (256, 512),
                    _ => (512, 512),
                };
                [cout, cin, 3, 3]
            }
        }
    }

    /// The backbone's convolutions in order: (slice 0..5, `features` index, weight shape).
    pub fn convolutions(self) -> Vec<(usize, usize, [usize; 4])> {
        let mut out = Vec::new();
        for (k, slice) in self.slices().into_iter().enumerate() {
            for op in slice {
                if let Op::Conv { index, .. } = op {
                    out.push((k, index, self.conv_shape(index)));
                }
            }
        }
        out
    }
}

/// A loaded LPIPS network.
pub struct Lpips {
    /// The backbone, recognised from the weights' shapes.
    pub net: LpipsNet,
    /// `features.{index}` -> (weight, bias).
    convs: HashMap<usize, (Tensor, Tensor)>,
    /// Per layer, the linear layer's weights as [1, C, 1, 1].
    lins: Vec<Tensor>,
    shift: Tensor,
    scale: Tensor,
}

/// The `lpips` package's ScalingLayer: ImageNet mean and std moved to [-1, 1] inputs.
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];

impl Lpips {
    /// Load from weight files (safetensors, or PyTorch `.pth`/`.pt`); the backbone is
    /// recognised from the tensors' shapes.
    pub fn load(paths: &[impl AsRef<Path>], device: &Device) -> Result<Self> {
        let mut tensors = HashMap::new();
        for path in paths {
            let path = path.as_ref();
            if !path.is_file() {
                return Err(Error::file(path, "LPIPS weight file not found"));
            }
            let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
            let read: Vec<(String, Tensor)> = if is_safetensors {
                candle_core::safetensors::load(path, device).map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?.into_iter().collect()
            } else {
                candle_core::pickle::read_all(path)
                    .map_err(|e| Error::file(path, format!("cannot read PyTorch weights ({e}); convert them with tools/export_lpips.py")))?
            };
            tensors.extend(read);
        }
        let names: Vec<String> = paths.iter().map(|p| p.as_ref().display().to_string()).collect();
        Self::from_tensors(tensors, device).map_err(|e| match e {
            Error::InvalidParameter { name, message } => Error::param(name, format!("{message} (in {})", names.join(", "))),
            other => other,
        })
    }

    /// Build from named tensors (see the module docs for the names).
    pub fn from_tensors(mut tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        // the lpips state dict names the backbone by slice; torchvision by feature index
        let keys: Vec<String> = tensors.keys().cloned().collect();
        for k in keys {
            if let Some(rest) = k.strip_prefix("net.slice") {
                if let Some((_, tail)) = rest.split_once('.') {
                    let t = tensors.remove(&k).expect("listed");
                    tensors.insert(format!("features.{tail}"), t);
                }
            }
        }
        let first =
            tensors.get("features.0.weight").ok_or_else(|| Error::param("lpips weights", "no backbone: expected features.0.weight or net.slice1.0.weight"))?;
        let net = match first.dims() {
            [64, 3, 11, 11] => LpipsNet::Alex,
            [64, 3, 3, 3] => LpipsNet::Vgg,
            other => {
                return Err(Error::param(
                    "lpips weights",
                    format!("features.0.weight has shape {other:?}; expected AlexNet's [64, 3, 11, 11] or VGG-16's [64, 3, 3, 3]"),
                ))
            }
        };
        let take = |tensors: &HashMap<String, Tensor>, name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = tensors.get(name).ok_or_else(|| Error::param("lpips weights", format!("missing tensor `{name}`")))?;
            if t.dims() != shape {
                return Err(Error::Shape { what: format!("LPIPS tensor `{name}`"), expected: format!("{shape:?}"), got: format!("{:?}", t.dims()) });
            }
            if !t.dtype().is_float() {
                return Err(Error::param("lpips weights", format!("tensor `{name}` is {:?}, expected floating point", t.dtype())));
            }
            Ok(t.to_dtype(DType::F32)?.to_device(device)?)
        };
        let mut convs = HashMap::new();
        for (_, index, shape) in net.convolutions() {
            let w = take(&tensors, &format!("features.{index}.weight"), &shape)?;
            let b = take(&tensors, &format!("features.{index}.bias"), &shape[..1])?;
            convs.insert(index, (w, b));
        }
        let lins =
            net.channels().iter().enumerate().map(|(k, &c)| take(&tensors, &format!("lin{k}.model.1.weight"), &[1, c, 1, 1])).collect::<Result<Vec<_>>>()?;
        let buffer = |name: &str, default: [f32; 3]| -> Result<Tensor> {
            match tensors.get(name) {
                Some(_) => take(&tensors, name, &[1, 3, 1, 1]),
                None => Ok(Tensor::new(&default, device)?.reshape((1, 3, 1, 1))?),
            }
        };
        let (shift, scale) = (buffer("scaling_layer.shift", SHIFT)?, buffer("scaling_layer.scale", SCALE)?);
        for (name, t) in convs.values().flat_map(|(w, b)| [("backbone", w), ("backbone", b)]).chain(lins.iter().map(|l| ("linear layer", l))) {
            let s = t.abs()?.sum_all()?.to_scalar::<f32>()?;
            if !s.is_finite() {
                return Err(Error::param("lpips weights", format!("a {name} tensor holds NaN or infinite values")));
            }
        }
        Ok(Self { net, convs, lins, shift, scale })
    }

    /// The five activations LPIPS compares, for images in [-1, 1] ([N, 3, H, W]).
    fn features(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut h = x.broadcast_sub(&self.shift)?.broadcast_div(&self.scale)?;
        let mut out = Vec::new();
        for slice in self.net.slices() {
            for op in slice {
                h = match op {
                    Op::Conv { index, stride, padding } => {
                        let (w, b) = &self.convs[&index];
                        h.conv2d(w, padding, stride, 1, 1)?.broadcast_add(&b.reshape((1, (), 1, 1))?)?.relu()?
                    }
                    Op::Pool { kernel, stride } => h.max_pool2d_with_stride(kernel, stride)?,
                };
            }
            out.push(h.clone());
        }
        Ok(out)
    }

    /// LPIPS between two batches of images in [-1, 1] ([N, 3, H, W] each): one distance per image.
    pub fn distance(&self, a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
        if a.dims() != b.dims() || a.rank() != 4 || a.dim(1)? != 3 {
            return Err(Error::Shape {
                what: "LPIPS images".into(),
                expected: "two [N, 3, H, W] batches of the same shape".into(),
                got: format!("{:?} and {:?}", a.dims(), b.dims()),
            });
        }
        let (fa, fb) = (self.features(&a.to_dtype(DType::F32)?)?, self.features(&b.to_dtype(DType::F32)?)?);
        let mut total: Option<Tensor> = None;
        for ((x, y), lin) in fa.iter().zip(&fb).zip(&self.lins) {
            let d = (unit(x)? - unit(y)?)?.sqr()?;
            // the 1x1 linear layer, then the mean over the pixels
            let v = d.broadcast_mul(lin)?.sum_keepdim(1)?.mean(3)?.mean(2)?.flatten_all()?;
            total = Some(match total {
                Some(t) => (t + v)?,
                None => v,
            });
        }
        Ok(total.ok_or_else(|| Error::internal("LPIPS has five layers"))?.to_vec1()?)
    }

    /// LPIPS between two 8-bit RGB images.
    pub fn distance_rgb(&self, a: &RgbImage, b: &RgbImage) -> Result<f64> {
        if (a.width, a.height) != (b.width, b.height) {
            return Err(Error::Shape { what: "lpips".into(), expected: format!("{}x{}", b.width, b.height), got: format!("{}x{}", a.width, a.height) });
        }
        let device = self.shift.device();
        let to = |img: &RgbImage| -> Result<Tensor> {
            let v: Vec<f32> = img.pixels.iter().map(|&p| p as f32 / 127.5 - 1.0).collect();
            Ok(Tensor::from_vec(v, (1, img.height, img.width, 3), device)?.permute((0, 3, 1, 2))?.contiguous()?)
        };
        Ok(self.distance(&to(a)?, &to(b)?)?[0] as f64)
    }
}

/// `normalize_tensor`: each pixel's channel vector divided by its length (+1e-10).
fn unit(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(1)?.sqrt()? + 1e-10)?;
    Ok(x.broadcast_div(&norm)?)
}
