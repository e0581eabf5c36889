//! CPU kernels for the hot paths of the denoisers, where candle's generic ops leave speed on
//! the table (see docs/performance.md). Each is checked against the unfused candle ops.

pub mod attention;
pub mod dense;
pub mod group_norm;
pub mod winograd;
pub mod vmath;
