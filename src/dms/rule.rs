//! The rule scheduler: a fixed formula over confidence, uncertainty and consistency.

use serde::{Deserialize, Serialize};

use super::learned::pair_feature;
use super::reliability::Reliability;
use super::scheduler::{check_tau_bounds, param_error};
use super::{
    clamp_renormalise, softmax_weights, Bounds, DmsError, ModalityWeights, Scheduler, Signals,
};

/// Rule scheduler (design section 3):
///
/// ```text
/// score_m = alpha * (c_m - c_ref) - beta * (u_m - u_ref)    refs per kind (image, text)
/// w_soft  = M * softmax(score / tau)
/// lambda  = clamp(gamma * s, 0, 1)          s = mean image/text consistency
/// w       = lambda * 1 + (1 - lambda) * w_soft
/// w       = clamp_renormalise(w, [w_min, w_max])
/// ```
///
/// With `reliability`, `c_m` is not a confidence but the modality's fitted reliability (the
/// probability that its input is sound, a logistic model over its measured variants;
/// see [`Reliability`]), and the references are clean inputs' reliabilities.
///
/// With `sound_gate`, a request whose every modality has `c_m` at least the gate gets plain
/// fusion. With `agree_gate`, a request whose every image agrees with the text by
/// `consistency.answer` (both alone give the same answer) gets plain fusion (all 1).
///
/// High consistency pulls the weights towards plain fusion (all 1); low consistency lets the
/// more confident, less uncertain modality dominate. The references are what a clean input of
/// that kind measures on the model the rule was calibrated for (`llama-dms calibrate`), so
/// that clean inputs score alike and get weights near 1. Defaults (see [`RuleScheduler::default`]):
/// alpha 1, beta 4, tau 1, gamma 1, w_min 0.5, w_max 2.0 (measured choice, see there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleScheduler {
    /// Plugin name.
    pub name: String,
    /// Weight of confidence in the score.
    pub alpha: f32,
    /// Weight of uncertainty in the score (subtracted).
    pub beta: f32,
    /// Softmax temperature, > 0.
    pub tau: f32,
    /// How strongly consistency pulls towards uniform weights, >= 0.
    pub gamma: f32,
    /// Smallest weight, >= 0.
    pub w_min: f32,
    /// Largest weight, >= w_min.
    pub w_max: f32,
    /// Confidence of a clean image on the calibrated model (subtracted from an image's).
    #[serde(default)]
    pub c_ref_image: f32,
    /// Confidence of clean evidence on the calibrated model (subtracted from the text's).
    #[serde(default)]
    pub c_ref_text: f32,
    /// Uncertainty of a clean image on the calibrated model.
    #[serde(default)]
    pub u_ref_image: f32,
    /// Uncertainty of clean evidence on the calibrated model.
    #[serde(default)]
    pub u_ref_text: f32,
    /// Plain fusion when every image's unimodal answer agrees with the text's
    /// (`consistency.answer`).
    #[serde(default)]
    pub agree_gate: bool,
    /// Plain fusion when every modality's `c_m` (confidence, or reliability) is at least this:
    /// inputs that all look sound are left alone (`None`: no such gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sound_gate: Option<f32>,
    /// Fitted reliability models read instead of the confidence (`None`: the confidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reliability: Option<Reliability>,
    /// The model file the parameters were calibrated for (`None`: any).
    #[serde(default)]
    pub model: Option<String>,
}

impl Default for RuleScheduler {
    /// The built-in `rule-default`, used when no plugin file defines it: alpha 1, beta 4, tau 1,
    /// gamma 1, w_min 0.5, w_max 2.0, no references (fitted for no model). A mild, uncalibrated
    /// fallback; `plugins/rule-default.toml`, written by `llama-dms calibrate` for the demo
    /// model, replaces it, and `calibrate` writes one for any other model.
    fn default() -> Self {
        Self {
            name: Self::DEFAULT_NAME.to_string(),
            alpha: 1.0,
            beta: 4.0,
            tau: 1.0,
            gamma: 1.0,
            w_min: 0.5,
            w_max: 2.0,
            c_ref_image: 0.0,
            c_ref_text: 0.0,
            u_ref_image: 0.0,
            u_ref_text: 0.0,
            agree_gate: false,
            sound_gate: None,
            reliability: None,
            model: None,
        }
    }
}

impl RuleScheduler {
    /// Name of the built-in default rule scheduler.
    pub const DEFAULT_NAME: &'static str = "rule-default";

    /// Checks every parameter: alpha and beta finite, gamma finite and >= 0, tau > 0,
    /// 0 <= w_min <= w_max, w_max > 0. Errors are [`DmsError::InvalidParameter`].
    pub fn validate(&self) -> Result<(), DmsError> {
        let finite = [
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("c_ref_image", self.c_ref_image),
            ("c_ref_text", self.c_ref_text),
            ("u_ref_image", self.u_ref_image),
            ("u_ref_text", self.u_ref_text),
        ];
        for (field, v) in finite {
            if !v.is_finite() {
                return Err(param_error((field, format!("must be finite (got {v})"))));
            }
        }
        if !self.gamma.is_finite() || self.gamma < 0.0 {
            return Err(param_error((
                "gamma",
                format!("must be >= 0 (got {})", self.gamma),
            )));
        }
        if let Some(r) = &self.reliability {
            r.validate()?;
        }
        if let Some(g) = self.sound_gate.filter(|g| !g.is_finite()) {
            return Err(param_error((
                "sound_gate",
                format!("must be finite (got {g})"),
            )));
        }
        check_tau_bounds(self.tau, self.w_min, self.w_max).map_err(param_error)
    }

    /// The `c_m` of every modality (images, then the text): the confidences, or with
    /// `reliability` the fitted reliabilities; `None` when a variant that model reads was not
    /// measured.
    fn trust(&self, signals: &Signals) -> Option<Vec<f32>> {
        match &self.reliability {
            Some(r) => r.of(signals),
            None => Some(
                signals
                    .per_modality()
                    .iter()
                    .map(|s| s.confidence)
                    .collect(),
            ),
        }
    }

    /// The weight bounds.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            w_min: self.w_min,
            w_max: self.w_max,
        }
    }
}

impl Scheduler for RuleScheduler {
    fn name(&self) -> &str {
        &self.name
    }

    fn needs_signals(&self) -> bool {
        true
    }

    fn kind(&self) -> &str {
        "rule"
    }

    fn fitted_for(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn reliabilities(&self, signals: &Signals) -> Option<Vec<f32>> {
        self.reliability.as_ref()?.of(signals)
    }

    fn weights(&self, signals: &Signals) -> Result<ModalityWeights, DmsError> {
        let n_images = signals.images.len();
        let agree = |i| pair_feature(signals, i, "consistency.answer").is_some_and(|v| v >= 0.5);
        if self.agree_gate && n_images > 0 && (0..n_images).all(agree) {
            return Ok(ModalityWeights::uniform(n_images));
        }
        // Without the variants a reliability model reads there is nothing to compare: plain
        // fusion.
        let Some(trust) = self.trust(signals) else {
            return Ok(ModalityWeights::uniform(n_images));
        };
        if let Some(gate) = self.sound_gate {
            if trust.iter().all(|&c| c >= gate) {
                return Ok(ModalityWeights::uniform(n_images));
            }
        }
        let scores: Vec<f32> = signals
            .per_modality()
            .iter()
            .zip(trust)
            .enumerate()
            .map(|(m, (s, c))| {
                let (c_ref, u_ref) = if m < n_images {
                    (self.c_ref_image, self.u_ref_image)
                } else {
                    (self.c_ref_text, self.u_ref_text)
                };
                self.alpha * (c - c_ref) - self.beta * (s.uncertainty - u_ref)
            })
            .collect();
        let soft = softmax_weights(&scores, self.tau);
        let lambda = (self.gamma * signals.mean_consistency()).clamp(0.0, 1.0);
        let lambda = if lambda.is_finite() { lambda } else { 0.0 };
        let mut w: Vec<f32> = soft
            .iter()
            .map(|&ws| lambda + (1.0 - lambda) * ws)
            .collect();
        clamp_renormalise(&mut w, self.bounds());
        Ok(ModalityWeights::from_vec(&w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dms::ModalitySignals;

    fn sig(c_img: f32, u_img: f32, c_txt: f32, u_txt: f32, s: f32) -> Signals {
        Signals {
            images: vec![ModalitySignals {
                confidence: c_img,
                uncertainty: u_img,
            }],
            text: ModalitySignals {
                confidence: c_txt,
                uncertainty: u_txt,
            },
            consistency: vec![s],
            image_missing: false,
            variants: Vec::new(),
        }
    }

    #[test]
    fn equal_signals_give_uniform_weights() {
        let r = RuleScheduler::default();
        let w = r.weights(&sig(0.7, 0.1, 0.7, 0.1, 0.3)).unwrap();
        assert!((w.images[0] - 1.0).abs() < 1e-6 && (w.text - 1.0).abs() < 1e-6);
    }

    #[test]
    fn unreliable_image_is_down_weighted() {
        let r = RuleScheduler::default();
        let w = r.weights(&sig(0.1, 0.6, 0.9, 0.05, 0.2)).unwrap();
        assert!(w.images[0] < 1.0 && w.text > 1.0, "{w:?}");
        assert!((w.images[0] + w.text - 2.0).abs() < 1e-5);
        assert!(w.images[0] >= 0.2 && w.text <= 2.0);
    }

    #[test]
    fn consistency_pulls_towards_uniform() {
        let r = RuleScheduler {
            gamma: 1.0,
            ..RuleScheduler::default()
        };
        let low = r.weights(&sig(0.1, 0.5, 0.9, 0.0, 0.0)).unwrap();
        let high = r.weights(&sig(0.1, 0.5, 0.9, 0.0, 0.9)).unwrap();
        assert!(high.images[0] > low.images[0]);
        let full = r.weights(&sig(0.1, 0.5, 0.9, 0.0, 1.0)).unwrap();
        assert_eq!(full, ModalityWeights::uniform(1));
    }

    #[test]
    fn the_agreement_gate_keeps_agreeing_pairs_at_one() {
        let r = RuleScheduler {
            agree_gate: true,
            ..RuleScheduler::default()
        };
        let mut s = sig(0.1, 0.6, 0.9, 0.05, 0.2);
        assert!(
            r.weights(&s).unwrap().images[0] < 1.0,
            "no variant: no gate"
        );
        s.variants = vec![[("consistency.answer".to_string(), 1.0)].into()];
        assert_eq!(r.weights(&s).unwrap(), ModalityWeights::uniform(1));
        s.variants[0].insert("consistency.answer".into(), 0.0);
        assert!(r.weights(&s).unwrap().images[0] < 1.0);
    }

    #[test]
    fn reliability_models_replace_the_confidence() {
        let r = RuleScheduler {
            alpha: 4.0,
            reliability: Some(Reliability::reading("image.shift", "text.shift")),
            ..RuleScheduler::default()
        };
        r.validate().unwrap();
        // The confidences say the text is better; the variants the models read say the image.
        let mut s = sig(0.1, 0.0, 0.9, 0.0, 0.0);
        s.variants = vec![[
            ("image.shift".to_string(), 0.7),
            ("text.shift".to_string(), 0.3),
        ]
        .into()];
        let rel = r.reliabilities(&s).unwrap();
        assert!(rel[0] > 0.95 && rel[1] < 0.05, "{rel:?}");
        assert!(r.weights(&s).unwrap().images[0] > 1.0);
        // Both look sound enough for the gate: plain fusion.
        let gated = RuleScheduler {
            sound_gate: Some(0.01),
            ..r.clone()
        };
        assert_eq!(gated.weights(&s).unwrap(), ModalityWeights::uniform(1));
        let strict = RuleScheduler {
            sound_gate: Some(0.5),
            ..r.clone()
        };
        assert_eq!(strict.weights(&s).unwrap(), r.weights(&s).unwrap());
        // A variant the models read is missing: plain fusion, and no reliabilities.
        s.variants[0].remove("text.shift");
        assert_eq!(r.weights(&s).unwrap(), ModalityWeights::uniform(1));
        assert!(r.reliabilities(&s).is_none());
        assert!(RuleScheduler::default().reliabilities(&s).is_none());
    }

    #[test]
    fn text_only_request_gets_weight_one() {
        let r = RuleScheduler::default();
        let w = r.weights(&Signals::neutral(0)).unwrap();
        assert_eq!(w, ModalityWeights::uniform(0));
    }

    #[test]
    fn non_finite_signals_are_safe() {
        let r = RuleScheduler::default();
        let w = r
            .weights(&sig(
                f32::NAN,
                f32::INFINITY,
                0.5,
                f32::NEG_INFINITY,
                f32::NAN,
            ))
            .unwrap();
        assert!(w.as_vec().iter().all(|x| x.is_finite()));
        assert!((w.images[0] + w.text - 2.0).abs() < 1e-5);
    }

    #[test]
    fn validate_names_the_field() {
        assert!(RuleScheduler::default().validate().is_ok());
        let bad = RuleScheduler {
            tau: 0.0,
            ..RuleScheduler::default()
        };
        match bad.validate() {
            Err(DmsError::InvalidParameter { field, .. }) => assert_eq!(field, "tau"),
            other => panic!("{other:?}"),
        }
        let bad = RuleScheduler {
            gamma: -1.0,
            ..RuleScheduler::default()
        };
        assert!(
            matches!(bad.validate(), Err(DmsError::InvalidParameter { field, .. }) if field == "gamma")
        );
    }
}
