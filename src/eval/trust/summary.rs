//! The types of the trust analysis' output ([`TrustSummary`] and its rows), built by
//! [`summarise`](super::analysis::summarise).

use serde::{Deserialize, Serialize};

/// What describes a run besides its records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrustMeta {
    /// Model file stem.
    pub model: String,
    /// Suite seeds of the records.
    pub seeds: Vec<u64>,
    /// Items per condition and seed.
    pub per_condition: usize,
    /// Modes run, in report order (empty: the modes found in the records).
    pub modes: Vec<String>,
    /// The variant key of the image confidence the scheduler used (e.g. `image.confidence`).
    pub default_image_key: String,
    /// The variant key of the text confidence the scheduler used.
    pub default_text_key: String,
}

/// How well one signal variant separates reliable from unreliable inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalAuc {
    /// Variant key, e.g. `image.confidence.top1`.
    pub key: String,
    /// `higher` (higher = more reliable) or `lower` (keys containing `uncertainty`: the AUC is
    /// that of the negated value).
    pub orientation: String,
    /// AUC of reliable vs unreliable by construction (image/text: the item's labels, the
    /// `conflict` control left out; consistency: both reliable vs exactly one reliable).
    pub by_condition: Option<f64>,
    /// AUC of right vs wrong unimodal answers (consistency: the two unimodal answers name the
    /// same colour vs different colours).
    pub by_outcome: Option<f64>,
    /// Positives by condition.
    pub n_pos_condition: usize,
    /// Negatives by condition.
    pub n_neg_condition: usize,
    /// Positives by outcome.
    pub n_pos_outcome: usize,
    /// Negatives by outcome.
    pub n_neg_outcome: usize,
}

/// Accuracy at one grid weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Image weight (the text gets `2 - w`).
    pub image_weight: f32,
    /// Items with an answer at this weight.
    pub n: usize,
    /// Fraction right.
    pub accuracy: f64,
    /// Mean log-odds of the truth (items where it is known).
    pub mean_log_odds: Option<f64>,
}

/// Accuracy along the control grid for one set of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlCurve {
    /// A group or [`POOL_ONE_UNRELIABLE`](super::analysis::POOL_ONE_UNRELIABLE).
    pub set: String,
    /// One point per grid weight with answers.
    pub points: Vec<CurvePoint>,
}

/// The accuracy of one mode (or pseudo-mode) on one set of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracyRow {
    /// Mode, [`MODE_GLOBAL_BEST`](super::analysis::MODE_GLOBAL_BEST) or [`MODE_ORACLE`](super::analysis::MODE_ORACLE).
    pub mode: String,
    /// A group, [`POOL_ONE_UNRELIABLE`](super::analysis::POOL_ONE_UNRELIABLE), or a condition name.
    pub set: String,
    /// Items with an answer under the mode.
    pub n: usize,
    /// Items answered right.
    pub correct: usize,
    /// `correct / n`.
    pub accuracy: f64,
}

/// The single grid weight that does best on the non-control items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalBest {
    /// The image weight (`None` without grid answers); ties go to the weight closest to 1.
    pub image_weight: Option<f32>,
    /// Its accuracy pooled over the non-control items.
    pub accuracy: f64,
    /// Non-control items with an answer at that weight.
    pub n: usize,
}

/// A mode against a baseline on the same items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// [`POOL_ONE_UNRELIABLE`](super::analysis::POOL_ONE_UNRELIABLE) or `clean`.
    pub set: String,
    /// The mode.
    pub mode: String,
    /// `off` or [`MODE_GLOBAL_BEST`](super::analysis::MODE_GLOBAL_BEST).
    pub baseline: String,
    /// Items answered under both.
    pub n: usize,
    /// Accuracy of the mode on those items.
    pub accuracy: f64,
    /// Accuracy of the baseline on those items.
    pub baseline_accuracy: f64,
    /// `accuracy - baseline_accuracy`.
    pub difference: f64,
    /// Lower end of the paired bootstrap 95% CI of the difference.
    pub ci_low: f64,
    /// Upper end of the CI.
    pub ci_high: f64,
    /// Items the mode gets right and the baseline wrong.
    pub b: usize,
    /// Items the mode gets wrong and the baseline right.
    pub c: usize,
    /// Exact two-sided McNemar p-value.
    pub p_value: f64,
    /// Oracle accuracy on those items (those with a grid).
    pub oracle_accuracy: Option<f64>,
    /// `(accuracy - baseline) / (oracle - baseline)`; against `off` this is the share of the
    /// oracle gap recovered. `None` when the gap is 0 or the oracle unknown.
    pub oracle_gap_recovered: Option<f64>,
}

/// The image weights one mode chose on one condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightStats {
    /// Mode.
    pub mode: String,
    /// Condition name.
    pub condition: String,
    /// Items.
    pub n: usize,
    /// Mean image weight.
    pub mean_image_weight: f64,
    /// Smallest image weight.
    pub min_image_weight: f64,
    /// Largest image weight.
    pub max_image_weight: f64,
}

/// How often one mode left clean inputs at plain fusion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanWeights {
    /// Mode.
    pub mode: String,
    /// Clean items answered under the mode.
    pub n: usize,
    /// Items whose weights are all within `1 ± 0.05`.
    pub within: usize,
    /// `within / n`.
    pub fraction: f64,
}

/// Everything the trust analysis reports (stable snake_case field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustSummary {
    /// The run's description; its `modes` are those reported, in report order.
    #[serde(flatten)]
    pub meta: TrustMeta,
    /// Records summarised.
    pub n_records: usize,
    /// Condition names in report order.
    pub conditions: Vec<String>,
    /// One entry per variant key, sorted by key.
    pub signal_auc: Vec<SignalAuc>,
    /// Accuracy along the grid per set of [`REPORT_SETS`](super::analysis::REPORT_SETS).
    pub control_curve: Vec<ControlCurve>,
    /// The best single global weight.
    pub global_best: GlobalBest,
    /// Accuracy per (mode, set), modes then `global-best` and `oracle`.
    pub by_group: Vec<AccuracyRow>,
    /// Accuracy per (mode, condition).
    pub by_condition: Vec<AccuracyRow>,
    /// Paired comparisons on the one-unreliable pool and on clean items.
    pub comparisons: Vec<Comparison>,
    /// Image weights per (mode, condition).
    pub weights: Vec<WeightStats>,
    /// Clean items left at plain fusion, per mode.
    pub clean_weights: Vec<CleanWeights>,
}

impl TrustSummary {
    /// The accuracy row of `mode` on the group or pool `set`.
    pub fn group_accuracy(&self, mode: &str, set: &str) -> Option<&AccuracyRow> {
        self.by_group
            .iter()
            .find(|r| r.mode == mode && r.set == set)
    }

    /// The comparison of `mode` against `baseline` on `set`.
    pub fn comparison(&self, set: &str, mode: &str, baseline: &str) -> Option<&Comparison> {
        self.comparisons
            .iter()
            .find(|c| c.set == set && c.mode == mode && c.baseline == baseline)
    }

    /// The AUC entry of variant `key`.
    pub fn signal(&self, key: &str) -> Option<&SignalAuc> {
        self.signal_auc.iter().find(|s| s.key == key)
    }
}
