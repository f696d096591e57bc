//! What the OpenAI endpoints answer, as types the API layer owns: completions, stream chunks,
//! tool calls and log-probabilities. Engine types never reach the wire directly, so an engine
//! change cannot silently change what clients read (`dms` is our extension, reported as the
//! engine measured it).

use serde::Serialize;

use crate::engine::{DmsReport, FinishReason, TokenLogprob};

/// Token counts in the OpenAI shape.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// Prompt tokens (text + image).
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Sum of both.
    pub total_tokens: usize,
    /// `{"cached_tokens": n}`: prompt tokens reused from the slot's previous request.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// Details of the prompt tokens.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV state was reused.
    pub cached_tokens: usize,
}

/// A non-streaming chat answer.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// The choices, `index` 0 to `n - 1`.
    pub choices: Vec<Choice>,
    /// Token counts.
    pub usage: Usage,
    /// What DMS decided.
    pub dms: DmsReport,
}

/// A non-streaming chat choice.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// Which choice.
    pub index: usize,
    /// The answer.
    pub message: AssistantMessage,
    /// Token log-probabilities (`null` unless asked for).
    pub logprobs: Option<Logprobs>,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: &'static str,
}

/// The assistant's message.
#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The text (`null` when the answer is tool calls).
    pub content: Option<String>,
    /// The tool calls, when the answer is some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// One function call of an answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    /// `call_...`, for the `tool` message that answers it.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The function and its arguments.
    pub function: FunctionCall,
}

/// The function of a [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCall {
    /// Which tool.
    pub name: String,
    /// Its arguments, as a JSON text.
    pub arguments: String,
}

/// `logprobs` of a chat choice or chunk: one entry per token.
#[derive(Debug, Clone, Serialize)]
pub struct Logprobs {
    /// The tokens.
    pub content: Vec<LogprobEntry>,
}

/// One token's log-probability and its most likely alternatives.
#[derive(Debug, Clone, Serialize)]
pub struct LogprobEntry {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f32,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The alternatives asked for (`top_logprobs`).
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative of a [`LogprobEntry`].
#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f32,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl From<&TokenLogprob> for LogprobEntry {
    fn from(lp: &TokenLogprob) -> Self {
        Self {
            token: lp.token.clone(),
            logprob: lp.logprob,
            bytes: lp.bytes.clone(),
            top_logprobs: lp
                .top
                .iter()
                .map(|(token, bytes, logprob)| TopLogprob {
                    token: token.clone(),
                    logprob: *logprob,
                    bytes: bytes.clone(),
                })
                .collect(),
        }
    }
}

/// One server-sent chunk of a streamed chat answer (`chat.completion.chunk`).
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    /// The same id on every chunk of an answer.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// One choice's delta (none on the closing usage chunk).
    pub choices: Vec<ChunkChoice>,
    /// Token counts: the closing chunk with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// What DMS decided: on each choice's last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dms: Option<DmsReport>,
}

/// A choice's part of a [`ChatChunk`].
#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    /// Which choice.
    pub index: usize,
    /// What it adds.
    pub delta: Delta,
    /// The new tokens' log-probabilities, when asked for.
    pub logprobs: Option<Logprobs>,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<&'static str>,
}

/// What a chunk adds to its choice's message.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    /// `assistant`, on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// More text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Tool calls: first each call's id and name with empty arguments, then its arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A streamed part of a tool call.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDelta {
    /// Which call of the choice (0, 1, ...).
    pub index: usize,
    /// The call's id (its first part only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function` (its first part only).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The name (first part) and the arguments' text.
    pub function: FunctionDelta,
}

/// The function of a [`ToolCallDelta`].
#[derive(Debug, Clone, Serialize)]
pub struct FunctionDelta {
    /// The name (first part only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More of the arguments' text.
    pub arguments: String,
}

/// A `/v1/completions` answer, whole or one streamed chunk (`text_completion`).
#[derive(Debug, Clone, Serialize)]
pub struct TextCompletion {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// The choices (one per chunk when streamed; none on the closing usage chunk).
    pub choices: Vec<TextChoice>,
    /// Token counts (whole answers, and the closing chunk with `include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// What DMS decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dms: Option<DmsReport>,
}

/// One choice of a [`TextCompletion`].
#[derive(Debug, Clone, Serialize)]
pub struct TextChoice {
    /// Which choice.
    pub index: usize,
    /// The text (so far, when streamed).
    pub text: String,
    /// Token log-probabilities, when asked for.
    pub logprobs: Option<Logprobs>,
    /// `stop` or `length`, at the end.
    pub finish_reason: Option<&'static str>,
}

/// The OpenAI `finish_reason` string.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}
