//! The [`Scheduler`] trait and the weight post-processing every scheduler shares.

use super::{DmsError, ModalityWeights, Signals};

/// Maps a request's [`Signals`] to one weight per modality.
pub trait Scheduler: Send + Sync + std::fmt::Debug {
    /// The scheduler's name (its plugin name, or a built-in name such as `off`).
    fn name(&self) -> &str;

    /// Whether this scheduler needs the signal passes (false for fixed/off: the engine skips
    /// them and may pass [`Signals::neutral`]).
    fn needs_signals(&self) -> bool;

    /// The weights for one request: images in order, then the text.
    fn weights(&self, signals: &Signals) -> Result<ModalityWeights, DmsError>;

    /// The scheduler's kind, as written in plugin files (`rule`, `learned`, `script`, `off`,
    /// `fixed`); `custom` for schedulers defined elsewhere.
    fn kind(&self) -> &str {
        "custom"
    }

    /// The model file this scheduler was calibrated or trained for, if it records one (the
    /// engine warns when it serves another model with it).
    fn fitted_for(&self) -> Option<&str> {
        None
    }

    /// The fitted reliability of every modality (images, then the text) that this scheduler
    /// reads from `signals`, if it has reliability models (see [`super::Reliability`]).
    fn reliabilities(&self, _signals: &Signals) -> Option<Vec<f32>> {
        None
    }
}

/// Allowed range of each weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Smallest weight.
    pub w_min: f32,
    /// Largest weight.
    pub w_max: f32,
}

impl Bounds {
    /// The bounds [`clamp_renormalise`] really applies for `m` weights: non-finite `w_min`
    /// becomes 0 and non-finite `w_max` becomes `m`; then `w_min` is raised to at least 0 and
    /// lowered to at most 1, and `w_max` is raised to at least 1 and lowered to at most `m`, so
    /// that a vector summing to `m` always exists.
    pub fn effective(self, m: usize) -> Bounds {
        let m = m.max(1) as f32;
        let lo = if self.w_min.is_finite() {
            self.w_min
        } else {
            0.0
        };
        let hi = if self.w_max.is_finite() {
            self.w_max
        } else {
            m
        };
        Bounds {
            w_min: lo.clamp(0.0, 1.0),
            w_max: hi.max(1.0).min(m),
        }
    }
}

/// Checks that `tau` and the bounds of a scheduler are usable: `tau > 0`, `0 <= w_min <=
/// w_max`, `w_max > 0`, all finite. Returns the offending field and the reason.
pub(crate) fn check_tau_bounds(
    tau: f32,
    w_min: f32,
    w_max: f32,
) -> Result<(), (&'static str, String)> {
    if !tau.is_finite() || tau <= 0.0 {
        return Err(("tau", format!("must be > 0 (got {tau})")));
    }
    if !w_min.is_finite() || w_min < 0.0 {
        return Err(("w_min", format!("must be >= 0 (got {w_min})")));
    }
    if !w_max.is_finite() || w_max <= 0.0 {
        return Err(("w_max", format!("must be > 0 (got {w_max})")));
    }
    if w_min > w_max {
        return Err((
            "w_min",
            format!("must not exceed w_max (got w_min {w_min} > w_max {w_max})"),
        ));
    }
    Ok(())
}

/// Turns a `(field, reason)` pair into [`DmsError::InvalidParameter`].
pub(crate) fn param_error((field, reason): (&str, String)) -> DmsError {
    DmsError::InvalidParameter {
        field: field.to_string(),
        reason,
    }
}

/// Clamp to `[w_min, w_max]` and renormalise so the weights sum to `M = w.len()`.
///
/// Water-filling: the result is `clamp(k * w_i, w_min, w_max)` for the one scale `k` that makes
/// the sum `M`, found by repeatedly scaling the free weights and pinning the side (too low or too
/// high) whose violation is larger. Non-finite inputs become 1 and negative ones 0; if all free
/// weights are 0 they share equally. The bounds used are [`Bounds::effective`].
pub fn clamp_renormalise(w: &mut [f32], bounds: Bounds) {
    let m = w.len();
    if m == 0 {
        return;
    }
    let b = bounds.effective(m);
    let (lo, hi) = (f64::from(b.w_min), f64::from(b.w_max));
    let base: Vec<f64> = w
        .iter()
        .map(|&x| {
            if x.is_finite() {
                f64::from(x.max(0.0))
            } else {
                1.0
            }
        })
        .collect();
    let total = m as f64;
    // `None` = free, `Some(v)` = pinned at a bound.
    let mut pinned: Vec<Option<f64>> = vec![None; m];
    let mut out = vec![1.0f64; m];
    for _ in 0..=m {
        let fixed_sum: f64 = pinned.iter().flatten().sum();
        let free: Vec<usize> = (0..m).filter(|&i| pinned[i].is_none()).collect();
        if free.is_empty() {
            break;
        }
        let need = (total - fixed_sum).max(0.0);
        let free_sum: f64 = free.iter().map(|&i| base[i]).sum();
        for &i in &free {
            out[i] = if free_sum > 0.0 {
                base[i] * need / free_sum
            } else {
                need / free.len() as f64
            };
        }
        let low: f64 = free.iter().map(|&i| (lo - out[i]).max(0.0)).sum();
        let high: f64 = free.iter().map(|&i| (out[i] - hi).max(0.0)).sum();
        if low <= 0.0 && high <= 0.0 {
            break;
        }
        for &i in &free {
            if high >= low && out[i] > hi {
                pinned[i] = Some(hi);
            }
            if low >= high && out[i] < lo {
                pinned[i] = Some(lo);
            }
        }
    }
    for (i, dst) in w.iter_mut().enumerate() {
        let v = pinned[i].unwrap_or(out[i]).clamp(lo, hi);
        *dst = v as f32;
    }
}

/// The weights of a score-based scheduler: `M * softmax(scores / tau)`, clamped to `bounds` and
/// renormalised to sum `M`.
pub fn weights_from_scores(scores: &[f32], tau: f32, bounds: Bounds) -> ModalityWeights {
    let mut w = softmax_weights(scores, tau);
    clamp_renormalise(&mut w, bounds);
    ModalityWeights::from_vec(&w)
}

/// `M * softmax(score / tau)` for `M = scores.len()`, computed stably. `tau` is clamped to at
/// least 1e-3 (non-finite means 1); non-finite scores count as `-inf`; if none is finite all
/// weights are 1.
pub fn softmax_weights(scores: &[f32], tau: f32) -> Vec<f32> {
    let m = scores.len();
    let tau = if tau.is_finite() { tau.max(1e-3) } else { 1.0 };
    let scaled: Vec<f64> = scores
        .iter()
        .map(|&s| {
            let x = f64::from(s) / f64::from(tau);
            if x.is_finite() {
                x
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return vec![1.0; m];
    }
    let exps: Vec<f64> = scaled.iter().map(|&x| (x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (m as f64 * e / sum) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(w: &[f32]) -> f32 {
        w.iter().sum()
    }

    #[test]
    fn softmax_weights_basics() {
        let w = softmax_weights(&[0.0, 0.0, 0.0], 1.0);
        assert_eq!(w, vec![1.0; 3]);
        let w = softmax_weights(&[1.0, 0.0], 1.0);
        assert!((sum(&w) - 2.0).abs() < 1e-6);
        assert!(w[0] > w[1]);
        // Lower temperature sharpens, higher flattens.
        let sharp = softmax_weights(&[1.0, 0.0], 0.1);
        let flat = softmax_weights(&[1.0, 0.0], 10.0);
        assert!(sharp[0] > w[0] && w[0] > flat[0]);
        assert!((sharp[0] - 2.0).abs() < 1e-3);
        // tau clamped, huge scores stable.
        let w = softmax_weights(&[1e30, 0.0], 0.0);
        assert!(w.iter().all(|x| x.is_finite()));
        assert!((sum(&w) - 2.0).abs() < 1e-6);
        assert_eq!(softmax_weights(&[f32::NAN, f32::NAN], 1.0), vec![1.0, 1.0]);
        let w = softmax_weights(&[f32::NAN, 0.0], f32::INFINITY);
        assert_eq!(w, vec![0.0, 2.0]);
        assert!(softmax_weights(&[], 1.0).is_empty());
    }

    #[test]
    fn clamp_renormalise_sums_to_m_within_bounds() {
        let b = Bounds {
            w_min: 0.2,
            w_max: 2.0,
        };
        let mut w = vec![2.9, 0.05, 0.05];
        clamp_renormalise(&mut w, b);
        assert!((sum(&w) - 3.0).abs() < 1e-4, "{w:?}");
        assert!(w.iter().all(|&x| (0.2..=2.0).contains(&x)), "{w:?}");
        assert_eq!(w[0], 2.0);
        // Already valid vectors are unchanged (up to rounding).
        let mut ok = vec![1.2, 0.8];
        clamp_renormalise(&mut ok, b);
        assert!((ok[0] - 1.2).abs() < 1e-6 && (ok[1] - 0.8).abs() < 1e-6);
        // Unnormalised input is rescaled.
        let mut x = vec![2.0, 2.0, 2.0, 2.0];
        clamp_renormalise(&mut x, b);
        assert!(x.iter().all(|&v| (v - 1.0).abs() < 1e-6));
    }

    #[test]
    fn clamp_renormalise_water_fills() {
        let b = Bounds {
            w_min: 0.5,
            w_max: 1.5,
        };
        // One dominant weight: pinned at w_max, the rest share the remainder proportionally.
        let mut w = vec![10.0, 1.0, 1.0, 2.0];
        clamp_renormalise(&mut w, b);
        assert_eq!(w[0], 1.5);
        assert!((sum(&w) - 4.0).abs() < 1e-5);
        assert!((w[3] / w[1] - 2.0).abs() < 1e-4, "{w:?}");
        // The dominant weight is pinned, the tiny ones share the rest in proportion.
        let mut w = vec![1e-9, 1e-9, 1.0];
        clamp_renormalise(&mut w, b);
        assert_eq!(w, vec![0.75, 0.75, 1.5]);
        // Tiny weights pinned at w_min when the big ones can absorb the rest.
        let mut w = vec![1e-9, 1.0, 1.0];
        clamp_renormalise(&mut w, b);
        assert_eq!(w, vec![0.5, 1.25, 1.25]);
    }

    #[test]
    fn clamp_renormalise_non_finite_and_degenerate() {
        let b = Bounds {
            w_min: 0.2,
            w_max: 2.0,
        };
        let mut w = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        clamp_renormalise(&mut w, b);
        assert_eq!(w, vec![1.0; 3]);
        let mut w = vec![0.0, 0.0];
        clamp_renormalise(&mut w, b);
        assert_eq!(w, vec![1.0; 2]);
        let mut w = vec![-3.0, 1.0];
        clamp_renormalise(&mut w, b);
        assert!((sum(&w) - 2.0).abs() < 1e-6 && w[0] == 0.2);
        let mut w = vec![5.0];
        clamp_renormalise(&mut w, b);
        assert_eq!(w, vec![1.0]);
        let mut empty: Vec<f32> = vec![];
        clamp_renormalise(&mut empty, b);
        // Bounds that exclude 1 are widened to contain it.
        let odd = Bounds {
            w_min: 1.5,
            w_max: 0.5,
        };
        assert_eq!(
            odd.effective(3),
            Bounds {
                w_min: 1.0,
                w_max: 1.0
            }
        );
        let mut w = vec![3.0, 1.0, 0.1];
        clamp_renormalise(&mut w, odd);
        assert_eq!(w, vec![1.0; 3]);
        let nan = Bounds {
            w_min: f32::NAN,
            w_max: f32::INFINITY,
        };
        let mut w = vec![1e30, 1.0];
        clamp_renormalise(&mut w, nan);
        assert!((sum(&w) - 2.0).abs() < 1e-6 && w.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn tau_bounds_checks() {
        assert!(check_tau_bounds(1.0, 0.2, 2.0).is_ok());
        assert_eq!(check_tau_bounds(0.0, 0.2, 2.0).unwrap_err().0, "tau");
        assert_eq!(check_tau_bounds(f32::NAN, 0.2, 2.0).unwrap_err().0, "tau");
        assert_eq!(check_tau_bounds(1.0, -0.1, 2.0).unwrap_err().0, "w_min");
        assert_eq!(check_tau_bounds(1.0, 0.2, 0.0).unwrap_err().0, "w_max");
        assert_eq!(check_tau_bounds(1.0, 3.0, 2.0).unwrap_err().0, "w_min");
    }
}
