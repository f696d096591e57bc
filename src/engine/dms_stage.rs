//! The DMS stage on the model: the unimodal and Monte-Carlo dropout passes that measure each
//! modality where its answer is decided (DESIGN.md section 3), the signal cache, and the
//! choice of scheduler.
//!
//! For every image and for the evidence, a *unimodal* prompt is built: that image and the
//! user's question; or the question and the evidence without images. Its clean pass is
//! continued greedily for a few tokens, and the step whose top token is least probable is the
//! *answer position* (template-like words are near-certain; the answer is where the model
//! decides). Confidence is read there; the `T` dropout passes (the same mask for identical
//! rows) run as parallel sequences, teacher-forced up to that position, for the MC-dropout
//! uncertainty; the two unimodal answer distributions give the consistency. Image results are
//! cached by a hash of the image bytes and the question.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use crate::dms::{
    answer_agreement, apply_row_keyed_dropout, apply_token_dropout, confidence, cosine_consistency,
    flip_rate, js_consistency, mean_pool, mutual_information, top2_probabilities, top_k_share,
    ModalitySignals, Pooling, Registry, Scheduler, Signals,
};
use crate::llama::{ChunkKind, Token};

use super::dms_settings::{
    ConsistencyVariant, DmsMode, DmsReport, DmsSettings, DmsTimings, SignalVariants,
    MAX_ANSWER_TOKENS, MAX_MC_SAMPLES,
};
use super::lru::{content_key, Lru};
use super::passes::{mean_of_flagged, Body, Unimodal};
use super::prompt::{Piece, Prompt};
use super::runtime::Runtime;
use super::{EngineError, ModalityWeights};

/// Image-derived results kept between requests.
#[derive(Clone)]
struct ImageEntry {
    measured: Measurement,
    input_mean: Vec<f32>,
}

/// What the passes of one modality measured.
#[derive(Clone)]
struct Measurement {
    /// Every variant by name (`confidence.*`, `uncertainty`, `answer_position`).
    variants: BTreeMap<String, f32>,
    /// The clean pass's logits at the answer position.
    answer_logits: Vec<f32>,
    /// The clean pass's greedy answer.
    answer: String,
    /// Mean last-layer hidden state over the modality rows of the clean pass.
    hidden: Option<Vec<f32>>,
}

impl Measurement {
    fn signals(&self, settings: &DmsSettings) -> ModalitySignals {
        let get = |k: &str| self.variants.get(k).copied().unwrap_or(0.5);
        ModalitySignals {
            confidence: get(settings.confidence.key()),
            uncertainty: get("uncertainty"),
        }
        .sanitised()
    }
}

/// A small LRU of image results keyed by a hash of the image bytes and the settings.
pub struct SignalCache(Lru<ImageEntry>);

impl SignalCache {
    /// A cache holding up to `capacity` images.
    pub fn new(capacity: usize) -> Self {
        Self(Lru::new(capacity))
    }
}

/// Resolution of weights computed from measured signals. The passes' float results vary in the
/// last digits with where they land in the shared KV cache; rounding keeps that noise out of
/// the weights, so a repeated request gets the same weights and reuses its cached KV.
pub const MEASURED_WEIGHT_STEP: f32 = 0.01;

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// A 64-bit seed from `parts` for an image's dropout masks (the cache key is
/// [`content_key`]'s; the seed stays what recorded signals were measured with).
fn seed_of(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    parts.iter().for_each(|p| p.hash(&mut h));
    h.finish()
}

/// Picks the scheduler for `settings` (`None` for `off`).
pub fn pick_scheduler(
    registry: &Registry,
    settings: &DmsSettings,
) -> Result<Option<Arc<dyn Scheduler>>, EngineError> {
    let invalid = |m: String| EngineError::InvalidRequest(m);
    if let Some(name) = &settings.scheduler {
        if matches!(settings.mode, DmsMode::Rule | DmsMode::Learned) {
            return registry.get(name).map(Some).ok_or_else(|| {
                invalid(format!(
                    "unknown scheduler {name:?}; available: {}",
                    registry.names().join(", ")
                ))
            });
        }
    }
    Ok(match settings.mode {
        DmsMode::Off => None,
        DmsMode::Fixed => {
            let w = settings.weights.clone().ok_or_else(|| invalid("mode fixed needs weights".into()))?;
            Some(Arc::new(crate::dms::FixedScheduler::new(w).map_err(|e| invalid(e.to_string()))?))
        }
        DmsMode::Rule => Some(registry.default_rule()),
        DmsMode::Learned => Some(registry.default_learned().ok_or_else(|| {
            invalid("no learned scheduler plugin is loaded (train one with `llama-dms train-scheduler`)".into())
        })?),
    })
}

impl Runtime<'_> {
    /// Runs the DMS stage for a request whose answer prompt is `prompt`: measures the signals
    /// when the scheduler needs them and returns its weights. With no image or no evidence
    /// there is nothing to weigh: the weights are all 1 and no pass runs.
    pub(super) fn dms_stage(
        &mut self,
        prompt: &Prompt,
        unimodal: Option<&UnimodalPrompts>,
        image_bytes: &[&[u8]],
        scheduler: &dyn Scheduler,
        settings: &DmsSettings,
        cache: &mut SignalCache,
    ) -> Result<DmsReport, EngineError> {
        let start = Instant::now();
        let n_images = prompt.n_images();
        let evidence_tokens = prompt.n_evidence_tokens();
        let timings = DmsTimings::default();
        // Nothing measured: the scheduler's own weights when it needs no signals, else plain
        // fusion, as with no image or no evidence there is nothing to weigh.
        if !scheduler.needs_signals() || n_images == 0 || evidence_tokens == 0 {
            let uniform = crate::dms::FixedScheduler::new(ModalityWeights::uniform(n_images))
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            let weigher: &dyn Scheduler = if scheduler.needs_signals() {
                &uniform
            } else {
                scheduler
            };
            let signals = Signals::neutral(n_images);
            let mut report = conclude(
                weigher,
                settings,
                signals,
                None,
                timings,
                start,
                evidence_tokens,
            )?;
            report.scheduler = scheduler.name().to_string();
            return Ok(report);
        }
        let unimodal =
            unimodal.ok_or_else(|| EngineError::Internal("unimodal prompts missing".into()))?;
        if settings.mc_samples > MAX_MC_SAMPLES
            || !(0.0..0.95).contains(&settings.dropout)
            || !(1..=MAX_ANSWER_TOKENS).contains(&settings.answer_tokens)
        {
            return Err(EngineError::InvalidRequest(format!(
                "mc_samples must be at most {MAX_MC_SAMPLES}, dropout in [0, 0.95) and \
                 answer_tokens in [1, {MAX_ANSWER_TOKENS}]"
            )));
        }
        self.measure_all(
            prompt,
            unimodal,
            image_bytes,
            scheduler,
            settings,
            cache,
            start,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn measure_all(
        &mut self,
        prompt: &Prompt,
        unimodal: &UnimodalPrompts,
        image_bytes: &[&[u8]],
        scheduler: &dyn Scheduler,
        settings: &DmsSettings,
        cache: &mut SignalCache,
        start: Instant,
    ) -> Result<DmsReport, EngineError> {
        let width = self.model().n_embd_inp();
        let mut timings = DmsTimings::default();
        // Text first: its answer distribution is needed for every image's consistency.
        let t = Instant::now();
        let u = self
            .unimodal_rows(&unimodal.text, &[], Pooling::NONE, None)?
            .ok_or_else(|| EngineError::Internal("evidence without text rows".into()))?;
        let null = unimodal.null.text_tokens();
        let text = self.measure(&u, &null, settings, settings.seed ^ 0x7e57_7e57)?;
        let text_input = mean_of_flagged(&u.body, width);
        timings.text_passes_ms = ms(t);

        // What shapes an image's dropout masks (and so its recorded signals); the row budget
        // changes only which rows they apply to, so it keys the cache but not the seed.
        let settings_key = format!(
            "{}/{}/{}/{}/{}",
            settings.mc_samples,
            settings.dropout,
            settings.pool_images,
            settings.answer_tokens,
            settings.seed
        );
        let cache_settings = format!("{settings_key}/{}", settings.max_image_rows);
        let mut variants = SignalVariants {
            text: text.variants.clone(),
            text_answer: text.answer.clone(),
            ..SignalVariants::default()
        };
        let mut images = Vec::with_capacity(image_bytes.len());
        let mut consistency = Vec::with_capacity(image_bytes.len());
        let (mut hidden_cons, mut input_cons) = (Vec::new(), Vec::new());
        let mut hits = 0;
        for (i, image_prompt) in unimodal.images.iter().enumerate() {
            let context = unimodal.context_key.as_bytes();
            let parts = [image_bytes[i], context, settings_key.as_bytes()];
            let key = content_key(&[image_bytes[i], context, cache_settings.as_bytes()]);
            let entry = match cache.0.get(key) {
                Some(e) => {
                    hits += 1;
                    e.clone()
                }
                None => {
                    let t = Instant::now();
                    let rows = self.encode_all(image_prompt)?;
                    timings.encode_ms += ms(t);
                    let t = Instant::now();
                    let u = self
                        .unimodal_rows(image_prompt, &rows, settings.pooling(), None)?
                        .ok_or_else(|| {
                            EngineError::Internal("image prompt without image rows".into())
                        })?;
                    let measured =
                        self.measure(&u, &null, settings, settings.seed ^ seed_of(&parts))?;
                    timings.image_passes_ms += ms(t);
                    let e = ImageEntry {
                        measured,
                        input_mean: mean_pool(&rows.concat(), width),
                    };
                    cache.0.put(key, e.clone(), 1);
                    e
                }
            };
            let m = &entry.measured;
            let js = js_consistency(&m.answer_logits, &text.answer_logits);
            let hidden = match (&m.hidden, &text.hidden) {
                (Some(a), Some(b)) => cosine_consistency(a, b),
                _ => 0.5,
            };
            // An image whose projected rows are all zero (the projector recognised nothing)
            // carries no evidence of agreeing with the text: consistency 0, not neutral.
            let blank = entry.input_mean.iter().all(|v| *v == 0.0);
            let input = match &text_input {
                _ if blank => 0.0,
                Some(t) => cosine_consistency(&entry.input_mean, t),
                None => 0.5,
            };
            let mut v = m.variants.clone();
            v.insert("consistency.js".into(), js);
            v.insert("consistency.hidden".into(), hidden);
            v.insert("consistency.input".into(), input);
            v.insert(
                "consistency.answer".into(),
                answer_agreement(&m.answer, &text.answer),
            );
            variants.images.push(v);
            variants.image_answers.push(m.answer.clone());
            images.push(m.signals(settings));
            consistency.push(match settings.consistency {
                ConsistencyVariant::Js => js,
                ConsistencyVariant::Hidden => hidden,
                ConsistencyVariant::Input => input,
            });
            hidden_cons.push(hidden);
            input_cons.push(input);
        }
        let signals = Signals {
            images,
            text: text.signals(settings),
            consistency,
            image_missing: false,
            variants: (0..variants.images.len())
                .map(|i| variants.pair(i))
                .collect(),
        };
        let measured = Measured {
            hidden: hidden_cons,
            input: input_cons,
            hits,
            variants,
        };
        conclude(
            scheduler,
            settings,
            signals,
            Some(measured),
            timings,
            start,
            prompt.n_evidence_tokens(),
        )
    }

    /// Encodes every image chunk of a (single-image) prompt, through the embedding cache.
    pub(super) fn encode_all(&mut self, prompt: &Prompt) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut out = Vec::new();
        for piece in &prompt.pieces {
            if let Piece::Image { chunks, index } = piece {
                let images = chunks.iter().filter(|c| c.kind() == ChunkKind::Image);
                for (ordinal, chunk) in images.enumerate() {
                    let mut unused = Default::default();
                    out.push(
                        self.image_rows(prompt, *index, ordinal, &chunk, &mut unused)?
                            .0,
                    );
                }
            }
        }
        Ok(out)
    }

    /// One modality's measurement: the clean pass continued greedily to find the answer
    /// position, the confidence variants there, and the MC-dropout uncertainty of `T` passes
    /// teacher-forced up to that position.
    fn measure(
        &mut self,
        u: &Unimodal,
        null_prompt: &[Token],
        settings: &DmsSettings,
        seed: u64,
    ) -> Result<Measurement, EngineError> {
        let width = self.model().n_embd_inp();
        let clean = u.body.with_rows(u.body.rows.clone());
        let mut outputs = self.run_passes(u, std::slice::from_ref(&clean), true)?;
        let first = outputs
            .pop()
            .ok_or_else(|| EngineError::Internal("no pass".into()))?;
        let prefix_len = (u.prefix.len() / width) as i32;
        let trace =
            self.continue_greedy(first.logits, first.end, prefix_len, settings.answer_tokens)?;
        let steps: Vec<Step> = trace.logits.iter().map(|l| Step::of(l)).collect();
        let pieces: Vec<String> = trace
            .tokens
            .iter()
            .map(|&t| self.model().detokenize(&[t]))
            .collect();
        let window = answer_window(&pieces);
        // The question alone, teacher-forced with the same continuation: what the model would
        // say without this modality. The answer position is where the modality moves the
        // distribution most (template-like words move little, with or without it).
        let null = if trace.tokens.is_empty() {
            Vec::new()
        } else {
            self.teacher_forced_logits(null_prompt, &trace.tokens)?
        };
        let shift = |k: usize| {
            null.get(k)
                .map_or(0.0, |n| 1.0 - js_consistency(&trace.logits[k], n))
        };
        let at = if null.is_empty() {
            window.start
        } else {
            window
                .clone()
                .max_by(|&a, &b| shift(a).total_cmp(&shift(b)))
                .unwrap_or(window.start)
        };
        let answer = &steps[at];
        let null_entropy = null.get(at).map(|n| confidence(n));
        let mean =
            window.clone().map(|k| steps[k].entropy).sum::<f32>() / window.len().max(1) as f32;
        let mut variants = BTreeMap::new();
        variants.insert("confidence.top1".to_string(), answer.top1);
        variants.insert("confidence.topk".to_string(), answer.topk);
        variants.insert("confidence.margin".to_string(), answer.margin);
        variants.insert("confidence.entropy".to_string(), answer.entropy);
        variants.insert("confidence.mean".to_string(), mean);
        variants.insert("confidence.first".to_string(), steps[0].entropy);
        variants.insert("confidence.shift".to_string(), shift(at));
        variants.insert(
            "confidence.gain".to_string(),
            null_entropy.map_or(0.0, |n| (answer.entropy - n).clamp(-1.0, 1.0)),
        );
        variants.insert("answer_position".to_string(), at as f32);

        // Dropout passes, teacher-forced with the greedy tokens up to the answer position.
        let mut forced = Unimodal {
            prefix: u.prefix.clone(),
            prefix_tokens: u.prefix_tokens.clone(),
            body: Body::default(),
            suffix: u.suffix.clone(),
        };
        self.rows
            .append_rows(&trace.tokens[..at], 1.0, width, &mut forced.suffix)?;
        // Two dropout families in one batch of parallel passes: element dropout with the same
        // mask for identical rows (`uncertainty`), and token dropout, whole rows zeroed
        // independently per position (`uncertainty.token`, `uncertainty.flip`).
        let t = settings.mc_samples as u64;
        let mask_seed = |k: u64| seed.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let perturbed = |drop: &dyn Fn(&mut [f32], u64), k: u64| {
            let mut rows = u.body.rows.clone();
            drop(&mut rows, mask_seed(k));
            u.body.with_rows(rows)
        };
        let flagged = &u.body.modality;
        let element_drop = |rows: &mut [f32], s| {
            apply_row_keyed_dropout(rows, width, flagged, settings.dropout, s)
        };
        let token_drop =
            |rows: &mut [f32], s| apply_token_dropout(rows, width, flagged, TOKEN_DROPOUT, s);
        let bodies: Vec<Body> = (0..t)
            .map(|k| perturbed(&element_drop, k))
            .chain((t..2 * t).map(|k| perturbed(&token_drop, k)))
            .collect();
        let (uncertainty, token, flip) = if bodies.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            let samples: Vec<Vec<f32>> = self
                .run_passes(&forced, &bodies, false)?
                .into_iter()
                .map(|o| o.logits)
                .collect();
            let (element, token) = samples.split_at(t as usize);
            let reference = &trace.logits[at];
            (
                mutual_information(element),
                mutual_information(token),
                flip_rate(reference, token),
            )
        };
        variants.insert("uncertainty.token".to_string(), token);
        variants.insert("uncertainty.flip".to_string(), flip);
        variants.insert("uncertainty".to_string(), uncertainty);
        Ok(Measurement {
            variants,
            answer_logits: trace.logits[at].clone(),
            answer: self.model().detokenize(&trace.tokens),
            hidden: first.hidden_mean,
        })
    }
}

/// The distribution of one continuation step, summarised.
struct Step {
    top1: f32,
    /// The top token's share of the `TOP_K` most likely tokens' probability.
    topk: f32,
    margin: f32,
    entropy: f32,
}

/// Share of the measured modality's rows each token-dropout pass zeroes.
const TOKEN_DROPOUT: f32 = 0.5;

/// How many of the most likely tokens `confidence.topk` renormalises over.
const TOP_K: usize = 10;

impl Step {
    fn of(logits: &[f32]) -> Self {
        let (p1, p2) = top2_probabilities(logits);
        Self {
            top1: p1,
            topk: top_k_share(logits, TOP_K),
            margin: p1 - p2,
            entropy: confidence(logits),
        }
    }
}

/// The steps of a continuation (`pieces`: the chosen tokens' text) among which the answer is
/// looked for: after the reply's opening token (its wording), up to the end of the first
/// sentence (the token that ends it is left out). Never empty.
fn answer_window(pieces: &[String]) -> std::ops::Range<usize> {
    let end = pieces
        .iter()
        .position(|p| p.contains(['.', '!', '?', '\n']))
        .unwrap_or(pieces.len());
    let start = usize::from(end > 1);
    start..end.max(start + 1)
}

/// What the signal passes measured besides the signals themselves.
struct Measured {
    hidden: Vec<f32>,
    input: Vec<f32>,
    hits: usize,
    variants: SignalVariants,
}

/// Runs the scheduler and assembles the report (`measured` is `None` when no passes ran).
fn conclude(
    scheduler: &dyn Scheduler,
    settings: &DmsSettings,
    signals: Signals,
    measured: Option<Measured>,
    mut timings: DmsTimings,
    start: Instant,
    evidence_tokens: usize,
) -> Result<DmsReport, EngineError> {
    let n_images = signals.images.len();
    let t = Instant::now();
    let mut weights = scheduler.weights(&signals).map_err(dms_error)?;
    weights.check(n_images).map_err(dms_error)?;
    if measured.is_some() {
        weights = weights.quantized(MEASURED_WEIGHT_STEP);
    }
    timings.scheduler_ms = ms(t);
    timings.total_ms = ms(start);
    let hits = measured.as_ref().map_or(0, |m| m.hits);
    // The variants travel once, in `variants`.
    let mut signals = signals;
    signals.variants.clear();
    let (hidden, input, variants) = match measured {
        Some(m) => (Some(m.hidden), Some(m.input), Some(m.variants)),
        None => (None, None, None),
    };
    Ok(DmsReport {
        mode: settings.mode,
        scheduler: scheduler.name().to_string(),
        weights,
        signals: hidden.is_some().then_some(signals),
        variants,
        evidence_tokens,
        consistency_hidden: hidden,
        consistency_input: input,
        image_cache_hits: hits,
        timings_ms: timings,
        mwc: None,
    })
}

fn dms_error(e: crate::dms::DmsError) -> EngineError {
    EngineError::InvalidRequest(e.to_string())
}

/// The unimodal prompts of a request: one per image (system messages + that image alone) and
/// one for the text (the conversation without images).
pub(super) struct UnimodalPrompts {
    pub images: Vec<Prompt>,
    pub text: Prompt,
    /// The question alone (system messages and the last user message's question): the
    /// reference against which each modality's answer position is found.
    pub null: Prompt,
    /// What besides the image bytes shapes an image's prompt (the system messages).
    pub context_key: String,
}
