//! Anthropic's `POST /v1/messages` (text and base64 or URL images, streaming events as
//! Anthropic sends them), translated to and from our chat request: one generation path, DMS
//! included (the `dms` extension works here too), with Anthropic's error shape.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::engine::{Event, FinishReason};

use super::chat::{new_id, to_engine_request};
use super::error::ApiError;
use super::respond::answers;
use super::translate::{bad, chat_request, content, image_part, sse, started, text_part};
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

/// An Anthropic content block as a chat content part.
fn block(b: &Value, at: &str) -> Result<Value, ApiError> {
    match b["type"].as_str() {
        Some("text") => text_part(b, at),
        Some("image") => {
            let source = &b["source"];
            match source["type"].as_str() {
                Some("base64") => Ok(image_part(&format!(
                    "data:{};base64,{}",
                    source["media_type"].as_str().unwrap_or("image/png"),
                    source["data"].as_str().unwrap_or_default()
                ))),
                Some("url") => Ok(image_part(source["url"].as_str().unwrap_or_default())),
                _ => Err(bad(
                    &format!("{at}.source"),
                    "an image source is base64 or url",
                )),
            }
        }
        _ => Err(bad(&format!("{at}.type"), "blocks are text or image")),
    }
}

/// The Anthropic request as our (OpenAI-shaped) chat request, and whether it streams.
fn to_chat(body: &Value) -> Result<(GenerationRequest, bool), ApiError> {
    let Some(object) = body.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if !body["max_tokens"].is_i64() {
        return Err(bad("max_tokens", "max_tokens is required (an integer)"));
    }
    let mut messages = Vec::new();
    if !body["system"].is_null() {
        let system = content(&body["system"], "system", block)?;
        messages.push(json!({"role": "system", "content": system}));
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
        let content = content(&m["content"], &format!("messages[{i}].content"), block)?;
        messages.push(json!({"role": role, "content": content}));
    }
    let fields = [
        ("model", "model"),
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stop", "stop_sequences"),
        ("dms", "dms"),
    ];
    chat_request(messages, object, &fields)
}

/// Anthropic's stop reason for ours.
fn stop_reason(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Length => "max_tokens",
        _ => "end_turn",
    }
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
    let id = new_id("msg_");
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
    let started = started(&state, request).await?;
    let event = |name: &str, data: Value| SseEvent::default().event(name).data(data.to_string());
    let start = json!({"type": "message_start", "message": {"id": id, "type": "message",
        "role": "assistant", "model": model, "content": [], "stop_reason": null,
        "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}});
    let block = json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}});
    let opening = vec![
        event("message_start", start),
        event("content_block_start", block),
    ];
    Ok(sse(started, opening, move |next| match next {
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
        Some(Event::Error(e)) => (vec![event("error", AnthropicError(e.into()).body())], true),
        None => (
            vec![event("error", AnthropicError(ApiError::internal()).body())],
            true,
        ),
    }))
}
