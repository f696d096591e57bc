//! The answer to a generation request: `n` choices generated side by side (each an engine
//! request of its own, seeds `seed`, `seed + 1`, ...), as one JSON object or as server-sent
//! events whose chunks carry each choice's `index`.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;

use crate::engine::{Done, Event, EventStream, GenerateRequest};

use super::chat::{engine_error, image_params, logprob_json, now, usage_of, Shape};
use super::error::ApiError;
use super::types::{finish_reason, AssistantMessage, ChatCompletion, Choice, Usage};
use super::AppState;

/// Submits `n` copies of `request` (choice `i` drawing with seed `seed + i`). A refused one
/// drops those already submitted, which cancels them.
fn submit_all(
    state: &AppState,
    request: &GenerateRequest,
    n: usize,
) -> Result<Vec<EventStream>, ApiError> {
    let engine = state.engine()?;
    (0..n)
        .map(|i| {
            let mut r = request.clone();
            r.sampling.seed = r.sampling.seed.wrapping_add(i as u32);
            Ok(engine.submit(r)?)
        })
        .collect()
}

/// Usage of the choices together: the prompt counted once, the generated tokens of all.
fn total_usage(done: &[&Done]) -> Usage {
    let mut usage = usage_of(done[0].usage);
    usage.completion_tokens = done.iter().map(|d| d.usage.completion_tokens).sum();
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    usage
}

/// One finished choice: its text, its token log-probabilities (OpenAI's shape) and the end.
pub type Answer = (String, Vec<serde_json::Value>, Box<Done>);

/// Runs `n` choices of `request` to the end.
pub async fn answers(
    state: &AppState,
    request: &GenerateRequest,
    n: usize,
) -> Result<Vec<Answer>, ApiError> {
    let images = image_params(request);
    let streams = submit_all(state, request, n)?;
    let mut answers = Vec::with_capacity(n);
    for mut events in streams {
        let (mut text, mut logprobs) = (String::new(), Vec::new());
        loop {
            match events.recv().await {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Logprob(lp)) => logprobs.push(logprob_json(&lp)),
                Some(Event::Error(e)) => return Err(engine_error(e, &images)),
                Some(Event::Done(done)) => break answers.push((text, logprobs, done)),
                None => return Err(ApiError::internal()),
            }
        }
    }
    Ok(answers)
}

/// Runs `n` choices to the end and answers with one JSON object.
pub async fn complete(
    state: &AppState,
    request: GenerateRequest,
    n: usize,
    model: String,
    shape: Shape,
) -> Result<Response, ApiError> {
    let wants_logprobs = request.top_logprobs.is_some();
    let answers = answers(state, &request, n).await?;
    let done: Vec<&Done> = answers.iter().map(|(_, _, d)| &**d).collect();
    let usage = total_usage(&done);
    tracing::info!(
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        choices = n,
        "completed"
    );
    let dms = done[0].dms.clone();
    let choices = answers
        .into_iter()
        .enumerate()
        .map(|(index, (text, lp, done))| {
            let logprobs = wants_logprobs.then(|| json!({"content": lp}));
            (index, text, logprobs, finish_reason(done.finish_reason))
        });
    if shape == Shape::Text {
        let choices: Vec<_> = choices
            .map(|(index, text, logprobs, finish)| {
                json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})
            })
            .collect();
        let body = json!({"id": shape.id(), "object": "text_completion", "created": now(),
            "model": model, "choices": choices, "usage": usage, "dms": dms});
        return Ok(axum::Json(body).into_response());
    }
    let body = ChatCompletion {
        id: shape.id(),
        object: "chat.completion",
        created: now(),
        model,
        choices: choices
            .map(|(index, content, logprobs, finish_reason)| Choice {
                index,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                },
                logprobs,
                finish_reason,
            })
            .collect(),
        usage,
        dms,
    };
    Ok(axum::Json(body).into_response())
}

/// Streams `n` choices as OpenAI chunks over server-sent events, each chunk naming its choice's
/// `index`. Dropping the connection drops the engine's event streams, which cancels the
/// generations. The stream starts only once the engine has accepted every choice (its first
/// event), so that a request it refuses (a bad image, a prompt longer than the context) is a
/// plain HTTP error, not an error inside a 200.
pub async fn stream(
    state: &AppState,
    request: GenerateRequest,
    n: usize,
    model: String,
    shape: Shape,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let images = image_params(&request);
    let mut started = Vec::with_capacity(n);
    for mut events in submit_all(state, &request, n)? {
        let first = match events.recv().await {
            Some(Event::Error(e)) => return Err(engine_error(e, &images)),
            other => other,
        };
        started.push((events, first));
    }
    // Every choice's events, tagged with its index, in one channel; a forwarder ends when the
    // client is gone, dropping (and so cancelling) its choice.
    let (merged_tx, mut merged) = tokio::sync::mpsc::channel::<(usize, Option<Event>)>(32);
    for (index, (mut events, first)) in started.into_iter().enumerate() {
        let tx = merged_tx.clone();
        tokio::spawn(async move {
            let mut next = first;
            loop {
                let end = !matches!(next, Some(Event::Text(_) | Event::Logprob(_)));
                if tx.send((index, next)).await.is_err() || end {
                    return;
                }
                next = events.recv().await;
            }
        });
    }
    drop(merged_tx);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(32);
    let (id, created) = (shape.id(), now());
    let object = if shape == Shape::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    // One chunk of choice `index`: `delta` (chat) or `text` (completions), optional logprobs
    // and finish reason.
    let chunk = move |index: usize,
                      text: Option<&str>,
                      logprobs: Option<serde_json::Value>,
                      finish: Option<&str>| {
        let mut choice = match (shape, text) {
            (Shape::Chat, Some(t)) => json!({"index": index, "delta": {"content": t}}),
            (Shape::Chat, None) => json!({"index": index, "delta": {}}),
            (Shape::Text, t) => json!({"index": index, "text": t.unwrap_or("")}),
        };
        choice["logprobs"] = logprobs.unwrap_or(serde_json::Value::Null);
        choice["finish_reason"] = json!(finish);
        json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]})
    };
    tokio::spawn(async move {
        let send = |v: serde_json::Value| SseEvent::default().data(v.to_string());
        if shape == Shape::Chat {
            for index in 0..n {
                let mut first = chunk(index, Some(""), None, None);
                first["choices"][0]["delta"]["role"] = json!("assistant");
                if tx.send(Ok(send(first))).await.is_err() {
                    return;
                }
            }
        }
        let mut done: Vec<Option<Box<Done>>> = (0..n).map(|_| None).collect();
        let mut ended = 0; // choices whose Done or Error arrived (else the engine died: say so)
        let mut failed = false;
        while let Some((index, event)) = merged.recv().await {
            let out = match event {
                Some(Event::Text(t)) => vec![send(chunk(index, Some(&t), None, None))],
                Some(Event::Logprob(lp)) => {
                    let lp = json!({"content": [logprob_json(&lp)]});
                    vec![send(chunk(index, None, Some(lp), None))]
                }
                Some(Event::Error(e)) => {
                    ended += 1;
                    failed = true;
                    vec![send(ApiError::from(e).body())]
                }
                Some(Event::Done(d)) => {
                    ended += 1;
                    let finish = finish_reason(d.finish_reason);
                    let mut last = chunk(index, None, None, Some(finish));
                    last["dms"] = serde_json::to_value(&d.dms).unwrap_or_default();
                    done[index] = Some(d);
                    vec![send(last)]
                }
                None => Vec::new(),
            };
            for e in out {
                if tx.send(Ok(e)).await.is_err() {
                    return; // client gone: the forwarders stop, dropping their choices
                }
            }
        }
        if ended < n {
            let _ = tx.send(Ok(send(ApiError::internal().body()))).await;
        } else if include_usage && !failed {
            let all: Vec<&Done> = done.iter().flatten().map(|d| &**d).collect();
            let mut usage = chunk(0, None, None, None);
            usage["choices"] = json!([]);
            usage["usage"] = json!(total_usage(&all));
            let _ = tx.send(Ok(send(usage))).await;
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}
