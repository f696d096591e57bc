//! Reliability: how likely one modality's input is sound (not degraded), as a logistic model
//! over its measured signal variants (confidence at the answer position, shift against the
//! question alone, the MC-dropout uncertainties, ...). One signal family alone sees only part
//! of what makes an input unreliable (a destroyed image is unconfident, a partly patched one is
//! sensitive to token dropout); `llama-dms calibrate` fits the combination per model from
//! records whose inputs are known to be clean or degraded.

use serde::{Deserialize, Serialize};

use super::learned::pair_feature;
use super::{DmsError, Signals};

/// A logistic model of one modality's reliability: `sigmoid(bias + sum_i w_i z_i)` with
/// `z_i = (x_i - mean_i) / scale_i`, `x_i` the variant named `features[i]` (keys as in
/// [`super::Signals::variants`], e.g. `image.confidence.topk`; `ln:NAME` reads
/// `ln(max(NAME, 0) + 1e-4)`, for the small, skewed uncertainties; see [`feature_value`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReliabilityModel {
    /// The variants read, by name.
    pub features: Vec<String>,
    /// Their means on the calibration records.
    pub mean: Vec<f32>,
    /// Their standard deviations there (1 where a variant did not vary).
    pub scale: Vec<f32>,
    /// The fitted coefficient of each standardised variant.
    pub weights: Vec<f32>,
    /// The intercept.
    pub bias: f32,
}

/// The two models a scheduler uses: one for every image, one for the text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reliability {
    /// Reliability of an image (its `image.*` variants).
    pub image: ReliabilityModel,
    /// Reliability of the text evidence (its `text.*` variants).
    pub text: ReliabilityModel,
}

/// Gradient steps of [`ReliabilityModel::fit`].
const FIT_STEPS: usize = 3000;
/// Its step size (the variants are standardised, so one size fits).
const FIT_RATE: f64 = 0.5;

/// Prefix of a feature read on a log scale.
pub const LN_PREFIX: &str = "ln:";
/// What `ln:` adds before the logarithm.
const LN_OFFSET: f32 = 1e-4;

/// The value of feature `name` given the variants that `value` reads: the variant itself, or
/// for `ln:NAME` the logarithm of `NAME` (see [`ReliabilityModel`]). `None` if the variant is
/// missing or not finite.
pub fn feature_value(name: &str, value: impl Fn(&str) -> Option<f32>) -> Option<f32> {
    let x = match name.strip_prefix(LN_PREFIX) {
        Some(inner) => (value(inner)?.max(0.0) + LN_OFFSET).ln(),
        None => value(name)?,
    };
    x.is_finite().then_some(x)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl ReliabilityModel {
    /// Checks that the vectors have one entry per feature and every number is finite.
    pub fn validate(&self) -> Result<(), DmsError> {
        let n = self.features.len();
        let bad = |why: String| DmsError::InvalidParameter {
            field: "reliability".into(),
            reason: why,
        };
        if self.mean.len() != n || self.scale.len() != n || self.weights.len() != n {
            return Err(bad(format!(
                "features, mean, scale and weights need one entry each ({n} features)"
            )));
        }
        let numbers = self.mean.iter().chain(&self.weights).chain([&self.bias]);
        if numbers.copied().any(|v| !v.is_finite())
            || self.scale.iter().any(|s| !s.is_finite() || *s <= 0.0)
        {
            return Err(bad("every number must be finite and every scale > 0".into()));
        }
        Ok(())
    }

    /// The reliability in `[0, 1]` of an input whose variants `value` reads; `None` if one of
    /// the features is missing (or not finite).
    pub fn probability(&self, value: impl Fn(&str) -> Option<f32>) -> Option<f32> {
        let mut z = f64::from(self.bias);
        for (i, name) in self.features.iter().enumerate() {
            let x = feature_value(name, &value)?;
            z += f64::from(self.weights[i]) * f64::from((x - self.mean[i]) / self.scale[i]);
        }
        Some(sigmoid(z) as f32)
    }

    /// Fits the model to `rows` (one value per feature each, as [`feature_value`] reads them)
    /// labelled reliable (`true`) or not:
    /// L2-penalised logistic regression (mean log-loss plus `l2 / 2 * |w|^2`) by gradient
    /// descent on standardised variants. Deterministic.
    pub fn fit(features: &[String], rows: &[Vec<f32>], labels: &[bool], l2: f64) -> Self {
        let n_f = features.len();
        let n = rows.len().max(1) as f64;
        let mean: Vec<f64> = (0..n_f)
            .map(|i| rows.iter().map(|r| f64::from(r[i])).sum::<f64>() / n)
            .collect();
        let scale: Vec<f64> = (0..n_f)
            .map(|i| {
                let var = rows
                    .iter()
                    .map(|r| (f64::from(r[i]) - mean[i]).powi(2))
                    .sum::<f64>()
                    / n;
                if var > 1e-12 {
                    var.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        let z: Vec<Vec<f64>> = rows
            .iter()
            .map(|r| {
                (0..n_f)
                    .map(|i| (f64::from(r[i]) - mean[i]) / scale[i])
                    .collect()
            })
            .collect();
        let (mut w, mut b) = (vec![0.0f64; n_f], 0.0f64);
        for _ in 0..FIT_STEPS {
            let (mut gw, mut gb) = (vec![0.0f64; n_f], 0.0f64);
            for (x, &y) in z.iter().zip(labels) {
                let p = sigmoid(b + x.iter().zip(&w).map(|(a, c)| a * c).sum::<f64>());
                let e = p - f64::from(u8::from(y));
                gb += e;
                gw.iter_mut().zip(x).for_each(|(g, a)| *g += e * a);
            }
            b -= FIT_RATE * gb / n;
            for (wi, gi) in w.iter_mut().zip(&gw) {
                *wi -= FIT_RATE * (gi / n + l2 * *wi);
            }
        }
        Self {
            features: features.to_vec(),
            mean: mean.iter().map(|&m| m as f32).collect(),
            scale: scale.iter().map(|&s| s as f32).collect(),
            weights: w.iter().map(|&v| v as f32).collect(),
            bias: b as f32,
        }
    }
}

impl Reliability {
    /// Checks both models.
    pub fn validate(&self) -> Result<(), DmsError> {
        self.image.validate()?;
        self.text.validate()
    }

    /// The reliability of every modality of a request: its images in order, then the text;
    /// `None` when a variant a model reads was not measured.
    pub fn of(&self, signals: &Signals) -> Option<Vec<f32>> {
        let n_images = signals.images.len();
        let mut out = Vec::with_capacity(n_images + 1);
        for i in 0..n_images {
            out.push(self.image.probability(|k| pair_feature(signals, i, k))?);
        }
        out.push(self.text.probability(|k| pair_feature(signals, 0, k))?);
        Some(out)
    }
}

#[cfg(test)]
impl Reliability {
    /// Test models that each read one variant: reliability `sigmoid(2 * (x - 0.5) / 0.1)`.
    pub(crate) fn reading(image: &str, text: &str) -> Self {
        let model = |feature: &str| ReliabilityModel {
            features: vec![feature.to_string()],
            mean: vec![0.5],
            scale: vec![0.1],
            weights: vec![2.0],
            bias: 0.0,
        };
        Self {
            image: model(image),
            text: model(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fit_separates_and_reads_by_name() {
        // Right answers have a high first variant; the second is noise.
        let rows: Vec<Vec<f32>> = (0..40)
            .map(|i| vec![(i % 2) as f32 + 0.1 * (i % 5) as f32, (i % 7) as f32])
            .collect();
        let labels: Vec<bool> = (0..40).map(|i| i % 2 == 1).collect();
        let m = ReliabilityModel::fit(&names(&["a", "b"]), &rows, &labels, 1e-3);
        m.validate().unwrap();
        assert!(m.weights[0] > 1.0 && m.weights[0].abs() > 3.0 * m.weights[1].abs());
        let at = |a: f32| m.probability(|k| (k == "a").then_some(a).or(Some(3.0)));
        assert!(at(1.2).unwrap() > 0.9 && at(0.0).unwrap() < 0.1);
        assert_eq!(m.probability(|k| (k == "a").then_some(1.0)), None);
    }

    #[test]
    fn ln_features_read_the_log_of_the_variant() {
        let v = |k: &str| (k == "u").then_some(0.0099);
        assert!((feature_value("ln:u", v).unwrap() - 0.01f32.ln()).abs() < 1e-5);
        assert_eq!(feature_value("u", v), Some(0.0099));
        assert_eq!(feature_value("ln:w", v), None);
        assert!(feature_value("ln:u", |_| Some(-1.0)).unwrap() < -9.0);
    }

    #[test]
    fn constant_variants_and_bad_models() {
        let rows = vec![vec![1.0]; 4];
        let m = ReliabilityModel::fit(&names(&["c"]), &rows, &[true, true, true, false], 0.0);
        assert_eq!(m.scale, vec![1.0]);
        assert!((m.probability(|_| Some(1.0)).unwrap() - 0.75).abs() < 0.01);
        let mut bad = m.clone();
        bad.weights.push(1.0);
        assert!(bad.validate().is_err());
        let mut bad = m;
        bad.scale[0] = 0.0;
        assert!(bad.validate().is_err());
    }
}
