//! The worker thread: loads the model, reports readiness, then serves requests one at a time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use tokio::sync::mpsc as tmpsc;

use crate::llama::{Model, ModelParams, Sampler};

use super::dms_stage::{pick_scheduler, UnimodalPrompts};
use super::runtime::{Emitted, GenerateOptions};
use super::stats::Outcome;
use super::{
    decode_image, ContentPart, DmsMode, DmsReport, Done, EngineConfig, EngineError, EngineStats,
    Event, FinishReason, Job, Message, ModalityWeights, ModelInfo, Prompt, RgbImage, Role, Runtime,
    SignalCache, Timings, Usage,
};

/// Sequence used for the answer (DMS signal passes use the others).
const ANSWER_SEQ: i32 = 0;

pub(super) fn run(
    config: EngineConfig,
    queue: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Result<ModelInfo, EngineError>>,
    stats: &EngineStats,
) {
    let params = ModelParams {
        n_gpu_layers: config.n_gpu_layers,
        ..ModelParams::default()
    };
    let model = match Model::load(&config.model, &params) {
        Ok(m) => m,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let mut rt = match Runtime::new(&model, config.mmproj.as_deref(), &config.runtime) {
        Ok(rt) => rt,
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
        n_ctx: rt.context().n_ctx(),
        n_embd: model.n_embd(),
        n_vocab: model.n_vocab(),
        vision: rt.mtmd().is_some_and(|m| m.supports_vision()),
    };
    tracing::info!(model = %info.name, n_ctx = info.n_ctx, vision = info.vision, "engine ready");
    if ready.send(Ok(info)).is_err() {
        return;
    }
    let mut cache = SignalCache::new(config.signal_cache_images);
    while let Ok(job) = queue.recv() {
        stats.dequeued();
        if job.events.is_closed() {
            stats.finished(Outcome::Cancelled, 0, None);
            continue;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            serve(&mut rt, &config, &mut cache, &job.request, &job.events)
        }));
        rt.context().clear_memory();
        let event = match outcome {
            Ok(Ok(Served::Done(done))) => {
                stats.finished(
                    Outcome::Completed,
                    done.usage.completion_tokens,
                    Some(&done),
                );
                Event::Done(done)
            }
            Ok(Ok(Served::Cancelled { generated })) => {
                stats.finished(Outcome::Cancelled, generated, None);
                continue; // nobody is listening
            }
            Ok(Err(e)) => {
                stats.finished(Outcome::Failed, 0, None);
                Event::Error(e)
            }
            Err(panic) => {
                stats.finished(Outcome::Failed, 0, None);
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                tracing::error!("engine request panicked: {msg}");
                Event::Error(EngineError::Internal(msg))
            }
        };
        let _ = job.events.send(event);
    }
    tracing::info!("engine stopped");
}

/// How a request ended when it did not fail.
enum Served {
    Done(Box<Done>),
    Cancelled { generated: usize },
}

/// Serves one request.
fn serve(
    rt: &mut Runtime<'_>,
    config: &EngineConfig,
    cache: &mut SignalCache,
    request: &super::GenerateRequest,
    events: &tmpsc::UnboundedSender<Event>,
) -> Result<Served, EngineError> {
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
    if events.is_closed() {
        return Ok(Served::Cancelled { generated: 0 });
    }
    let (prefill, dms) = match pick_scheduler(&config.schedulers, &request.dms)? {
        None => {
            let prefill = rt.prefill_reference(&prompt, ANSWER_SEQ)?;
            (prefill, off_report(images.len()))
        }
        Some(scheduler) => {
            let unimodal = (scheduler.needs_signals() && !images.is_empty())
                .then(|| unimodal_prompts(rt, &request.messages, &images))
                .transpose()?;
            let bytes: Vec<&[u8]> = request
                .messages
                .iter()
                .flat_map(|m| &m.content)
                .filter_map(|p| match p {
                    ContentPart::Image(b) => Some(b.as_slice()),
                    ContentPart::Text(_) => None,
                })
                .collect();
            let stage = rt.dms_stage(
                &prompt,
                unimodal.as_ref(),
                &bytes,
                &*scheduler,
                &request.dms,
                cache,
            )?;
            if events.is_closed() {
                return Ok(Served::Cancelled { generated: 0 });
            }
            let prefill = rt.prefill_weighted_encoded(
                &prompt,
                &stage.report.weights,
                ANSWER_SEQ,
                &stage.encoded,
            )?;
            (prefill, stage.report)
        }
    };
    let mut sampling = request.sampling.clone();
    if let Some(format) = &request.response_format {
        sampling.grammar = Some(format.grammar()?);
    }
    let mut sampler = Sampler::new(rt.model(), &sampling)?;
    let mut emit = |out: Emitted<'_>| {
        let event = match out {
            Emitted::Text(piece) => Event::Text(piece.to_string()),
            Emitted::Token(lp) => Event::Logprob(Box::new(lp.clone())),
        };
        events.send(event).is_ok()
    };
    let options = GenerateOptions {
        max_tokens: request.max_tokens,
        stops: &request.stop,
        top_logprobs: request.top_logprobs,
    };
    let generation = rt.generate(
        prefill.n_past,
        ANSWER_SEQ,
        &mut sampler,
        &options,
        &mut emit,
    )?;
    if generation.finish_reason == FinishReason::Cancelled {
        return Ok(Served::Cancelled {
            generated: generation.completion_tokens,
        });
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    Ok(Served::Done(Box::new(Done {
        finish_reason: generation.finish_reason,
        usage: Usage {
            prompt_tokens: prompt.n_tokens(),
            completion_tokens: generation.completion_tokens,
        },
        timings: Timings {
            image_encode_ms: ms(prefill.image_encode),
            prefill_ms: ms(prefill.total.saturating_sub(prefill.image_encode)),
            decode_ms: ms(generation.decode),
        },
        dms,
    })))
}

/// The report of a request evaluated without weighting.
fn off_report(n_images: usize) -> DmsReport {
    DmsReport {
        mode: DmsMode::Off,
        scheduler: "off".into(),
        weights: ModalityWeights::uniform(n_images),
        signals: None,
        consistency_hidden: None,
        consistency_input: None,
        image_cache_hits: 0,
        timings_ms: Default::default(),
    }
}

/// The unimodal prompts of a request: each image alone after the system messages, and the
/// conversation without its images.
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
    let context_key: String = system
        .iter()
        .flat_map(|m| &m.content)
        .filter_map(|p| match p {
            ContentPart::Text(t) => Some(t.as_str()),
            ContentPart::Image(_) => None,
        })
        .collect::<Vec<_>>()
        .join("\u{1}");
    let image_parts = messages
        .iter()
        .flat_map(|m| &m.content)
        .filter(|p| matches!(p, ContentPart::Image(_)));
    let mut image_prompts = Vec::with_capacity(images.len());
    for (part, image) in image_parts.zip(images) {
        let mut msgs = system.clone();
        msgs.push(Message {
            role: Role::User,
            content: vec![part.clone()],
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
                .filter(|p| matches!(p, ContentPart::Text(_)))
                .cloned()
                .collect(),
        })
        .collect();
    let text = Prompt::build(rt.model(), rt.mtmd(), &text_only, &[])?;
    Ok(UnimodalPrompts {
        images: image_prompts,
        text,
        context_key,
    })
}
