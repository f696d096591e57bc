//! `POST /v1/chat/completions` and `/v1/completions`: validation and conversion to an engine
//! request (the answer itself is [`super::respond`]'s).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::{
    ContentPart as EngineContent, DmsMode, DmsSettings, EngineError, GenerateRequest, Message,
    ResponseFormat, Role as EngineRole,
};
use crate::llama::SamplerParams;

use super::error::ApiError;
use super::media::load_image;
use super::response_types::{PromptTokensDetails, Usage};
use super::tools::{self, ToolUse};
use super::types::{
    ContentPart, GenerationRequest, LogprobsField, MessageContent, ResponseFormatRequest, Role,
};
use super::AppState;

/// Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new id `PREFIX` + separator + time and a counter (`chatcmpl-...`, `msg_...`).
pub fn new_id(prefix_and_separator: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix_and_separator}{:x}{:06x}",
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

/// Tokens generated when a request sets no `max_tokens` (nor `max_completion_tokens`), or the
/// context if it is smaller: a runaway answer stops there instead of filling the context.
pub const DEFAULT_MAX_TOKENS: usize = 2048;
/// Most `stop` sequences a request may give.
pub const MAX_STOP_SEQUENCES: usize = 16;
/// Longest `stop` sequence in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Most choices (`n`) a request may ask for; a server also caps them at its `--parallel`.
pub const MAX_CHOICES: usize = 16;
/// Most `logit_bias` entries a request may give.
pub const MAX_LOGIT_BIAS: usize = 1024;

/// The `logit_bias` map as token ids and biases: keys must be token ids, values in [-100, 100].
/// (Ids beyond the vocabulary are checked by [`check_logit_bias_ids`].)
fn parse_logit_bias(
    map: Option<&std::collections::BTreeMap<String, f32>>,
) -> Result<Vec<(i32, f32)>, ApiError> {
    let Some(map) = map else {
        return Ok(Vec::new());
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::bad_param(
            "logit_bias",
            format!("logit_bias takes at most {MAX_LOGIT_BIAS} entries"),
        ));
    }
    map.iter()
        .map(|(k, &v)| {
            let id = k.parse::<i32>().ok().filter(|id| *id >= 0).ok_or_else(|| {
                ApiError::bad_param("logit_bias", "logit_bias keys must be token ids")
            })?;
            if !(-100.0..=100.0).contains(&v) {
                return Err(ApiError::bad_param(
                    "logit_bias",
                    "logit_bias values must be in [-100, 100]",
                ));
            }
            Ok((id, v))
        })
        .collect()
}

/// The number of choices asked for (`n`, 1 by default), refused above the server's `slots`
/// (requests generated at once), since the choices are generated side by side.
pub fn choices_asked(f: &GenerationRequest, slots: usize) -> Result<usize, ApiError> {
    let n = f.n.unwrap_or(1).max(1) as usize;
    if n > slots {
        return Err(ApiError::bad_param(
            "n",
            format!("n may be at most {slots} here (the server's --parallel)"),
        ));
    }
    Ok(n)
}

/// Refuses `logit_bias` ids the model's vocabulary (`n_vocab` tokens) does not have.
pub fn check_logit_bias_ids(f: &GenerationRequest, n_vocab: usize) -> Result<(), ApiError> {
    let too_big = f
        .logit_bias
        .iter()
        .flat_map(|m| m.keys())
        .filter_map(|k| k.parse::<usize>().ok())
        .find(|&id| id >= n_vocab);
    match too_big {
        Some(id) => Err(ApiError::bad_param(
            "logit_bias",
            format!("token {id} is not in the vocabulary ({n_vocab} tokens)"),
        )),
        None => Ok(()),
    }
}

/// Checks the shared sampling fields and turns them into a request without messages.
pub fn base_request(f: &GenerationRequest, n_ctx: usize) -> Result<GenerateRequest, ApiError> {
    in_range(f.n, 1, MAX_CHOICES as i64, "n")?;
    in_range(f.temperature, 0.0, 2.0, "temperature")?;
    in_range(f.top_p, 0.0, 1.0, "top_p")?;
    in_range(f.min_p, 0.0, 1.0, "min_p")?;
    in_range(f.top_k, 0, i32::MAX, "top_k")?;
    in_range(f.presence_penalty, -2.0, 2.0, "presence_penalty")?;
    in_range(f.frequency_penalty, -2.0, 2.0, "frequency_penalty")?;
    in_range(f.repeat_penalty, 0.0, 10.0, "repeat_penalty")?;
    in_range(f.repeat_last_n, -1, n_ctx as i32, "repeat_last_n")?;
    in_range(f.typical_p, 0.0, 1.0, "typical_p")?;
    let stop = f.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > MAX_STOP_SEQUENCES
        || stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::bad_param(
            "stop",
            format!(
                "stop takes at most {MAX_STOP_SEQUENCES} non-empty strings of at most {MAX_STOP_BYTES} bytes"
            ),
        ));
    }
    let logit_bias = parse_logit_bias(f.logit_bias.as_ref())?;
    let (max_tokens, max_param) = match f.max_completion_tokens {
        Some(n) => (Some(n), "max_completion_tokens"),
        None => (f.max_tokens, "max_tokens"),
    };
    in_range(max_tokens, 1, n_ctx as i64, max_param)?;
    let defaults = SamplerParams::default();
    let sampling = SamplerParams {
        temperature: f.temperature.unwrap_or(defaults.temperature),
        top_k: f.top_k.unwrap_or(defaults.top_k),
        top_p: f.top_p.unwrap_or(defaults.top_p),
        min_p: f.min_p.unwrap_or(defaults.min_p),
        presence_penalty: f.presence_penalty.unwrap_or(0.0),
        frequency_penalty: f.frequency_penalty.unwrap_or(0.0),
        repeat_penalty: f.repeat_penalty.unwrap_or(defaults.repeat_penalty),
        penalty_last_n: f.repeat_last_n.unwrap_or(defaults.penalty_last_n),
        typical_p: f.typical_p.unwrap_or(defaults.typical_p),
        logit_bias,
        seed: f.seed.map_or_else(rand_seed, |s| s as u32),
        ignore_eos: f.ignore_eos.unwrap_or(false),
        ..defaults
    };
    let response_format = match f.response_format.clone() {
        None | Some(ResponseFormatRequest::Text) => None,
        Some(ResponseFormatRequest::JsonObject) => Some(ResponseFormat::JsonObject),
        Some(ResponseFormatRequest::JsonSchema { json_schema }) => Some(match json_schema.schema {
            Some(schema) => ResponseFormat::JsonSchema(schema),
            None => ResponseFormat::JsonObject,
        }),
    };
    // Convert the schema now, so that a bad one is refused before the request is queued.
    if let Some(format) = &response_format {
        format
            .grammar()
            .map_err(|e| ApiError::bad_param("response_format", e.to_string()))?;
    }
    Ok(GenerateRequest {
        sampling,
        max_tokens: max_tokens.map_or(DEFAULT_MAX_TOKENS.min(n_ctx), |n| n as usize),
        stop,
        response_format,
        ..GenerateRequest::new(Vec::new())
    })
}

/// A chat request, checked and converted: the engine's request, the tools (if the model may
/// call any) and the request field of each image in the engine's order (for errors).
#[derive(Debug)]
pub struct ChatRequest {
    /// What the engine runs.
    pub request: GenerateRequest,
    /// How the answer is read back as tool calls.
    pub tools: Option<ToolUse>,
    /// `messages[i].content[j].image_url` of each image, in order.
    pub image_params: Vec<String>,
}

/// Turns a chat request into an engine request (checking every field); a request with tools
/// is refused here (see [`to_chat_request`]).
pub fn to_engine_request(
    req: GenerationRequest,
    state: &AppState,
    n_ctx: usize,
) -> Result<GenerateRequest, ApiError> {
    let chat = to_chat_request(req, state, n_ctx)?;
    match chat.tools {
        None => Ok(chat.request),
        Some(_) => Err(ApiError::bad_param(
            "tools",
            "tools are only served by /v1/chat/completions",
        )),
    }
}

/// Turns a chat request with its tools into an engine request, checking every field.
pub fn to_chat_request(
    mut req: GenerationRequest,
    state: &AppState,
    n_ctx: usize,
) -> Result<ChatRequest, ApiError> {
    let chat = req.messages.take().unwrap_or_default();
    if chat.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    in_range(req.top_logprobs, 0, 20, "top_logprobs")?;
    let tools = tools::parse(
        req.tools.take(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )?;
    let mut request = base_request(&req, n_ctx)?;
    match req.logprobs {
        Some(LogprobsField::Flag(true)) => {
            request.top_logprobs = Some(req.top_logprobs.unwrap_or(0) as usize)
        }
        Some(LogprobsField::Count(_)) => {
            return Err(ApiError::bad_param(
                "logprobs",
                "logprobs is a boolean in the chat API",
            ))
        }
        _ => {}
    }
    let mut messages: Vec<Message> = Vec::with_capacity(chat.len() + 1);
    let mut image_params = Vec::new();
    // Function names by call id, from the assistants' calls so far.
    let mut called: Vec<(String, String)> = Vec::new();
    let mut after_tool = false;
    for (i, m) in chat.into_iter().enumerate() {
        if m.tool_calls.is_some() && m.role != Role::Assistant {
            return Err(ApiError::bad_param(
                &format!("messages[{i}].tool_calls"),
                "only assistant messages make tool calls",
            ));
        }
        if m.role == Role::Tool {
            let result = tool_message_text(m.content, m.tool_call_id.as_deref(), &called, i)?;
            match messages.last_mut() {
                // Results of one turn's calls go together, in one user turn.
                Some(last) if after_tool => last
                    .content
                    .push(EngineContent::Text(format!("\n\n{result}"))),
                _ => messages.push(Message::text(EngineRole::User, result)),
            }
            after_tool = true;
            continue;
        }
        after_tool = false;
        let role = match m.role {
            Role::System | Role::Developer => EngineRole::System,
            Role::User | Role::Tool => EngineRole::User,
            Role::Assistant => EngineRole::Assistant,
        };
        let mut content = match m.content {
            None => Vec::new(),
            Some(MessageContent::Text(t)) => vec![EngineContent::Text(t)],
            Some(MessageContent::Parts(parts)) => {
                let mut out = Vec::with_capacity(parts.len());
                for (j, part) in parts.into_iter().enumerate() {
                    out.push(match part {
                        ContentPart::Text { text, dms_role } => {
                            text_part(text, dms_role.as_ref(), m.role, i, j)?
                        }
                        ContentPart::ImageUrl { image_url } => {
                            if image_params.len() >= state.limits.max_images {
                                return Err(ApiError::bad_param(
                                    "messages",
                                    format!(
                                        "too many images (at most {})",
                                        state.limits.max_images
                                    ),
                                ));
                            }
                            let param = format!("messages[{i}].content[{j}].image_url");
                            let image = load_image(&image_url.url, &state.limits.media, &param)?;
                            image_params.push(param);
                            EngineContent::Image(image)
                        }
                    });
                }
                out
            }
        };
        if let Some(calls) = m.tool_calls.filter(|c| !c.is_empty()) {
            called.extend(
                calls
                    .iter()
                    .filter_map(|c| Some((c.id.clone()?, c.function.name.clone()))),
            );
            let sep = if content.is_empty() { "" } else { "\n" };
            let calls = tools::history_calls(&calls);
            content.push(EngineContent::Text(format!("{sep}{calls}")));
        }
        messages.push(Message { role, content });
    }
    if let Some(tools) = &tools {
        add_tools(&mut request, &mut messages, tools)?;
    }
    let n_images = image_params.len();
    request.messages = messages;
    request.dms = dms_settings(req.dms, n_images, state.default_dms)?;
    check_scheduler(&request.dms, state)?;
    Ok(ChatRequest {
        request,
        tools,
        image_params,
    })
}

/// The text of `tool` message `i`: its result, naming the call it answers.
fn tool_message_text(
    content: Option<MessageContent>,
    call_id: Option<&str>,
    called: &[(String, String)],
    i: usize,
) -> Result<String, ApiError> {
    let Some(call_id) = call_id else {
        return Err(ApiError::bad_param(
            &format!("messages[{i}].tool_call_id"),
            "a tool message needs the tool_call_id it answers",
        ));
    };
    let result = match content {
        None => String::new(),
        Some(MessageContent::Text(t)) => t,
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.into_iter().enumerate() {
                match part {
                    ContentPart::Text { text: t, .. } => text.push_str(&t),
                    ContentPart::ImageUrl { .. } => {
                        return Err(ApiError::bad_param(
                            &format!("messages[{i}].content[{j}]"),
                            "a tool message holds text only",
                        ))
                    }
                }
            }
            text
        }
    };
    let name = called
        .iter()
        .rev()
        .find(|(id, _)| id == call_id)
        .map(|(_, name)| name.as_str());
    Ok(tools::tool_result(name, call_id, &result))
}

/// Tells the model about `tools` (in the system message, which is added first if there is
/// none) and, when a call is required, constrains the answer to one.
fn add_tools(
    request: &mut GenerateRequest,
    messages: &mut Vec<Message>,
    tools: &ToolUse,
) -> Result<(), ApiError> {
    let instruction = tools.instruction();
    match messages.first_mut() {
        Some(first) if first.role == EngineRole::System => first
            .content
            .push(EngineContent::Text(format!("\n\n{instruction}"))),
        _ => messages.insert(0, Message::text(EngineRole::System, instruction)),
    }
    let Some(schema) = tools.reply_schema() else {
        return Ok(());
    };
    if request.response_format.is_some() {
        return Err(ApiError::bad_param(
            "response_format",
            "response_format cannot be combined with a required tool call",
        ));
    }
    let format = ResponseFormat::JsonSchema(schema);
    format
        .grammar()
        .map_err(|e| ApiError::bad_param("tools", e.to_string()))?;
    request.response_format = Some(format);
    Ok(())
}

/// A text part as the engine's part: `dms_role` `"question"` or `"evidence"` marks it (user
/// messages only), absent or null leaves the split to the engine's rule.
fn text_part(
    text: String,
    dms_role: Option<&serde_json::Value>,
    role: Role,
    i: usize,
    j: usize,
) -> Result<EngineContent, ApiError> {
    let Some(mark) = dms_role.filter(|v| !v.is_null()) else {
        return Ok(EngineContent::Text(text));
    };
    let param = format!("messages[{i}].content[{j}].dms_role");
    if role != Role::User {
        return Err(ApiError::bad_param(
            &param,
            "dms_role is only accepted in user messages",
        ));
    }
    match mark.as_str() {
        Some("question") => Ok(EngineContent::Question(text)),
        Some("evidence") => Ok(EngineContent::Evidence(text)),
        _ => {
            // Echo at most a short prefix of what the client sent.
            let shown: String = mark.to_string().chars().take(40).collect();
            Err(ApiError::bad_param(
                &param,
                format!("unknown dms_role {shown} (question, evidence)"),
            ))
        }
    }
}

/// Refuses a scheduler the engine does not have, naming `dms.scheduler` / `dms.mode`.
fn check_scheduler(dms: &DmsSettings, state: &AppState) -> Result<(), ApiError> {
    if !matches!(dms.mode, DmsMode::Rule | DmsMode::Learned) {
        return Ok(());
    }
    let registry = state.engine()?.schedulers();
    match &dms.scheduler {
        Some(name) if registry.get(name).is_none() => Err(ApiError::bad_param(
            "dms.scheduler",
            format!(
                "unknown scheduler {name:?}; available: {}",
                registry.names().join(", ")
            ),
        )),
        None if dms.mode == DmsMode::Learned && registry.default_learned().is_none() => {
            Err(ApiError::bad_param(
                "dms.mode",
                "no learned scheduler plugin is loaded on this server",
            ))
        }
        _ => Ok(()),
    }
}

/// The request field of each image, in the engine's order (`messages[i].content[j].image_url`;
/// message parts map one to one onto the engine's).
pub(super) fn image_params(request: &GenerateRequest) -> Vec<String> {
    let mut out = Vec::new();
    for (i, m) in request.messages.iter().enumerate() {
        for (j, part) in m.content.iter().enumerate() {
            if matches!(part, EngineContent::Image(_)) {
                out.push(format!("messages[{i}].content[{j}].image_url"));
            }
        }
    }
    out
}

/// An engine error as an HTTP error, naming the image at fault when there is one.
pub(super) fn engine_error(e: EngineError, images: &[String]) -> ApiError {
    let param = match &e {
        EngineError::Image { index, .. } => images.get(*index).cloned(),
        _ => None,
    };
    let mut error = ApiError::from(e);
    if error.status == axum::http::StatusCode::BAD_REQUEST && param.is_some() {
        error.param = param;
    }
    error
}

fn rand_seed() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// The request's `dms` object as engine settings. A request without a mode gets `default_mode`
/// (`serve --dms`), except that weights without a mode mean mode `fixed`.
fn dms_settings(
    dms: Option<super::types::DmsRequest>,
    n_images: usize,
    default_mode: DmsMode,
) -> Result<DmsSettings, ApiError> {
    let Some(d) = dms else {
        return Ok(DmsSettings {
            mode: default_mode,
            ..DmsSettings::default()
        });
    };
    let mode = match d.mode.as_deref() {
        None if d.weights.is_some() => DmsMode::Fixed,
        None => default_mode,
        Some("off") => DmsMode::Off,
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
    } else if let Some(w) = &d.weights {
        // Unused outside mode fixed, but still not accepted when they make no sense.
        if w.images
            .iter()
            .chain([&w.text])
            .any(|v| !v.is_finite() || *v < 0.0)
        {
            return Err(ApiError::bad_param(
                "dms.weights",
                "weights must be finite and >= 0",
            ));
        }
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

/// Which OpenAI endpoint an answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `chat.completion` objects with `message` / `delta`.
    Chat,
    /// `text_completion` objects with `text`.
    Text,
}

impl Shape {
    pub(super) fn id(self) -> String {
        let prefix = if self == Shape::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        };
        new_id(&format!("{prefix}-"))
    }
}

/// The `usage` object.
pub(super) fn usage_of(u: crate::engine::Usage) -> Usage {
    Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.prompt_tokens + u.completion_tokens,
        prompt_tokens_details: PromptTokensDetails {
            cached_tokens: u.cached_tokens,
        },
    }
}
