//! The worker thread: loads the model, reports readiness, then serves requests one at a time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use tokio::sync::mpsc as tmpsc;

use crate::llama::{Model, ModelParams, Sampler};

use super::{
    decode_image, ContentPart, Done, EngineConfig, EngineError, EngineStats, Event, FinishReason,
    Job, ModelInfo, Prompt, Runtime, Timings, Usage,
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
    while let Ok(job) = queue.recv() {
        if job.events.is_closed() {
            stats.record(&stats.cancelled, 0);
            continue;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            serve(&mut rt, &config, &job.request, &job.events)
        }));
        rt.context().clear_memory();
        let event = match outcome {
            Ok(Ok(Served::Done(done))) => {
                stats.record(&stats.completed, done.usage.completion_tokens);
                Event::Done(done)
            }
            Ok(Ok(Served::Cancelled { generated })) => {
                stats.record(&stats.cancelled, generated);
                continue; // nobody is listening
            }
            Ok(Err(e)) => {
                stats.record(&stats.failed, 0);
                Event::Error(e)
            }
            Err(panic) => {
                stats.record(&stats.failed, 0);
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
    Done(Done),
    Cancelled { generated: usize },
}

/// Serves one request.
fn serve(
    rt: &mut Runtime<'_>,
    config: &EngineConfig,
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
    let prompt = Prompt::build(rt.model(), rt.mtmd(), &request.messages, &images)?;
    if events.is_closed() {
        return Ok(Served::Cancelled { generated: 0 });
    }
    let prefill = match &request.weights {
        Some(w) => rt.prefill_weighted(&prompt, w, ANSWER_SEQ)?,
        None => rt.prefill_reference(&prompt, ANSWER_SEQ)?,
    };
    let mut sampler = Sampler::new(rt.model(), &request.sampling)?;
    let mut emit = |piece: &str| events.send(Event::Text(piece.to_string())).is_ok();
    let generation = rt.generate(
        prefill.n_past,
        ANSWER_SEQ,
        &mut sampler,
        request.max_tokens,
        &request.stop,
        &mut emit,
    )?;
    if generation.finish_reason == FinishReason::Cancelled {
        return Ok(Served::Cancelled {
            generated: generation.completion_tokens,
        });
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    Ok(Served::Done(Done {
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
        weights: request.weights.clone(),
    }))
}
