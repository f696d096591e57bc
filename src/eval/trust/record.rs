//! What the `colour-trust` runner writes per item: one [`TrustRecord`] per JSON line, enough to
//! summarise the run and to replay schedulers offline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dms::{answer_agreement, ModalityWeights, Signals};
use crate::eval::first_colour;

/// Image weights of the control grid; the text gets `2 - w`.
pub const GRID_WEIGHTS: [f32; 9] = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0];

/// Two grid weights closer than this are the same point.
pub const WEIGHT_EPS: f32 = 1e-3;

/// An answer and how it scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// The generated text.
    pub answer: String,
    /// Whether the first colour named in the answer is the truth.
    pub correct: bool,
    /// `log p(truth colour token) - max log p(other colour tokens)` at the answer's first
    /// colour position (`None` if unknown).
    #[serde(default)]
    pub log_odds: Option<f32>,
}

impl Scored {
    /// `answer` scored against `truth` (correct when its first colour is the truth).
    pub fn new(answer: impl Into<String>, truth: &str, log_odds: Option<f32>) -> Self {
        let answer = answer.into();
        Self {
            correct: first_colour(&answer) == Some(truth),
            answer,
            log_odds,
        }
    }

    /// The first colour the answer names, if any.
    pub fn colour(&self) -> Option<&'static str> {
        first_colour(&self.answer)
    }
}

/// The answer under one fixed weight vector of the control grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridAnswer {
    /// The image weight; the text weight is `2 - image_weight`.
    pub image_weight: f32,
    /// The answer.
    #[serde(flatten)]
    pub scored: Scored,
    /// Modality Weight Consistency loss of these weights, when measured.
    #[serde(default)]
    pub mwc: Option<f32>,
}

/// The answer under one DMS mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeAnswer {
    /// `off`, `rule`, `learned`, or a plugin name.
    pub mode: String,
    /// The weights the mode applied.
    pub weights: ModalityWeights,
    /// The answer.
    #[serde(flatten)]
    pub scored: Scored,
    /// Time of the DMS stage in milliseconds.
    #[serde(default)]
    pub dms_ms: f64,
}

/// Everything measured for one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustRecord {
    /// Item id in the suite.
    pub item: usize,
    /// Seed of the item's image and texts.
    pub seed: u64,
    /// The suite seed the item was drawn from (absent in records of earlier runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite_seed: Option<u64>,
    /// Condition name.
    pub condition: String,
    /// Condition group.
    pub group: String,
    /// The expected colour.
    pub truth: String,
    /// The other colour of the item.
    pub other: String,
    /// Whether the image shows the truth.
    pub image_reliable: bool,
    /// Whether the evidence names the truth (`None`: no evidence).
    #[serde(default)]
    pub text_reliable: Option<bool>,
    /// The signals as the scheduler saw them (default variants), to replay schedulers offline.
    #[serde(default)]
    pub signals: Option<Signals>,
    /// Every measured signal variant by name, e.g. `image.confidence.entropy`,
    /// `text.uncertainty`, `consistency.js`. Higher = more reliable / more consistent, except
    /// keys containing `uncertainty` (higher = less reliable).
    #[serde(default)]
    pub variants: BTreeMap<String, f32>,
    /// The greedy answer of the image pass (image + question), scored.
    #[serde(default)]
    pub image_alone: Option<Scored>,
    /// The greedy answer of the text pass (question + evidence), scored.
    #[serde(default)]
    pub text_alone: Option<Scored>,
    /// Answers at the image weights of [`GRID_WEIGHTS`].
    #[serde(default)]
    pub grid: Vec<GridAnswer>,
    /// Answers under each DMS mode.
    #[serde(default)]
    pub modes: Vec<ModeAnswer>,
}

impl TrustRecord {
    /// The grid answer at image weight `w` (within [`WEIGHT_EPS`]).
    pub fn grid_at(&self, w: f32) -> Option<&GridAnswer> {
        self.grid
            .iter()
            .find(|g| (g.image_weight - w).abs() < WEIGHT_EPS)
    }

    /// The grid answer whose image weight is nearest to `w` (ties: the lower weight).
    pub fn grid_nearest(&self, w: f32) -> Option<&GridAnswer> {
        self.grid.iter().min_by(|a, b| {
            let da = (a.image_weight - w).abs();
            let db = (b.image_weight - w).abs();
            da.total_cmp(&db)
                .then(a.image_weight.total_cmp(&b.image_weight))
        })
    }

    /// The recorded signals with the recorded variants attached: what a scheduler saw. Records
    /// made before `consistency.answer` existed get it from their unimodal answers, which are
    /// the strings it is computed from.
    pub fn scheduler_signals(&self) -> Option<Signals> {
        let mut signals = self.signals.clone()?;
        if signals.variants.is_empty() && !self.variants.is_empty() {
            let mut variants = self.variants.clone();
            if let (Some(i), Some(t)) = (&self.image_alone, &self.text_alone) {
                variants
                    .entry("consistency.answer".into())
                    .or_insert_with(|| answer_agreement(&i.answer, &t.answer));
            }
            signals.variants = vec![variants];
        }
        Some(signals)
    }

    /// The answer under `mode`.
    pub fn mode(&self, mode: &str) -> Option<&ModeAnswer> {
        self.modes.iter().find(|m| m.mode == mode)
    }

    /// Whether some grid point answers right (`None` without a grid).
    pub fn oracle(&self) -> Option<bool> {
        (!self.grid.is_empty()).then(|| self.grid.iter().any(|g| g.scored.correct))
    }
}

/// The records of a JSONL text, one per non-empty line; errors name the line.
pub fn parse_jsonl(text: &str) -> Result<Vec<TrustRecord>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// `records` as JSONL text, one record per line.
pub fn to_jsonl(records: &[TrustRecord]) -> String {
    records
        .iter()
        .filter_map(|r| serde_json::to_string(r).ok())
        .map(|l| l + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TrustRecord {
        TrustRecord {
            item: 3,
            seed: 9,
            suite_seed: None,
            condition: "clean+hint".into(),
            group: "clean".into(),
            truth: "red".into(),
            other: "blue".into(),
            image_reliable: true,
            text_reliable: Some(true),
            signals: Some(Signals::neutral(1)),
            variants: [("image.confidence.top1".to_string(), 0.75)].into(),
            image_alone: Some(Scored::new("The main color is red.", "red", Some(2.0))),
            text_alone: Some(Scored::new("blue", "red", None)),
            grid: GRID_WEIGHTS
                .iter()
                .map(|&w| GridAnswer {
                    image_weight: w,
                    scored: Scored::new(if w >= 1.0 { "red" } else { "blue" }, "red", None),
                    mwc: Some(0.1),
                })
                .collect(),
            modes: vec![ModeAnswer {
                mode: "rule".into(),
                weights: ModalityWeights::uniform(1),
                scored: Scored::new("red", "red", Some(1.5)),
                dms_ms: 12.0,
            }],
        }
    }

    #[test]
    fn records_round_trip_through_jsonl_with_flat_answers() {
        let r = record();
        let text = to_jsonl(&[r.clone(), r.clone()]);
        assert_eq!(text.lines().count(), 2);
        let line = text.lines().next().unwrap();
        assert!(line.contains("\"image_weight\":0.25,\"answer\":\"blue\",\"correct\":false"));
        assert_eq!(parse_jsonl(&text).unwrap(), vec![r.clone(), r]);
        assert!(parse_jsonl("{}\n").unwrap_err().starts_with("line 1:"));
    }

    #[test]
    fn optional_fields_may_be_left_out() {
        let line = r#"{"item":0,"seed":1,"condition":"clean","group":"clean","truth":"red",
            "other":"blue","image_reliable":true}"#;
        let r: TrustRecord = serde_json::from_str(line).unwrap();
        assert!(r.signals.is_none() && r.grid.is_empty() && r.variants.is_empty());
        assert_eq!(r.oracle(), None);
    }

    #[test]
    fn scoring_and_lookups() {
        let r = record();
        assert!(r.image_alone.as_ref().unwrap().correct);
        assert!(!r.text_alone.as_ref().unwrap().correct);
        assert_eq!(r.text_alone.as_ref().unwrap().colour(), Some("blue"));
        assert_eq!(r.grid_at(1.25).unwrap().image_weight, 1.25);
        assert!(r.grid_at(1.1).is_none());
        assert_eq!(r.grid_nearest(1.1).unwrap().image_weight, 1.0);
        assert_eq!(r.grid_nearest(0.125).unwrap().image_weight, 0.0);
        assert_eq!(r.grid_nearest(9.0).unwrap().image_weight, 2.0);
        assert_eq!(r.mode("rule").unwrap().dms_ms, 12.0);
        assert!(r.mode("off").is_none());
        assert_eq!(r.oracle(), Some(true));
    }
}
