//! Dynamic Modality Scheduling (DMS): per-request trust weights for each image and the user text.
//!
//! For every request DMS measures how reliable each modality is (confidence, Monte-Carlo dropout
//! uncertainty, image/text semantic consistency), turns those signals into one soft weight per
//! modality, and the engine scales each modality's embedding rows by its weight before the
//! decoder sees them. Weights always sum to `M`, the number of modalities, so equal trust gives
//! all weights 1, which is plain static fusion.
//!
//! The formulas are **our own interpretation** of the paper "Dynamic Modality Scheduling for
//! Multimodal Large Models via Confidence, Uncertainty, and Semantic Consistency"
//! (arXiv 2506.12724), of which only the abstract is available; see section 3 of the design
//! reference. No accuracy figure of the paper is claimed for this implementation.
//!
//! This module is a pure stage: no llama.cpp, no model, plain inputs and plain outputs, so another
//! llama.cpp-based runtime can embed it:
//!
//! 1. compute [`Signals`] from its own logits and hidden states with the functions in
//!    [`signals`] ([`confidence`], [`mutual_information`], [`cosine_consistency`], ...),
//! 2. pick a [`Scheduler`] (built in, or loaded from plugin files by [`Registry`]) and call
//!    [`Scheduler::weights`],
//! 3. multiply each modality's embedding rows by its weight with [`scale_rows`].
//!
//! [`train`] fits the [`LearnedScheduler`] offline from grids of scored weight vectors; no
//! gradient ever flows through the LLM.

use std::path::PathBuf;

pub mod fixed;
pub mod learned;
pub mod plugins;
pub mod reliability;
pub mod rule;
pub mod scheduler;
#[cfg(feature = "script")]
pub mod script;
pub mod signals;
pub mod train;

#[cfg(test)]
mod proptests;

pub use fixed::{FixedScheduler, OffScheduler};
pub use learned::{LearnedScheduler, TrainedInfo, DEFAULT_FEATURES};
pub use plugins::Registry;
pub use reliability::{feature_value, Reliability, ReliabilityModel};
pub use rule::RuleScheduler;
pub use scheduler::{clamp_renormalise, softmax_weights, Bounds, Scheduler};
#[cfg(feature = "script")]
pub use script::ScriptScheduler;
pub use signals::{
    answer_agreement, answer_word, apply_dropout, apply_row_keyed_dropout, apply_token_dropout,
    argmax, avg_pool_2x2, confidence, cosine_consistency, entropy, flip_rate, js_consistency,
    l2_normalise, log_softmax, mean_pool, mutual_information, mwc_loss, top2_probabilities,
    top_k_share, ModalitySignals, Pooling, Signals, SplitMix64,
};
pub use train::{read_examples, train, GridPoint, TrainConfig, TrainExample, TrainReport};

/// One weight per image (in order of appearance) and one for the user text.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModalityWeights {
    /// Weight of each image's embedding rows.
    pub images: Vec<f32>,
    /// Weight of the user-text rows.
    pub text: f32,
}

impl ModalityWeights {
    /// All weights 1 (plain fusion).
    pub fn uniform(n_images: usize) -> Self {
        Self {
            images: vec![1.0; n_images],
            text: 1.0,
        }
    }

    /// Number of modalities: one per image plus the text.
    pub fn m(&self) -> usize {
        self.images.len() + 1
    }

    /// The weights as one vector: images in order, then the text.
    pub fn as_vec(&self) -> Vec<f32> {
        let mut v = self.images.clone();
        v.push(self.text);
        v
    }

    /// Inverse of [`ModalityWeights::as_vec`]: the last element is the text weight. An empty
    /// slice gives [`ModalityWeights::uniform`]`(0)`.
    pub fn from_vec(v: &[f32]) -> Self {
        match v.split_last() {
            Some((text, images)) => Self {
                images: images.to_vec(),
                text: *text,
            },
            None => Self::uniform(0),
        }
    }

    /// The weights rounded to multiples of `step`, keeping their sum: each weight moves down
    /// or up to a neighbouring multiple (largest remainders up) so that the total is the
    /// original sum rounded to `step` (rounding each weight alone could move a sum of `M` by
    /// up to `M * step / 2`). Non-finite weights, or a non-finite or non-positive `step`,
    /// leave the weights unchanged.
    pub fn quantized(&self, step: f32) -> Self {
        let v = self.as_vec();
        if !(step.is_finite() && step > 0.0 && v.iter().all(|w| w.is_finite())) {
            return self.clone();
        }
        let step = f64::from(step);
        let units: Vec<f64> = v.iter().map(|&w| f64::from(w) / step).collect();
        let mut q: Vec<f64> = units.iter().map(|u| u.floor()).collect();
        let target = units.iter().sum::<f64>().round();
        let missing = (target - q.iter().sum::<f64>()).max(0.0) as usize;
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&a, &b| (units[b] - q[b]).total_cmp(&(units[a] - q[a])));
        for &i in order.iter().take(missing) {
            q[i] += 1.0;
        }
        let out: Vec<f32> = q.iter().map(|&k| (k * step) as f32).collect();
        Self::from_vec(&out)
    }

    /// Checks there is one finite, non-negative weight per image (and for the text).
    pub fn check(&self, n_images: usize) -> Result<(), DmsError> {
        if self.images.len() != n_images {
            return Err(DmsError::InvalidWeights(format!(
                "{} image weights for {n_images} images",
                self.images.len()
            )));
        }
        if self
            .images
            .iter()
            .chain([&self.text])
            .any(|w| !w.is_finite() || *w < 0.0)
        {
            return Err(DmsError::InvalidWeights(
                "weights must be finite and non-negative".into(),
            ));
        }
        Ok(())
    }
}

/// Errors of the DMS stage.
#[derive(Debug, thiserror::Error)]
pub enum DmsError {
    /// A weight vector is malformed (wrong length, negative or non-finite).
    #[error("invalid modality weights: {0}")]
    InvalidWeights(String),
    /// A scheduler parameter is out of range (for schedulers built in code, not from a file).
    #[error("invalid scheduler parameter \"{field}\": {reason}")]
    InvalidParameter {
        /// The parameter's name.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A plugin file is malformed; `field` is empty for whole-file problems such as syntax.
    #[error("{}", plugin_message(file, field, reason))]
    Plugin {
        /// The plugin file.
        file: PathBuf,
        /// The offending field, e.g. `tau`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Rhai scheduler script failed to compile or to evaluate.
    #[error("scheduler script: {0}")]
    Script(String),
    /// Training data or settings are unusable.
    #[error("train-scheduler: {0}")]
    Train(String),
    /// No scheduler of that name is registered.
    #[error("unknown scheduler \"{0}\"")]
    UnknownScheduler(String),
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn plugin_message(file: &std::path::Path, field: &str, reason: &str) -> String {
    if field.is_empty() {
        format!("{}: {reason}", file.display())
    } else {
        format!("{}: field \"{field}\": {reason}", file.display())
    }
}

/// A text weight below this leaves the evidence out of the prompt instead of scaling its rows.
/// On the demo's held-out items whose evidence was the unreliable modality, weights (2, 0)
/// answered 78% right with the evidence left out and 54% with its rows zeroed. Images are not
/// left out: an unreliable image's zeroed rows did better than no image (85% against 79%;
/// README, Results).
pub const LEAVE_OUT_BELOW: f32 = 0.025;

/// Whether text weight `w` leaves the evidence out of the prompt (see [`LEAVE_OUT_BELOW`]).
pub fn is_left_out(w: f32) -> bool {
    w < LEAVE_OUT_BELOW
}

/// Weighting helper for embedding rows: multiply every float by `w` in place (a no-op for 1,
/// so weight 1 stays bit-identical to unweighted evaluation).
pub fn scale_rows(rows: &mut [f32], w: f32) {
    if w == 1.0 {
        return;
    }
    for x in rows {
        *x *= w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_vec_round_trip() {
        let w = ModalityWeights {
            images: vec![0.5, 1.5],
            text: 1.0,
        };
        assert_eq!(w.m(), 3);
        assert_eq!(w.as_vec(), vec![0.5, 1.5, 1.0]);
        assert_eq!(ModalityWeights::from_vec(&w.as_vec()), w);
        assert_eq!(ModalityWeights::from_vec(&[]), ModalityWeights::uniform(0));
        assert_eq!(ModalityWeights::uniform(2).as_vec(), vec![1.0; 3]);
    }

    #[test]
    fn weights_check() {
        assert!(ModalityWeights::uniform(2).check(2).is_ok());
        assert!(ModalityWeights::uniform(2).check(1).is_err());
        let bad = ModalityWeights {
            images: vec![f32::NAN],
            text: 1.0,
        };
        assert!(bad.check(1).is_err());
        let neg = ModalityWeights {
            images: vec![],
            text: -1.0,
        };
        assert!(neg.check(0).is_err());
    }

    #[test]
    fn scale_rows_multiplies() {
        let mut rows = vec![1.0, -2.0, 0.5];
        scale_rows(&mut rows, 2.0);
        assert_eq!(rows, vec![2.0, -4.0, 1.0]);
        let mut same = vec![0.1f32, 0.3];
        scale_rows(&mut same, 1.0);
        assert_eq!(same, vec![0.1f32, 0.3]);
    }

    #[test]
    fn plugin_error_names_file_and_field() {
        let e = DmsError::Plugin {
            file: PathBuf::from("plugins/rule-x.toml"),
            field: "tau".into(),
            reason: "must be > 0".into(),
        };
        assert_eq!(
            e.to_string(),
            "plugins/rule-x.toml: field \"tau\": must be > 0"
        );
    }
}
