//! Small statistics for the trust analysis: paired bootstrap confidence intervals, the exact
//! McNemar test, medians and means.

use crate::dms::SplitMix64;

pub use crate::eval::report::auc;

/// Resamples of the paired bootstrap.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
/// Seed of the paired bootstrap (fixed, so that reports are reproducible).
pub const BOOTSTRAP_SEED: u64 = 0x7472_7573_745f_6263;

/// The mean of `values` (`None` if empty).
pub fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The median of the finite `values` (`None` if there are none); the mean of the two middle
/// values for an even count.
pub fn median(values: impl IntoIterator<Item = f32>) -> Option<f32> {
    let mut v: Vec<f32> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f32::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The fraction of `flags` that are true (`None` if empty).
pub fn fraction(flags: impl IntoIterator<Item = bool>) -> Option<f64> {
    mean(flags.into_iter().map(|b| if b { 1.0 } else { 0.0 }))
}

/// Percentile 95% confidence interval of `mean(a) - mean(b)` over paired outcomes, by resampling
/// the pairs with replacement ([`BOOTSTRAP_RESAMPLES`] times, seeded by `seed`). `None` when
/// there are no pairs or the slices differ in length.
pub fn paired_bootstrap_ci(a: &[bool], b: &[bool], seed: u64) -> Option<(f64, f64)> {
    let n = a.len();
    if n == 0 || b.len() != n {
        return None;
    }
    let d: Vec<i32> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) - i32::from(y))
        .collect();
    let mut rng = SplitMix64::new(seed);
    let mut diffs: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            let sum: i64 = (0..n)
                .map(|_| i64::from(d[(rng.next_u64() % n as u64) as usize]))
                .sum();
            sum as f64 / n as f64
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| diffs[((q * (diffs.len() - 1) as f64).round() as usize).min(diffs.len() - 1)];
    Some((at(0.025), at(0.975)))
}

/// Exact two-sided McNemar test on the discordant pairs `b` and `c`: the binomial probability,
/// under p = 1/2, of a split at least as uneven as observed (capped at 1; 1 when `b + c = 0`).
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // ln P(X = i) for X ~ Bin(n, 1/2), accumulated in log space so that large n cannot underflow
    // the first terms to zero before the sum.
    let mut ln_pmf = n as f64 * 0.5f64.ln();
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_pmf += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += ln_pmf.exp();
    }
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_known_values() {
        assert!((mcnemar_exact(10, 0) - 0.001953125).abs() < 1e-9);
        assert!((mcnemar_exact(0, 10) - 0.001953125).abs() < 1e-9);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        // Bin(12, 1/2): P(X <= 2) = (1 + 12 + 66) / 4096.
        assert!((mcnemar_exact(2, 10) - 2.0 * 79.0 / 4096.0).abs() < 1e-12);
        assert!(mcnemar_exact(600, 400) < 1e-9);
        assert!(mcnemar_exact(5000, 5000) > 0.9);
    }

    #[test]
    fn bootstrap_ci_contains_the_difference_and_is_seeded() {
        let a: Vec<bool> = (0..100).map(|i| i % 10 < 8).collect();
        let b: Vec<bool> = (0..100).map(|i| i % 10 < 5).collect();
        let (lo, hi) = paired_bootstrap_ci(&a, &b, 1).unwrap();
        assert!(lo <= 0.3 && 0.3 <= hi, "{lo} {hi}");
        assert!(lo > 0.1 && hi < 0.5, "{lo} {hi}");
        assert_eq!(paired_bootstrap_ci(&a, &b, 1), Some((lo, hi)));
        assert_eq!(paired_bootstrap_ci(&a, &a, 1), Some((0.0, 0.0)));
        assert_eq!(paired_bootstrap_ci(&[], &[], 1), None);
        assert_eq!(paired_bootstrap_ci(&[true], &[], 1), None);
    }

    #[test]
    fn medians_means_and_fractions() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, f32::NAN, 3.0]), Some(2.5));
        assert_eq!(median([]), None);
        assert_eq!(mean([1.0, 2.0]), Some(1.5));
        assert_eq!(fraction([true, false, false, true]), Some(0.5));
        assert_eq!(fraction([]), None);
        assert_eq!(auc(&[1.0], &[0.0]), Some(1.0));
    }
}
