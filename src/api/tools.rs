//! Tool calling for chat completions, the same way for every model: the request's `tools`
//! become a system instruction asking for one JSON reply shape, `{"tool_calls": [{"name",
//! "arguments"}]}`; for `tool_choice` `required` or a named function a grammar built from
//! that shape and the tools' JSON schemas constrains the reply, so its arguments always parse;
//! the reply is read back as OpenAI tool calls (Hermes-style `<tool_call>` tags too, which
//! models tuned for tools tend to write). History turns the other way: an assistant's
//! `tool_calls` become that JSON in its message, a `tool` message becomes a user turn that
//! names the call it answers.

use serde_json::{json, Value};

use super::error::ApiError;
use super::response_types::{FunctionCall, ToolCall};
pub use super::types::{FunctionCallIn, FunctionSpec, ToolCallIn, ToolChoiceField, ToolSpec};

/// Most tools a request may declare.
pub const MAX_TOOLS: usize = 128;
/// Longest tool name (OpenAI's limit), made of ASCII letters, digits, `_` and `-`.
pub const MAX_TOOL_NAME: usize = 64;

/// What the model may do with the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Answer in text or call tools.
    Auto,
    /// Call at least one tool.
    Required,
    /// Call this function.
    Function(String),
}

/// A request's tools, checked: what the prompt says, what the grammar allows, what the reply
/// is read as.
#[derive(Debug, Clone)]
pub struct ToolUse {
    tools: Vec<FunctionSpec>,
    /// What the model may do.
    pub choice: ToolChoice,
    /// Whether several calls may come in one reply.
    pub parallel: bool,
}

/// Checks `tools`, `tool_choice` and `parallel_tool_calls`. `None` when there are no tools or
/// the choice is `none` (the request is then answered in text, tools unmentioned).
pub fn parse(
    tools: Option<Vec<ToolSpec>>,
    choice: Option<&ToolChoiceField>,
    parallel: Option<bool>,
) -> Result<Option<ToolUse>, ApiError> {
    let tools = tools.unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::bad_param(
            "tools",
            format!("at most {MAX_TOOLS} tools"),
        ));
    }
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(ApiError::bad_param(
                &format!("tools[{i}].type"),
                "the only tool type is \"function\"",
            ));
        }
        check_name(&t.function.name, &format!("tools[{i}].function.name"))?;
        if tools[..i]
            .iter()
            .any(|o| o.function.name == t.function.name)
        {
            return Err(ApiError::bad_param(
                &format!("tools[{i}].function.name"),
                format!("two tools are named {:?}", t.function.name),
            ));
        }
        if let Some(p) = &t.function.parameters {
            if !p.is_object() {
                return Err(ApiError::bad_param(
                    &format!("tools[{i}].function.parameters"),
                    "parameters must be a JSON schema object",
                ));
            }
            let grammar = crate::engine::ResponseFormat::JsonSchema(p.clone()).grammar();
            if let Err(e) = grammar {
                return Err(ApiError::bad_param(
                    &format!("tools[{i}].function.parameters"),
                    e.to_string(),
                ));
            }
        }
    }
    let choice = match choice.filter(|c| !c.is_null()) {
        None => ToolChoice::Auto,
        Some(c) => match parse_choice(c) {
            Some(None) => return Ok(None),
            Some(Some(choice)) => choice,
            None => {
                return Err(ApiError::bad_param(
                    "tool_choice",
                    "tool_choice is \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                ))
            }
        },
    };
    if tools.is_empty() {
        return match choice {
            ToolChoice::Auto => Ok(None),
            _ => Err(ApiError::bad_param(
                "tool_choice",
                "tool_choice asks for a tool call but the request declares no tools",
            )),
        };
    }
    if let ToolChoice::Function(name) = &choice {
        if !tools.iter().any(|t| &t.function.name == name) {
            let shown: String = name.chars().take(MAX_TOOL_NAME).collect();
            return Err(ApiError::bad_param(
                "tool_choice",
                format!("tool_choice names {shown:?}, which is not among the tools"),
            ));
        }
    }
    Ok(Some(ToolUse {
        tools: tools.into_iter().map(|t| t.function).collect(),
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

/// `Some(None)` for `none`, `Some(Some(choice))` for the others, `None` when malformed.
fn parse_choice(c: &Value) -> Option<Option<ToolChoice>> {
    match c {
        Value::String(s) => match s.as_str() {
            "none" => Some(None),
            "auto" => Some(Some(ToolChoice::Auto)),
            "required" => Some(Some(ToolChoice::Required)),
            _ => None,
        },
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("function")?.get("name")?.as_str()?;
            Some(Some(ToolChoice::Function(name.to_string())))
        }
        _ => None,
    }
}

fn check_name(name: &str, param: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_param(
            param,
            format!("a tool name is 1-{MAX_TOOL_NAME} ASCII letters, digits, '_' or '-'"),
        ))
    }
}

impl ToolUse {
    /// The tools a reply may call: all of them, or the one named by `tool_choice`.
    fn callable(&self) -> impl Iterator<Item = &FunctionSpec> {
        self.tools.iter().filter(|t| match &self.choice {
            ToolChoice::Function(name) => &t.name == name,
            _ => true,
        })
    }

    /// The system instruction that describes the tools and the reply shape.
    pub fn instruction(&self) -> String {
        let listed: Vec<Value> = self
            .tools
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description.clone().unwrap_or_default(),
                    "parameters": t.parameters.clone().unwrap_or_else(|| json!({"type": "object"})),
                })
            })
            .collect();
        let shape = r#"{"tool_calls": [{"name": "<tool name>", "arguments": {<the arguments>}}]}"#;
        let what = match &self.choice {
            ToolChoice::Auto => {
                "If a tool helps, reply with only this JSON and nothing else; otherwise answer \
                 in plain text."
                    .to_string()
            }
            ToolChoice::Required => "You must call a tool: reply with only this JSON.".into(),
            ToolChoice::Function(name) => {
                format!("You must call the tool \"{name}\": reply with only this JSON.")
            }
        };
        let once = matches!(self.choice, ToolChoice::Function(_));
        let several = if self.parallel && !once {
            " List several calls to make them at once."
        } else {
            " Make one call at a time."
        };
        format!(
            "You can call these tools (JSON):\n{}\nTo call tools, reply with JSON of this form:\n{shape}\n{what}{several}",
            Value::Array(listed)
        )
    }

    /// For `required` and a named function: the JSON schema of a reply whose arguments follow
    /// each tool's schema: one call of a named function, one or more of any tool with
    /// `required` (exactly one without parallel calls). `None` for `auto`.
    pub fn reply_schema(&self) -> Option<Value> {
        if self.choice == ToolChoice::Auto {
            return None;
        }
        let calls: Vec<Value> = self
            .callable()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"const": t.name},
                        "arguments": t.parameters.clone().unwrap_or_else(|| json!({"type": "object"})),
                    },
                    "required": ["name", "arguments"],
                })
            })
            .collect();
        let mut list = json!({"type": "array", "items": {"anyOf": calls}, "minItems": 1});
        if !self.parallel || matches!(self.choice, ToolChoice::Function(_)) {
            list["maxItems"] = json!(1);
        }
        Some(json!({
            "type": "object",
            "properties": {"tool_calls": list},
            "required": ["tool_calls"],
        }))
    }

    /// The tool calls in `reply`, if it is one of the shapes models write for them and every
    /// call names a declared tool: `{"tool_calls": [...]}`, one `{"name", "arguments"}` object
    /// (or a list of them), possibly in a Markdown code fence, or `<tool_call>` tags around
    /// such objects. `None` means the reply is plain text.
    pub fn read_calls(&self, reply: &str) -> Option<Vec<ToolCall>> {
        let text = reply.trim();
        let objects: Vec<Value> = if text.contains("<tool_call>") {
            text.split("<tool_call>")
                .skip(1)
                .map(|s| s.split("</tool_call>").next().unwrap_or(s))
                .map(|s| serde_json::from_str::<Value>(s.trim()).ok())
                .collect::<Option<_>>()?
        } else {
            let unfenced = strip_fence(text);
            match serde_json::from_str::<Value>(unfenced).ok()? {
                Value::Object(mut o) => match o.remove("tool_calls") {
                    Some(Value::Array(calls)) => calls,
                    Some(_) => return None,
                    None => vec![Value::Object(o)],
                },
                Value::Array(calls) => calls,
                _ => return None,
            }
        };
        if objects.is_empty() || (!self.parallel && objects.len() > 1) {
            return None;
        }
        objects
            .into_iter()
            .map(|call| {
                // Some models nest the call: {"function": {"name", "arguments"}}.
                let call = call.get("function").cloned().unwrap_or(call);
                let name = call.get("name")?.as_str()?;
                self.callable().find(|t| t.name == name)?;
                let arguments = match call.get("arguments").or_else(|| call.get("parameters")) {
                    None => "{}".to_string(),
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Object(_)) => v.to_string(),
                    Some(_) => return None,
                };
                Some(ToolCall {
                    id: super::chat::new_id("call_"),
                    kind: "function",
                    function: FunctionCall {
                        name: name.to_string(),
                        arguments,
                    },
                })
            })
            .collect()
    }
}

/// `text` without a surrounding Markdown code fence (```` ```json ... ``` ````).
fn strip_fence(text: &str) -> &str {
    let Some(inner) = text.strip_prefix("```") else {
        return text;
    };
    let inner = inner.strip_suffix("```").unwrap_or(inner);
    let inner = inner.strip_prefix("json").unwrap_or(inner);
    inner.trim()
}

/// Whether a streamed reply that so far reads `text` may still turn out to be a tool call, so
/// that it is held back instead of being sent as content.
pub fn may_be_call(text: &str) -> bool {
    let t = text.trim_start();
    t.is_empty()
        || t.starts_with('{')
        || t.starts_with('[')
        || ["```", "<tool_call>"]
            .iter()
            .any(|m| t.starts_with(m) || m.starts_with(t))
}

/// An assistant message's `tool_calls` as the JSON reply shape the instruction asks for (the
/// arguments parsed where they are JSON, else kept as their text).
pub fn history_calls(calls: &[ToolCallIn]) -> String {
    let listed: Vec<Value> = calls
        .iter()
        .map(|c| {
            let arguments = serde_json::from_str::<Value>(&c.function.arguments)
                .unwrap_or_else(|_| Value::String(c.function.arguments.clone()));
            json!({"name": c.function.name, "arguments": arguments})
        })
        .collect();
    json!({ "tool_calls": listed }).to_string()
}

/// The user-turn text that carries a `tool` message's result: which call it answers (by the
/// function's name where the history has the call) and the result.
pub fn tool_result(name: Option<&str>, call_id: &str, result: &str) -> String {
    match name {
        Some(name) => format!("Result of the tool call {call_id} ({name}):\n{result}"),
        None => format!("Result of the tool call {call_id}:\n{result}"),
    }
}

#[cfg(test)]
#[path = "tools_tests.rs"]
mod tests;
