//! What the endpoints that translate another API into our chat request share (Anthropic's
//! `/v1/messages`, OpenAI's `/v1/responses`): the content of parts, the request itself, and a
//! streamed answer's start.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tokio_stream::wrappers::ReceiverStream;

use crate::engine::{Event, EventStream, GenerateRequest};

use super::chat::{engine_error, image_params};
use super::error::ApiError;
use super::types::GenerationRequest;
use super::AppState;

/// A 400 naming `param`.
pub(super) fn bad(param: &str, message: &str) -> ApiError {
    ApiError::bad_param(param, message)
}

/// Content given as a string or as a list of parts, as chat content: each part through `part`
/// (which gets the part and its path, e.g. `messages[0].content[1]`).
pub(super) fn content(
    value: &Value,
    at: &str,
    part: impl Fn(&Value, &str) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    let parts = match value {
        Value::String(s) => return Ok(json!(s)),
        Value::Array(parts) => parts,
        _ => return Err(bad(at, "content must be a string or a list of parts")),
    };
    let parts = parts
        .iter()
        .enumerate()
        .map(|(i, p)| part(p, &format!("{at}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Array(parts))
}

/// A chat text part from `p["text"]`.
pub(super) fn text_part(p: &Value, at: &str) -> Result<Value, ApiError> {
    match p["text"].as_str() {
        Some(t) => Ok(json!({"type": "text", "text": t})),
        None => Err(bad(&format!("{at}.text"), "a text part needs text")),
    }
}

/// A chat image part for `url` (a data URI or an address).
pub(super) fn image_part(url: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// Our chat request from translated `messages` and the fields of `body` that `fields` maps
/// `(ours, theirs)`, and whether it streams (`body.stream`).
pub(super) fn chat_request(
    messages: Vec<Value>,
    body: &Map<String, Value>,
    fields: &[(&str, &str)],
) -> Result<(GenerationRequest, bool), ApiError> {
    let mut chat = json!({"messages": messages});
    for (ours, theirs) in fields {
        if let Some(v) = body.get(*theirs) {
            chat[*ours] = v.clone();
        }
    }
    let request = serde_json::from_value(chat)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    let streaming = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    Ok((request, streaming))
}

/// Submits `request` and waits for its first event, so that a request the engine refuses is a
/// plain HTTP error rather than an error inside a started stream.
pub(super) async fn started(
    state: &AppState,
    request: GenerateRequest,
) -> Result<(EventStream, Option<Event>), ApiError> {
    let images = image_params(&request);
    let mut events = state.engine()?.submit(request)?;
    match events.recv().await {
        Some(Event::Error(e)) => Err(engine_error(e, &images)),
        first => Ok((events, first)),
    }
}

/// Streams a started request as server-sent events: `opening` first, then what `translate`
/// makes of each engine event (`None`: the engine stopped without a last one) until it says
/// the stream has ended. A client that leaves drops the engine's stream, which cancels it.
pub(super) fn sse(
    (mut events, mut first): (EventStream, Option<Event>),
    opening: Vec<SseEvent>,
    mut translate: impl FnMut(Option<Event>) -> (Vec<SseEvent>, bool) + Send + 'static,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(32);
    tokio::spawn(async move {
        let mut out = opening;
        let mut ended = false;
        loop {
            for e in out {
                if tx.send(Ok(e)).await.is_err() {
                    return; // client gone: dropping `events` cancels the request
                }
            }
            if ended {
                return;
            }
            let next = match first.take() {
                Some(e) => Some(e),
                None => events.recv().await,
            };
            (out, ended) = translate(next);
        }
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
