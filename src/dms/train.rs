//! Core of `train-scheduler`: fits a [`LearnedScheduler`] policy to scored weight grids.
//!
//! No gradient flows through the LLM. For each training example the data generator (the `eval`
//! tooling, with the model) has already answered a grid of weight vectors and recorded, for
//! each, a score of the answer (the reference answer's log-likelihood, or on `colour-trust` the
//! log-odds of the right colour) and the Modality Weight Consistency loss. Here:
//!
//! 1. each grid point gets the score `loglik_g - lambda_mwc * mwc_g` and the reward
//!    `softmax_g(score_g / temperature)` over the example's grid (so rewards sum to 1 per
//!    example, whatever the scale of the scores; an image weight missing from the grid gets 0);
//! 2. the candidates are the distinct image weights of the grids; the policy is
//!    `p_k = softmax_k(bias_k + coef_k . x)` over them, `x` the standardised features;
//! 3. full-batch gradient ascent on the mean expected reward `sum_k p_k r_k` minus
//!    `l2 / 2 * |coef|^2`, deterministic;
//! 4. an example whose agreement gate holds (`consistency.answer`: both modalities alone give
//!    the same answer), or with reliability models whose sound gate holds (every modality's
//!    reliability at least the gate), gets plain fusion from the scheduler and is left out of
//!    the fit; the models' reliabilities are features too;
//! 5. `l2` is chosen among [`L2S`] by group k-fold cross-validation (5 folds of whole groups: an
//!    example's `group`, e.g. the suite seed it came from, else each example alone; shuffled
//!    with the seed), scoring the reward of the weight the scheduler would pick; then the
//!    policy is refitted on every example.
//!
//! Only examples with one image are used (their grid pairs the image with the text). Input
//! format (JSON Lines, one example per line; blank lines are skipped):
//!
//! ```json
//! {"signals": {"images": [{"confidence": 0.2, "uncertainty": 0.3}],
//!              "text": {"confidence": 0.8, "uncertainty": 0.1},
//!              "consistency": [0.4], "image_missing": false,
//!              "variants": [{"image.confidence.topk": 0.31, "text.confidence.topk": 0.9}]},
//!  "grid": [{"weights": [0.5, 1.5], "loglik": -3.2, "mwc": 0.12},
//!           {"weights": [1.0, 1.0], "loglik": -4.0, "mwc": 0.10}],
//!  "group": 101}
//! ```
//!
//! (one line in the file). `weights` lists the images' weights then the text's; `mwc` may be
//! omitted (not measured: 0), and so may `variants` and `group`.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::learned::{
    available_features, feature, is_sound, nearest_one, pair_feature, RELIABILITY_FEATURES,
};
use super::{DmsError, LearnedScheduler, Reliability, Signals, SplitMix64};

/// L2 strengths tried; the one with the best cross-validated reward is kept.
pub const L2S: [f64; 4] = [1e-4, 1e-3, 1e-2, 1e-1];

/// One evaluated weight vector of a training example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridPoint {
    /// Weights: one per image, then the text.
    pub weights: Vec<f32>,
    /// Score of the answer under these weights: the reference answer's log-likelihood, or
    /// another margin where higher is better.
    pub loglik: f32,
    /// Modality Weight Consistency loss under these weights (`None`: not measured, which
    /// scores as 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mwc: Option<f32>,
}

/// One training example: the request's signals and its scored grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainExample {
    /// Signals measured for the request (with their variants, when recorded).
    pub signals: Signals,
    /// The evaluated weight vectors.
    pub grid: Vec<GridPoint>,
    /// Examples of one group stay on one side of the train/validation split (e.g. the suite
    /// seed they were drawn from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u64>,
}

impl TrainExample {
    /// Checks the grid: non-empty, every vector has `M` finite non-negative weights with a
    /// positive sum, finite `loglik` and `mwc`.
    pub fn validate(&self) -> Result<(), String> {
        let m = self.signals.m();
        if self.signals.consistency.len() != self.signals.images.len() {
            return Err("signals.consistency needs one value per image".into());
        }
        if self.grid.is_empty() {
            return Err("grid is empty".into());
        }
        for (i, g) in self.grid.iter().enumerate() {
            if g.weights.len() != m {
                let n = g.weights.len();
                return Err(format!("grid[{i}].weights has {n} values, expected {m}"));
            }
            if g.weights.iter().any(|w| !w.is_finite() || *w < 0.0)
                || g.weights.iter().sum::<f32>() <= 0.0
            {
                return Err(format!("grid[{i}].weights must be finite, >= 0, not all 0"));
            }
            if !g.loglik.is_finite() || g.mwc.is_some_and(|m| !m.is_finite()) {
                return Err(format!("grid[{i}]: loglik and mwc must be finite"));
            }
        }
        Ok(())
    }

    /// The reward of every grid point: `softmax(score / temperature)` over the grid, with
    /// `score = loglik - lambda_mwc * mwc` (see the module documentation).
    pub fn rewards(&self, config: &TrainConfig) -> Vec<f64> {
        let t = f64::from(config.temperature.max(1e-6));
        let scores: Vec<f64> = self
            .grid
            .iter()
            .map(|g| {
                (f64::from(g.loglik)
                    - f64::from(config.lambda_mwc) * f64::from(g.mwc.unwrap_or(0.0)))
                    / t
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let p: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let z: f64 = p.iter().sum();
        p.iter().map(|x| x / z).collect()
    }
}

/// Training settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Weight of the MWC loss in the grid score (default 1).
    pub lambda_mwc: f32,
    /// Full-batch gradient steps per fit (default 2000).
    pub epochs: usize,
    /// Step size (default 1).
    pub lr: f32,
    /// Seed of the train/validation split (default 0).
    pub seed: u64,
    /// Cross-validation folds over the groups (default 5; fewer when there are fewer groups,
    /// none with one group).
    pub folds: usize,
    /// Temperature of the softmax over grid scores (default 0.5).
    pub temperature: f32,
    /// The features to use (`None`: every feature all examples have, but the gate).
    pub features: Option<Vec<String>>,
    /// The scheduler's agreement gate (default `consistency.answer`; `None`: no gate). Used
    /// when every example has it: examples it gates get plain fusion and are not fitted.
    pub agree_feature: Option<String>,
    /// Reliability models (of a calibrated rule) whose values become features and which the
    /// scheduler carries (default none).
    pub reliability: Option<Reliability>,
    /// With `reliability`: examples whose every modality is at least this reliable get plain
    /// fusion and are not fitted (default none).
    pub sound_gate: Option<f32>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lambda_mwc: 1.0,
            epochs: 2000,
            lr: 1.0,
            seed: 0,
            folds: 5,
            temperature: 0.5,
            features: None,
            agree_feature: Some("consistency.answer".into()),
            reliability: None,
            sound_gate: None,
        }
    }
}

impl TrainConfig {
    fn validate(&self) -> Result<(), DmsError> {
        let bad = |what: &str| Err(DmsError::Train(what.to_string()));
        if !self.lambda_mwc.is_finite() || self.lambda_mwc < 0.0 {
            return bad("lambda_mwc must be finite and >= 0");
        }
        if self.epochs == 0 {
            return bad("epochs must be >= 1");
        }
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return bad("lr must be > 0");
        }
        if self.folds == 0 {
            return bad("folds must be >= 1");
        }
        if !self.temperature.is_finite() || self.temperature <= 0.0 {
            return bad("temperature must be > 0");
        }
        if self.features.as_ref().is_some_and(|f| f.is_empty()) {
            return bad("features must not be empty");
        }
        if self.sound_gate.is_some() && self.reliability.is_none() {
            return bad("a sound gate needs reliability models");
        }
        Ok(())
    }
}

/// Outcome of [`train`]. Rewards are means over examples of the reward of the image weight the
/// scheduler picks (1 = always the best-scored grid point, when the temperature is small).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// On the training examples, with the final policy.
    pub train_reward: f32,
    /// Cross-validated: every example scored by a policy fitted on the other folds, at the
    /// chosen L2 strength (equals `train_reward` without folds).
    pub valid_reward: f32,
    /// Plain fusion's (the candidate nearest image weight 1) on the same examples.
    pub valid_reward_uniform: f32,
    /// The L2 strength chosen.
    pub l2: f64,
    /// Examples used (one image).
    pub n_used: usize,
    /// Examples left out (not exactly one image).
    pub n_skipped: usize,
    /// Used examples the agreement gate gives plain fusion (not fitted).
    pub n_agreeing: usize,
    /// Used examples the sound gate (not the agreement gate) gives plain fusion (not fitted).
    pub n_sound: usize,
    /// Used examples whose every grid point has its MWC loss measured.
    pub n_with_mwc: usize,
    /// Cross-validation folds (0: too few groups to hold any out).
    pub n_folds: usize,
}

/// Reads a JSON Lines file of [`TrainExample`]s. Errors name the file and line.
pub fn read_examples(path: &Path) -> Result<Vec<TrainExample>, DmsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DmsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}: line {}", path.display(), i + 1);
        let ex: TrainExample =
            serde_json::from_str(line).map_err(|e| DmsError::Train(format!("{}: {e}", at())))?;
        ex.validate()
            .map_err(|e| DmsError::Train(format!("{}: {e}", at())))?;
        out.push(ex);
    }
    if out.is_empty() {
        return Err(DmsError::Train(format!("{}: no examples", path.display())));
    }
    Ok(out)
}

/// An example reduced to raw features, per-candidate rewards and whether a gate holds.
#[derive(Clone)]
struct Prepared {
    x: Vec<f64>,
    reward: Vec<f64>,
    gated: bool,
}

/// A linear softmax policy: `coef` is candidates x features, row-major.
struct Policy {
    k: usize,
    d: usize,
    coef: Vec<f64>,
    bias: Vec<f64>,
}

impl Policy {
    fn logits(&self, x: &[f64]) -> Vec<f64> {
        (0..self.k)
            .map(|k| {
                let row = &self.coef[k * self.d..(k + 1) * self.d];
                self.bias[k] + row.iter().zip(x).map(|(c, v)| c * v).sum::<f64>()
            })
            .collect()
    }

    /// Full-batch gradient ascent on the mean expected reward minus `l2 / 2 * |coef|^2`, over
    /// the examples the gate leaves to the policy.
    fn fit(data: &[Prepared], k: usize, d: usize, l2: f64, config: &TrainConfig) -> Self {
        let data: Vec<&Prepared> = data.iter().filter(|p| !p.gated).collect();
        let mut p = Policy {
            k,
            d,
            coef: vec![0.0; k * d],
            bias: vec![0.0; k],
        };
        let n = data.len().max(1) as f64;
        let lr = f64::from(config.lr);
        let (mut g_coef, mut g_bias) = (vec![0.0; k * d], vec![0.0; k]);
        for _ in 0..config.epochs {
            g_coef.iter_mut().for_each(|g| *g = 0.0);
            g_bias.iter_mut().for_each(|g| *g = 0.0);
            for ex in &data {
                let probs = softmax(&p.logits(&ex.x));
                let expected: f64 = probs.iter().zip(&ex.reward).map(|(a, b)| a * b).sum();
                for j in 0..k {
                    let dz = probs[j] * (ex.reward[j] - expected) / n;
                    g_bias[j] += dz;
                    for (g, v) in g_coef[j * d..(j + 1) * d].iter_mut().zip(&ex.x) {
                        *g += dz * v;
                    }
                }
            }
            for (c, g) in p.coef.iter_mut().zip(&g_coef) {
                *c += lr * (g - l2 * *c);
            }
            for (b, g) in p.bias.iter_mut().zip(&g_bias) {
                *b += lr * g;
            }
        }
        p
    }

    /// Mean reward of the candidate the scheduler picks: `one` (plain fusion) where a gate
    /// holds, else the highest logit's.
    fn picked_reward(&self, data: &[Prepared], one: usize) -> f64 {
        let total: f64 = data
            .iter()
            .map(|ex| match ex.gated {
                true => ex.reward[one],
                false => ex.reward[argmax(&self.logits(&ex.x))],
            })
            .sum();
        total / data.len().max(1) as f64
    }
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Index of the first largest value.
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Image weights rounded to this step are one candidate.
const CANDIDATE_STEP: f64 = 1e-4;

fn candidate_key(w: f32) -> i64 {
    (f64::from(w) / CANDIDATE_STEP).round() as i64
}

/// The features every example provides (sorted), with the reliabilities when there are
/// models.
fn common_features(examples: &[&TrainExample], reliability: Option<&Reliability>) -> Vec<String> {
    let mut common: Option<BTreeSet<String>> = None;
    for ex in examples {
        let mut names = available_features(&ex.signals, 0);
        if reliability.is_some() {
            names.extend(RELIABILITY_FEATURES.iter().map(|f| f.to_string()));
        }
        let have: BTreeSet<String> = names
            .into_iter()
            .filter(|f| feature(&ex.signals, 0, f, reliability).is_some())
            .collect();
        common = Some(match common {
            None => have,
            Some(c) => c.intersection(&have).cloned().collect(),
        });
    }
    common.unwrap_or_default().into_iter().collect()
}

/// Trains a [`LearnedScheduler`] (named `learned`, bounds 0..2; the caller renames it and
/// fills `trained`). `progress`, if given, gets one tick per fit; the caller finishes it.
pub fn train(
    examples: &[TrainExample],
    config: &TrainConfig,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<(LearnedScheduler, TrainReport), DmsError> {
    config.validate()?;
    for (i, ex) in examples.iter().enumerate() {
        ex.validate()
            .map_err(|e| DmsError::Train(format!("example {i}: {e}")))?;
    }
    let used: Vec<&TrainExample> = examples
        .iter()
        .filter(|e| e.signals.images.len() == 1)
        .collect();
    if used.is_empty() {
        return Err(DmsError::Train("no example with exactly one image".into()));
    }
    let candidates: Vec<f32> = used
        .iter()
        .flat_map(|e| e.grid.iter().map(|g| candidate_key(g.weights[0])))
        .collect::<BTreeSet<i64>>()
        .into_iter()
        .map(|k| (k as f64 * CANDIDATE_STEP) as f32)
        .filter(|w| (0.0..=2.0).contains(w))
        .collect();
    if candidates.len() < 2 {
        return Err(DmsError::Train(
            "the grids need at least two image weights in [0, 2]".into(),
        ));
    }
    let reliability = config.reliability.as_ref();
    let gate = config.agree_feature.clone().filter(|f| {
        used.iter()
            .all(|e| pair_feature(&e.signals, 0, f).is_some())
    });
    let features = match &config.features {
        Some(f) => f.clone(),
        None => {
            let mut all = common_features(&used, reliability);
            all.retain(|f| Some(f) != gate.as_ref());
            all
        }
    };
    let raw = |ex: &TrainExample| -> Result<Vec<f64>, DmsError> {
        features
            .iter()
            .map(|f| {
                feature(&ex.signals, 0, f, reliability)
                    .map(f64::from)
                    .ok_or_else(|| {
                        DmsError::Train(format!("feature \"{f}\" is missing from an example"))
                    })
            })
            .collect()
    };
    let mut prepared = Vec::with_capacity(used.len());
    let (mut n_agreeing, mut n_sound) = (0, 0);
    for ex in &used {
        let mut reward = vec![0.0; candidates.len()];
        for (g, r) in ex.grid.iter().zip(ex.rewards(config)) {
            if let Some(k) = candidates
                .iter()
                .position(|&c| candidate_key(c) == candidate_key(g.weights[0]))
            {
                reward[k] += r;
            }
        }
        let agrees = gate
            .as_deref()
            .and_then(|f| pair_feature(&ex.signals, 0, f))
            .is_some_and(|v| v >= 0.5);
        let sound = !agrees && is_sound(reliability, config.sound_gate, &ex.signals);
        n_agreeing += usize::from(agrees);
        n_sound += usize::from(sound);
        prepared.push(Prepared {
            x: raw(ex)?,
            reward,
            gated: agrees || sound,
        });
    }
    // Standardise, dropping features that do not vary.
    let n = prepared.len() as f64;
    let mean: Vec<f64> = (0..features.len())
        .map(|j| prepared.iter().map(|p| p.x[j]).sum::<f64>() / n)
        .collect();
    let sd: Vec<f64> = (0..features.len())
        .map(|j| {
            (prepared
                .iter()
                .map(|p| (p.x[j] - mean[j]).powi(2))
                .sum::<f64>()
                / n)
                .sqrt()
        })
        .collect();
    let keep: Vec<usize> = (0..features.len()).filter(|&j| sd[j] > 1e-6).collect();
    if keep.is_empty() {
        return Err(DmsError::Train(
            "no feature varies across the examples".into(),
        ));
    }
    for p in &mut prepared {
        p.x = keep.iter().map(|&j| (p.x[j] - mean[j]) / sd[j]).collect();
    }
    let (k, d) = (candidates.len(), keep.len());

    // Groups, shuffled with the seed.
    let groups: Vec<u64> = used
        .iter()
        .enumerate()
        .map(|(i, e)| e.group.unwrap_or(u64::MAX - i as u64))
        .collect();
    let mut distinct: Vec<u64> = groups
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut rng = SplitMix64::new(config.seed);
    for i in (1..distinct.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        distinct.swap(i, j);
    }
    // Group k-fold: fold of each group, by its place in the shuffled order.
    let n_folds = config.folds.min(distinct.len());
    let fold_of: std::collections::BTreeMap<u64, usize> = distinct
        .iter()
        .enumerate()
        .map(|(i, g)| (*g, i % n_folds.max(1)))
        .collect();
    let folds: Vec<usize> = groups.iter().map(|g| fold_of[g]).collect();

    let one = nearest_one(&candidates);
    let uniform = prepared.iter().map(|p| p.reward[one]).sum::<f64>() / prepared.len() as f64;
    let cross_validated = n_folds >= 2;
    if let Some(pb) = progress {
        pb.set_length(if cross_validated {
            (L2S.len() * n_folds) as u64 + 1
        } else {
            1
        });
    }
    // Each L2 strength's reward on every fold, fitted on the other folds: (held, rest) per fold.
    let splits: Vec<(Vec<Prepared>, Vec<Prepared>)> = if cross_validated {
        (0..n_folds)
            .map(|f| {
                let (held, rest): (Vec<_>, Vec<_>) = prepared
                    .iter()
                    .zip(&folds)
                    .partition(|(_, &fold)| fold == f);
                let unzip =
                    |v: Vec<(&Prepared, _)>| v.into_iter().map(|(p, _)| p.clone()).collect();
                (unzip(held), unzip(rest))
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut best = (f64::NEG_INFINITY, L2S[1]);
    if cross_validated {
        for l2 in L2S {
            let mut total = 0.0;
            for (held, rest) in &splits {
                let policy = Policy::fit(rest, k, d, l2, config);
                total += policy.picked_reward(held, one) * held.len() as f64;
                if let Some(pb) = progress {
                    pb.inc(1);
                }
            }
            let r = total / prepared.len() as f64;
            if r > best.0 {
                best = (r, l2);
            }
        }
    }
    let policy = Policy::fit(&prepared, k, d, best.1, config);
    if let Some(pb) = progress {
        pb.inc(1);
    }
    let train_reward = policy.picked_reward(&prepared, one) as f32;
    let valid_reward = if cross_validated {
        best.0 as f32
    } else {
        train_reward
    };
    if !policy
        .coef
        .iter()
        .chain(&policy.bias)
        .all(|v| v.is_finite())
    {
        return Err(DmsError::Train(
            "training diverged (non-finite parameters)".into(),
        ));
    }
    let names: Vec<String> = keep.iter().map(|&j| features[j].clone()).collect();
    let mut scheduler = LearnedScheduler::uniform("learned", &names, &candidates);
    scheduler.mean = keep.iter().map(|&j| mean[j] as f32).collect();
    scheduler.scale = keep.iter().map(|&j| sd[j] as f32).collect();
    scheduler.coef = policy
        .coef
        .chunks(d)
        .map(|r| r.iter().map(|v| *v as f32).collect())
        .collect();
    scheduler.bias = policy.bias.iter().map(|v| *v as f32).collect();
    scheduler.agree_feature = gate;
    scheduler.reliability = config.reliability.clone();
    scheduler.sound_gate = config.sound_gate;
    let report = TrainReport {
        train_reward,
        valid_reward,
        valid_reward_uniform: uniform as f32,
        l2: best.1,
        n_used: used.len(),
        n_skipped: examples.len() - used.len(),
        n_agreeing,
        n_sound,
        n_with_mwc: used
            .iter()
            .filter(|ex| ex.grid.iter().all(|g| g.mwc.is_some()))
            .count(),
        n_folds: if cross_validated { n_folds } else { 0 },
    };
    Ok((scheduler, report))
}

#[cfg(test)]
#[path = "train_tests.rs"]
mod tests;
