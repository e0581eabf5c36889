//! Lagrange extrapolation of the data prediction x0 over step indices (SADA's late-phase skips).

use candle_core::Tensor;

use crate::error::{Error, Result};

/// The Lagrange basis weights of nodes `k` evaluated at `at`: w_i = prod_{j != i} (at - k_j) / (k_i - k_j).
pub fn weights(nodes: &[usize], at: usize) -> Vec<f64> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, &ki)| {
            nodes
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, &kj)| (at as f64 - kj as f64) / (ki as f64 - kj as f64))
                .product()
        })
        .collect()
}

/// The interpolating polynomial through `(k_i, x_i)` evaluated at step `at`.
pub fn extrapolate(anchors: &[(usize, Tensor)], at: usize) -> Result<Tensor> {
    if anchors.is_empty() {
        return Err(Error::param("lagrange_term", "no Lagrange anchors recorded yet"));
    }
    let nodes: Vec<usize> = anchors.iter().map(|(k, _)| *k).collect();
    let mut acc: Option<Tensor> = None;
    for ((_, x), w) in anchors.iter().zip(weights(&nodes, at)) {
        let term = x.affine(w, 0.0)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    Ok(acc.expect("anchors is not empty"))
}
