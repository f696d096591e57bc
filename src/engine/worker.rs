//! The worker thread: loads the model, reports readiness, then serves up to `parallel`
//! requests at once, one sequence each, decoding their next tokens together in one batch
//! (continuous batching). A new request's images, DMS stage and prefill run between steps.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use tokio::sync::mpsc as tmpsc;

use crate::llama::{Batch, Model, ModelParams, Sampler, Token};

use super::decoding::{Decoding, Emitted, GenerateOptions, Step};
use super::dms_stage::{pick_scheduler, UnimodalPrompts};
use super::fault::{self, Stage};
use super::prompt_cache::{common_prefix, positions, prompt_units, Unit};
use super::runtime::Prefill;
use super::split::split_message;
use super::stats::Outcome;
use super::{
    decode_image, ContentPart, DmsMode, DmsReport, Done, EngineConfig, EngineError, EngineStats,
    Event, FinishOnDrop, FinishReason, Job, Message, ModalityWeights, ModelInfo, Prompt, RgbImage,
    Role, Runtime, SignalCache, Timings, Usage,
};

pub(super) fn run(
    config: EngineConfig,
    queue: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Result<ModelInfo, EngineError>>,
    stats: &EngineStats,
    stop: FinishOnDrop,
) {
    let params = ModelParams {
        n_gpu_layers: config.n_gpu_layers,
        ..ModelParams::default()
    };
    let mut model = match Model::load(&config.model, &params) {
        Ok(m) => m,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    if let Some(template) = &config.chat_template {
        model.override_chat_template(template.clone());
    }
    // Each of the `parallel` requests gets the configured window; one more window's worth of
    // cells and a few more sequences are kept for the DMS signal passes, so that they never
    // touch the memory the slots keep for their next requests.
    let parallel = config.parallel.max(1);
    let slot_ctx = config.runtime.context.n_ctx as usize;
    let mut runtime_config = config.runtime.clone();
    runtime_config.context.n_ctx = (slot_ctx * (parallel + 1)) as u32;
    runtime_config.context.n_seq_max += parallel as u32 - 1;
    let mut rt = match Runtime::new(&model, config.mmproj.as_deref(), &runtime_config) {
        Ok(mut rt) => {
            rt.slot_ctx = slot_ctx.min(rt.ctx.n_ctx());
            rt.signal_seq_base = parallel as i32;
            rt
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let info = ModelInfo {
        name: config
            .model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        description: model.description(),
        architecture: model.architecture(),
        n_ctx: rt.slot_ctx,
        n_embd: model.n_embd(),
        n_vocab: model.n_vocab(),
        vision: rt.mtmd().is_some_and(|m| m.supports_vision()),
        slots: parallel,
        chat_template: model.chat_template(),
    };
    tracing::info!(model = %info.name, n_ctx = info.n_ctx, vision = info.vision, "engine ready");
    if ready.send(Ok(info)).is_err() {
        return;
    }
    let mut slots: Vec<Option<Slot>> = (0..parallel).map(|_| None).collect();
    let mut cache = SignalCache::new(config.signal_cache_images);
    // What each slot's sequence holds, for prefix reuse (empty: nothing reusable).
    let mut slot_units: Vec<Vec<Unit>> = vec![Vec::new(); parallel];
    // One token per running request, reused for every decode step.
    let mut step_batch = Batch::tokens(parallel);
    'serve: loop {
        if stop.0.requested() {
            // Shutting down: what runs or waits ends with an error, then the model is freed.
            for slot in slots.iter_mut().filter_map(Option::take) {
                let seq = slot.decoding.seq;
                let error = EngineError::ShutDown;
                end_with_error(&mut rt, seq, &slot.events, error, stats, &mut slot_units);
            }
            while let Ok(job) = queue.try_recv() {
                let _ = job.events.send(Event::Error(EngineError::ShutDown));
            }
            tracing::info!("engine shut down");
            return;
        }
        // Admit waiting requests into free slots (block only when nothing is running, and
        // then only briefly, to notice a shutdown).
        while slots.iter().any(Option::is_none) {
            let idle = slots.iter().all(Option::is_none);
            let job = if idle {
                match queue.recv_timeout(std::time::Duration::from_millis(100)) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue 'serve,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        tracing::info!("engine stopped");
                        return;
                    }
                }
            } else {
                match queue.try_recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            stats.dequeued();
            let free: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_none()).collect();
            if let Some(slot) = admit(
                &mut rt,
                &config,
                &mut cache,
                &mut slot_units,
                job,
                &free,
                stats,
            ) {
                let seq = slot.decoding.seq as usize;
                slots[seq] = Some(slot);
            }
        }
        // One decode step for every running request.
        if catch_unwind(AssertUnwindSafe(|| {
            step_all(&mut rt, &mut slots, &mut step_batch, stats, &mut slot_units)
        }))
        .is_err()
        {
            tracing::error!("engine decode step panicked");
            for slot in slots.iter_mut().filter_map(Option::take) {
                end_with_error(
                    &mut rt,
                    slot.decoding.seq,
                    &slot.events,
                    EngineError::Internal("decode step panicked".into()),
                    stats,
                    &mut slot_units,
                );
            }
        }
    }
}

/// Warns, once per scheduler, when a request uses a plugin calibrated or trained for another
/// model file than the one served: its references and weights describe that model's signals.
fn warn_if_fitted_for_another(scheduler: &dyn crate::dms::Scheduler, config: &EngineConfig) {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let Some(fitted) = scheduler.fitted_for() else {
        return;
    };
    let served = config
        .model
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = scheduler.name().to_string();
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if fitted != served && !warned.contains(&name) {
        tracing::warn!(
            "scheduler {name:?} was fitted for {fitted}, not {served}: run `llama-dms calibrate` \
             (rule) or `train-scheduler` (learned) for this model"
        );
        warned.push(name);
    }
}

/// The free slot for a prompt of `units`, and how many of its units that slot already holds:
/// the slot with the longest common prefix, unless that would overwrite most of another
/// conversation's memory for a short shared prefix (the template's first tokens) while an empty
/// slot is free.
fn choose_slot(
    free: &[usize],
    slot_units: &[Vec<Unit>],
    units: &[Unit],
) -> Result<(usize, usize), EngineError> {
    let shared = |i: usize| common_prefix(&slot_units[i], units);
    let mut best = free
        .iter()
        .copied()
        .max_by_key(|&i| (shared(i), usize::MAX - i))
        .ok_or_else(|| EngineError::Internal("no free slot".into()))?;
    if 2 * shared(best) < slot_units[best].len() {
        best = free
            .iter()
            .copied()
            .find(|&i| slot_units[i].is_empty())
            .unwrap_or(best);
    }
    Ok((best, shared(best)))
}

/// A request being generated.
struct Slot {
    decoding: Decoding,
    events: tmpsc::UnboundedSender<Event>,
    /// The sampled token still to be decoded.
    pending: Token,
    /// What the sequence holds (prompt, then decoded tokens), for the next request's reuse.
    units: Vec<Unit>,
    prompt_tokens: usize,
    /// Prompt positions reused from the previous request of this slot.
    cached_tokens: usize,
    prefill: Prefill,
    dms: DmsReport,
    /// Log-likelihood of the scored text (scoring requests only).
    score: Option<f64>,
    /// Decode steps until the fault-injection hook panics (tests only).
    fault_in: Option<u32>,
}

/// Forwards generated text and log-probabilities to a request's event channel.
fn emitter(events: &tmpsc::UnboundedSender<Event>) -> impl FnMut(Emitted<'_>) -> bool + '_ {
    move |out: Emitted<'_>| {
        let event = match out {
            Emitted::Text(piece) => Event::Text(piece.to_string()),
            Emitted::Token(lp) => Event::Logprob(Box::new(lp.clone())),
        };
        events.send(event).is_ok()
    }
}

/// Starts a request on sequence `seq`: everything up to its first sampled token. `None` when
/// it already ended (cancelled, failed, or finished at once).
fn admit(
    rt: &mut Runtime<'_>,
    config: &EngineConfig,
    cache: &mut SignalCache,
    slot_units: &mut [Vec<Unit>],
    job: Job,
    free: &[usize],
    stats: &EngineStats,
) -> Option<Slot> {
    if job.events.is_closed() {
        stats.finished(Outcome::Cancelled, 0, None);
        return None;
    }
    let mut place = Placement { free, chosen: None };
    let started = catch_unwind(AssertUnwindSafe(|| {
        start(rt, config, cache, slot_units, &job, &mut place, stats)
    }));
    let error = match started {
        Ok(Ok(Started::Running(slot))) => return Some(*slot),
        Ok(Ok(Started::Ended)) => return None,
        Ok(Err(e)) => e,
        Err(panic) => {
            let msg = fault::panic_message(&*panic);
            tracing::error!("engine request panicked: {msg}");
            EngineError::Internal(msg)
        }
    };
    // The request may have failed in the middle of the signal passes.
    rt.clear_signal_passes();
    match place.chosen {
        Some(seq) => end_with_error(rt, seq, &job.events, error, stats, slot_units),
        None => {
            stats.finished(Outcome::Failed, 0, None);
            let _ = job.events.send(Event::Error(error));
        }
    }
    None
}

/// Which free slots a new request may take, and the one it took.
struct Placement<'a> {
    free: &'a [usize],
    chosen: Option<i32>,
}

enum Started {
    Running(Box<Slot>),
    Ended,
}

/// Images, prompt, DMS stage, prefill, and the first token.
fn start(
    rt: &mut Runtime<'_>,
    config: &EngineConfig,
    cache: &mut SignalCache,
    slot_units: &mut [Vec<Unit>],
    job: &Job,
    place: &mut Placement<'_>,
    stats: &EngineStats,
) -> Result<Started, EngineError> {
    let request = &job.request;
    fault::trip(job.fault, Stage::Prompt);
    let mut images = Vec::new();
    for part in request.messages.iter().flat_map(|m| &m.content) {
        if let ContentPart::Image(bytes) = part {
            let index = images.len();
            images.push(
                decode_image(bytes, config.max_image_pixels)
                    .map_err(|source| EngineError::Image { index, source })?,
            );
        }
    }
    let prompt = match &request.raw_prompt {
        Some(text) => Prompt::raw(rt.model(), text)?,
        None => Prompt::build(rt.model(), rt.mtmd(), &request.messages, &images)?,
    };
    fault::trip(job.fault, Stage::Dms);
    rt.fault_signal_pass = job.fault == Some(Stage::SignalPass);
    let scheduler = pick_scheduler(&config.schedulers, &request.dms)?;
    if let Some(s) = &scheduler {
        warn_if_fitted_for_another(&**s, config);
    }
    let needs_passes = scheduler.as_ref().is_some_and(|s| s.needs_signals());
    // The unimodal prompts serve the signal passes and the MWC loss; built once for both.
    let unimodal = ((needs_passes || request.measure_mwc) && !images.is_empty())
        .then(|| unimodal_prompts(rt, &request.messages, &images))
        .transpose()?;
    let mut dms = match scheduler {
        None => off_report(images.len()),
        Some(scheduler) => {
            let bytes: Vec<&[u8]> = request
                .messages
                .iter()
                .flat_map(|m| &m.content)
                .filter_map(|p| match p {
                    ContentPart::Image(b) => Some(b.as_slice()),
                    _ => None,
                })
                .collect();
            rt.dms_stage(
                &prompt,
                unimodal.as_ref(),
                &bytes,
                &*scheduler,
                &request.dms,
                cache,
            )?
        }
    };
    rt.fault_signal_pass = false;
    dms.evidence_tokens = prompt.n_evidence_tokens();
    if let (true, Some(unimodal)) = (request.measure_mwc, &unimodal) {
        dms.mwc = Some(rt.mwc(&prompt, unimodal, &dms.weights)?);
    }
    let units = prompt_units(&prompt, &dms.weights);
    let (slot, keep) = choose_slot(place.free, slot_units, &units)?;
    let seq = slot as i32;
    place.chosen = Some(seq);
    slot_units[slot].clear();
    fault::trip(job.fault, Stage::Prefill);
    // After signal passes, their prefix's KV (usually the system prompt) is copied rather than
    // decoded again.
    let start = match dms.signals {
        Some(_) => rt.adopt_pass_prefix(seq, &units, keep),
        None => keep,
    };
    let mut prefill = rt.prefill_from(&prompt, &dms.weights, seq, &units, start)?;
    prefill.pass_prefix_positions = positions(&units[keep.min(start)..start]);
    let cached_tokens = positions(&units[..keep.min(units.len().saturating_sub(1))]);
    let mut sampling = request.sampling.clone();
    if let Some(format) = &request.response_format {
        sampling.grammar = Some(format.grammar()?);
    }
    let sampler = Sampler::new(rt.model(), &sampling)?;
    let options = GenerateOptions {
        max_tokens: request.max_tokens,
        stops: &request.stop,
        top_logprobs: request.top_logprobs,
    };
    let decoding = Decoding::new(seq, prefill.n_past, rt.slot_ctx, sampler, &options);
    let mut slot = Slot {
        decoding,
        events: job.events.clone(),
        pending: 0,
        units,
        prompt_tokens: prompt.n_tokens(),
        cached_tokens,
        prefill,
        dms,
        score: None,
        fault_in: (job.fault == Some(Stage::Decode)).then_some(2),
    };
    if let Some(text) = &request.score {
        // Teacher-force the text instead of generating; the sequence then holds it too.
        let tokens = rt.model().tokenize(text, false, false)?;
        let (loglik, n_past) = rt.score_continuation(seq, slot.decoding.n_past, &tokens)?;
        slot.decoding.n_past = n_past;
        slot.units
            .extend(tokens[..tokens.len() - 1].iter().map(|&t| Unit::Token(t)));
        slot.score = Some(loglik);
        finish(rt, slot, FinishReason::Stop, stats, slot_units);
        return Ok(Started::Ended);
    }
    let step = rt.step(&mut slot.decoding, -1, &mut emitter(&job.events))?;
    match step {
        Step::Next(token) => Ok(Started::Running(Box::new(Slot {
            pending: token,
            ..slot
        }))),
        Step::Finished(reason) => {
            finish(rt, slot, reason, stats, slot_units); // ended at its first token
            Ok(Started::Ended)
        }
    }
}

/// Decodes the pending token of every running request in one batch, then samples each.
fn step_all(
    rt: &mut Runtime<'_>,
    slots: &mut [Option<Slot>],
    batch: &mut Batch,
    stats: &EngineStats,
    slot_units: &mut [Vec<Unit>],
) {
    let active: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_some()).collect();
    if active.is_empty() {
        return;
    }
    stats.batched(active.len());
    batch.clear();
    for &i in &active {
        let slot = slots[i].as_ref().expect("active slot");
        if let Err(e) =
            batch.push_token(slot.pending, slot.decoding.n_past, slot.decoding.seq, true)
        {
            tracing::error!("batch: {e}");
        }
    }
    if let Err(e) = rt.ctx.decode(batch) {
        tracing::error!("batched decode failed: {e}");
        for &i in &active {
            if let Some(slot) = slots[i].take() {
                let error = EngineError::Internal(format!("decode failed: {e}"));
                end_with_error(
                    rt,
                    slot.decoding.seq,
                    &slot.events,
                    error,
                    stats,
                    slot_units,
                );
            }
        }
        return;
    }
    for (row, &i) in active.iter().enumerate() {
        let Some(mut slot) = slots[i].take() else {
            continue;
        };
        slot.decoding.n_past += 1;
        slot.units.push(Unit::Token(slot.pending));
        // A panic here fails only this request; the others in the batch go on.
        let step = catch_unwind(AssertUnwindSafe(|| {
            if let Some(n) = slot.fault_in.as_mut() {
                *n -= 1;
                fault::trip((*n == 0).then_some(Stage::Decode), Stage::Decode);
            }
            rt.step(&mut slot.decoding, row as i32, &mut emitter(&slot.events))
        }))
        .unwrap_or_else(|panic| {
            let msg = fault::panic_message(&*panic);
            tracing::error!("engine decode step panicked: {msg}");
            Err(EngineError::Internal(msg))
        });
        match step {
            Ok(Step::Next(token)) => {
                slot.pending = token;
                slots[i] = Some(slot);
            }
            Ok(Step::Finished(reason)) => finish(rt, slot, reason, stats, slot_units),
            Err(e) => end_with_error(rt, slot.decoding.seq, &slot.events, e, stats, slot_units),
        }
    }
}

/// Ends a request normally (or as cancelled) and frees its sequence.
fn finish(
    rt: &mut Runtime<'_>,
    mut slot: Slot,
    reason: FinishReason,
    stats: &EngineStats,
    slot_units: &mut [Vec<Unit>],
) {
    // A finished request leaves its KV for the next one on this slot.
    match reason {
        FinishReason::Stop | FinishReason::Length => {
            slot_units[slot.decoding.seq as usize] = std::mem::take(&mut slot.units)
        }
        FinishReason::Cancelled => {
            rt.ctx.remove_seq(slot.decoding.seq, -1, -1);
            slot_units[slot.decoding.seq as usize].clear();
        }
    }
    let generation = slot.decoding.summary(reason);
    if reason == FinishReason::Cancelled {
        stats.finished(Outcome::Cancelled, generation.completion_tokens, None);
        return;
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let done = Done {
        finish_reason: reason,
        usage: Usage {
            prompt_tokens: slot.prompt_tokens,
            completion_tokens: generation.completion_tokens,
            cached_tokens: slot.cached_tokens,
        },
        timings: Timings {
            image_encode_ms: ms(slot.prefill.image_encode),
            image_cache_hits: slot.prefill.image_cache_hits,
            pass_prefix_positions: slot.prefill.pass_prefix_positions,
            prefill_ms: ms(slot.prefill.total.saturating_sub(slot.prefill.image_encode)),
            decode_ms: ms(generation.decode),
        },
        dms: slot.dms,
        score: slot.score,
    };
    stats.finished(
        Outcome::Completed,
        generation.completion_tokens,
        Some(&done),
    );
    let _ = slot.events.send(Event::Done(Box::new(done)));
}

/// Ends a request with an error and frees its sequence.
fn end_with_error(
    rt: &mut Runtime<'_>,
    seq: i32,
    events: &tmpsc::UnboundedSender<Event>,
    error: EngineError,
    stats: &EngineStats,
    slot_units: &mut [Vec<Unit>],
) {
    rt.ctx.remove_seq(seq, -1, -1);
    slot_units[seq as usize].clear();
    stats.finished(Outcome::Failed, 0, None);
    let _ = events.send(Event::Error(error));
}

/// The report of a request evaluated without weighting.
fn off_report(n_images: usize) -> DmsReport {
    DmsReport {
        mode: DmsMode::Off,
        scheduler: "off".into(),
        weights: ModalityWeights::uniform(n_images),
        signals: None,
        variants: None,
        evidence_tokens: 0,
        consistency_hidden: None,
        consistency_input: None,
        image_cache_hits: 0,
        timings_ms: Default::default(),
        mwc: None,
    }
}

/// The unimodal prompts of a request: each image with the question of the last user message
/// after the system messages, and the conversation without its images.
fn unimodal_prompts(
    rt: &Runtime<'_>,
    messages: &[Message],
    images: &[RgbImage],
) -> Result<UnimodalPrompts, EngineError> {
    let system: Vec<Message> = messages
        .iter()
        .filter(|m| m.role == Role::System)
        .cloned()
        .collect();
    let question = last_question(messages);
    let context_key: String = system
        .iter()
        .flat_map(|m| &m.content)
        .filter_map(ContentPart::text)
        .chain([question.as_str()])
        .collect::<Vec<_>>()
        .join("\u{1}");
    let image_parts = messages
        .iter()
        .flat_map(|m| &m.content)
        .filter(|p| matches!(p, ContentPart::Image(_)));
    let mut image_prompts = Vec::with_capacity(images.len());
    for (part, image) in image_parts.zip(images) {
        let mut msgs = system.clone();
        let mut content = vec![part.clone()];
        if !question.is_empty() {
            content.push(ContentPart::Question(question.clone()));
        }
        msgs.push(Message {
            role: Role::User,
            content,
        });
        image_prompts.push(Prompt::build(
            rt.model(),
            rt.mtmd(),
            &msgs,
            std::slice::from_ref(image),
        )?);
    }
    let text_only: Vec<Message> = messages
        .iter()
        .map(|m| Message {
            role: m.role,
            content: m
                .content
                .iter()
                .filter(|p| p.text().is_some())
                .cloned()
                .collect(),
        })
        .collect();
    let text = Prompt::build(rt.model(), rt.mtmd(), &text_only, &[])?;
    let mut null_messages = system;
    null_messages.push(Message::text(Role::User, question));
    let null = Prompt::build(rt.model(), rt.mtmd(), &null_messages, &[])?;
    Ok(UnimodalPrompts {
        images: image_prompts,
        text,
        null,
        context_key,
    })
}

/// The question of the last user message (its text parts' question halves, trimmed).
fn last_question(messages: &[Message]) -> String {
    let Some(last) = messages.iter().rev().find(|m| m.role == Role::User) else {
        return String::new();
    };
    let texts = last.content.iter().filter_map(ContentPart::text);
    texts
        .zip(split_message(last))
        .map(|(t, s)| t[s.evidence_bytes.min(t.len())..].trim())
        .filter(|q| !q.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
