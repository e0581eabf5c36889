//! Training data made by the project itself (no downloads).

pub mod shapes;
