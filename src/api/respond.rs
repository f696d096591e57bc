//! The answer to a generation request: `n` choices generated side by side (each an engine
//! request of its own, seeds `seed`, `seed + 1`, ...), as one JSON object or as server-sent
//! events whose chunks carry each choice's `index`. With tools, a choice's text is read back
//! as tool calls; streamed, it is held back while it may still be one.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio_stream::wrappers::ReceiverStream;

use crate::engine::{Done, Event, EventStream, GenerateRequest};

use super::chat::{engine_error, image_params, now, usage_of, Shape};
use super::error::ApiError;
use super::response_types::{
    finish_reason, AssistantMessage, ChatChunk, ChatCompletion, Choice, ChunkChoice, Delta,
    FunctionDelta, LogprobEntry, Logprobs, TextChoice, TextCompletion, ToolCall, ToolCallDelta,
    Usage,
};
use super::tools::{may_be_call, ToolChoice, ToolUse};
use super::AppState;

/// How a request is answered.
#[derive(Debug)]
pub struct Reply {
    /// Choices generated side by side.
    pub n: usize,
    /// The model name reported.
    pub model: String,
    /// Chat or text completion.
    pub shape: Shape,
    /// Streamed: end with a usage chunk.
    pub include_usage: bool,
    /// Chat: the tools the answer may call.
    pub tools: Option<ToolUse>,
    /// The request field of each image (for errors).
    pub image_params: Vec<String>,
}

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

/// One finished choice: its text, its token log-probabilities and the end.
pub type Answer = (String, Vec<LogprobEntry>, Box<Done>);

/// Runs `n` choices of `request` to the end.
pub async fn answers(
    state: &AppState,
    request: &GenerateRequest,
    n: usize,
) -> Result<Vec<Answer>, ApiError> {
    answers_naming(state, request, n, &image_params(request)).await
}

/// [`answers`], naming the image at fault with `images`.
async fn answers_naming(
    state: &AppState,
    request: &GenerateRequest,
    n: usize,
    images: &[String],
) -> Result<Vec<Answer>, ApiError> {
    let streams = submit_all(state, request, n)?;
    let mut answers = Vec::with_capacity(n);
    for mut events in streams {
        let (mut text, mut logprobs) = (String::new(), Vec::new());
        loop {
            match events.recv().await {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Logprob(lp)) => logprobs.push(LogprobEntry::from(&*lp)),
                Some(Event::Error(e)) => return Err(engine_error(e, images)),
                Some(Event::Done(done)) => break answers.push((text, logprobs, done)),
                None => return Err(ApiError::internal()),
            }
        }
    }
    Ok(answers)
}

/// The tool calls `text` makes, when the request has tools and it is a call.
fn calls_in(tools: Option<&ToolUse>, text: &str) -> Option<Vec<ToolCall>> {
    tools?.read_calls(text)
}

/// Runs the choices to the end and answers with one JSON object.
pub async fn complete(
    state: &AppState,
    request: GenerateRequest,
    reply: Reply,
) -> Result<Response, ApiError> {
    let wants_logprobs = request.top_logprobs.is_some();
    let answers = answers_naming(state, &request, reply.n, &reply.image_params).await?;
    let done: Vec<&Done> = answers.iter().map(|(_, _, d)| &**d).collect();
    let usage = total_usage(&done);
    tracing::info!(
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        choices = reply.n,
        "completed"
    );
    let dms = done[0].dms.clone();
    let (id, created, model) = (reply.shape.id(), now(), reply.model);
    let logprobs = |content: Vec<LogprobEntry>| wants_logprobs.then_some(Logprobs { content });
    if reply.shape == Shape::Text {
        let choices = answers
            .into_iter()
            .enumerate()
            .map(|(index, (text, lp, done))| TextChoice {
                index,
                text,
                logprobs: logprobs(lp),
                finish_reason: Some(finish_reason(done.finish_reason)),
            })
            .collect();
        let body = TextCompletion {
            id,
            object: "text_completion",
            created,
            model,
            choices,
            usage: Some(usage),
            dms: Some(dms),
        };
        return Ok(axum::Json(body).into_response());
    }
    let choices = answers
        .into_iter()
        .enumerate()
        .map(|(index, (text, lp, done))| {
            let (message, finish) = match calls_in(reply.tools.as_ref(), &text) {
                Some(calls) => (
                    AssistantMessage {
                        role: "assistant",
                        content: None,
                        tool_calls: Some(calls),
                    },
                    "tool_calls",
                ),
                None => (
                    AssistantMessage {
                        role: "assistant",
                        content: Some(text),
                        tool_calls: None,
                    },
                    finish_reason(done.finish_reason),
                ),
            };
            Choice {
                index,
                message,
                logprobs: logprobs(lp),
                finish_reason: finish,
            }
        })
        .collect();
    let body = ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model,
        choices,
        usage,
        dms,
    };
    Ok(axum::Json(body).into_response())
}

/// Makes the chunks of one streamed answer (chat or text completion).
struct Chunks {
    id: String,
    created: u64,
    model: String,
    shape: Shape,
}

impl Chunks {
    /// A chunk of choice `index` adding `delta` (its text only, for completions).
    fn chunk(
        &self,
        index: usize,
        delta: Delta,
        logprobs: Option<Logprobs>,
        finish: Option<&'static str>,
    ) -> SseEvent {
        if self.shape == Shape::Text {
            let choice = TextChoice {
                index,
                text: delta.content.unwrap_or_default(),
                logprobs,
                finish_reason: finish,
            };
            return self.text(vec![choice], None, None);
        }
        let choice = ChunkChoice {
            index,
            delta,
            logprobs,
            finish_reason: finish,
        };
        self.chat(vec![choice], None, None)
    }

    fn chat(
        &self,
        choices: Vec<ChunkChoice>,
        usage: Option<Usage>,
        dms: Option<crate::engine::DmsReport>,
    ) -> SseEvent {
        let chunk = ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            dms,
        };
        json_event(&chunk)
    }

    fn text(
        &self,
        choices: Vec<TextChoice>,
        usage: Option<Usage>,
        dms: Option<crate::engine::DmsReport>,
    ) -> SseEvent {
        let chunk = TextCompletion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            dms,
        };
        json_event(&chunk)
    }

    /// More text of choice `index`.
    fn content(&self, index: usize, text: String) -> SseEvent {
        let delta = Delta {
            content: Some(text),
            ..Delta::default()
        };
        self.chunk(index, delta, None, None)
    }

    /// The last chunk of choice `index`: its finish reason and what DMS decided.
    fn last(&self, index: usize, finish: &'static str, done: &Done) -> SseEvent {
        let dms = Some(done.dms.clone());
        if self.shape == Shape::Text {
            let choice = TextChoice {
                index,
                text: String::new(),
                logprobs: None,
                finish_reason: Some(finish),
            };
            return self.text(vec![choice], None, dms);
        }
        let choice = ChunkChoice {
            index,
            delta: Delta::default(),
            logprobs: None,
            finish_reason: Some(finish),
        };
        self.chat(vec![choice], None, dms)
    }

    /// The closing chunk with the usage and no choices.
    fn usage(&self, usage: Usage) -> SseEvent {
        match self.shape {
            Shape::Text => self.text(Vec::new(), Some(usage), None),
            Shape::Chat => self.chat(Vec::new(), Some(usage), None),
        }
    }

    /// Choice `index`'s tool calls, as OpenAI streams them: each call's id and name with empty
    /// arguments, then its arguments.
    fn tool_calls(&self, index: usize, calls: Vec<ToolCall>) -> Vec<SseEvent> {
        let delta = |part: ToolCallDelta| Delta {
            tool_calls: Some(vec![part]),
            ..Delta::default()
        };
        let mut out = Vec::with_capacity(2 * calls.len());
        for (k, call) in calls.into_iter().enumerate() {
            let head = ToolCallDelta {
                index: k,
                id: Some(call.id),
                kind: Some(call.kind),
                function: FunctionDelta {
                    name: Some(call.function.name),
                    arguments: String::new(),
                },
            };
            let arguments = ToolCallDelta {
                index: k,
                id: None,
                kind: None,
                function: FunctionDelta {
                    name: None,
                    arguments: call.function.arguments,
                },
            };
            out.push(self.chunk(index, delta(head), None, None));
            out.push(self.chunk(index, delta(arguments), None, None));
        }
        out
    }
}

fn json_event(value: &impl serde::Serialize) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_default())
}

/// A streamed choice's text while it may still be a tool call.
#[derive(Default)]
struct Held {
    text: String,
    /// Still holding: the request has tools and the text may be a call.
    holding: bool,
}

/// Streams the choices as OpenAI chunks over server-sent events, each chunk naming its choice's
/// `index`. Dropping the connection drops the engine's event streams, which cancels the
/// generations. The stream starts only once the engine has accepted every choice (its first
/// event), so that a request it refuses (a bad image, a prompt longer than the context) is a
/// plain HTTP error, not an error inside a 200.
pub async fn stream(
    state: &AppState,
    request: GenerateRequest,
    reply: Reply,
) -> Result<Response, ApiError> {
    let n = reply.n;
    let mut started = Vec::with_capacity(n);
    for mut events in submit_all(state, &request, n)? {
        let first = match events.recv().await {
            Some(Event::Error(e)) => return Err(engine_error(e, &reply.image_params)),
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
    let chunks = Chunks {
        id: reply.shape.id(),
        created: now(),
        model: reply.model,
        shape: reply.shape,
    };
    let tools = reply.tools;
    // `auto` shows text as soon as it cannot be a call; a required call is held to the end.
    let required = tools.as_ref().is_some_and(|t| t.choice != ToolChoice::Auto);
    let include_usage = reply.include_usage;
    tokio::spawn(async move {
        if chunks.shape == Shape::Chat {
            for index in 0..n {
                let first = Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    tool_calls: None,
                };
                if tx
                    .send(Ok(chunks.chunk(index, first, None, None)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let mut held: Vec<Held> = (0..n)
            .map(|_| Held {
                text: String::new(),
                holding: tools.is_some(),
            })
            .collect();
        let mut done: Vec<Option<Box<Done>>> = (0..n).map(|_| None).collect();
        let mut ended = 0; // choices whose Done or Error arrived (else the engine died: say so)
        let mut failed = false;
        while let Some((index, event)) = merged.recv().await {
            let out = match event {
                Some(Event::Text(t)) => {
                    let h = &mut held[index];
                    if !h.holding {
                        vec![chunks.content(index, t)]
                    } else {
                        h.text.push_str(&t);
                        if required || may_be_call(&h.text) {
                            Vec::new()
                        } else {
                            h.holding = false;
                            vec![chunks.content(index, std::mem::take(&mut h.text))]
                        }
                    }
                }
                Some(Event::Logprob(lp)) => {
                    let lp = Logprobs {
                        content: vec![LogprobEntry::from(&*lp)],
                    };
                    vec![chunks.chunk(index, Delta::default(), Some(lp), None)]
                }
                Some(Event::Error(e)) => {
                    ended += 1;
                    failed = true;
                    vec![SseEvent::default().data(ApiError::from(e).body().to_string())]
                }
                Some(Event::Done(d)) => {
                    ended += 1;
                    let text = std::mem::take(&mut held[index].text);
                    let mut out = Vec::new();
                    let mut finish = finish_reason(d.finish_reason);
                    match calls_in(tools.as_ref(), &text) {
                        Some(calls) => {
                            out = chunks.tool_calls(index, calls);
                            finish = "tool_calls";
                        }
                        None if !text.is_empty() => out.push(chunks.content(index, text)),
                        None => {}
                    }
                    out.push(chunks.last(index, finish, &d));
                    done[index] = Some(d);
                    out
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
            let error = ApiError::internal().body().to_string();
            let _ = tx.send(Ok(SseEvent::default().data(error))).await;
        } else if include_usage && !failed {
            let all: Vec<&Done> = done.iter().flatten().map(|d| &**d).collect();
            let _ = tx.send(Ok(chunks.usage(total_usage(&all)))).await;
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}
