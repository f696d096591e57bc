//! Core of `train-scheduler`: fits a [`LearnedScheduler`] to scored weight grids.
//!
//! No gradient flows through the LLM. For each training example the data generator (the `eval`
//! tooling, with the model) has already evaluated a grid of weight vectors and recorded, for
//! each, the answer's log-likelihood and the Modality Weight Consistency loss. Here:
//!
//! 1. each grid point gets the score `loglik_g - lambda_mwc * mwc_g`;
//! 2. the example's target weights are the expectation of the grid's weight vectors under
//!    `softmax_g(score_g / temperature)`, normalised into a distribution over the modalities
//!    (divided by their sum, which is `M` for grids whose vectors sum to `M`);
//! 3. the MLP scores every modality, a softmax over the example's modalities gives the predicted
//!    distribution, and the loss is the cross-entropy between target and prediction (in nats;
//!    it includes the target's own entropy, so its minimum is not 0);
//! 4. full-batch gradient descent with Adam step sizes and hand-written backpropagation through
//!    the tiny MLP, deterministic given the seed (initialisation and train/valid split).
//!
//! Input format (JSON Lines, one example per line; blank lines are skipped):
//!
//! ```json
//! {"signals": {"images": [{"confidence": 0.2, "uncertainty": 0.3}],
//!              "text": {"confidence": 0.8, "uncertainty": 0.1},
//!              "consistency": [0.4], "image_missing": false},
//!  "grid": [{"weights": [0.5, 1.5], "loglik": -3.2, "mwc": 0.12},
//!           {"weights": [1.0, 1.0], "loglik": -4.0, "mwc": 0.10}]}
//! ```
//!
//! (one line in the file). `weights` lists the images' weights then the text's; `mwc` may be
//! omitted (0).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::learned::FEATURES;
use super::{DmsError, LearnedScheduler, Signals, SplitMix64, TrainedInfo};

/// One evaluated weight vector of a training example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridPoint {
    /// Weights: one per image, then the text.
    pub weights: Vec<f32>,
    /// Log-likelihood of the reference answer under these weights.
    pub loglik: f32,
    /// Modality Weight Consistency loss under these weights (0 if absent).
    #[serde(default)]
    pub mwc: f32,
}

/// One training example: the request's signals and its scored grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainExample {
    /// Signals measured for the request.
    pub signals: Signals,
    /// The evaluated weight vectors.
    pub grid: Vec<GridPoint>,
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
            if !g.loglik.is_finite() || !g.mwc.is_finite() {
                return Err(format!("grid[{i}]: loglik and mwc must be finite"));
            }
        }
        Ok(())
    }

    /// The target distribution over modalities (see the module documentation).
    pub fn target(&self, config: &TrainConfig) -> Vec<f32> {
        let t = f64::from(config.temperature.max(1e-6));
        let scores: Vec<f64> = self
            .grid
            .iter()
            .map(|g| (f64::from(g.loglik) - f64::from(config.lambda_mwc) * f64::from(g.mwc)) / t)
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let p: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let z: f64 = p.iter().sum();
        let mut w = vec![0.0f64; self.signals.m()];
        for (g, pg) in self.grid.iter().zip(&p) {
            for (acc, &x) in w.iter_mut().zip(&g.weights) {
                *acc += pg / z * f64::from(x);
            }
        }
        let sum: f64 = w.iter().sum();
        w.iter().map(|x| (x / sum) as f32).collect()
    }
}

/// Training settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Weight of the MWC loss in the grid score (default 1).
    pub lambda_mwc: f32,
    /// Hidden units of the MLP (default 8).
    pub hidden: usize,
    /// Full-batch steps (default 1000).
    pub epochs: usize,
    /// Adam learning rate (default 0.02).
    pub lr: f32,
    /// Seed of initialisation and split (default 0).
    pub seed: u64,
    /// Share of examples held out for validation (default 0.2; at least one example when
    /// positive and there are two or more).
    pub valid_fraction: f32,
    /// Temperature of the softmax over grid scores (default 1).
    pub temperature: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lambda_mwc: 1.0,
            hidden: 8,
            epochs: 1000,
            lr: 0.02,
            seed: 0,
            valid_fraction: 0.2,
            temperature: 1.0,
        }
    }
}

impl TrainConfig {
    fn validate(&self) -> Result<(), DmsError> {
        let bad = |what: &str| Err(DmsError::Train(what.to_string()));
        if !self.lambda_mwc.is_finite() || self.lambda_mwc < 0.0 {
            return bad("lambda_mwc must be finite and >= 0");
        }
        if self.hidden == 0 || self.hidden > 1024 {
            return bad("hidden must be between 1 and 1024");
        }
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return bad("lr must be > 0");
        }
        if !(0.0..0.95).contains(&self.valid_fraction) {
            return bad("valid_fraction must be in [0, 0.95)");
        }
        if !self.temperature.is_finite() || self.temperature <= 0.0 {
            return bad("temperature must be > 0");
        }
        Ok(())
    }
}

/// Outcome of [`train`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Mean cross-entropy on the training examples after training.
    pub train_loss: f32,
    /// Mean cross-entropy on the held-out examples (equals `train_loss` when none is held out).
    pub valid_loss: f32,
    /// Mean cross-entropy on the training examples before the first step.
    pub initial_train_loss: f32,
    /// Number of training examples.
    pub n_train: usize,
    /// Number of held-out examples.
    pub n_valid: usize,
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

/// An example reduced to what the MLP needs.
struct Prepared {
    features: Vec<[f32; 6]>,
    target: Vec<f32>,
}

const F: usize = FEATURES.len();

/// Flat parameters: `w1` (hidden x F, row-major), `b1`, `w2`, `b2`.
struct Mlp {
    hidden: usize,
    p: Vec<f64>,
}

impl Mlp {
    fn new(hidden: usize, rng: &mut SplitMix64) -> Self {
        let mut p = vec![0.0; hidden * F + 2 * hidden + 1];
        let mut uniform = |scale: f64| (f64::from(rng.next_f32()) * 2.0 - 1.0) * scale;
        let a = 1.0 / (F as f64).sqrt();
        let b = 1.0 / (hidden as f64).sqrt();
        for x in &mut p[..hidden * F] {
            *x = uniform(a);
        }
        for x in &mut p[hidden * F + hidden..hidden * F + 2 * hidden] {
            *x = uniform(b);
        }
        Self { hidden, p }
    }

    /// Mean cross-entropy over `data`; adds the gradient of that mean to `grad` if given.
    fn loss(&self, data: &[Prepared], mut grad: Option<&mut [f64]>) -> f64 {
        let h = self.hidden;
        let (w1, rest) = self.p.split_at(h * F);
        let (b1, rest) = rest.split_at(h);
        let (w2, _) = rest.split_at(h);
        let n = data.len().max(1) as f64;
        let mut total = 0.0;
        let mut acts = vec![0.0f64; h];
        for ex in data {
            let mut hid: Vec<Vec<f64>> = Vec::with_capacity(ex.features.len());
            let mut scores = Vec::with_capacity(ex.features.len());
            for x in &ex.features {
                for j in 0..h {
                    let a: f64 = (0..F).map(|k| w1[j * F + k] * f64::from(x[k])).sum();
                    acts[j] = (a + b1[j]).tanh();
                }
                scores.push(acts.iter().zip(w2).map(|(a, w)| a * w).sum::<f64>());
                hid.push(acts.clone());
            }
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + scores.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
            for (s, t) in scores.iter().zip(&ex.target) {
                total -= f64::from(*t) * (s - lse);
            }
            let Some(g) = grad.as_deref_mut() else {
                continue;
            };
            for ((x, hm), (s, t)) in ex
                .features
                .iter()
                .zip(&hid)
                .zip(scores.iter().zip(&ex.target))
            {
                // dL/dscore_m = q_m - t_m (targets sum to 1), averaged over examples.
                let ds = ((s - lse).exp() - f64::from(*t)) / n;
                g[h * F + 2 * h] += ds;
                for j in 0..h {
                    g[h * F + h + j] += ds * hm[j];
                    let da = ds * w2[j] * (1.0 - hm[j] * hm[j]);
                    g[h * F + j] += da;
                    for k in 0..F {
                        g[j * F + k] += da * f64::from(x[k]);
                    }
                }
            }
        }
        total / n
    }

    fn into_scheduler(self) -> LearnedScheduler {
        let h = self.hidden;
        let mut l = LearnedScheduler::zeros("learned", h);
        let f = |x: &f64| *x as f32;
        l.w1 = self.p[..h * F]
            .chunks(F)
            .map(|r| r.iter().map(f).collect())
            .collect();
        l.b1 = self.p[h * F..h * F + h].iter().map(f).collect();
        l.w2 = self.p[h * F + h..h * F + 2 * h].iter().map(f).collect();
        l.b2 = self.p[h * F + 2 * h] as f32;
        l
    }
}

/// Mean cross-entropy of `scheduler`'s softmax (at temperature 1) against the examples'
/// targets.
pub fn evaluate_loss(
    scheduler: &LearnedScheduler,
    examples: &[TrainExample],
    config: &TrainConfig,
) -> f32 {
    let n = examples.len().max(1) as f64;
    let total: f64 = examples
        .iter()
        .map(|ex| {
            let logq = super::log_softmax(&scheduler.scores(&ex.signals));
            let t = ex.target(config);
            -t.iter()
                .zip(&logq)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum::<f64>()
        })
        .sum();
    (total / n) as f32
}

/// Trains a [`LearnedScheduler`] (named `learned`, tau 1, bounds 0.2..2.0; the caller renames
/// it and fills `trained.command`). `progress`, if given, gets one tick per epoch; the caller
/// finishes it.
pub fn train(
    examples: &[TrainExample],
    config: &TrainConfig,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<(LearnedScheduler, TrainReport), DmsError> {
    config.validate()?;
    if examples.is_empty() {
        return Err(DmsError::Train("no examples".into()));
    }
    for (i, ex) in examples.iter().enumerate() {
        ex.validate()
            .map_err(|e| DmsError::Train(format!("example {i}: {e}")))?;
    }
    // Split by example index with the seed.
    let n = examples.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(config.seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut n_valid = (n as f32 * config.valid_fraction).round() as usize;
    if config.valid_fraction > 0.0 && n >= 2 {
        n_valid = n_valid.clamp(1, n - 1);
    } else {
        n_valid = 0;
    }
    let prepare = |idx: &[usize]| -> Vec<Prepared> {
        let mut idx = idx.to_vec();
        idx.sort_unstable();
        idx.iter()
            .map(|&i| Prepared {
                features: LearnedScheduler::feature_vectors(&examples[i].signals),
                target: examples[i].target(config),
            })
            .collect()
    };
    let valid = prepare(&order[..n_valid]);
    let train_set = prepare(&order[n_valid..]);

    let mut init_rng = SplitMix64::new(config.seed ^ 0x5EED_D175_0000_0001);
    let mut mlp = Mlp::new(config.hidden, &mut init_rng);
    let initial = mlp.loss(&train_set, None);
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let lr = f64::from(config.lr);
    let mut m = vec![0.0f64; mlp.p.len()];
    let mut v = vec![0.0f64; mlp.p.len()];
    let mut grad = vec![0.0f64; mlp.p.len()];
    if let Some(pb) = progress {
        pb.set_length(config.epochs as u64);
    }
    for epoch in 1..=config.epochs {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let loss = mlp.loss(&train_set, Some(&mut grad));
        let (c1, c2) = (1.0 - b1.powi(epoch as i32), 1.0 - b2.powi(epoch as i32));
        for i in 0..mlp.p.len() {
            m[i] = b1 * m[i] + (1.0 - b1) * grad[i];
            v[i] = b2 * v[i] + (1.0 - b2) * grad[i] * grad[i];
            mlp.p[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
        }
        if let Some(pb) = progress {
            pb.inc(1);
            if epoch % 50 == 0 || epoch == config.epochs {
                pb.set_message(format!("loss {loss:.4}"));
            }
        }
    }
    let train_loss = mlp.loss(&train_set, None) as f32;
    let valid_loss = if valid.is_empty() {
        train_loss
    } else {
        mlp.loss(&valid, None) as f32
    };
    if !train_loss.is_finite() || !valid_loss.is_finite() {
        return Err(DmsError::Train(
            "training diverged (non-finite loss)".into(),
        ));
    }
    let mut scheduler = mlp.into_scheduler();
    scheduler.trained = Some(TrainedInfo {
        command: String::new(),
        examples: n,
        train_loss,
        valid_loss,
        seed: config.seed,
        model: None,
    });
    let report = TrainReport {
        train_loss,
        valid_loss,
        initial_train_loss: initial as f32,
        n_train: train_set.len(),
        n_valid: valid.len(),
    };
    Ok((scheduler, report))
}

#[cfg(test)]
#[path = "train_tests.rs"]
mod tests;
