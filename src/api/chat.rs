//! `POST /v1/chat/completions`: validation, conversion to an engine request, and the answer
//! (one JSON object, or server-sent events when `stream` is set).

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;

use crate::engine::{
    ContentPart as EngineContent, DmsMode, DmsSettings, Event, GenerateRequest, Message,
    Role as EngineRole,
};
use crate::llama::SamplerParams;

use super::error::ApiError;
use super::media::load_image;
use super::types::{
    finish_reason, AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice, ContentPart,
    MessageContent, Role, Usage,
};
use super::AppState;

/// Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn completion_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "chatcmpl-{:x}{:06x}",
        now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Checks an optional number lies in `[lo, hi]`.
fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    v: Option<T>,
    lo: T,
    hi: T,
    param: &str,
) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo <= x && x <= hi) => Err(ApiError::bad_param(
            param,
            format!("{param} must be in [{lo}, {hi}]"),
        )),
        _ => Ok(()),
    }
}

/// Turns the OpenAI request into an engine request (checking every field).
pub fn to_engine_request(
    req: ChatCompletionRequest,
    state: &AppState,
    n_ctx: usize,
) -> Result<GenerateRequest, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    if matches!(req.n, Some(n) if n != 1) {
        return Err(ApiError::bad_param("n", "only n = 1 is supported"));
    }
    in_range(req.temperature, 0.0, 2.0, "temperature")?;
    in_range(req.top_p, 0.0, 1.0, "top_p")?;
    in_range(req.min_p, 0.0, 1.0, "min_p")?;
    in_range(req.top_k, 0, i32::MAX, "top_k")?;
    in_range(req.presence_penalty, -2.0, 2.0, "presence_penalty")?;
    in_range(req.frequency_penalty, -2.0, 2.0, "frequency_penalty")?;
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    in_range(max_tokens, 1, n_ctx as i64, "max_tokens")?;

    let mut messages = Vec::with_capacity(req.messages.len());
    let mut n_images = 0;
    for (i, m) in req.messages.into_iter().enumerate() {
        let role = match m.role {
            Role::System | Role::Developer => EngineRole::System,
            Role::User => EngineRole::User,
            Role::Assistant => EngineRole::Assistant,
        };
        let content = match m.content {
            None => Vec::new(),
            Some(MessageContent::Text(t)) => vec![EngineContent::Text(t)],
            Some(MessageContent::Parts(parts)) => {
                let mut out = Vec::with_capacity(parts.len());
                for (j, part) in parts.into_iter().enumerate() {
                    out.push(match part {
                        ContentPart::Text { text } => EngineContent::Text(text),
                        ContentPart::ImageUrl { image_url } => {
                            n_images += 1;
                            if n_images > state.limits.max_images {
                                return Err(ApiError::bad_param(
                                    "messages",
                                    format!(
                                        "too many images (at most {})",
                                        state.limits.max_images
                                    ),
                                ));
                            }
                            let param = format!("messages[{i}].content[{j}].image_url");
                            EngineContent::Image(load_image(
                                &image_url.url,
                                &state.limits.media,
                                &param,
                            )?)
                        }
                    });
                }
                out
            }
        };
        messages.push(Message { role, content });
    }
    let defaults = SamplerParams::default();
    let sampling = SamplerParams {
        temperature: req.temperature.unwrap_or(defaults.temperature),
        top_k: req.top_k.unwrap_or(defaults.top_k),
        top_p: req.top_p.unwrap_or(defaults.top_p),
        min_p: req.min_p.unwrap_or(defaults.min_p),
        presence_penalty: req.presence_penalty.unwrap_or(0.0),
        frequency_penalty: req.frequency_penalty.unwrap_or(0.0),
        seed: req.seed.map_or_else(rand_seed, |s| s as u32),
        ignore_eos: req.ignore_eos.unwrap_or(false),
        ..defaults
    };
    Ok(GenerateRequest {
        messages,
        sampling,
        max_tokens: max_tokens.map_or(n_ctx, |n| n as usize),
        stop: req.stop.map(|s| s.into_vec()).unwrap_or_default(),
        dms: dms_settings(req.dms, n_images)?,
    })
}

fn rand_seed() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

fn dms_settings(
    dms: Option<super::types::DmsRequest>,
    n_images: usize,
) -> Result<DmsSettings, ApiError> {
    let Some(d) = dms else {
        return Ok(DmsSettings::default());
    };
    let mode = match d.mode.as_deref() {
        None if d.weights.is_some() => DmsMode::Fixed,
        None | Some("off") => DmsMode::Off,
        Some("fixed") => DmsMode::Fixed,
        Some("rule") => DmsMode::Rule,
        Some("learned") => DmsMode::Learned,
        Some(other) => {
            return Err(ApiError::bad_param(
                "dms.mode",
                format!("unknown mode {other:?} (off, fixed, rule, learned)"),
            ))
        }
    };
    in_range(
        d.mc_samples,
        0,
        crate::engine::dms_settings::MAX_MC_SAMPLES as i64,
        "dms.mc_samples",
    )?;
    in_range(d.dropout, 0.0, 0.9, "dms.dropout")?;
    if mode == DmsMode::Fixed {
        let w = d
            .weights
            .as_ref()
            .ok_or_else(|| ApiError::bad_param("dms.weights", "mode fixed needs weights"))?;
        w.check(n_images)
            .map_err(|e| ApiError::bad_param("dms.weights", e.to_string()))?;
    }
    let defaults = DmsSettings::default();
    Ok(DmsSettings {
        mode,
        scheduler: d.scheduler,
        weights: d.weights,
        mc_samples: d.mc_samples.map_or(defaults.mc_samples, |n| n as usize),
        dropout: d.dropout.unwrap_or(defaults.dropout),
        ..defaults
    })
}

/// Runs a request to the end and answers with one JSON object.
pub async fn complete(
    state: &AppState,
    request: GenerateRequest,
    model: String,
) -> Result<Response, ApiError> {
    let mut events = state.engine()?.submit(request)?;
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Error(e) => return Err(e.into()),
            Event::Done(done) => {
                let usage = Usage {
                    prompt_tokens: done.usage.prompt_tokens,
                    completion_tokens: done.usage.completion_tokens,
                    total_tokens: done.usage.prompt_tokens + done.usage.completion_tokens,
                };
                let body = ChatCompletion {
                    id: completion_id(),
                    object: "chat.completion",
                    created: now(),
                    model,
                    choices: vec![Choice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant",
                            content: text,
                        },
                        finish_reason: finish_reason(done.finish_reason),
                    }],
                    usage,
                    dms: done.dms,
                };
                return Ok(axum::Json(body).into_response());
            }
        }
    }
    Err(ApiError::internal())
}

/// Streams a request as OpenAI chunks over server-sent events. Dropping the connection drops
/// the engine's event stream, which cancels the generation.
pub fn stream(
    state: &AppState,
    request: GenerateRequest,
    model: String,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let mut events = state.engine()?.submit(request)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(32);
    let (id, created) = (completion_id(), now());
    let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    tokio::spawn(async move {
        let send = |v: serde_json::Value| SseEvent::default().data(v.to_string());
        if tx
            .send(Ok(send(chunk(
                json!({"role": "assistant", "content": ""}),
                None,
            ))))
            .await
            .is_err()
        {
            return;
        }
        while let Some(event) = events.recv().await {
            let out = match event {
                Event::Text(t) => vec![send(chunk(json!({"content": t}), None))],
                Event::Error(e) => vec![send(ApiError::from(e).body())],
                Event::Done(done) => {
                    let mut last = chunk(json!({}), Some(finish_reason(done.finish_reason)));
                    last["dms"] = serde_json::to_value(&done.dms).unwrap_or_default();
                    let mut out = vec![send(last)];
                    if include_usage {
                        let u = done.usage;
                        let mut usage = chunk(json!({}), None);
                        usage["choices"] = json!([]);
                        usage["usage"] = json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                                                "total_tokens": u.prompt_tokens + u.completion_tokens});
                        out.push(send(usage));
                    }
                    out
                }
            };
            for e in out {
                if tx.send(Ok(e)).await.is_err() {
                    return; // client gone: dropping `events` cancels the request
                }
            }
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}
