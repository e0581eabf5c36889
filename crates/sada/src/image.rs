//! Decoded images: tensor -> 8-bit RGB, and PNG files that carry their generation settings.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// An 8-bit RGB image, row-major.
#[derive(Debug, Clone)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes, R, G, B per pixel.
    pub pixels: Vec<u8>,
}

/// `[3, H, W]` (or `[1, 3, H, W]`) in [-1, 1] -> 8-bit RGB, as diffusers' `VaeImageProcessor`
/// postprocesses (x / 2 + 0.5, clamp, * 255, round).
pub fn to_rgb(t: &Tensor) -> Result<RgbImage> {
    let t = if t.rank() == 4 { t.get(0)? } else { t.clone() };
    let (c, h, w) = t.dims3()?;
    if c != 3 {
        return Err(Error::Shape { what: "decoded image".into(), expected: "3 channels".into(), got: format!("{c}") });
    }
    let v: Vec<f32> = ((t.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?.permute((1, 2, 0))?.flatten_all()?.to_vec1()?;
    Ok(RgbImage { width: w, height: h, pixels: v.iter().map(|x| (x * 255.0).round() as u8).collect() })
}

/// Encode as PNG with `text` entries (e.g. "parameters" -> the settings as JSON), as UTF-8
/// `iTXt` chunks so prompts in any script survive.
pub fn png_bytes(img: &RgbImage, text: &[(&str, String)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_itxt_chunk(k.to_string(), v.clone()).map_err(|e| Error::param("png", e.to_string()))?;
        }
        let mut w = enc.write_header().map_err(|e| Error::param("png", e.to_string()))?;
        w.write_image_data(&img.pixels).map_err(|e| Error::param("png", e.to_string()))?;
        w.finish().map_err(|e| Error::param("png", e.to_string()))?;
    }
    Ok(out)
}

/// Images side by side, left to right (same height).
pub fn hstack(images: &[&RgbImage]) -> RgbImage {
    let height = images.iter().map(|i| i.height).max().unwrap_or(0);
    let width: usize = images.iter().map(|i| i.width).sum();
    let mut pixels = vec![0u8; width * height * 3];
    let mut x0 = 0;
    for img in images {
        for y in 0..img.height {
            let src = &img.pixels[y * img.width * 3..(y + 1) * img.width * 3];
            pixels[(y * width + x0) * 3..(y * width + x0 + img.width) * 3].copy_from_slice(src);
        }
        x0 += img.width;
    }
    RgbImage { width, height, pixels }
}

/// Images top to bottom (same width).
pub fn vstack(images: &[&RgbImage]) -> RgbImage {
    let width = images.iter().map(|i| i.width).max().unwrap_or(0);
    let mut pixels = Vec::new();
    let mut height = 0;
    for img in images {
        for y in 0..img.height {
            pixels.extend_from_slice(&img.pixels[y * img.width * 3..(y + 1) * img.width * 3]);
            pixels.resize((height + y + 1) * width * 3, 0);
        }
        height += img.height;
    }
    RgbImage { width, height, pixels }
}

/// Nearest-neighbour enlargement by an integer factor (small images stay crisp to look at).
pub fn upscale(img: &RgbImage, factor: usize) -> RgbImage {
    let (w, h) = (img.width * factor, img.height * factor);
    let mut pixels = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let i = ((y / factor) * img.width + x / factor) * 3;
            pixels.extend_from_slice(&img.pixels[i..i + 3]);
        }
    }
    RgbImage { width: w, height: h, pixels }
}

/// Images with more pixels than this are refused before they are decoded (8k x 8k: control
/// images are resized to the output, itself at most a few thousand pixels wide).
const MAX_PIXELS: u64 = 1 << 26;

/// Read a PNG as 8-bit RGB the way PIL's `convert("RGB")` does: grey is repeated, alpha is
/// dropped (not composited), palettes are expanded, 16-bit samples keep their high byte.
pub fn read_png(path: &std::path::Path) -> Result<RgbImage> {
    let bad = |m: String| Error::file(path, m);
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| bad(format!("not a readable PNG: {e}")))?;
    let (w, h) = (reader.info().width, reader.info().height);
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(bad(format!("{w}x{h} is larger than the {MAX_PIXELS} pixels an input image may have")));
    }
    let size = reader.output_buffer_size().ok_or_else(|| bad("image too large".into()))?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(format!("corrupt PNG: {e}")))?;
    buf.truncate(info.buffer_size());
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(bad("palette PNG was not expanded".into())),
    };
    let pixels = match channels {
        3 => buf,
        c => buf.chunks_exact(c).flat_map(|p| if c < 3 { [p[0]; 3] } else { [p[0], p[1], p[2]] }).collect(),
    };
    Ok(RgbImage { width: info.width as usize, height: info.height as usize, pixels })
}

/// `[1, 3, H, W]` float32 in [0, 1] (diffusers' `pil_to_numpy`: value / 255, no normalisation).
pub fn to_unit_tensor(img: &RgbImage, device: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<f32> = img.pixels.iter().map(|&p| p as f32 / 255.0).collect();
    Ok(Tensor::from_vec(v, (img.height, img.width, 3), device)?.permute((2, 0, 1))?.contiguous()?.unsqueeze(0)?)
}
