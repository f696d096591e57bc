//! OpenAI wire types (the subset we serve), as typed serde enums. Unknown top-level fields
//! (other servers' extensions) are ignored; known fields with a wrong type fail to parse.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The body of `POST /v1/chat/completions` (with `messages`) and `POST /v1/completions` (with
/// `prompt`): one struct, so that a field of the wrong type is always reported by name.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationRequest {
    /// Model name (absent, empty, or the loaded model's id).
    #[serde(default)]
    pub model: Option<String>,
    /// Chat: the conversation.
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// Completions: the prompt (a string, or a list holding one string).
    #[serde(default)]
    pub prompt: Option<StopSequences>,
    /// Chat: a flag; completions: the number of alternatives.
    #[serde(default)]
    pub logprobs: Option<LogprobsField>,
    /// Chat: alternatives per token with `logprobs` (0-20).
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    /// Our extension: how modality weights are chosen.
    #[serde(default)]
    pub dms: Option<DmsRequest>,
    /// Deprecated name of `max_completion_tokens`.
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// Maximum tokens to generate.
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature (0 = greedy).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens (extension used by llama.cpp and others).
    #[serde(default)]
    pub top_k: Option<i32>,
    /// Min-p sampling (extension).
    #[serde(default)]
    pub min_p: Option<f32>,
    /// Sampling seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stop string(s).
    #[serde(default)]
    pub stop: Option<StopSequences>,
    /// OpenAI presence penalty.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Token id (as a string) -> bias added to its logit, in [-100, 100] (-100 keeps the token
    /// out, 100 all but forces it).
    #[serde(default)]
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// llama.cpp's repetition penalty (1 = off).
    #[serde(default)]
    pub repeat_penalty: Option<f32>,
    /// How many recent tokens the penalties look at (0 = none, -1 = the whole context).
    #[serde(default)]
    pub repeat_last_n: Option<i32>,
    /// Locally typical sampling mass (1 = off).
    #[serde(default)]
    pub typical_p: Option<f32>,
    /// OpenAI frequency penalty.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Number of choices (only 1 is supported).
    #[serde(default)]
    pub n: Option<i64>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Never stop at an end-of-generation token (llama.cpp's extension; for benchmarks).
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    /// Structured output.
    #[serde(default)]
    pub response_format: Option<ResponseFormatRequest>,
    /// Chat: functions the model may call.
    #[serde(default)]
    pub tools: Option<Vec<ToolSpec>>,
    /// Chat: `none`, `auto` (the default with tools), `required` or a named function.
    #[serde(default)]
    pub tool_choice: Option<ToolChoiceField>,
    /// Chat: whether one answer may make several calls (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
}

/// `logprobs`: a flag in the chat API, a count in the legacy completions API.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum LogprobsField {
    /// Chat: return log-probabilities (with `top_logprobs` alternatives).
    Flag(bool),
    /// Completions: number of alternatives.
    Count(i64),
}
/// `response_format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormatRequest {
    /// Free text (no constraint).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// `{"name", "schema", "strict"}`.
        json_schema: JsonSchemaSpec,
    },
}

/// The `json_schema` object of `response_format`.
#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaSpec {
    /// Schema name (informational).
    #[serde(default)]
    pub name: Option<String>,
    /// The JSON schema (absent: any JSON object).
    #[serde(default)]
    pub schema: Option<Value>,
    /// OpenAI's strict flag (our grammar is always strict).
    #[serde(default)]
    pub strict: Option<bool>,
}

/// One string or a list of strings (`stop`, `prompt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopSequences {
    /// One stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

impl StopSequences {
    /// The stop strings as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSequences::One(s) => vec![s],
            StopSequences::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with `usage` and empty `choices`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The `dms` extension of a request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmsRequest {
    /// `off`, `fixed`, `rule` or `learned`.
    #[serde(default)]
    pub mode: Option<String>,
    /// A scheduler plugin by name.
    #[serde(default)]
    pub scheduler: Option<String>,
    /// Fixed weights: `{"images": [...], "text": x}`.
    #[serde(default)]
    pub weights: Option<crate::dms::ModalityWeights>,
    /// Monte-Carlo dropout passes.
    #[serde(default)]
    pub mc_samples: Option<i64>,
    /// Dropout rate.
    #[serde(default)]
    pub dropout: Option<f32>,
}

/// Message author.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System instructions.
    System,
    /// OpenAI's newer name for system instructions.
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's result, answering an assistant's call (`tool_call_id`).
    Tool,
}

/// One message.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// Author.
    pub role: Role,
    /// Text or a list of parts (absent or null is empty).
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// Assistant messages: the calls it made.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// Tool messages: the call answered.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// Message content: a string or typed parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Text and image parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// `{"type": "text", "text": ..., "dms_role": ...}`.
    Text {
        /// The text.
        text: String,
        /// Our extension, user messages only: `"question"` (never weighted) or `"evidence"`
        /// (scaled by the text weight); absent or null splits the text automatically. Kept as
        /// raw JSON so that any bad value is refused naming this field.
        #[serde(default)]
        dms_role: Option<Value>,
    },
    /// `{"type": "image_url", "image_url": {"url": ...}}`.
    ImageUrl {
        /// Where the image is.
        image_url: ImageUrl,
    },
}

/// An image reference.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageUrl {
    /// `data:` URI, `file://` path or http(s) URL.
    pub url: String,
    /// OpenAI's detail hint (ignored).
    #[serde(default)]
    pub detail: Option<String>,
}

/// `GET /v1/models` entry.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    /// Model name (the first `--alias`, else the model file's).
    pub id: String,
    /// The other names it answers to: further aliases and the model file's name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds (server start).
    pub created: u64,
    /// `llama-dms`.
    pub owned_by: &'static str,
    /// Whether images are accepted.
    pub vision: bool,
    /// Context window.
    pub context_length: usize,
    /// llama.cpp's description.
    pub description: String,
}

/// `GET /props`: what the server runs, for clients that adapt to it (llama-server has one).
#[derive(Debug, Clone, Serialize)]
pub struct Props {
    /// The name responses report (the first `--alias`, else the model file's).
    pub model: String,
    /// The model file's name (without `.gguf`).
    pub model_file: String,
    /// Every name a request's `model` may give when names are strict.
    pub aliases: Vec<String>,
    /// Whether other names are refused (`--strict-model-name`).
    pub strict_model_name: bool,
    /// llama.cpp's description (architecture, size, quantisation).
    pub description: String,
    /// Text architecture (`llama`, `qwen2vl`, `gemma3`, ...).
    pub architecture: String,
    /// Context window of each request.
    pub n_ctx: usize,
    /// Vocabulary size (the range of `logit_bias` ids).
    pub n_vocab: usize,
    /// Hidden width.
    pub n_embd: usize,
    /// Requests generated at once.
    pub total_slots: usize,
    /// The GGUF's chat template, if it has one.
    pub chat_template: Option<String>,
    /// What inputs the model takes.
    pub modalities: Modalities,
    /// DMS: the mode of a request that names none, and the schedulers it may name.
    pub dms: DmsProps,
    /// llama-dms version.
    pub version: &'static str,
}

/// `Props::modalities`.
#[derive(Debug, Clone, Serialize)]
pub struct Modalities {
    /// Images accepted.
    pub vision: bool,
    /// Audio accepted (never, yet).
    pub audio: bool,
}

/// `Props::dms`.
#[derive(Debug, Clone, Serialize)]
pub struct DmsProps {
    /// Mode of a request whose `dms` names none (`serve --dms`).
    pub default_mode: crate::engine::DmsMode,
    /// Scheduler plugins a request's `dms.scheduler` may name.
    pub schedulers: Vec<String>,
}

/// `POST /tokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    /// The text.
    pub content: String,
    /// Add the model's BOS token where its vocabulary asks for one (default false).
    #[serde(default)]
    pub add_special: bool,
    /// Read control-token text (`<|im_start|>`) as those tokens (default true).
    #[serde(default = "yes")]
    pub parse_special: bool,
    /// Answer `{id, piece}` objects instead of bare ids.
    #[serde(default)]
    pub with_pieces: bool,
}

fn yes() -> bool {
    true
}

/// `POST /tokenize`'s answer: ids, or ids with their text.
#[derive(Debug, Clone, Serialize)]
pub struct TokenizeResponse {
    /// The tokens.
    pub tokens: Vec<TokenEntry>,
}

/// One token of [`TokenizeResponse`].
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum TokenEntry {
    /// A bare id.
    Id(i32),
    /// An id with its text (lossy where a piece is part of a UTF-8 sequence).
    WithPiece {
        /// Token id.
        id: i32,
        /// Its text.
        piece: String,
    },
}

/// `POST /detokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    /// Token ids.
    pub tokens: Vec<i64>,
}

/// `POST /detokenize`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct DetokenizeResponse {
    /// The text.
    pub content: String,
}

/// One entry of `tools`.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolSpec {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionSpec,
}

/// A declared function.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionSpec {
    /// Its name.
    pub name: String,
    /// What it does (shown to the model).
    #[serde(default)]
    pub description: Option<String>,
    /// A JSON schema of its arguments (absent: any object).
    #[serde(default)]
    pub parameters: Option<Value>,
    /// OpenAI's strict flag (a constrained call is always strict here).
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"` or `{"type": "function", "function":
/// {"name": ...}}`, kept raw so that any bad value is refused naming the field.
pub type ToolChoiceField = Value;

/// A function call in an assistant message of the history.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCallIn {
    /// The call's id (what the `tool` message answering it names).
    #[serde(default)]
    pub id: Option<String>,
    /// The function called.
    pub function: FunctionCallIn,
}

/// The function and arguments of [`ToolCallIn`].
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCallIn {
    /// Function name.
    pub name: String,
    /// Its arguments, as a JSON text.
    #[serde(default)]
    pub arguments: String,
}
