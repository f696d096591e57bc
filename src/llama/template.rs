//! Rendering a conversation with the model's own chat template.
//!
//! First llama.cpp's built-in template matcher (`llama_chat_apply_template`, which recognises
//! the common families without a Jinja engine); when it does not know the template, the GGUF's
//! `tokenizer.chat_template` is rendered with minijinja (plus Python-style string methods).

use std::ffi::{c_char, CString};

use llama_cpp_sys_2 as sys;

use super::{LlamaError, Model, Result};

/// One message for the template: a role and its text (media already replaced by markers).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

/// Renders `messages` with the model's template (ChatML when the model has none), optionally
/// ending with the assistant prefix so the model answers next.
pub fn apply_chat_template(
    model: &Model,
    messages: &[ChatMessage],
    add_assistant: bool,
) -> Result<String> {
    let template = model.chat_template();
    let builtin_name = template.clone().unwrap_or_else(|| "chatml".to_string());
    if let Some(text) = apply_builtin(&builtin_name, messages, add_assistant)? {
        return Ok(text);
    }
    match template {
        Some(t) => render_jinja(model, &t, messages, add_assistant),
        None => Err(LlamaError::Template("model has no chat template".into())),
    }
}

/// llama.cpp's matcher; `Ok(None)` when it does not recognise the template.
fn apply_builtin(
    template: &str,
    messages: &[ChatMessage],
    add_assistant: bool,
) -> Result<Option<String>> {
    let nul = |_| LlamaError::Template("message contains a NUL byte".into());
    let tmpl = CString::new(template).map_err(nul)?;
    let owned: Vec<(CString, CString)> = messages
        .iter()
        .map(|m| {
            Ok((
                CString::new(m.role.as_str()).map_err(nul)?,
                CString::new(m.content.as_str()).map_err(nul)?,
            ))
        })
        .collect::<Result<_>>()?;
    let raw: Vec<sys::llama_chat_message> = owned
        .iter()
        .map(|(r, c)| sys::llama_chat_message {
            role: r.as_ptr(),
            content: c.as_ptr(),
        })
        .collect();
    let total: usize = messages
        .iter()
        .map(|m| m.content.len() + m.role.len())
        .sum();
    let mut buf = vec![0u8; total * 2 + 256];
    for _ in 0..2 {
        // SAFETY: `raw` points into `owned`, alive for the call; `buf` is writable for its length.
        let n = unsafe {
            sys::llama_chat_apply_template(
                tmpl.as_ptr(),
                raw.as_ptr(),
                raw.len(),
                add_assistant,
                buf.as_mut_ptr().cast::<c_char>(),
                i32::try_from(buf.len()).unwrap_or(i32::MAX),
            )
        };
        if n < 0 {
            return Ok(None);
        }
        if (n as usize) <= buf.len() {
            buf.truncate(n as usize);
            return String::from_utf8(buf)
                .map(Some)
                .map_err(|_| LlamaError::Template("template produced invalid UTF-8".into()));
        }
        buf.resize(n as usize, 0);
    }
    Err(LlamaError::Template(
        "template output size changed between calls".into(),
    ))
}

/// Renders a Hugging Face style Jinja chat template.
fn render_jinja(
    model: &Model,
    template: &str,
    messages: &[ChatMessage],
    add_assistant: bool,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template).map_err(|e| {
        LlamaError::Template(format!("cannot parse the model's chat template: {e}"))
    })?;
    let token_text = |t| String::from_utf8_lossy(&model.token_bytes(t, true)).into_owned();
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_assistant,
        bos_token => token_text(model.token_bos()),
        eos_token => token_text(model.token_eos()),
    };
    env.get_template("chat")
        .and_then(|t| t.render(ctx))
        .map_err(|e| LlamaError::Template(format!("chat template failed: {e}")))
}
