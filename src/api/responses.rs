//! OpenAI's `POST /v1/responses`, stateless: `input` text or messages with `input_text` and
//! `input_image` parts, `instructions`, and the answer as one `output_text`, streamed as the
//! Responses API's events. Translated to and from our chat request (DMS included).

use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::engine::{Done, Event, FinishReason};

use super::chat::{new_id, now, to_engine_request};
use super::error::ApiError;
use super::respond::answers;
use super::translate::{bad, chat_request, content, image_part, sse, started, text_part};
use super::types::GenerationRequest;
use super::{check_model, AppState};

/// A Responses content part as a chat content part.
fn part(p: &Value, at: &str) -> Result<Value, ApiError> {
    match p["type"].as_str() {
        Some("input_text" | "output_text") => text_part(p, at),
        Some("input_image") => match p["image_url"].as_str() {
            Some(url) => Ok(image_part(url)),
            None => Err(bad(
                &format!("{at}.image_url"),
                "an image part needs image_url",
            )),
        },
        _ => Err(bad(
            &format!("{at}.type"),
            "parts are input_text or input_image",
        )),
    }
}

/// The Responses request as our chat request, and whether it streams.
fn to_chat(body: &Value) -> Result<(GenerationRequest, bool), ApiError> {
    let Some(object) = body.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let mut messages = Vec::new();
    if let Some(instructions) = body["instructions"].as_str() {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    match &body["input"] {
        Value::String(s) => messages.push(json!({"role": "user", "content": s})),
        Value::Array(items) => {
            for (i, m) in items.iter().enumerate() {
                let role = match m["role"].as_str() {
                    Some("developer") => "system",
                    Some(r @ ("user" | "assistant" | "system")) => r,
                    _ => {
                        return Err(bad(
                            &format!("input[{i}].role"),
                            "role is user, assistant, system or developer",
                        ))
                    }
                };
                let content = content(&m["content"], &format!("input[{i}].content"), part)?;
                messages.push(json!({"role": role, "content": content}));
            }
        }
        _ => return Err(bad("input", "input must be a string or a list of messages")),
    }
    let fields = [
        ("model", "model"),
        ("max_tokens", "max_output_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("dms", "dms"),
    ];
    chat_request(messages, object, &fields)
}

/// The response object: `in_progress` without `done`, else `completed` or `incomplete`.
fn response_object(id: &str, item: &str, model: &str, text: &str, done: Option<&Done>) -> Value {
    let (status, incomplete, output, usage) = match done {
        None => ("in_progress", Value::Null, json!([]), Value::Null),
        Some(d) => {
            let cut = d.finish_reason == FinishReason::Length;
            let message = json!({"type": "message", "id": item, "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]});
            let usage = json!({"input_tokens": d.usage.prompt_tokens,
                "output_tokens": d.usage.completion_tokens,
                "total_tokens": d.usage.prompt_tokens + d.usage.completion_tokens});
            match cut {
                true => (
                    "incomplete",
                    json!({"reason": "max_output_tokens"}),
                    json!([message]),
                    usage,
                ),
                false => ("completed", Value::Null, json!([message]), usage),
            }
        }
    };
    let mut object = json!({"id": id, "object": "response", "created_at": now(),
        "status": status, "model": model, "output": output, "incomplete_details": incomplete,
        "usage": usage, "error": null, "tools": [], "tool_choice": "none",
        "parallel_tool_calls": false});
    if let Some(d) = done {
        object["dms"] = serde_json::to_value(&d.dms).unwrap_or_default();
    }
    object
}

/// `POST /v1/responses`.
pub async fn responses(
    State(state): State<AppState>,
    super::ApiJson(body): super::ApiJson<Value>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let info = engine.info().clone();
    let (chat, streaming) = to_chat(&body)?;
    let model = check_model(chat.model.as_deref(), &state.model_names, &info.name)?;
    let request = to_engine_request(chat, &state, info.n_ctx)?;
    let (id, item) = (new_id("resp_"), new_id("msg_"));
    if !streaming {
        let (text, _, done) = answers(&state, &request, 1)
            .await?
            .pop()
            .ok_or_else(ApiError::internal)?;
        let object = response_object(&id, &item, &model, &text, Some(&done));
        return Ok(axum::Json(object).into_response());
    }
    let started = started(&state, request).await?;
    let mut sequence = 0u64;
    let mut event = move |mut data: Value| {
        data["sequence_number"] = json!(sequence);
        sequence += 1;
        let name = data["type"].as_str().unwrap_or("message").to_string();
        SseEvent::default().event(name).data(data.to_string())
    };
    let part = json!({"type": "output_text", "text": "", "annotations": []});
    let opening = vec![
        event(json!({"type": "response.created",
            "response": response_object(&id, &item, &model, "", None)})),
        event(
            json!({"type": "response.output_item.added", "output_index": 0,
            "item": {"type": "message", "id": item, "status": "in_progress",
                     "role": "assistant", "content": []}}),
        ),
        event(
            json!({"type": "response.content_part.added", "item_id": item,
            "output_index": 0, "content_index": 0, "part": part}),
        ),
    ];
    let mut text = String::new();
    Ok(sse(started, opening, move |next| match next {
        Some(Event::Text(t)) => {
            text.push_str(&t);
            let delta = json!({"type": "response.output_text.delta", "item_id": item,
                "output_index": 0, "content_index": 0, "delta": t});
            (vec![event(delta)], false)
        }
        Some(Event::Logprob(_)) => (Vec::new(), false),
        Some(Event::Done(done)) => {
            let object = response_object(&id, &item, &model, &text, Some(&done));
            let finished = if object["status"] == "completed" {
                "response.completed"
            } else {
                "response.incomplete"
            };
            let part = json!({"type": "output_text", "text": text, "annotations": []});
            let out = vec![
                event(json!({"type": "response.output_text.done", "item_id": item,
                    "output_index": 0, "content_index": 0, "text": text})),
                event(
                    json!({"type": "response.content_part.done", "item_id": item,
                    "output_index": 0, "content_index": 0, "part": part}),
                ),
                event(
                    json!({"type": "response.output_item.done", "output_index": 0,
                    "item": object["output"][0].clone()}),
                ),
                event(json!({"type": finished, "response": object})),
            ];
            (out, true)
        }
        Some(Event::Error(e)) => {
            let e = ApiError::from(e);
            let error =
                json!({"type": "error", "code": e.kind, "message": e.message, "param": e.param});
            (vec![event(error)], true)
        }
        None => {
            let e = ApiError::internal();
            let error = json!({"type": "error", "code": e.kind, "message": e.message});
            (vec![event(error)], true)
        }
    }))
}
