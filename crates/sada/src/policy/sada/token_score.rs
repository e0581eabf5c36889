//! SADA's token score (`docs/method.md` §3): latent positions whose trajectory is locally
//! unstable (criterion m >= 0) are forced into the next pruned step's computed set.

/// Unstable positions: `values[i] >= 0`; when more than `max_fix` qualify, only the `max_fix`
/// largest are kept (ties broken by position, lowest first).
pub fn score_map(values: &[f32], max_fix: usize) -> Vec<bool> {
    let mut unstable: Vec<usize> = (0..values.len()).filter(|&i| values[i] >= 0.0).collect();
    if unstable.len() > max_fix {
        unstable.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        unstable.truncate(max_fix);
    }
    let mut score = vec![false; values.len()];
    for i in unstable {
        score[i] = true;
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_marks_non_negative_values_when_max_fix_does_not_bind() {
        let v = [-1.0, 0.0, 2.0, -0.5, 3.0, 1.0];
        assert_eq!(score_map(&v, 10), vec![false, true, true, false, true, true]);
        assert_eq!(score_map(&v, 4), vec![false, true, true, false, true, true]);
    }

    #[test]
    fn max_fix_keeps_the_largest() {
        let v = [-1.0, 0.0, 2.0, -0.5, 3.0, 1.0];
        assert_eq!(score_map(&v, 2), vec![false, false, true, false, true, false]);
        assert_eq!(score_map(&v, 0), vec![false; 6]);
    }
}
