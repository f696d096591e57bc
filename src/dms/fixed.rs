//! Schedulers that need no signals: `fixed` (given weights) and `off` (all weights 1).

use super::{DmsError, ModalityWeights, Scheduler, Signals};

/// Uses the weights it was given, as they are (no renormalisation): the `fixed` mode, where a
/// request supplies its own weights.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedScheduler {
    weights: ModalityWeights,
}

impl FixedScheduler {
    /// A scheduler returning `weights`; every weight must be finite and >= 0.
    pub fn new(weights: ModalityWeights) -> Result<Self, DmsError> {
        weights.check(weights.images.len())?;
        Ok(Self { weights })
    }

    /// The weights this scheduler returns.
    pub fn fixed_weights(&self) -> &ModalityWeights {
        &self.weights
    }
}

impl Scheduler for FixedScheduler {
    fn name(&self) -> &str {
        "fixed"
    }

    fn needs_signals(&self) -> bool {
        false
    }

    fn kind(&self) -> &str {
        "fixed"
    }

    /// The given weights; [`DmsError::InvalidWeights`] if their number of images differs from
    /// the request's.
    fn weights(&self, signals: &Signals) -> Result<ModalityWeights, DmsError> {
        self.weights.check(signals.images.len())?;
        Ok(self.weights.clone())
    }
}

/// DMS off: every weight is 1 and no signal pass runs, so evaluation is plain llama.cpp fusion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffScheduler;

impl OffScheduler {
    /// The name under which it is registered.
    pub const NAME: &'static str = "off";
}

impl Scheduler for OffScheduler {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn needs_signals(&self) -> bool {
        false
    }

    fn kind(&self) -> &str {
        "off"
    }

    fn weights(&self, signals: &Signals) -> Result<ModalityWeights, DmsError> {
        Ok(ModalityWeights::uniform(signals.images.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_returns_its_weights() {
        let w = ModalityWeights {
            images: vec![0.5, 3.0],
            text: 0.0,
        };
        let f = FixedScheduler::new(w.clone()).unwrap();
        assert!(!f.needs_signals());
        assert_eq!(f.weights(&Signals::neutral(2)).unwrap(), w);
        assert!(matches!(
            f.weights(&Signals::neutral(1)),
            Err(DmsError::InvalidWeights(_))
        ));
    }

    #[test]
    fn fixed_rejects_bad_weights() {
        for bad in [f32::NAN, f32::INFINITY, -0.5] {
            let w = ModalityWeights {
                images: vec![1.0],
                text: bad,
            };
            assert!(matches!(
                FixedScheduler::new(w),
                Err(DmsError::InvalidWeights(_))
            ));
        }
    }

    #[test]
    fn off_is_all_ones() {
        let o = OffScheduler;
        assert!(!o.needs_signals());
        assert_eq!(o.name(), "off");
        let mut s = Signals::neutral(3);
        s.text.confidence = f32::NAN;
        assert_eq!(o.weights(&s).unwrap(), ModalityWeights::uniform(3));
    }
}
