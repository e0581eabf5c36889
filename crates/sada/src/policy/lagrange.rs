//! Lagrange extrapolation of the data prediction x0: over step indices (SADA's late-phase skips)
//! or over any time variable on a non-uniform grid (`sada+`'s skips, in the solver's own time).

use candle_core::Tensor;

use crate::error::{Error, Result};

/// The Lagrange basis weights of nodes `k` evaluated at `at`: w_i = prod_{j != i} (at - k_j) / (k_i - k_j).
pub fn weights(nodes: &[usize], at: usize) -> Vec<f64> {
    let nodes: Vec<f64> = nodes.iter().map(|&k| k as f64).collect();
    weights_at(&nodes, at as f64)
}

/// [`weights`] on real nodes (distinct, in any order): the same formula, any grid.
pub fn weights_at(nodes: &[f64], at: f64) -> Vec<f64> {
    nodes.iter().enumerate().map(|(i, &ki)| nodes.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &kj)| (at - kj) / (ki - kj)).product()).collect()
}

/// The interpolating polynomial through `(k_i, x_i)` evaluated at step `at`.
pub fn extrapolate(anchors: &[(usize, Tensor)], at: usize) -> Result<Tensor> {
    if anchors.is_empty() {
        return Err(Error::param("lagrange_term", "no Lagrange anchors recorded yet"));
    }
    let nodes: Vec<usize> = anchors.iter().map(|(k, _)| *k).collect();
    let xs: Vec<&Tensor> = anchors.iter().map(|(_, x)| x).collect();
    combine(&xs, &weights(&nodes, at))
}

/// The interpolating polynomial through `(t_i, x_i)` evaluated at `at` (any real grid).
pub fn extrapolate_at(anchors: &[(f64, Tensor)], at: f64) -> Result<Tensor> {
    if anchors.is_empty() {
        return Err(Error::internal("extrapolation without anchors"));
    }
    let nodes: Vec<f64> = anchors.iter().map(|(t, _)| *t).collect();
    let xs: Vec<&Tensor> = anchors.iter().map(|(_, x)| x).collect();
    combine(&xs, &weights_at(&nodes, at))
}

fn combine(xs: &[&Tensor], weights: &[f64]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (x, &w) in xs.iter().zip(weights) {
        let term = x.affine(w, 0.0)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    Ok(acc.expect("anchors is not empty"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn weights_are_a_partition_of_unity_and_exact_at_nodes() {
        let nodes = [9, 13, 17, 21];
        for at in [9, 22, 26] {
            let w = weights(&nodes, at);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert_eq!(weights(&nodes, 13), vec![0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn extrapolation_is_exact_on_polynomials_up_to_the_anchor_count() {
        // With 4 anchors, any cubic is reproduced exactly; a quartic is not.
        let nodes = [9usize, 13, 17, 21];
        let cubic = |k: f64| 0.5 - 0.25 * k + 0.01 * k * k - 0.0003 * k * k * k;
        let quartic = |k: f64| 1e-4 * k.powi(4);
        for (f, exact) in [(&cubic as &dyn Fn(f64) -> f64, true), (&quartic, false)] {
            let anchors: Vec<(usize, Tensor)> =
                nodes.iter().map(|&k| (k, Tensor::new(&[f(k as f64) as f32, 2.0 * f(k as f64) as f32], &Device::Cpu).unwrap())).collect();
            let got: Vec<f32> = extrapolate(&anchors, 26).unwrap().to_vec1().unwrap();
            let want = f(26.0);
            let err = (got[0] as f64 - want).abs();
            assert_eq!(err < 1e-4, exact, "error {err} (exact expected: {exact})");
            assert!((got[1] as f64 - 2.0 * got[0] as f64).abs() < 1e-4);
        }
    }
}
