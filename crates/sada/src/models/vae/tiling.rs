//! diffusers' `enable_tiling` for the autoencoder: a large image is decoded (or encoded) in
//! overlapping square tiles, each through the whole network, and neighbouring tiles are
//! blended linearly across their overlap, so the activation memory is that of one tile
//! whatever the image's size. The tiles, overlaps and blending order are diffusers'
//! (`AutoencoderKL.tiled_decode` / `_tiled_encode`, 0.34): each tile is first blended with
//! the one above it and then with the one to its left, both already blended themselves.

use candle_core::Tensor;

/// One direction of tiling: the input's tile size, the stride between tiles, how many output
/// rows (columns) a tile blends with its neighbour's, and how many of a tile's output rows
/// are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiles {
    /// Input tile side.
    pub tile: usize,
    /// Input stride between tiles (`tile` less the overlap).
    pub stride: usize,
    /// Output rows (columns) blended across a seam.
    pub blend: usize,
    /// Output rows (columns) a tile contributes.
    pub keep: usize,
}

impl Tiles {
    /// diffusers' geometry for an input tile of `input` that maps to an output tile of
    /// `output` (decoding: latent tile -> image tile; encoding: the reverse), overlapping by
    /// `overlap` (diffusers' `tile_overlap_factor`, 0.25).
    pub fn new(input: usize, output: usize, overlap: f64) -> Self {
        let blend = (output as f64 * overlap) as usize;
        Self { tile: input, stride: ((input as f64 * (1.0 - overlap)) as usize).max(1), blend, keep: output - blend }
    }

    /// Whether an `h x w` input needs more than one tile.
    pub fn applies(&self, h: usize, w: usize) -> bool {
        h > self.tile || w > self.tile
    }

    /// Run `f` on every tile of `x` (`[B, C, H, W]`) and assemble the blended outputs.
    pub fn run(&self, x: &Tensor, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let mut above: Vec<Tensor> = Vec::new();
        let mut rows = Vec::new();
        for i in (0..h).step_by(self.stride) {
            let mut row: Vec<Tensor> = Vec::new();
            let mut kept = Vec::new();
            for (j, x0) in (0..w).step_by(self.stride).enumerate() {
                let crop = x.narrow(2, i, self.tile.min(h - i))?.narrow(3, x0, self.tile.min(w - x0))?;
                let mut t = f(&crop)?;
                if let Some(a) = above.get(j) {
                    t = blend(a, &t, self.blend, 2)?;
                }
                if let Some(l) = row.last() {
                    t = blend(l, &t, self.blend, 3)?;
                }
                let (th, tw) = (t.dim(2)?, t.dim(3)?);
                kept.push(t.narrow(2, 0, self.keep.min(th))?.narrow(3, 0, self.keep.min(tw))?);
                row.push(t);
            }
            rows.push(Tensor::cat(&kept, 3)?);
            // only the row above is read again: earlier rows' tiles are released
            above = row;
        }
        Tensor::cat(&rows, 2)
    }
}

/// diffusers' `blend_v` (`dim` 2) / `blend_h` (`dim` 3): the first `extent` rows of `b` become
/// `a`'s last rows weighted `1 - y / extent` plus their own weighted `y / extent`.
fn blend(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> candle_core::Result<Tensor> {
    let e = extent.min(a.dim(dim)?).min(b.dim(dim)?);
    if e == 0 {
        return Ok(b.clone());
    }
    let mut shape = vec![1usize; 4];
    shape[dim] = e;
    // the weights as diffusers forms them (Python floats), rounded to the tensors' f32
    let up: Vec<f32> = (0..e).map(|y| (y as f64 / e as f64) as f32).collect();
    let down: Vec<f32> = (0..e).map(|y| (1.0 - y as f64 / e as f64) as f32).collect();
    let (up, down) = (Tensor::from_vec(up, shape.as_slice(), b.device())?, Tensor::from_vec(down, shape.as_slice(), b.device())?);
    let (up, down) = (up.to_dtype(b.dtype())?, down.to_dtype(b.dtype())?);
    let tail = a.narrow(dim, a.dim(dim)? - e, e)?;
    let head = (tail.broadcast_mul(&down)? + b.narrow(dim, 0, e)?.broadcast_mul(&up)?)?;
    let rest = b.dim(dim)? - e;
    if rest == 0 {
        return Ok(head);
    }
    Tensor::cat(&[head, b.narrow(dim, e, rest)?], dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn an_identity_network_comes_back_whole_and_seams_blend_linearly() {
        let dev = Device::Cpu;
        // input tile 8, stride 6, identity output: blending equal overlaps changes nothing
        let tiles = Tiles::new(8, 8, 0.25);
        assert_eq!(tiles, Tiles { tile: 8, stride: 6, blend: 2, keep: 6 });
        let x = Tensor::arange(0f32, (2 * 3 * 13 * 17) as f32, &dev).unwrap().reshape((2, 3, 13, 17)).unwrap();
        let y = tiles.run(&x, |t| Ok(t.clone())).unwrap();
        assert_eq!(y.dims(), x.dims());
        let d = (&y - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0);
        // a network that adds a different constant to each tile: the seam ramps from one to the next
        let counter = std::sync::atomic::AtomicUsize::new(0);
        let y = tiles
            .run(&Tensor::zeros((1, 1, 8, 14), DType::F32, &dev).unwrap(), |t| t + counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64 * 4.0)
            .unwrap();
        let row: Vec<f32> = y.get(0).unwrap().get(0).unwrap().get(0).unwrap().to_vec1().unwrap();
        // tiles at x = 0, 6, 12; the second's first two columns: 0 * 1 + 4 * 0, then 0 * 0.5 + 4 * 0.5
        assert_eq!(row, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 6.0]);
    }
}
