//! Reliability signals: pure functions over logits and embedding rows.
//!
//! Every function is NaN/inf-safe: a non-finite logit is treated as `-inf` (probability 0), an
//! input with no finite logit gives the answer for the uniform distribution, and non-finite
//! embedding values are treated as 0. Scalar signals are always finite and in `[0, 1]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Logits with every non-finite value replaced by `-inf`.
fn sanitise_logits(logits: &[f32]) -> impl Iterator<Item = f32> + '_ {
    logits
        .iter()
        .map(|&x| if x.is_finite() { x } else { f32::NEG_INFINITY })
}

fn finite_or_zero(x: f32) -> f32 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// Log-probabilities of `softmax(logits)`, computed stably (max subtracted, sums in f64).
///
/// Entries for non-finite logits are `-inf`; if no logit is finite the result is the uniform
/// distribution `-ln |V|`. An empty input gives an empty output.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = sanitise_logits(logits).fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        let v = -(logits.len() as f64).ln() as f32;
        return vec![v; logits.len()];
    }
    // `(x - max) - ln(sum)`, not `x - (max + ln(sum))`: near f32::MAX the latter loses ln(sum).
    let shifted = |x: f32| f64::from(x) - f64::from(max);
    let sum: f64 = sanitise_logits(logits).map(|x| shifted(x).exp()).sum();
    let ln_sum = sum.ln();
    sanitise_logits(logits)
        .map(|x| (shifted(x) - ln_sum) as f32)
        .collect()
}

/// Probabilities of `softmax(logits)` in f64 (see [`log_softmax`] for the conventions).
fn probabilities(logits: &[f32]) -> Vec<f64> {
    log_softmax(logits)
        .into_iter()
        .map(|l| f64::from(l).exp())
        .collect()
}

fn entropy_of(p: &[f64]) -> f64 {
    -p.iter()
        .filter(|&&q| q > 0.0)
        .map(|&q| q * q.ln())
        .sum::<f64>()
}

/// Natural-log entropy of `softmax(logits)`, in `[0, ln |V|]` (0 for an empty input).
pub fn entropy(logits: &[f32]) -> f32 {
    if logits.is_empty() {
        return 0.0;
    }
    let h = entropy_of(&probabilities(logits));
    h.clamp(0.0, (logits.len() as f64).ln()) as f32
}

/// Confidence `1 - H(softmax(logits)) / ln |V|`, in `[0, 1]`: 1 for a one-hot distribution, 0 for
/// the uniform one. Vocabularies with fewer than two entries carry no signal and give 0.
pub fn confidence(logits: &[f32]) -> f32 {
    if logits.len() < 2 {
        return 0.0;
    }
    let norm = (logits.len() as f32).ln();
    (1.0 - entropy(logits) / norm).clamp(0.0, 1.0)
}

/// The two largest probabilities of `softmax(logits)` (0 where the vocabulary is shorter).
pub fn top2_probabilities(logits: &[f32]) -> (f32, f32) {
    let (mut p1, mut p2) = (0.0f64, 0.0f64);
    for p in probabilities(logits) {
        if p > p1 {
            p2 = p1;
            p1 = p;
        } else if p > p2 {
            p2 = p;
        }
    }
    (p1 as f32, p2 as f32)
}

/// The most likely token's share of the `k` most likely tokens' total probability: a
/// confidence among the plausible answers, blind to mass on unrelated tokens. In `[0, 1]`.
pub fn top_k_share(logits: &[f32], k: usize) -> f32 {
    let mut p = probabilities(logits);
    if p.is_empty() || k == 0 {
        return 0.0;
    }
    let k = k.min(p.len());
    p.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let top = &p[..k];
    let total: f64 = top.iter().sum();
    let best = top.iter().copied().fold(0.0, f64::max);
    if total > 0.0 {
        (best / total) as f32
    } else {
        0.0
    }
}

/// The word an answer ends its first sentence on, lowercased (`"The main color is red."` ->
/// `red`): where a short answer states what it answers. `None` for an answer without a word.
pub fn answer_word(answer: &str) -> Option<String> {
    let first = answer.split(['.', '!', '?', '\n']).next().unwrap_or("");
    first
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .rfind(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Whether two unimodal answers agree: 1 when they end their first sentence on the same word
/// ([`answer_word`]), else 0. The signal variant `consistency.answer`: with the question kept,
/// two modalities that give the same answer alone leave nothing to arbitrate.
pub fn answer_agreement(a: &str, b: &str) -> f32 {
    match (answer_word(a), answer_word(b)) {
        (Some(x), Some(y)) if x == y => 1.0,
        _ => 0.0,
    }
}

/// Agreement of two next-token distributions, `1 - JS(p, q) / ln 2`, in `[0, 1]`: 1 for equal
/// distributions, 0 for disjoint ones. Distributions of different lengths compare only their
/// common prefix (renormalised); empty inputs give 0.5 ("unknown").
pub fn js_consistency(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.5;
    }
    let (p, q) = (probabilities(&a[..n]), probabilities(&b[..n]));
    let mut js = 0.0f64;
    for (&x, &y) in p.iter().zip(&q) {
        let m = (x + y) / 2.0;
        if x > 0.0 {
            js += 0.5 * x * (x / m).ln();
        }
        if y > 0.0 {
            js += 0.5 * y * (y / m).ln();
        }
    }
    let s = 1.0 - js / std::f64::consts::LN_2;
    if s.is_finite() {
        s.clamp(0.0, 1.0) as f32
    } else {
        0.5
    }
}

/// Normalised mutual information (BALD) of `T` stochastic passes:
/// `[H(mean_t p_t) - mean_t H(p_t)] / ln |V|`, clamped to `[0, 1]`.
///
/// Each sample is one pass's logits. Fewer than two samples, or a vocabulary of fewer than two
/// entries, give 0. Samples whose length differs from the first one's are ignored.
pub fn mutual_information(samples: &[Vec<f32>]) -> f32 {
    let Some(first) = samples.first() else {
        return 0.0;
    };
    let v = first.len();
    let used: Vec<&Vec<f32>> = samples.iter().filter(|s| s.len() == v).collect();
    if used.len() < 2 || v < 2 {
        return 0.0;
    }
    let mut mean = vec![0.0f64; v];
    let mut mean_h = 0.0f64;
    for s in &used {
        let p = probabilities(s);
        mean_h += entropy_of(&p);
        for (m, q) in mean.iter_mut().zip(&p) {
            *m += q;
        }
    }
    let t = used.len() as f64;
    mean.iter_mut().for_each(|m| *m /= t);
    mean_h /= t;
    let mi = (entropy_of(&mean) - mean_h) / (v as f64).ln();
    if mi.is_finite() {
        mi.clamp(0.0, 1.0) as f32
    } else {
        0.0
    }
}

/// Mean of the rows of a row-major `n x width` matrix (a trailing partial row is ignored).
/// No rows (or only partial ones) give zeros; a width of 0 gives an empty vector.
pub fn mean_pool(rows: &[f32], width: usize) -> Vec<f32> {
    if width == 0 {
        return Vec::new();
    }
    let n = rows.len() / width;
    let mut acc = vec![0.0f64; width];
    for row in rows.chunks_exact(width) {
        for (a, &x) in acc.iter_mut().zip(row) {
            *a += f64::from(finite_or_zero(x));
        }
    }
    let n = n.max(1) as f64;
    acc.into_iter().map(|a| (a / n) as f32).collect()
}

/// Semantic consistency `(1 + cos(a, b)) / 2`, in `[0, 1]`; 0.5 if either vector is zero.
/// Only the common prefix of vectors of different lengths is compared.
pub fn cosine_consistency(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(finite_or_zero(x)), f64::from(finite_or_zero(y)));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na <= 0.0 || nb <= 0.0 || !(na * nb).is_finite() {
        return 0.5;
    }
    let cos = (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0);
    ((1.0 + cos) / 2.0) as f32
}

/// `v / ||v||` (non-finite entries count as 0); a zero vector gives zeros.
pub fn l2_normalise(v: &[f32]) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|&x| f64::from(finite_or_zero(x)).powi(2))
        .sum::<f64>()
        .sqrt();
    if norm <= 0.0 || !norm.is_finite() {
        return vec![0.0; v.len()];
    }
    v.iter()
        .map(|&x| (f64::from(finite_or_zero(x)) / norm) as f32)
        .collect()
}

/// Inverted dropout in place: each element is zeroed with probability `rate`, survivors are
/// scaled by `1 / (1 - rate)`. `rate` is clamped to `[0, 0.95]` (non-finite means 0); a rate of
/// 0 leaves the rows untouched and draws nothing from `rng`.
pub fn apply_dropout(rows: &mut [f32], rate: f32, rng: &mut SplitMix64) {
    let rate = if rate.is_finite() {
        rate.clamp(0.0, 0.95)
    } else {
        0.0
    };
    if rate == 0.0 {
        return;
    }
    let keep = 1.0 / (1.0 - rate);
    for x in rows {
        if rng.next_f32() < rate {
            *x = 0.0;
        } else {
            *x *= keep;
        }
    }
}

/// Inverted dropout with the same mask for identical rows: each row of width `width` draws its
/// mask from `seed` and a hash of its own values, so that repeated rows (a uniform image's
/// patches, a repeated word) are dropped alike and the perturbation does not average out over
/// them. Rows whose `flagged` entry is false are left alone.
pub fn apply_row_keyed_dropout(
    rows: &mut [f32],
    width: usize,
    flagged: &[bool],
    rate: f32,
    seed: u64,
) {
    if width == 0 {
        return;
    }
    for (row, &f) in rows.chunks_exact_mut(width).zip(flagged) {
        if !f {
            continue;
        }
        // FNV-1a over the row's bits: stable across runs and builds.
        let key = row.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
            (h ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3)
        });
        let mut rng = SplitMix64::new(seed ^ key);
        apply_dropout(row, rate, &mut rng);
    }
}

/// Token-level dropout in place: each flagged row of width `width` is zeroed with probability
/// `rate`, independently per position (seeded by `seed` and the row's index, not its values, so
/// that identical rows are dropped independently and a uniform image keeps its other copies).
/// Unflagged rows are left alone; a rate of 0 (or a non-finite one) changes nothing.
pub fn apply_token_dropout(rows: &mut [f32], width: usize, flagged: &[bool], rate: f32, seed: u64) {
    if width == 0 || !rate.is_finite() || rate <= 0.0 {
        return;
    }
    let rate = rate.min(0.95);
    for (i, (row, &f)) in rows.chunks_exact_mut(width).zip(flagged).enumerate() {
        let mut rng = SplitMix64::new(seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        if f && rng.next_f32() < rate {
            row.fill(0.0);
        }
    }
}

/// The share of `samples` whose most likely token (see [`argmax`]) differs from `reference`'s:
/// how often a perturbation flips the answer, in `[0, 1]` (0 with no samples).
pub fn flip_rate(reference: &[f32], samples: &[Vec<f32>]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let r = argmax(reference);
    samples.iter().filter(|s| argmax(s) != r).count() as f32 / samples.len() as f32
}

/// Index of the largest finite value (0 for an empty slice): the greedy token of `logits`.
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// 2x2 average pooling of a `grid_w x grid_h` grid of rows (row-major, each `width` floats) into
/// a `ceil(grid_w/2) x ceil(grid_h/2)` grid. Returns `(rows, out_w, out_h)`. Cells at an odd edge
/// average the rows they have; rows missing from a short `rows` slice are skipped.
pub fn avg_pool_2x2(
    rows: &[f32],
    width: usize,
    grid_w: usize,
    grid_h: usize,
) -> (Vec<f32>, usize, usize) {
    let (out_w, out_h) = (grid_w.div_ceil(2), grid_h.div_ceil(2));
    if width == 0 {
        return (Vec::new(), out_w, out_h);
    }
    let n_rows = rows.len() / width;
    let mut out = vec![0.0f32; out_w * out_h * width];
    for oy in 0..out_h {
        for ox in 0..out_w {
            let mut acc = vec![0.0f64; width];
            let mut count = 0usize;
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let (x, y) = (2 * ox + dx, 2 * oy + dy);
                let idx = y * grid_w + x;
                if x >= grid_w || y >= grid_h || idx >= n_rows {
                    continue;
                }
                count += 1;
                for (a, &v) in acc.iter_mut().zip(&rows[idx * width..(idx + 1) * width]) {
                    *a += f64::from(finite_or_zero(v));
                }
            }
            let cell = &mut out[(oy * out_w + ox) * width..(oy * out_w + ox + 1) * width];
            let c = count.max(1) as f64;
            for (o, a) in cell.iter_mut().zip(acc) {
                *o = (a / c) as f32;
            }
        }
    }
    (out, out_w, out_h)
}

/// How the image rows of a signal pass are pooled: [`avg_pool_2x2`] `at_least` times, then
/// again while more than `max_rows` rows remain (a grid that is not square, or one row wide, is
/// left as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pooling {
    /// Poolings applied whatever the size.
    pub at_least: usize,
    /// Rows above which the grid is pooled again.
    pub max_rows: usize,
}

impl Pooling {
    /// No pooling at all.
    pub const NONE: Pooling = Pooling {
        at_least: 0,
        max_rows: usize::MAX,
    };

    /// The rows of a square grid pooled as this says.
    pub fn apply(&self, rows: &[f32], width: usize) -> Vec<f32> {
        let mut out = rows.to_vec();
        if width == 0 {
            return out;
        }
        let mut done = 0;
        loop {
            let n = out.len() / width;
            let side = n.isqrt();
            let wanted = done < self.at_least || n > self.max_rows;
            if !wanted || side * side != n || side < 2 {
                break;
            }
            out = avg_pool_2x2(&out, width, side, side).0;
            done += 1;
        }
        out
    }
}

impl Pooling {
    /// The rows of a `grid_w x grid_h` grid (row-major) pooled as this says, square or not
    /// (an M-RoPE image's grid), with the pooled grid's sides.
    pub fn apply_grid(
        &self,
        rows: &[f32],
        width: usize,
        grid_w: usize,
        grid_h: usize,
    ) -> (Vec<f32>, usize, usize) {
        let (mut out, mut w, mut h) = (rows.to_vec(), grid_w, grid_h);
        let mut done = 0;
        while width > 0 && (done < self.at_least || w * h > self.max_rows) && w >= 2 && h >= 2 {
            (out, w, h) = avg_pool_2x2(&out, width, w, h);
            done += 1;
        }
        (out, w, h)
    }
}

/// Modality Weight Consistency loss `sum_m w_m * ||z_fused - z_m||^2 / M`, where every `z` is
/// L2-normalised here and `M = weights.len()`. Non-finite weights count as 0; only the first
/// `min(weights.len(), unimodal.len())` modalities contribute. Always finite and >= 0.
pub fn mwc_loss(weights: &[f32], fused: &[f32], unimodal: &[Vec<f32>]) -> f32 {
    if weights.is_empty() {
        return 0.0;
    }
    let zf = l2_normalise(fused);
    let total: f64 = weights
        .iter()
        .zip(unimodal)
        .map(|(&w, z)| {
            let zm = l2_normalise(z);
            let d: f64 = zf
                .iter()
                .zip(&zm)
                .map(|(&a, &b)| f64::from(a - b).powi(2))
                .sum();
            f64::from(finite_or_zero(w)) * d
        })
        .sum();
    let loss = total / weights.len() as f64;
    if loss.is_finite() {
        // Clamped so that huge weights cannot overflow the f32.
        loss.clamp(0.0, f64::from(f32::MAX)) as f32
    } else {
        0.0
    }
}

/// A tiny seeded pseudo-random generator (SplitMix64), for reproducible dropout masks and
/// training.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)` (24 random bits).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }
}

/// Signals of one modality.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModalitySignals {
    /// Confidence `c_m` in `[0, 1]` (see [`confidence`]).
    pub confidence: f32,
    /// MC-dropout uncertainty `u_m` in `[0, 1]` (see [`mutual_information`]).
    pub uncertainty: f32,
}

impl ModalitySignals {
    /// Neutral signals (0.5, 0.5), used where nothing was measured.
    pub const NEUTRAL: Self = Self {
        confidence: 0.5,
        uncertainty: 0.5,
    };

    /// The same signals with non-finite values replaced by 0.5 and the rest clamped to `[0, 1]`.
    pub fn sanitised(self) -> Self {
        Self {
            confidence: unit(self.confidence),
            uncertainty: unit(self.uncertainty),
        }
    }
}

/// Clamp to `[0, 1]`; non-finite becomes 0.5 ("unknown").
pub(crate) fn unit(x: f32) -> f32 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.5
    }
}

/// All signals of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// One entry per image, in order of appearance.
    pub images: Vec<ModalitySignals>,
    /// Signals of the user text.
    pub text: ModalitySignals,
    /// One per image: image-vs-text semantic consistency in `[0, 1]`.
    pub consistency: Vec<f32>,
    /// The request has no image.
    pub image_missing: bool,
    /// Per image, every signal variant measured for it and the text, keyed as in `eval`
    /// records (`image.confidence.topk`, `text.uncertainty`, `consistency.input`, ...): what
    /// a learned scheduler may read. Empty when none were measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<BTreeMap<String, f32>>,
}

impl Signals {
    /// Neutral signals for `n_images` images: what a caller passes to schedulers whose
    /// [`needs_signals`](crate::dms::Scheduler::needs_signals) is false.
    pub fn neutral(n_images: usize) -> Self {
        Self {
            images: vec![ModalitySignals::NEUTRAL; n_images],
            text: ModalitySignals::NEUTRAL,
            consistency: vec![0.5; n_images],
            image_missing: n_images == 0,
            variants: Vec::new(),
        }
    }

    /// Number of modalities: one per image plus the text.
    pub fn m(&self) -> usize {
        self.images.len() + 1
    }

    /// Mean image/text consistency `s` in `[0, 1]`; 1.0 when there is no image (nothing can
    /// disagree). Non-finite entries count as 0.5.
    pub fn mean_consistency(&self) -> f32 {
        if self.consistency.is_empty() {
            return 1.0;
        }
        let sum: f32 = self.consistency.iter().map(|&s| unit(s)).sum();
        (sum / self.consistency.len() as f32).clamp(0.0, 1.0)
    }

    /// Per-modality signals (images in order, then the text), sanitised as
    /// [`ModalitySignals::sanitised`].
    pub fn per_modality(&self) -> Vec<ModalitySignals> {
        self.images
            .iter()
            .chain([&self.text])
            .map(|s| s.sanitised())
            .collect()
    }
}

#[cfg(test)]
#[path = "signals_tests.rs"]
mod tests;
