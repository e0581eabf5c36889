//! SADA's decision rule (`docs/method.md` §4) and cache-refresh schedule (§7), free of tensors so that they can
//! be read, and tested, on their own.

use super::config::SadaConfig;
use crate::policy::plan::SkipKind;

/// Whether and how a computed step inside the accelerated range uses the block caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Outside acc_range: no caching.
    None,
    /// Compute every token and overwrite every block cache.
    Refresh,
    /// Compute a token subset, read the rest from the caches.
    Prune,
}

/// SADA's step-skipping decision and cache-refresh schedule over one run (`docs/method.md` §4, §7).
#[derive(Debug, Clone)]
pub struct DecisionRule {
    a0: usize,
    a1: usize,
    max_interval: usize,
    /// (lagrange_int, lagrange_step) when the Lagrange phase is on.
    lagrange: Option<(usize, usize)>,
    cons_skip: usize,
    last_skip: Option<usize>,
}

impl DecisionRule {
    /// A rule for `cfg`'s accelerated range (start raised to 3), `max_interval` and Lagrange phase.
    pub fn new(cfg: &SadaConfig) -> Self {
        let (a0, a1) = cfg.effective_range();
        Self {
            a0,
            a1,
            max_interval: cfg.max_interval,
            lagrange: (cfg.lagrange_term > 0).then_some((cfg.lagrange_int, cfg.lagrange_step)),
            cons_skip: 0,
            last_skip: None,
        }
    }

    /// After step n, whose criterion says `stable` (mean(m) <= 0): is step n+1 skipped, and how?
    /// The checks run in the reference's order; the first that applies wins.
    pub fn decide(&mut self, n: usize, stable: bool) -> Option<SkipKind> {
        let skip = if self.cons_skip >= self.max_interval {
            None
        } else {
            match self.lagrange {
                None => (stable && (self.a0..self.a1).contains(&n)).then_some(SkipKind::AdamsMoulton),
                Some((int, step)) => {
                    if stable && (self.a0..step).contains(&n) {
                        Some(SkipKind::AdamsMoulton)
                    } else if !n.is_multiple_of(int) && (step..self.a1).contains(&n) {
                        Some(SkipKind::Lagrange)
                    } else {
                        None
                    }
                }
            }
        };
        match skip {
            Some(_) => {
                self.cons_skip += 1;
                self.last_skip = Some(n + 1);
            }
            None => self.cons_skip = 0,
        }
        skip
    }

    /// How computed step `s` uses the caches: a full refresh at the start of the range and every
    /// max_interval steps after the last skip, pruning otherwise.
    pub fn cache_use(&self, s: usize) -> CacheUse {
        if !(self.a0..self.a1).contains(&s) {
            return CacheUse::None;
        }
        let since = match self.last_skip {
            None => s - self.a0,
            Some(l) => s - l - 1,
        };
        if since % self.max_interval == 0 {
            CacheUse::Refresh
        } else {
            CacheUse::Prune
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cfg: SadaConfig) -> DecisionRule {
        DecisionRule::new(&cfg)
    }

    /// Run the rule over `n_steps` with a fixed criterion outcome; returns the skipped steps.
    fn skipped(r: &mut DecisionRule, n_steps: usize, stable: impl Fn(usize) -> bool) -> Vec<(usize, SkipKind)> {
        (0..n_steps - 1).filter_map(|n| r.decide(n, stable(n)).map(|k| (n + 1, k))).collect()
    }

    #[test]
    fn published_late_schedule_is_fixed() {
        // §4: with lagrange 4/24/4, compute at 25, 29, ..., 45, skip the three after each,
        // skip 46-47, compute 48-49 -- whatever the criterion says.
        for stable in [true, false] {
            let mut r = rule(SadaConfig::sd2());
            let late: Vec<usize> = skipped(&mut r, 50, |_| stable).into_iter().map(|(s, _)| s).filter(|&s| s > 25).collect();
            let want: Vec<usize> = (26..48).filter(|s| (s - 25) % 4 != 0).collect();
            assert_eq!(late, want, "stable = {stable}");
        }
    }

    #[test]
    fn always_stable_skips_until_max_interval() {
        let cfg = SadaConfig { lagrange_term: 0, ..SadaConfig::sd2() };
        let mut r = rule(cfg);
        let s: Vec<usize> = skipped(&mut r, 50, |_| true).into_iter().map(|(s, _)| s).collect();
        // decisions after n = 10..46: skip 4, compute 1, repeating
        let want: Vec<usize> = (11..48).filter(|s| (s - 11) % 5 != 4).collect();
        assert_eq!(s, want);
    }

    #[test]
    fn never_stable_never_skips_without_lagrange() {
        let cfg = SadaConfig { lagrange_term: 0, ..SadaConfig::sd2() };
        assert!(skipped(&mut rule(cfg), 50, |_| false).is_empty());
    }

    #[test]
    fn acc_range_start_is_raised_to_three_and_end_is_half_open() {
        let cfg = SadaConfig { acc_range: (0, 8), lagrange_term: 0, max_interval: 100, ..SadaConfig::sd2() };
        let s: Vec<usize> = skipped(&mut rule(cfg), 20, |_| true).into_iter().map(|(s, _)| s).collect();
        assert_eq!(s, vec![4, 5, 6, 7, 8]); // decisions after n = 3..=7
    }

    #[test]
    fn max_interval_check_comes_first() {
        // Even in the Lagrange phase, after max_interval skips the next step is computed.
        let cfg = SadaConfig { lagrange_int: 8, lagrange_step: 16, lagrange_term: 1, max_interval: 2, ..SadaConfig::sd2() };
        let mut r = rule(cfg);
        let s: Vec<usize> = skipped(&mut r, 50, |_| false).into_iter().map(|(s, _)| s).collect();
        // n in [16, 47), n % 8 != 0 would skip n+1 = 18..=24 except 25; max_interval 2 breaks runs
        assert_eq!(&s[..4], &[18, 19, 21, 22]);
        assert!(s.windows(3).all(|w| !(w[1] == w[0] + 1 && w[2] == w[1] + 1)), "{s:?}");
    }

    #[test]
    fn am_skip_before_lagrange_step_needs_stability() {
        let mut r = rule(SadaConfig::sd2());
        // stable only at n = 12: skip step 13 (AM), nothing else before step 24
        let s = skipped(&mut r, 50, |n| n == 12);
        assert_eq!(s.iter().filter(|(st, _)| *st <= 25).collect::<Vec<_>>(), vec![&(13, SkipKind::AdamsMoulton)]);
        assert!(s.iter().filter(|(st, _)| *st > 25).all(|(_, k)| *k == SkipKind::Lagrange));
    }

    #[test]
    fn refresh_schedule_before_and_after_skips() {
        let cfg = SadaConfig { lagrange_term: 0, ..SadaConfig::sd2() };
        let mut r = rule(cfg);
        assert_eq!(r.cache_use(9), CacheUse::None);
        assert_eq!(r.cache_use(10), CacheUse::Refresh); // (s - a0) % 4 == 0
        assert_eq!(r.cache_use(11), CacheUse::Prune);
        assert_eq!(r.cache_use(14), CacheUse::Refresh);
        assert_eq!(r.cache_use(47), CacheUse::None);
        // a skip at step 16 (decided after n = 15): refresh at 17, 21, ...; prune at 18-20
        for n in 0..15 {
            r.decide(n, false);
        }
        assert_eq!(r.decide(15, true), Some(SkipKind::AdamsMoulton));
        assert_eq!(r.cache_use(17), CacheUse::Refresh);
        assert_eq!(r.cache_use(18), CacheUse::Prune);
        assert_eq!(r.cache_use(21), CacheUse::Refresh);
    }
}
