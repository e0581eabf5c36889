//! A frozen weight matrix `[rows, row_len]` as the CPU kernels read it: f32 values in place, or
//! a smaller type's blocks (`--weights f16|q8_0|...`, a GGUF file's) widened a piece at a time
//! into a buffer the product reads while it is still in cache. Widening the whole weight for
//! each use instead wrote and re-read an f32 copy as large as the f32 model.
//!
//! The pieces follow a matrix product's own blocking: panels of up to [`PANEL_ROWS`] rows and,
//! within a panel, chunks of the reduction axis (the row's values) of about [`PIECE_BYTES`],
//! each multiplied and accumulated in turn. A product split so packs each operand once, as
//! one call would; splitting the rows finely instead (one small panel per thread) re-packed the
//! other operand for every panel and cost SD-2.1 at 512 px 1.3x the f32 time.

use std::ops::Range;

use rayon::prelude::*;

use crate::models::gguf::{dequantize_serial, GgmlType};

/// Rows per panel: the products' other operand is packed once per panel, so panels are large.
pub(crate) const PANEL_ROWS: usize = 1024;
/// About this many bytes of f32 per widened piece: half a core's L2 (1 MB on Zen 4 / 5, 2 MB on
/// recent Xeons), so the piece is still there when the product packs it. 2 MB pieces spilled
/// to L3: SD-2.1 at 256 px cost 1.19x the f32 time with f16 weights and 1.17x with q8_0, against
/// 1.03x and 1.10x with 512 KB (512 px: within noise either way).
pub(crate) const PIECE_BYTES: usize = 512 << 10;

/// One widened piece: `values` are rows `rows` x columns `cols` of the weight, row-major.
pub struct Piece<'a> {
    /// The weight's rows this piece covers.
    pub rows: Range<usize>,
    /// The values of each row it covers (a range of the reduction axis).
    pub cols: Range<usize>,
    /// `rows.len() x cols.len()` f32 values.
    pub values: &'a [f32],
}

/// A row-major `[rows, row_len]` weight.
#[derive(Clone, Copy)]
pub struct WeightRows<'a> {
    rows: usize,
    row_len: usize,
    data: Data<'a>,
}

#[derive(Clone, Copy)]
enum Data<'a> {
    F32(&'a [f32]),
    /// Whole blocks of the type; a row is a whole number of blocks.
    Blocks(GgmlType, &'a [u8]),
}

impl<'a> WeightRows<'a> {
    /// f32 values, `rows * row_len` of them.
    pub fn f32(values: &'a [f32], rows: usize, row_len: usize) -> candle_core::Result<Self> {
        if rows.checked_mul(row_len) != Some(values.len()) {
            candle_core::bail!("weight of {} values read as [{rows}, {row_len}]", values.len());
        }
        Ok(Self { rows, row_len, data: Data::F32(values) })
    }

    /// Blocks of `ty` over `rows` rows of `row_len` values, each row whole blocks.
    pub fn blocks(ty: GgmlType, bytes: &'a [u8], rows: usize, row_len: usize) -> candle_core::Result<Self> {
        let row_bytes = ty.bytes_for(row_len);
        if row_bytes.and_then(|b| b.checked_mul(rows)) != Some(bytes.len()) {
            candle_core::bail!("{} bytes of {ty:?} blocks read as [{rows}, {row_len}] values", bytes.len());
        }
        Ok(Self { rows, row_len, data: Data::Blocks(ty, bytes) })
    }

    /// `(rows, row_len)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.row_len)
    }

    /// All values when they are stored as f32.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        match self.data {
            Data::F32(v) => Some(v),
            Data::Blocks(..) => None,
        }
    }

    /// Rows `first..first + n`, whole: a view when stored as f32, else widened into `buf`.
    pub fn get<'b>(&'b self, first: usize, n: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        match self.data {
            Data::F32(v) => &v[first * self.row_len..(first + n) * self.row_len],
            Data::Blocks(..) => self.widen(first..first + n, 0..self.row_len, buf),
        }
    }

    /// Columns per piece: about [`PIECE_BYTES`] over `rows` rows, whole blocks of the type.
    fn chunk_cols(&self, rows: usize) -> usize {
        let block = match self.data {
            Data::F32(_) => 1,
            Data::Blocks(ty, _) => ty.block_size(),
        };
        let want = (PIECE_BYTES / 4 / rows.max(1)).max(block);
        (want / block * block).min(self.row_len).max(1)
    }

    /// Every piece of the weight in product order (panel by panel, chunk by chunk within a
    /// panel), widened into one buffer reused between pieces, each handed to `f`.
    pub fn for_each_piece(&self, mut f: impl FnMut(Piece<'_>)) {
        let mut buf = Vec::new();
        for r0 in (0..self.rows).step_by(PANEL_ROWS) {
            let rows = r0..(r0 + PANEL_ROWS).min(self.rows);
            let step = self.chunk_cols(rows.len());
            for c0 in (0..self.row_len).step_by(step) {
                let cols = c0..(c0 + step).min(self.row_len);
                let values = self.widen(rows.clone(), cols.clone(), &mut buf);
                f(Piece { rows: rows.clone(), cols, values });
            }
        }
    }

    /// Rows `rows`, columns `cols` as f32 values (`cols` on block boundaries, or running to the
    /// row's end), row-major: widened into `buf` by the pool's threads.
    fn widen<'b>(&self, rows: Range<usize>, cols: Range<usize>, buf: &'b mut Vec<f32>) -> &'b [f32] {
        let (width, len) = (cols.len(), rows.len() * cols.len());
        buf.resize(len, 0.0);
        let out = &mut buf[..len];
        match self.data {
            Data::F32(v) => out.par_chunks_mut(width.max(1)).enumerate().for_each(|(i, o)| {
                let from = (rows.start + i) * self.row_len + cols.start;
                o.copy_from_slice(&v[from..from + width]);
            }),
            Data::Blocks(ty, bytes) => {
                let (bs, ts) = (ty.block_size(), ty.type_size());
                debug_assert!(cols.start.is_multiple_of(bs) && (width.is_multiple_of(bs) || cols.end == self.row_len));
                // rows in groups of a few thousand values per job
                let per_job = (8192 / width.max(1)).max(1);
                out.par_chunks_mut(width.max(1) * per_job).enumerate().for_each(|(j, o)| {
                    for (i, o) in o.chunks_mut(width.max(1)).enumerate() {
                        let from = (rows.start + j * per_job + i) * self.row_len + cols.start;
                        dequantize_serial(ty, &bytes[from / bs * ts..(from + width) / bs * ts], o);
                    }
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::gguf::{dequantize, quantize};

    #[test]
    fn pieces_cover_the_weight_once_in_product_order() {
        // two panels (1024 + 76 rows), each in chunks of whole blocks
        let (rows, row_len) = (PANEL_ROWS + 76, 1056);
        let values = crate::noise::normal_samples(rows * row_len, 5);
        for ty in [GgmlType::F16, GgmlType::Q8_0] {
            let mut bytes = Vec::new();
            quantize(ty, &values, &mut bytes).unwrap();
            let mut whole = vec![0f32; values.len()];
            dequantize(ty, &bytes, &mut whole);
            let w = WeightRows::blocks(ty, &bytes, rows, row_len).unwrap();
            let mut seen = vec![0u8; values.len()];
            let mut order = Vec::new();
            w.for_each_piece(|p| {
                assert!(p.values.len() * 4 <= PIECE_BYTES.max(p.rows.len() * 32 * 4), "{ty:?}: a piece of {} values", p.values.len());
                assert!(p.cols.start % ty.block_size() == 0);
                for (i, r) in p.rows.clone().enumerate() {
                    let want = &whole[r * row_len..][p.cols.clone()];
                    assert_eq!(&p.values[i * p.cols.len()..][..p.cols.len()], want, "{ty:?} row {r}");
                    seen[r * row_len..][p.cols.clone()].iter_mut().for_each(|s| *s += 1);
                }
                order.push((p.rows.start, p.cols.start));
            });
            assert!(seen.iter().all(|&s| s == 1), "{ty:?}: every value exactly once");
            assert!(order.windows(2).all(|o| o[0] < o[1]) && order.len() > 2, "{ty:?}: {order:?}");
            let mut buf = Vec::new();
            assert_eq!(w.get(2, 3, &mut buf), &whole[2 * row_len..5 * row_len], "{ty:?}");
            assert!(WeightRows::blocks(ty, &bytes[1..], rows, row_len).is_err(), "a length that is not the shape's is refused");
        }
        let f = WeightRows::f32(&values, rows, row_len).unwrap();
        assert_eq!(f.get(6, 1, &mut Vec::new()), &values[6 * row_len..7 * row_len]);
        assert!(WeightRows::f32(&values, rows + 1, row_len).is_err());
    }
}
