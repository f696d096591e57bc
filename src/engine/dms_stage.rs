//! The DMS stage on the model: the unimodal and Monte-Carlo dropout passes that measure each
//! modality (DESIGN.md section 3), the signal cache, and the choice of scheduler.
//!
//! For every image and for the user text, a *unimodal* prompt is built (the chat template with
//! only that modality's content). Its passes share the template prefix: the prefix is decoded
//! once on one sequence and copied to the others, then the clean pass and the `T` dropout passes
//! (inverted dropout on that modality's rows) run as parallel sequences in as few decodes as the
//! batch and the context allow. Image-derived results are cached by a hash of the image bytes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use crate::dms::{
    apply_dropout, avg_pool_2x2, confidence, cosine_consistency, mean_pool, mutual_information,
    ModalitySignals, ModalityWeights, Registry, Scheduler, Signals, SplitMix64,
};
use crate::llama::{Batch, ChunkKind, LlamaError, Token};

use super::dms_settings::{
    ConsistencyVariant, DmsMode, DmsReport, DmsSettings, DmsTimings, MAX_MC_SAMPLES,
};
use super::lru::Lru;
use super::prompt::{Piece, Prompt};
use super::runtime::Runtime;
use super::EngineError;

/// Image-derived results kept between requests.
#[derive(Clone)]
struct ImageEntry {
    signals: ModalitySignals,
    hidden: Vec<f32>,
    input_mean: Vec<f32>,
}

/// A small LRU of image results keyed by a hash of the image bytes and the settings.
pub struct SignalCache(Lru<ImageEntry>);

impl SignalCache {
    /// A cache holding up to `capacity` images.
    pub fn new(capacity: usize) -> Self {
        Self(Lru::new(capacity))
    }
}

/// One pass body: rows and which of them belong to the measured modality.
pub(super) struct Body {
    rows: Vec<f32>,
    modality: Vec<bool>,
}

/// Rows of a unimodal prompt cut around the modality.
pub(super) struct Unimodal {
    pub(super) prefix: Vec<f32>,
    /// The tokens whose rows `prefix` holds (all at weight 1).
    pub(super) prefix_tokens: Vec<Token>,
    pub(super) body: Body,
    pub(super) suffix: Vec<f32>,
}

/// Logits at the end of a pass and the mean hidden state over its modality rows.
pub(super) struct PassOutput {
    logits: Vec<f32>,
    pub(super) hidden_mean: Option<Vec<f32>>,
}

/// One row of a pass batch: (row, position, sequence, output: `Some((pass, is_last_row))`).
type PassRow<'a> = (&'a [f32], i32, i32, Option<(usize, bool)>);

/// Resolution of weights computed from measured signals. The passes' float results vary in the
/// last digits with where they land in the shared KV cache; rounding keeps that noise out of
/// the weights, so a repeated request gets the same weights and reuses its cached KV.
const MEASURED_WEIGHT_STEP: f32 = 0.01;

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn hash_of(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    parts.iter().for_each(|p| p.hash(&mut h));
    h.finish()
}

/// Picks the scheduler for `settings` (`None` for `off`).
pub(super) fn pick_scheduler(
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
    /// when the scheduler needs them and returns its weights.
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
        let mut timings = DmsTimings::default();
        if !scheduler.needs_signals() || n_images == 0 {
            return conclude(
                scheduler,
                settings,
                Signals::neutral(n_images),
                None,
                timings,
                start,
            );
        }
        let unimodal =
            unimodal.ok_or_else(|| EngineError::Internal("unimodal prompts missing".into()))?;
        if settings.mc_samples > MAX_MC_SAMPLES || !(0.0..0.95).contains(&settings.dropout) {
            return Err(EngineError::InvalidRequest(format!(
                "mc_samples must be at most {MAX_MC_SAMPLES} and dropout in [0, 0.95)"
            )));
        }

        // Text first: its hidden mean is needed for every image's consistency.
        let t = Instant::now();
        let text_seed = settings.seed ^ 0x7e57_7e57;
        let (text_signals, text_hidden, text_input) =
            match self.unimodal_rows(&unimodal.text, &[], true, None)? {
                Some(u) => {
                    let (sig, hidden) = self.measure(&u, settings, text_seed)?;
                    (
                        sig,
                        hidden,
                        mean_of_flagged(&u.body, self.model().n_embd_inp()),
                    )
                }
                None => (ModalitySignals::NEUTRAL, None, None),
            };
        timings.text_passes_ms = ms(t);

        let settings_key = format!(
            "{}/{}/{}/{}",
            settings.mc_samples, settings.dropout, settings.pool_images, settings.seed
        );
        let mut images = Vec::with_capacity(n_images);
        let (mut hidden_cons, mut input_cons) = (Vec::new(), Vec::new());
        let mut hits = 0;
        for (i, image_prompt) in unimodal.images.iter().enumerate() {
            let key = hash_of(&[
                image_bytes[i],
                unimodal.context_key.as_bytes(),
                settings_key.as_bytes(),
            ]);
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
                        .unimodal_rows(image_prompt, &rows, settings.pool_images, None)?
                        .ok_or_else(|| {
                            EngineError::Internal("image prompt without image rows".into())
                        })?;
                    let (signals, hidden) = self.measure(&u, settings, settings.seed ^ key)?;
                    timings.image_passes_ms += ms(t);
                    let input_mean = mean_pool(&rows.concat(), self.model().n_embd_inp());
                    let e = ImageEntry {
                        signals,
                        hidden: hidden.unwrap_or_default(),
                        input_mean,
                    };
                    cache.0.put(key, e.clone(), 1);
                    e
                }
            };
            images.push(entry.signals);
            hidden_cons.push(match &text_hidden {
                Some(t) if !entry.hidden.is_empty() => cosine_consistency(&entry.hidden, t),
                _ => 0.5,
            });
            // An image whose projected rows are all zero (the projector recognised nothing)
            // carries no evidence of agreeing with the text: consistency 0, not neutral.
            let blank = entry.input_mean.iter().all(|v| *v == 0.0);
            input_cons.push(match &text_input {
                _ if blank => 0.0,
                Some(t) => cosine_consistency(&entry.input_mean, t),
                None => 0.5,
            });
        }
        let signals = Signals {
            images,
            text: text_signals,
            consistency: match settings.consistency {
                ConsistencyVariant::Hidden => hidden_cons.clone(),
                ConsistencyVariant::Input => input_cons.clone(),
            },
            image_missing: false,
        };
        let measured = Measured {
            hidden: hidden_cons,
            input: input_cons,
            hits,
        };
        conclude(scheduler, settings, signals, Some(measured), timings, start)
    }

    /// Encodes every image chunk of a (single-image) prompt, through the embedding cache.
    pub(super) fn encode_all(&mut self, prompt: &Prompt) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut out = Vec::new();
        for piece in &prompt.pieces {
            if let Piece::Image { chunks, index } = piece {
                let images = chunks.iter().filter(|c| c.kind() == ChunkKind::Image);
                for (ordinal, chunk) in images.enumerate() {
                    let mtmd = self
                        .mtmd
                        .as_ref()
                        .ok_or_else(|| EngineError::Internal("no projector".into()))?;
                    if mtmd.needs_image_helper(&chunk) {
                        return Err(EngineError::InvalidRequest(
                            "DMS signal passes need a plain LLaVA-style projector; this one uses M-RoPE or \
                             non-causal image attention. Use dms mode \"fixed\" or \"off\" with it"
                                .into(),
                        ));
                    }
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

    /// Rows of a unimodal prompt split into prefix / modality body / suffix. For the text
    /// prompt the body spans the user text pieces; for an image prompt it is the image piece,
    /// whose encoded rows are `encoded` (optionally 2x2-pooled). With `joint` weights the
    /// prompt is the whole request: user text and images both count as modality rows, each
    /// scaled by its weight. `None` when the prompt has no modality rows (e.g. a request
    /// without user text).
    pub(super) fn unimodal_rows(
        &self,
        prompt: &Prompt,
        encoded: &[Vec<f32>],
        pool: bool,
        joint: Option<&ModalityWeights>,
    ) -> Result<Option<Unimodal>, EngineError> {
        let width = self.model().n_embd_inp();
        let is_modality = |p: &Piece| match p {
            Piece::Text { user, .. } => *user && (encoded.is_empty() || joint.is_some()),
            Piece::Image { .. } => true,
        };
        let Some(first) = prompt.pieces.iter().position(is_modality) else {
            return Ok(None);
        };
        let last = prompt.pieces.iter().rposition(is_modality).unwrap_or(first);
        let mut u = Unimodal {
            prefix: Vec::new(),
            prefix_tokens: Vec::new(),
            body: Body {
                rows: Vec::new(),
                modality: Vec::new(),
            },
            suffix: Vec::new(),
        };
        if let Some(bos) = prompt.bos {
            self.rows.append_rows(&[bos], 1.0, width, &mut u.prefix)?;
            u.prefix_tokens.push(bos);
        }
        let mut image_chunk = 0;
        for (k, piece) in prompt.pieces.iter().enumerate() {
            match piece {
                Piece::Text { tokens, user } => {
                    let weight = match joint {
                        Some(w) if *user => w.text,
                        _ => 1.0,
                    };
                    let mut rows = Vec::new();
                    self.rows.append_rows(tokens, weight, width, &mut rows)?;
                    if k < first {
                        u.prefix.extend_from_slice(&rows);
                        u.prefix_tokens.extend_from_slice(tokens);
                    } else if k > last {
                        u.suffix.extend_from_slice(&rows);
                    } else {
                        u.body
                            .modality
                            .extend(std::iter::repeat_n(*user, rows.len() / width));
                        u.body.rows.extend_from_slice(&rows);
                    }
                }
                Piece::Image { chunks, index } => {
                    let weight =
                        joint.map_or(1.0, |w| w.images.get(*index).copied().unwrap_or(1.0));
                    for chunk in chunks.iter() {
                        if chunk.kind() == ChunkKind::Image {
                            let rows = encoded.get(image_chunk).ok_or_else(|| {
                                EngineError::Internal("image rows missing for a signal pass".into())
                            })?;
                            image_chunk += 1;
                            let n = rows.len() / width;
                            let side = (n as f64).sqrt() as usize;
                            let mut rows = if pool && side * side == n && side > 1 {
                                avg_pool_2x2(rows, width, side, side).0
                            } else {
                                rows.clone()
                            };
                            if weight != 1.0 {
                                rows.iter_mut().for_each(|v| *v *= weight);
                            }
                            u.body
                                .modality
                                .extend(std::iter::repeat_n(true, rows.len() / width));
                            u.body.rows.extend_from_slice(&rows);
                        } else {
                            let start = u.body.rows.len() / width;
                            self.rows
                                .append_rows(chunk.tokens(), 1.0, width, &mut u.body.rows)?;
                            u.body.modality.extend(std::iter::repeat_n(
                                false,
                                u.body.rows.len() / width - start,
                            ));
                        }
                    }
                }
            }
        }
        if u.suffix.is_empty() {
            return Err(EngineError::InvalidRequest(
                "the chat template must end with text".into(),
            ));
        }
        Ok(Some(u))
    }

    /// Confidence, MC-dropout uncertainty and the clean pass's mean hidden state of one modality.
    fn measure(
        &mut self,
        u: &Unimodal,
        settings: &DmsSettings,
        seed: u64,
    ) -> Result<(ModalitySignals, Option<Vec<f32>>), EngineError> {
        let width = self.model().n_embd_inp();
        let mut rng = SplitMix64::new(seed);
        let mut bodies = vec![Body {
            rows: u.body.rows.clone(),
            modality: u.body.modality.clone(),
        }];
        for _ in 0..settings.mc_samples {
            let mut rows = u.body.rows.clone();
            for (row, flagged) in rows.chunks_exact_mut(width).zip(&u.body.modality) {
                if *flagged {
                    apply_dropout(row, settings.dropout, &mut rng);
                }
            }
            bodies.push(Body {
                rows,
                modality: u.body.modality.clone(),
            });
        }
        let outputs = self.run_passes(u, &bodies)?;
        let clean = &outputs[0];
        let samples: Vec<Vec<f32>> = outputs[1..].iter().map(|o| o.logits.clone()).collect();
        let signals = ModalitySignals {
            confidence: confidence(&clean.logits),
            uncertainty: mutual_information(&samples),
        };
        Ok((signals.sanitised(), clean.hidden_mean.clone()))
    }

    /// Runs `u`'s prefix + body + suffix for every body in `bodies` as parallel sequences
    /// (1, 2, ...): the prefix is decoded once and shared by sequence copies, the bodies go in
    /// as few decodes as the batch size allows, in groups that fit the free sequences and the
    /// context.
    pub(super) fn run_passes(
        &mut self,
        u: &Unimodal,
        bodies: &[Body],
    ) -> Result<Vec<PassOutput>, EngineError> {
        let (prefix, suffix) = (&u.prefix, &u.suffix);
        let width = self.model().n_embd_inp();
        let n_prefix = prefix.len() / width;
        let per_pass = bodies[0].rows.len() / width + suffix.len() / width;
        let base = self.signal_seq_base;
        let free_seqs = (self.ctx.params().n_seq_max as i32 - base).max(0) as usize;
        let n_ctx = self.ctx.n_ctx();
        let fit = self.slot_ctx.saturating_sub(n_prefix) / per_pass.max(1);
        let group = free_seqs.min(fit).min(bodies.len());
        if group == 0 {
            return Err(LlamaError::ContextFull {
                needed: n_prefix + per_pass,
                n_ctx,
            }
            .into());
        }
        let want_hidden = self.ctx.params().hidden_states;
        let mut outputs = Vec::with_capacity(bodies.len());
        for (g, chunk) in bodies.chunks(group).enumerate() {
            let seqs: Vec<i32> = (base..base + chunk.len() as i32).collect();
            let pos = self.pass_prefix_in_kv(prefix, &u.prefix_tokens)?;
            for &s in &seqs[1..] {
                self.ctx.copy_seq(base, s, -1, -1);
            }
            // (row, position, sequence, output: None | Some((pass, is_last)))
            let mut entries: Vec<PassRow<'_>> = Vec::new();
            for (p, body) in chunk.iter().enumerate() {
                let seq = seqs[p];
                let hidden_pass = want_hidden && g == 0 && p == 0;
                let mut at = pos;
                for (row, flagged) in body.rows.chunks_exact(width).zip(&body.modality) {
                    entries.push((
                        row,
                        at,
                        seq,
                        (hidden_pass && *flagged).then_some((p, false)),
                    ));
                    at += 1;
                }
                let n_suffix = suffix.len() / width;
                for (k, row) in suffix.chunks_exact(width).enumerate() {
                    entries.push((row, at, seq, (k + 1 == n_suffix).then_some((p, true))));
                    at += 1;
                }
            }
            let mut pass_out: Vec<PassOutput> = chunk
                .iter()
                .map(|_| PassOutput {
                    logits: Vec::new(),
                    hidden_mean: None,
                })
                .collect();
            let mut hidden_sum: Vec<f64> = Vec::new();
            let mut hidden_n = 0usize;
            let per_batch = self.ctx.n_batch().max(1);
            let mut batch = Batch::embeddings(per_batch.min(entries.len()), width);
            for block in entries.chunks(per_batch) {
                batch.clear();
                for (row, at, seq, out) in block {
                    batch.push_row(row, *at, *seq, out.is_some())?;
                }
                self.ctx.decode(&batch)?;
                for (i, (_, _, _, out)) in block.iter().enumerate() {
                    match out {
                        Some((p, true)) => {
                            pass_out[*p].logits = self.ctx.logits(i as i32)?.to_vec()
                        }
                        Some((_, false)) => {
                            let h = self.ctx.hidden_state(i as i32)?;
                            hidden_sum.resize(h.len(), 0.0);
                            hidden_sum
                                .iter_mut()
                                .zip(h)
                                .for_each(|(s, v)| *s += f64::from(*v));
                            hidden_n += 1;
                        }
                        None => {}
                    }
                }
            }
            if hidden_n > 0 {
                pass_out[0].hidden_mean = Some(
                    hidden_sum
                        .iter()
                        .map(|s| (s / hidden_n as f64) as f32)
                        .collect(),
                );
            }
            // The prefix stays on the first sequence for the next passes (often the next
            // request's too: the same system prompt).
            self.ctx.remove_seq(base, pos, -1);
            for &s in &seqs[1..] {
                self.ctx.remove_seq(s, -1, -1);
            }
            outputs.extend(pass_out);
        }
        Ok(outputs)
    }
}

impl Runtime<'_> {
    /// Makes the first signal sequence hold exactly `prefix`, the rows of `tokens` (reusing
    /// it when it already does), and returns the next position.
    fn pass_prefix_in_kv(&mut self, prefix: &[f32], tokens: &[Token]) -> Result<i32, EngineError> {
        let base = self.signal_seq_base;
        let n_prefix = (prefix.len() / self.model().n_embd_inp()) as i32;
        if self.pass_prefix.as_deref() == Some(tokens) {
            self.ctx.remove_seq(base, n_prefix, -1);
            return Ok(n_prefix);
        }
        self.pass_prefix = None;
        self.ctx.remove_seq(base, -1, -1);
        let mut pos = 0;
        if n_prefix > 0 {
            self.decode_rows(prefix, &mut pos, base, false)?;
        }
        self.pass_prefix = Some(tokens.to_vec());
        Ok(pos)
    }
}

/// Mean of the modality rows of a body (`None` if it has none).
fn mean_of_flagged(body: &Body, width: usize) -> Option<Vec<f32>> {
    let rows: Vec<f32> = body
        .rows
        .chunks_exact(width)
        .zip(&body.modality)
        .filter(|(_, f)| **f)
        .flat_map(|(r, _)| r.iter().copied())
        .collect();
    (!rows.is_empty()).then(|| mean_pool(&rows, width))
}

/// What the signal passes measured besides the signals themselves.
struct Measured {
    hidden: Vec<f32>,
    input: Vec<f32>,
    hits: usize,
}

/// Runs the scheduler and assembles the report (`measured` is `None` when no passes ran).
fn conclude(
    scheduler: &dyn Scheduler,
    settings: &DmsSettings,
    signals: Signals,
    measured: Option<Measured>,
    mut timings: DmsTimings,
    start: Instant,
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
    let (hidden, input) = measured.map(|m| (m.hidden, m.input)).unzip();
    Ok(DmsReport {
        mode: settings.mode,
        scheduler: scheduler.name().to_string(),
        weights,
        signals: hidden.is_some().then_some(signals),
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
    /// What besides the image bytes shapes an image's prompt (the system messages).
    pub context_key: String,
}
