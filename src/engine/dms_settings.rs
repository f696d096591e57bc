//! What a request asks of the DMS stage and what the stage reports back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dms::{ModalityWeights, Signals};

/// How the weights of a request are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DmsMode {
    /// No weighting: the prompt is evaluated exactly as llama.cpp does.
    #[default]
    Off,
    /// Weights given by the request.
    Fixed,
    /// The rule-based scheduler (signals, then weights).
    Rule,
    /// The learned scheduler (signals, then weights).
    Learned,
}

impl DmsMode {
    /// The mode's name, as requests and responses spell it.
    pub fn name(self) -> &'static str {
        match self {
            DmsMode::Off => "off",
            DmsMode::Fixed => "fixed",
            DmsMode::Rule => "rule",
            DmsMode::Learned => "learned",
        }
    }
}

/// Which semantic-consistency signal feeds the scheduler (all three are always reported in
/// [`SignalVariants`]; the default is the one that measured best, see README Results).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyVariant {
    /// Agreement of the two unimodal answer distributions, `1 - JS / ln 2`, at their answer
    /// positions.
    Js,
    /// Mean-pooled last-layer hidden states of the unimodal passes.
    Hidden,
    /// Mean-pooled input rows: the image's projected rows against the evidence's token rows
    /// (no extra cost).
    #[default]
    Input,
}

/// Which confidence the scheduler sees. Every variant is read from the greedy continuation of
/// a unimodal pass (question kept), at its *answer position*: the step, after the reply's
/// opening token and within its first sentence, where the modality moves the distribution
/// most against the question alone (see `Shift`): where the answer is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConfidenceVariant {
    /// The top token's probability at the answer position.
    Top1,
    /// The top token's share of the ten most likely tokens at the answer position.
    #[default]
    Topk,
    /// First minus second probability at the answer position.
    Margin,
    /// `1 - H(p) / ln |V|` at the answer position.
    Entropy,
    /// `1 - H(p) / ln |V|` averaged over the continuation.
    Mean,
    /// `1 - H(p) / ln |V|` at the first reply token.
    First,
    /// How far the modality moves the answer: `JS(p, p_null) / ln 2` at the answer position,
    /// against the question alone teacher-forced with the same continuation.
    Shift,
    /// Entropy removed by the modality at the answer position:
    /// `(H(p_null) - H(p)) / ln |V|`.
    Gain,
}

impl ConfidenceVariant {
    /// The variant's name in [`SignalVariants`] (`confidence.top1`, ...).
    pub fn key(self) -> &'static str {
        match self {
            ConfidenceVariant::Top1 => "confidence.top1",
            ConfidenceVariant::Topk => "confidence.topk",
            ConfidenceVariant::Margin => "confidence.margin",
            ConfidenceVariant::Entropy => "confidence.entropy",
            ConfidenceVariant::Mean => "confidence.mean",
            ConfidenceVariant::First => "confidence.first",
            ConfidenceVariant::Shift => "confidence.shift",
            ConfidenceVariant::Gain => "confidence.gain",
        }
    }
}

/// Every measured variant of the signals, by name, and the unimodal passes' greedy answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SignalVariants {
    /// Per image: `confidence.*`, `uncertainty`, `consistency.{js,hidden,input}`,
    /// `answer_position`.
    pub images: Vec<BTreeMap<String, f32>>,
    /// The evidence: `confidence.*`, `uncertainty`, `answer_position`.
    pub text: BTreeMap<String, f32>,
    /// The greedy answer of each image's pass (that image and the question).
    pub image_answers: Vec<String>,
    /// The greedy answer of the text's pass (the question and the evidence, no image).
    pub text_answer: String,
}

impl SignalVariants {
    /// The variants of image `i` and the text as one map: `image.<name>`, `text.<name>` and
    /// `consistency.<name>` (answer positions left out): the keys of [`Signals::variants`]
    /// and of `eval` records. Empty if there is no image `i`.
    pub fn pair(&self, i: usize) -> BTreeMap<String, f32> {
        let mut out = BTreeMap::new();
        let Some(image) = self.images.get(i) else {
            return out;
        };
        for (k, x) in image {
            match k.strip_prefix("consistency.") {
                Some(c) => out.insert(format!("consistency.{c}"), *x),
                None => out.insert(format!("image.{k}"), *x),
            };
        }
        for (k, x) in &self.text {
            out.insert(format!("text.{k}"), *x);
        }
        out.retain(|k, _| !k.ends_with("answer_position"));
        out
    }
}

/// Per-request DMS settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DmsSettings {
    /// How weights are chosen.
    pub mode: DmsMode,
    /// A scheduler plugin by name (default: `rule-default` or the first learned plugin).
    pub scheduler: Option<String>,
    /// The weights for [`DmsMode::Fixed`].
    pub weights: Option<ModalityWeights>,
    /// Monte-Carlo dropout passes `T` per modality and dropout family (element and token).
    pub mc_samples: usize,
    /// Dropout rate `rho` of those passes.
    pub dropout: f32,
    /// Average-pool image rows 2x2 for the signal passes (cheaper, less exact).
    pub pool_images: bool,
    /// Image rows above which a signal pass pools an image's rows 2x2 again, until at most
    /// this many remain (0: no limit). The answer itself always sees every row.
    pub max_image_rows: usize,
    /// Which consistency signal the scheduler sees.
    pub consistency: ConsistencyVariant,
    /// Which confidence the scheduler sees.
    pub confidence: ConfidenceVariant,
    /// Greedy tokens of each unimodal pass, among which the answer position is found.
    pub answer_tokens: usize,
    /// Seed of the dropout masks.
    pub seed: u64,
}

impl Default for DmsSettings {
    fn default() -> Self {
        Self {
            mode: DmsMode::Off,
            scheduler: None,
            weights: None,
            mc_samples: 4,
            dropout: 0.3,
            pool_images: false,
            max_image_rows: MAX_SIGNAL_IMAGE_ROWS,
            consistency: ConsistencyVariant::default(),
            confidence: ConfidenceVariant::default(),
            answer_tokens: 10,
            seed: 0,
        }
    }
}

impl DmsSettings {
    /// Given weights, no signal passes.
    pub fn fixed(weights: ModalityWeights) -> Self {
        Self {
            mode: DmsMode::Fixed,
            weights: Some(weights),
            ..Self::default()
        }
    }

    /// How the signal passes pool image rows.
    pub fn pooling(&self) -> crate::dms::Pooling {
        crate::dms::Pooling {
            at_least: usize::from(self.pool_images),
            max_rows: match self.max_image_rows {
                0 => usize::MAX,
                n => n,
            },
        }
    }

    /// The given mode with default settings.
    pub fn mode(mode: DmsMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }
}

/// Default [`DmsSettings::max_image_rows`]: a 24x24 (LLaVA-1.5) image is measured on 6x6
/// pooled rows, 16x16 on 8x8, and the demo's 4x4 as it is.
pub const MAX_SIGNAL_IMAGE_ROWS: usize = 64;

/// Largest accepted `mc_samples`.
pub const MAX_MC_SAMPLES: usize = 16;

/// Largest accepted `answer_tokens`.
pub const MAX_ANSWER_TOKENS: usize = 32;

/// Time spent in each DMS step, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DmsTimings {
    /// Vision encoder (images are encoded once and reused by the answer).
    pub encode_ms: f64,
    /// Unimodal + dropout passes of the images.
    pub image_passes_ms: f64,
    /// Unimodal + dropout passes of the text.
    pub text_passes_ms: f64,
    /// The scheduler itself.
    pub scheduler_ms: f64,
    /// All of the above.
    pub total_ms: f64,
}

/// What the DMS stage decided and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DmsReport {
    /// The mode used.
    pub mode: DmsMode,
    /// The scheduler used (`off`, `fixed`, or a plugin name).
    pub scheduler: String,
    /// The applied weights (images in order, then text).
    pub weights: ModalityWeights,
    /// The measured signals (absent for `off` and `fixed`, and when there is nothing to weigh:
    /// no image or no evidence), without their per-image variants, which are in `variants`
    /// ([`DmsReport::scheduler_signals`] puts them back).
    pub signals: Option<Signals>,
    /// Every variant of the measured signals and the unimodal answers (with `signals`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variants: Option<SignalVariants>,
    /// User-text tokens the text weight scales (the evidence; the question is never scaled).
    pub evidence_tokens: usize,
    /// Both consistency variants, per image, when signals were measured.
    pub consistency_hidden: Option<Vec<f32>>,
    /// See `consistency_hidden`.
    pub consistency_input: Option<Vec<f32>>,
    /// Images whose signals came from the cache.
    pub image_cache_hits: usize,
    /// Time per step.
    pub timings_ms: DmsTimings,
    /// The Modality Weight Consistency loss of the weights, when it was asked for
    /// ([`super::GenerateRequest::measure_mwc`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mwc: Option<f32>,
}

impl DmsReport {
    /// The signals exactly as the scheduler saw them: `signals` with each image's variants.
    pub fn scheduler_signals(&self) -> Option<Signals> {
        let mut signals = self.signals.clone()?;
        if let Some(v) = &self.variants {
            signals.variants = (0..v.images.len()).map(|i| v.pair(i)).collect();
        }
        Some(signals)
    }
}
