//! The learned scheduler: a linear policy over candidate image weights, fitted by
//! `train-scheduler` to scored weight grids.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::plugins::deserialize_fields;
use super::reliability::Reliability;
use super::scheduler::{check_tau_bounds, param_error};
use super::{clamp_renormalise, Bounds, DmsError, ModalityWeights, Scheduler, Signals};

/// The features every request has, whatever signal variants were measured: an image's
/// default confidence and uncertainty, the text's, and their consistency. A plugin may name
/// these or any key of [`Signals::variants`] (`image.confidence.topk`, `text.uncertainty`,
/// `consistency.input`, ...).
pub const DEFAULT_FEATURES: [&str; 5] = [
    "image.confidence",
    "image.uncertainty",
    "text.confidence",
    "text.uncertainty",
    "consistency",
];

/// The features a learned plugin with reliability models adds: each modality's fitted
/// reliability (see [`Reliability`]).
pub const RELIABILITY_FEATURES: [&str; 2] = ["image.reliability", "text.reliability"];

/// How a learned plugin was produced (written by `train-scheduler`; informational).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainedInfo {
    /// The command line that trained it.
    pub command: String,
    /// Number of training examples read.
    pub examples: usize,
    /// Final training objective: mean expected grid reward under the policy (higher is better).
    pub train_reward: f32,
    /// The same on the held-out examples.
    pub valid_reward: f32,
    /// Mean reward of plain fusion (image weight 1) on the held-out examples, for comparison.
    pub valid_reward_uniform: f32,
    /// Seed of the train/validation split.
    pub seed: u64,
    /// The model file the training data came from.
    #[serde(default)]
    pub model: Option<String>,
}

/// Learned scheduler: for each image of a request, a softmax policy over `candidates` (image
/// weights of that image paired with the text, whose weight is `2 - w`), linear in the
/// standardised features of the pair:
///
/// ```text
/// x_j     = (feature_j - mean_j) / scale_j          a missing feature counts as its mean
/// logit_k = bias_k + coef_k . x
/// e_i     = candidates[argmax_k logit_k]             the image's preferred pair weight, <= 1.99
/// r_i     = e_i / (2 - e_i)                          its trust relative to the text
/// w       = clamp_renormalise(M * (r_1, .., r_n, 1) / (1 + sum r), [w_min, w_max])
/// ```
///
/// With one image the image gets exactly `e_1` and the text `2 - e_1`. A pair whose
/// `agree_feature` is at least 0.5 (normally `consistency.answer`: both modalities alone give
/// the same answer) skips the policy and gets `e_i = 1`. With `reliability` (the models of a
/// calibrated rule, copied by `train-scheduler --reliability-from`), the features may include
/// [`RELIABILITY_FEATURES`], and with `sound_gate` a request whose every modality's reliability
/// is at least the gate gets plain fusion, as with the rule. Serialises to and from the JSON plugin
/// format (see `plugins/README.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedScheduler {
    /// Plugin name.
    pub name: String,
    /// Input feature names (see [`DEFAULT_FEATURES`]).
    pub features: Vec<String>,
    /// Per feature: its mean on the training data.
    pub mean: Vec<f32>,
    /// Per feature: its standard deviation on the training data (> 0).
    pub scale: Vec<f32>,
    /// Candidate image weights, each in `[0, 2]`.
    pub candidates: Vec<f32>,
    /// One row of `features.len()` coefficients per candidate.
    pub coef: Vec<Vec<f32>>,
    /// One bias per candidate.
    pub bias: Vec<f32>,
    /// Smallest weight.
    #[serde(default)]
    pub w_min: f32,
    /// Largest weight.
    #[serde(default = "default_w_max")]
    pub w_max: f32,
    /// A feature that, at 0.5 or more, gives its pair plain fusion without the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agree_feature: Option<String>,
    /// Reliability models whose values are the features [`RELIABILITY_FEATURES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reliability: Option<Reliability>,
    /// Plain fusion when every modality's reliability is at least this (needs `reliability`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sound_gate: Option<f32>,
    /// Provenance, if trained by `train-scheduler`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained: Option<TrainedInfo>,
}

pub(crate) fn default_w_max() -> f32 {
    2.0
}

/// Largest image weight a pair may prefer (2 would leave the text nothing to be relative to).
const MAX_PAIR_WEIGHT: f32 = 1.99;

/// The index of the candidate closest to 1 (plain fusion); 0 for no candidates.
pub(crate) fn nearest_one(candidates: &[f32]) -> usize {
    candidates
        .iter()
        .enumerate()
        .min_by(|a, b| (a.1 - 1.0).abs().total_cmp(&(b.1 - 1.0).abs()))
        .map_or(0, |(k, _)| k)
}

impl LearnedScheduler {
    /// A scheduler whose policy always prefers the candidate closest to 1 (plain fusion), over
    /// `features` and `candidates`, with unit standardisation.
    pub fn uniform(name: &str, features: &[String], candidates: &[f32]) -> Self {
        let one = nearest_one(candidates);
        let mut bias = vec![0.0; candidates.len()];
        if let Some(b) = bias.get_mut(one) {
            *b = 1.0;
        }
        Self {
            name: name.to_string(),
            features: features.to_vec(),
            mean: vec![0.0; features.len()],
            scale: vec![1.0; features.len()],
            candidates: candidates.to_vec(),
            coef: vec![vec![0.0; features.len()]; candidates.len()],
            bias,
            w_min: 0.0,
            w_max: default_w_max(),
            agree_feature: None,
            reliability: None,
            sound_gate: None,
            trained: None,
        }
    }

    /// Whether the sound gate holds: every modality's reliability is at least `sound_gate`.
    pub fn is_sound(&self, signals: &Signals) -> bool {
        is_sound(self.reliability.as_ref(), self.sound_gate, signals)
    }

    /// Whether image `i` and the text agree by [`LearnedScheduler::agree_feature`].
    pub fn agrees(&self, signals: &Signals, i: usize) -> bool {
        self.agree_feature
            .as_deref()
            .and_then(|f| pair_feature(signals, i, f))
            .is_some_and(|v| v >= 0.5)
    }

    /// Checks shapes and values: at least one feature and two candidates, `mean`/`scale` one
    /// per feature (scale > 0), `coef` candidates x features, `bias` one per candidate,
    /// candidates in `[0, 2]`, everything finite, `0 <= w_min <= w_max`. Errors are
    /// [`DmsError::InvalidParameter`].
    pub fn validate(&self) -> Result<(), DmsError> {
        let err = |field: &str, reason: String| param_error((field, reason));
        let (d, k) = (self.features.len(), self.candidates.len());
        if d == 0 {
            return Err(err("features", "needs at least one feature".into()));
        }
        if k < 2 {
            return Err(err("candidates", "needs at least two weights".into()));
        }
        for (field, n, want) in [
            ("mean", self.mean.len(), d),
            ("scale", self.scale.len(), d),
            ("bias", self.bias.len(), k),
            ("coef", self.coef.len(), k),
        ] {
            if n != want {
                return Err(err(field, format!("has {n} values, expected {want}")));
            }
        }
        if let Some(i) = self.coef.iter().position(|r| r.len() != d) {
            return Err(err("coef", format!("row {i} must have {d} values")));
        }
        let all: [(&str, Vec<f32>); 5] = [
            ("mean", self.mean.clone()),
            ("scale", self.scale.clone()),
            ("candidates", self.candidates.clone()),
            ("coef", self.coef.iter().flatten().copied().collect()),
            ("bias", self.bias.clone()),
        ];
        for (field, v) in all {
            if !v.iter().all(|x| x.is_finite()) {
                return Err(err(field, "values must be finite".into()));
            }
        }
        if self.scale.iter().any(|s| *s <= 0.0) {
            return Err(err("scale", "values must be > 0".into()));
        }
        if let Some(r) = &self.reliability {
            r.validate()?;
        }
        match self.sound_gate {
            Some(g) if !g.is_finite() => {
                return Err(err("sound_gate", format!("must be finite (got {g})")))
            }
            Some(_) if self.reliability.is_none() => {
                return Err(err("sound_gate", "needs `reliability`".into()))
            }
            _ => {}
        }
        if self.candidates.iter().any(|c| !(0.0..=2.0).contains(c)) {
            return Err(err("candidates", "weights must be in [0, 2]".into()));
        }
        check_tau_bounds(1.0, self.w_min, self.w_max).map_err(param_error)
    }

    /// The standardised feature vector of image `i` of a request and the text.
    pub fn features_of(&self, signals: &Signals, i: usize) -> Vec<f32> {
        let reliability = self.reliability.as_ref();
        self.features
            .iter()
            .zip(self.mean.iter().zip(&self.scale))
            .map(
                |(name, (mean, scale))| match feature(signals, i, name, reliability) {
                    Some(x) => (x - mean) / scale,
                    None => 0.0,
                },
            )
            .collect()
    }

    /// The policy's logit of every candidate for standardised features `x`.
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        self.coef
            .iter()
            .zip(&self.bias)
            .map(|(row, b)| b + row.iter().zip(x).map(|(c, v)| c * v).sum::<f32>())
            .collect()
    }

    /// The candidate weight the policy prefers for standardised features `x` (the first of
    /// the highest logits).
    pub fn choose(&self, x: &[f32]) -> f32 {
        let logits = self.logits(x);
        let mut best = 0;
        for (k, l) in logits.iter().enumerate() {
            if *l > logits[best] {
                best = k;
            }
        }
        self.candidates.get(best).copied().unwrap_or(1.0)
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
    /// [`DmsError::InvalidParameter`] naming the offending field; a plugin of the earlier MLP
    /// form (`hidden`, `w1`, ...) is refused with a hint to retrain it.
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
            if obj.contains_key("w1") {
                return Err(param_error((
                    "w1",
                    "this is a learned plugin of the earlier MLP form; retrain it with \
                     `llama-dms train-scheduler`"
                        .into(),
                )));
            }
        }
        let s: Self = deserialize_fields(value)
            .map_err(|(field, reason)| DmsError::InvalidParameter { field, reason })?;
        s.validate()?;
        Ok(s)
    }
}

/// Feature `name` of image `i` and the text: a key of the measured variants, else one of
/// [`DEFAULT_FEATURES`]; `None` if the request has neither (or the value is not finite).
pub fn pair_feature(signals: &Signals, i: usize, name: &str) -> Option<f32> {
    let measured = signals.variants.get(i).and_then(|v| v.get(name)).copied();
    let value = measured.or_else(|| {
        let image = signals.images.get(i)?;
        match name {
            "image.confidence" => Some(image.confidence),
            "image.uncertainty" => Some(image.uncertainty),
            "text.confidence" => Some(signals.text.confidence),
            "text.uncertainty" => Some(signals.text.uncertainty),
            "consistency" => signals.consistency.get(i).copied(),
            _ => None,
        }
    });
    value.filter(|x| x.is_finite())
}

/// Feature `name` of image `i` and the text as a learned scheduler reads it: with reliability
/// models, [`RELIABILITY_FEATURES`] are the fitted reliabilities of the image and the text;
/// anything else is [`pair_feature`].
pub fn feature(
    signals: &Signals,
    i: usize,
    name: &str,
    reliability: Option<&Reliability>,
) -> Option<f32> {
    let modality = RELIABILITY_FEATURES.iter().position(|f| *f == name);
    match (modality, reliability) {
        (Some(m), Some(r)) => {
            let values = r.of(signals)?;
            let at = if m == 0 { i } else { values.len() - 1 };
            values.get(at).copied()
        }
        _ => pair_feature(signals, i, name),
    }
}

/// Whether every modality's reliability under `reliability` is at least `gate` (false without
/// either, or when a variant the models read is missing).
pub fn is_sound(reliability: Option<&Reliability>, gate: Option<f32>, signals: &Signals) -> bool {
    let (Some(r), Some(gate)) = (reliability, gate) else {
        return false;
    };
    r.of(signals)
        .is_some_and(|values| values.iter().all(|&v| v >= gate))
}

/// Every feature name a request's signals provide for image `i`: [`DEFAULT_FEATURES`] and the
/// measured variants, sorted and without duplicates.
pub fn available_features(signals: &Signals, i: usize) -> Vec<String> {
    let mut names: BTreeSet<String> = DEFAULT_FEATURES.iter().map(|f| f.to_string()).collect();
    if let Some(v) = signals.variants.get(i) {
        names.extend(v.keys().cloned());
    }
    names.into_iter().collect()
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

    fn reliabilities(&self, signals: &Signals) -> Option<Vec<f32>> {
        self.reliability.as_ref()?.of(signals)
    }

    fn weights(&self, signals: &Signals) -> Result<ModalityWeights, DmsError> {
        let n = signals.images.len();
        if n == 0 || self.is_sound(signals) {
            return Ok(ModalityWeights::uniform(n));
        }
        let relative: Vec<f64> = (0..n)
            .map(|i| {
                let e = if self.agrees(signals, i) {
                    1.0
                } else {
                    f64::from(self.choose(&self.features_of(signals, i)))
                        .clamp(0.0, f64::from(MAX_PAIR_WEIGHT))
                };
                e / (2.0 - e)
            })
            .collect();
        let total = 1.0 + relative.iter().sum::<f64>();
        let m = (n + 1) as f64;
        let mut w: Vec<f32> = relative
            .iter()
            .chain([&1.0])
            .map(|r| (m * r / total) as f32)
            .collect();
        let bounds = Bounds {
            w_min: self.w_min,
            w_max: self.w_max,
        };
        clamp_renormalise(&mut w, bounds);
        Ok(ModalityWeights::from_vec(&w))
    }
}

#[cfg(test)]
#[path = "learned_tests.rs"]
mod tests;
