//! The learned scheduler: a tiny per-modality scoring MLP fitted by `train-scheduler`.

use serde::{Deserialize, Serialize};

use super::plugins::deserialize_fields;
use super::scheduler::{check_tau_bounds, param_error, weights_from_scores};
use super::{Bounds, DmsError, ModalityWeights, Scheduler, Signals};

/// Names of the MLP's input features, in order. For modality `m` of a request:
///
/// 0. `confidence`: `c_m`
/// 1. `uncertainty`: `u_m`
/// 2. `consistency`: `s`, the mean image/text consistency of the request (1 with no image)
/// 3. `is_image`: 1 for an image, 0 for the text
/// 4. `image_missing`: 1 if the request has no image, else 0
/// 5. `n_images_over_4`: number of images / 4
pub const FEATURES: [&str; 6] = [
    "confidence",
    "uncertainty",
    "consistency",
    "is_image",
    "image_missing",
    "n_images_over_4",
];

/// How a learned plugin was produced (written by `train-scheduler`; informational).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainedInfo {
    /// The command line that trained it.
    pub command: String,
    /// Number of training examples read.
    pub examples: usize,
    /// Final training loss (cross-entropy).
    pub train_loss: f32,
    /// Final validation loss (cross-entropy).
    pub valid_loss: f32,
    /// Seed of initialisation and split.
    pub seed: u64,
    /// The model file the training data came from.
    #[serde(default)]
    pub model: Option<String>,
}

/// Learned scheduler: one small MLP, shared by all modalities (so any number of images works),
/// scores each modality from its [`FEATURES`]:
///
/// ```text
/// h_m     = tanh(w1 . x_m + b1)        w1: hidden x features, b1: hidden
/// score_m = w2 . h_m + b2              w2: hidden
/// w       = clamp_renormalise(M * softmax(score / tau), [w_min, w_max])
/// ```
///
/// Serialises to and from the JSON plugin format (see `plugins/README.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedScheduler {
    /// Plugin name.
    pub name: String,
    /// The feature names, which must equal [`FEATURES`].
    pub features: Vec<String>,
    /// Hidden layer width.
    pub hidden: usize,
    /// First layer weights, `hidden` rows of `features.len()` values.
    pub w1: Vec<Vec<f32>>,
    /// First layer biases, `hidden` values.
    pub b1: Vec<f32>,
    /// Output weights, `hidden` values.
    pub w2: Vec<f32>,
    /// Output bias (cancels in the softmax; kept for completeness).
    pub b2: f32,
    /// Softmax temperature, > 0.
    #[serde(default = "one")]
    pub tau: f32,
    /// Smallest weight.
    #[serde(default = "default_w_min")]
    pub w_min: f32,
    /// Largest weight.
    #[serde(default = "default_w_max")]
    pub w_max: f32,
    /// Provenance, if trained by `train-scheduler`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained: Option<TrainedInfo>,
}

fn one() -> f32 {
    1.0
}

pub(crate) fn default_w_min() -> f32 {
    0.2
}

pub(crate) fn default_w_max() -> f32 {
    2.0
}

impl LearnedScheduler {
    /// A scheduler with all-zero parameters (uniform weights) and `hidden` hidden units.
    pub fn zeros(name: &str, hidden: usize) -> Self {
        Self {
            name: name.to_string(),
            features: FEATURES.iter().map(|f| f.to_string()).collect(),
            hidden,
            w1: vec![vec![0.0; FEATURES.len()]; hidden],
            b1: vec![0.0; hidden],
            w2: vec![0.0; hidden],
            b2: 0.0,
            tau: 1.0,
            w_min: default_w_min(),
            w_max: default_w_max(),
            trained: None,
        }
    }

    /// Checks shapes and values: features equal [`FEATURES`], `hidden >= 1`, `w1` is
    /// `hidden x features`, `b1` and `w2` have `hidden` values, everything finite, tau > 0,
    /// 0 <= w_min <= w_max. Errors are [`DmsError::InvalidParameter`].
    pub fn validate(&self) -> Result<(), DmsError> {
        let err = |field: &str, reason: String| param_error((field, reason));
        if self.features != FEATURES {
            return Err(err(
                "features",
                format!("must be exactly {FEATURES:?} (got {:?})", self.features),
            ));
        }
        if self.hidden == 0 {
            return Err(err("hidden", "must be >= 1".into()));
        }
        if self.w1.len() != self.hidden {
            let n = self.w1.len();
            return Err(err(
                "w1",
                format!("has {n} rows, hidden is {}", self.hidden),
            ));
        }
        if let Some(i) = self.w1.iter().position(|r| r.len() != FEATURES.len()) {
            let n = FEATURES.len();
            return Err(err("w1", format!("row {i} must have {n} values")));
        }
        for (field, v) in [("b1", &self.b1), ("w2", &self.w2)] {
            if v.len() != self.hidden {
                let n = v.len();
                return Err(err(
                    field,
                    format!("has {n} values, hidden is {}", self.hidden),
                ));
            }
        }
        let params: [(&str, Vec<f32>); 4] = [
            ("w1", self.w1.iter().flatten().copied().collect()),
            ("b1", self.b1.clone()),
            ("w2", self.w2.clone()),
            ("b2", vec![self.b2]),
        ];
        for (field, v) in params {
            if !v.iter().all(|x| x.is_finite()) {
                return Err(err(field, "parameters must be finite".into()));
            }
        }
        check_tau_bounds(self.tau, self.w_min, self.w_max).map_err(param_error)
    }

    /// Feature vectors of every modality of a request (images in order, then the text), in
    /// [`FEATURES`] order, from sanitised signals.
    pub fn feature_vectors(signals: &Signals) -> Vec<[f32; 6]> {
        let s = signals.mean_consistency();
        let missing = if signals.image_missing { 1.0 } else { 0.0 };
        let n_img = signals.images.len() as f32 / 4.0;
        let n = signals.images.len();
        signals
            .per_modality()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let is_image = if i < n { 1.0 } else { 0.0 };
                [m.confidence, m.uncertainty, s, is_image, missing, n_img]
            })
            .collect()
    }

    /// The MLP's score for one feature vector.
    pub fn score(&self, x: &[f32; 6]) -> f32 {
        let mut out = self.b2;
        for ((row, b), w) in self.w1.iter().zip(&self.b1).zip(&self.w2) {
            let a: f32 = row.iter().zip(x).map(|(p, q)| p * q).sum::<f32>() + b;
            out += w * a.tanh();
        }
        out
    }

    /// Scores of every modality of a request.
    pub fn scores(&self, signals: &Signals) -> Vec<f32> {
        Self::feature_vectors(signals)
            .iter()
            .map(|x| self.score(x))
            .collect()
    }

    /// The JSON plugin file text (with `"kind": "learned"` first).
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct File<'a> {
            kind: &'static str,
            #[serde(flatten)]
            scheduler: &'a LearnedScheduler,
        }
        let file = File {
            kind: "learned",
            scheduler: self,
        };
        serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
    }

    /// Parses a JSON plugin (with or without `"kind": "learned"`) and validates it. Errors are
    /// [`DmsError::InvalidParameter`] naming the offending field.
    pub fn from_json(text: &str) -> Result<Self, DmsError> {
        let mut value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| param_error(("(json)", format!("invalid JSON: {e}"))))?;
        if let Some(obj) = value.as_object_mut() {
            match obj.remove("kind") {
                None => {}
                Some(k) if k == "learned" => {}
                Some(k) => {
                    return Err(param_error((
                        "kind",
                        format!("must be \"learned\", got {k}"),
                    )))
                }
            }
        }
        let s: Self = deserialize_fields(value)
            .map_err(|(field, reason)| DmsError::InvalidParameter { field, reason })?;
        s.validate()?;
        Ok(s)
    }
}

impl Scheduler for LearnedScheduler {
    fn name(&self) -> &str {
        &self.name
    }

    fn needs_signals(&self) -> bool {
        true
    }

    fn kind(&self) -> &str {
        "learned"
    }

    fn fitted_for(&self) -> Option<&str> {
        self.trained.as_ref().and_then(|t| t.model.as_deref())
    }

    fn weights(&self, signals: &Signals) -> Result<ModalityWeights, DmsError> {
        let bounds = Bounds {
            w_min: self.w_min,
            w_max: self.w_max,
        };
        Ok(weights_from_scores(&self.scores(signals), self.tau, bounds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dms::ModalitySignals;

    fn example() -> LearnedScheduler {
        let mut l = LearnedScheduler::zeros("learned-test", 2);
        // Unit 0 reads confidence, unit 1 reads is_image.
        l.w1[0][0] = 2.0;
        l.w1[1][3] = 1.0;
        l.w2 = vec![1.5, -0.25];
        l.b1 = vec![0.1, -0.1];
        l.trained = Some(TrainedInfo {
            command: "llama-dms train-scheduler --data x.jsonl".into(),
            examples: 10,
            train_loss: 0.5,
            valid_loss: 0.6,
            seed: 3,
            model: None,
        });
        l
    }

    #[test]
    fn json_round_trip() {
        let l = example();
        let text = l.to_json();
        assert!(text.trim_start().starts_with("{\n  \"kind\": \"learned\""));
        assert_eq!(LearnedScheduler::from_json(&text).unwrap(), l);
        // Without provenance, and without kind.
        let mut plain = l.clone();
        plain.trained = None;
        let text = serde_json::to_string(&plain).unwrap();
        assert_eq!(LearnedScheduler::from_json(&text).unwrap(), plain);
    }

    #[test]
    fn zeros_give_uniform_weights() {
        let l = LearnedScheduler::zeros("z", 3);
        assert!(l.validate().is_ok());
        let w = l.weights(&Signals::neutral(3)).unwrap();
        assert_eq!(w, ModalityWeights::uniform(3));
    }

    #[test]
    fn confident_modality_gets_more_weight() {
        let l = example();
        let mut s = Signals::neutral(1);
        s.images[0] = ModalitySignals {
            confidence: 0.1,
            uncertainty: 0.5,
        };
        s.text.confidence = 0.9;
        let w = l.weights(&s).unwrap();
        assert!(w.images[0] < w.text);
        assert!((w.images[0] + w.text - 2.0).abs() < 1e-5);
    }

    #[test]
    fn features_follow_the_documented_order() {
        let mut s = Signals::neutral(2);
        s.images[1].confidence = 0.9;
        s.consistency = vec![0.2, 0.4];
        let f = LearnedScheduler::feature_vectors(&s);
        assert_eq!(f.len(), 3);
        assert_eq!(f[1], [0.9, 0.5, 0.3, 1.0, 0.0, 0.5]);
        assert_eq!(f[2][3], 0.0);
        let f = LearnedScheduler::feature_vectors(&Signals::neutral(0));
        assert_eq!(f, vec![[0.5, 0.5, 1.0, 0.0, 1.0, 0.0]]);
    }

    #[test]
    fn validate_catches_shapes() {
        let field = |l: LearnedScheduler| match l.validate() {
            Err(DmsError::InvalidParameter { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let mut l = example();
        l.w1.pop();
        assert_eq!(field(l), "w1");
        let mut l = example();
        l.b1.push(0.0);
        assert_eq!(field(l), "b1");
        let mut l = example();
        l.features.swap(0, 1);
        assert_eq!(field(l), "features");
        let mut l = example();
        l.w2[0] = f32::NAN;
        assert_eq!(field(l), "w2");
        let mut l = example();
        l.tau = -1.0;
        assert_eq!(field(l), "tau");
        let mut l = example();
        l.hidden = 0;
        assert_eq!(field(l), "hidden");
    }
}
