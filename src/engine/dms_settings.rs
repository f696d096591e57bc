//! What a request asks of the DMS stage and what the stage reports back.

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

/// Which semantic-consistency signal feeds the scheduler.
///
/// The default is the input-space variant: on the demo model it separates matched from
/// mismatched image/text pairs where the hidden-state variant does not (red: 0.641 vs 0.536
/// against 0.872 vs 0.858; blue: 0.559 vs 0.496 against 0.866 vs 0.872, `tests/dms_engine.rs`).
/// Both are always reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyVariant {
    /// Mean-pooled last-layer hidden states of the unimodal passes.
    Hidden,
    /// Mean-pooled input rows (no extra cost).
    #[default]
    Input,
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
    /// Monte-Carlo dropout passes `T` per modality.
    pub mc_samples: usize,
    /// Dropout rate `rho` of those passes.
    pub dropout: f32,
    /// Average-pool image rows 2x2 for the signal passes (cheaper, less exact).
    pub pool_images: bool,
    /// Which consistency signal the scheduler sees.
    pub consistency: ConsistencyVariant,
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
            dropout: 0.1,
            pool_images: false,
            consistency: ConsistencyVariant::default(),
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

    /// The given mode with default settings.
    pub fn mode(mode: DmsMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }
}

/// Largest accepted `mc_samples`.
pub const MAX_MC_SAMPLES: usize = 16;

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
    /// The measured signals (absent for `off` and `fixed`).
    pub signals: Option<Signals>,
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
