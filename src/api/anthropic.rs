//! Anthropic's `POST /v1/messages` (text and base64 or URL images, streaming events as
//! Anthropic sends them), translated to and from our chat request: one generation path, DMS
//! included (the `dms` extension works here too), with Anthropic's error shape.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use crate::engine::{Event, FinishReason};

use super::chat::{engine_error, image_params, now, to_engine_request};
use super::error::ApiError;
use super::respond::answers;
use super::types::GenerationRequest;
use super::{check_model, AppState};

/// An [`ApiError`] in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`
/// (plus `param` when a field is at fault).
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl AnthropicError {
    fn body(&self) -> Value {
        let kind = match self.0.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "api_error",
        };
        let mut error = json!({"type": kind, "message": self.0.message});
        if let Some(p) = &self.0.param {
            error["param"] = json!(p);
        }
        json!({"type": "error", "error": error})
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let body = axum::Json(self.body());
        let mut response = (self.0.status, body).into_response();
        if self.0.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

fn bad(param: &str, message: &str) -> ApiError {
    ApiError::bad_param(param, message)
}

/// Anthropic content (a string or blocks) as OpenAI content parts.
fn content(value: &Value, at: &str) -> Result<Value, ApiError> {
    let blocks = match value {
        Value::String(s) => return Ok(json!(s)),
        Value::Array(blocks) => blocks,
        _ => return Err(bad(at, "content must be a string or a list of blocks")),
    };
    let parts = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let at = format!("{at}[{i}]");
            match b["type"].as_str() {
                Some("text") => match b["text"].as_str() {
                    Some(t) => Ok(json!({"type": "text", "text": t})),
                    None => Err(bad(&format!("{at}.text"), "a text block needs text")),
                },
                Some("image") => {
                    let source = &b["source"];
                    let url = match source["type"].as_str() {
                        Some("base64") => format!(
                            "data:{};base64,{}",
                            source["media_type"].as_str().unwrap_or("image/png"),
                            source["data"].as_str().unwrap_or_default()
                        ),
                        Some("url") => source["url"].as_str().unwrap_or_default().to_string(),
                        _ => {
                            return Err(bad(
                                &format!("{at}.source"),
                                "an image source is base64 or url",
                            ))
                        }
                    };
                    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
                }
                _ => Err(bad(&format!("{at}.type"), "blocks are text or image")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Array(parts))
}

/// The Anthropic request as our (OpenAI-shaped) chat request.
fn to_chat(body: &Value) -> Result<(GenerationRequest, bool), ApiError> {
    let Some(object) = body.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let max_tokens = body["max_tokens"]
        .as_i64()
        .ok_or_else(|| bad("max_tokens", "max_tokens is required (an integer)"))?;
    let mut messages = Vec::new();
    match &body["system"] {
        Value::Null => {}
        system => messages.push(json!({"role": "system", "content": content(system, "system")?})),
    }
    let turns = body["messages"]
        .as_array()
        .ok_or_else(|| bad("messages", "messages must be a list"))?;
    for (i, m) in turns.iter().enumerate() {
        let role = match m["role"].as_str() {
            Some(r @ ("user" | "assistant")) => r,
            _ => {
                return Err(bad(
                    &format!("messages[{i}].role"),
                    "role is user or assistant",
                ))
            }
        };
        let content = content(&m["content"], &format!("messages[{i}].content"))?;
        messages.push(json!({"role": role, "content": content}));
    }
    let mut chat = json!({"messages": messages, "max_tokens": max_tokens});
    for (ours, theirs) in [
        ("model", "model"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stop", "stop_sequences"),
        ("dms", "dms"),
    ] {
        if let Some(v) = object.get(theirs) {
            chat[ours] = v.clone();
        }
    }
    let request = serde_json::from_value(chat)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    Ok((request, body["stream"].as_bool().unwrap_or(false)))
}

/// Anthropic's stop reason for ours.
fn stop_reason(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Length => "max_tokens",
        _ => "end_turn",
    }
}

fn message_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "msg_{:x}{:06x}",
        now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `POST /v1/messages`.
pub async fn messages(
    State(state): State<AppState>,
    super::ApiJson(body): super::ApiJson<Value>,
) -> Result<Response, AnthropicError> {
    let engine = state.engine()?;
    let info = engine.info().clone();
    let (chat, streaming) = to_chat(&body)?;
    let model = check_model(chat.model.as_deref(), &state.model_names, &info.name)?;
    let request = to_engine_request(chat, &state, info.n_ctx)?;
    let id = message_id();
    if !streaming {
        let (text, _, done) = answers(&state, &request, 1)
            .await?
            .pop()
            .ok_or_else(ApiError::internal)?;
        let body = json!({"id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason(done.finish_reason), "stop_sequence": null,
            "usage": {"input_tokens": done.usage.prompt_tokens,
                      "output_tokens": done.usage.completion_tokens},
            "dms": done.dms});
        return Ok(axum::Json(body).into_response());
    }
    let images = image_params(&request);
    let mut events = engine.submit(request).map_err(ApiError::from)?;
    // As with chat streams: an error before the first event is a plain HTTP error.
    let mut first = match events.recv().await {
        Some(Event::Error(e)) => return Err(engine_error(e, &images).into()),
        other => other,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(32);
    tokio::spawn(async move {
        let event =
            |name: &str, data: Value| SseEvent::default().event(name).data(data.to_string());
        let start = json!({"type": "message_start", "message": {"id": id, "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}});
        let block = json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}});
        for e in [
            event("message_start", start),
            event("content_block_start", block),
        ] {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        loop {
            let next = match first.take() {
                Some(e) => Some(e),
                None => events.recv().await,
            };
            let (out, ended) = match next {
                Some(Event::Text(t)) => {
                    let delta = json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": t}});
                    (vec![event("content_block_delta", delta)], false)
                }
                Some(Event::Logprob(_)) => (Vec::new(), false),
                Some(Event::Done(done)) => {
                    let stop = json!({"type": "content_block_stop", "index": 0});
                    let delta = json!({"type": "message_delta",
                        "delta": {"stop_reason": stop_reason(done.finish_reason),
                                  "stop_sequence": null},
                        "usage": {"input_tokens": done.usage.prompt_tokens,
                                  "output_tokens": done.usage.completion_tokens},
                        "dms": done.dms});
                    let end = json!({"type": "message_stop"});
                    let out = vec![
                        event("content_block_stop", stop),
                        event("message_delta", delta),
                        event("message_stop", end),
                    ];
                    (out, true)
                }
                Some(Event::Error(e)) => {
                    (vec![event("error", AnthropicError(e.into()).body())], true)
                }
                None => (
                    vec![event("error", AnthropicError(ApiError::internal()).body())],
                    true,
                ),
            };
            for e in out {
                if tx.send(Ok(e)).await.is_err() {
                    return; // client gone: dropping `events` cancels the request
                }
            }
            if ended {
                return;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}
