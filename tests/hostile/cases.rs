//! The hostile requests, as a table: class, name, what goes on the wire, and the answer
//! expected (status, and `error.type` / `error.code` / `error.param` where they mean something).

use std::path::PathBuf;

use serde_json::{json, Value};

use super::wire::{self, Wire};
use super::{media_cases, request_cases};

/// What a case expects of one `error` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Any string or null.
    Any,
    /// Must be null.
    Null,
    /// Must be this string.
    Is(&'static str),
}

/// One hostile request and the answer it must get.
#[derive(Debug, Clone)]
pub struct Case {
    /// The class of bad input (the report counts per class).
    pub class: &'static str,
    /// What it is.
    pub name: String,
    /// The bytes sent.
    pub wire: Wire,
    /// Expected status.
    pub status: u16,
    /// Expected `error.type` (none for a success).
    pub kind: Option<&'static str>,
    /// Expected `error.code`.
    pub code: Field,
    /// Expected `error.param`.
    pub param: Field,
}

impl Case {
    pub fn new(class: &'static str, name: impl Into<String>, wire: Wire, status: u16) -> Self {
        let kind = match status {
            200..=299 => None,
            401 => Some("authentication_error"),
            _ => Some("invalid_request_error"),
        };
        Self {
            class,
            name: name.into(),
            wire,
            status,
            kind,
            code: Field::Any,
            param: Field::Any,
        }
    }

    pub fn param(mut self, p: &'static str) -> Self {
        self.param = Field::Is(p);
        self
    }

    pub fn no_param(mut self) -> Self {
        self.param = Field::Null;
        self
    }

    pub fn code(mut self, c: &'static str) -> Self {
        self.code = Field::Is(c);
        self
    }
}

/// What the cases need to know about the server under test.
pub struct Ctx {
    /// Its port.
    pub port: u16,
    /// The `--allowed-media-path` folder (holding `red.png` and `link.png`, a symlink to a
    /// PNG outside it).
    pub media: PathBuf,
    /// A real PNG outside the allowed folder.
    pub outside: PathBuf,
}

pub const CHAT: &str = "/v1/chat/completions";
pub const COMPLETIONS: &str = "/v1/completions";
pub const IMAGE: &str = "messages[0].content[0].image_url";

/// A one-message chat body with `extra` fields merged in.
pub fn chat(content: Value, extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

/// Content with one image URL and a question.
pub fn with_image(url: impl Into<String>) -> Value {
    json!([{"type": "image_url", "image_url": {"url": url.into()}}, {"type": "text", "text": "What colour?"}])
}

pub fn post_json(v: &Value) -> Wire {
    wire::post(CHAT, v.to_string())
}

pub fn image_case(class: &'static str, name: &str, url: impl Into<String>, status: u16) -> Case {
    Case::new(
        class,
        name,
        post_json(&chat(with_image(url), json!({}))),
        status,
    )
}

/// Every case for the open server (the auth cases live with the keyed server).
pub fn all(ctx: &Ctx) -> Vec<Case> {
    let mut cases = Vec::new();
    cases.extend(request_cases::malformed());
    cases.extend(request_cases::wrong_types());
    cases.extend(request_cases::messages());
    cases.extend(request_cases::huge_and_deep());
    cases.extend(media_cases::images());
    cases.extend(media_cases::sources(ctx));
    cases.extend(request_cases::limits_and_dms());
    cases.extend(request_cases::content_length());
    cases
}

/// The auth cases against a server started with `--api-key <key>` (status 200 ones are the
/// controls that the key does work).
pub fn auth(key: &'static str) -> Vec<Case> {
    let c = "auth";
    let body = chat(json!("hi"), json!({})).to_string();
    let with = |name: &str, header: Vec<u8>, status: u16| {
        let case = Case::new(
            c,
            name,
            wire::request("POST", CHAT, &[header], body.as_bytes(), None),
            status,
        );
        if status == 401 {
            case.code("invalid_api_key").no_param()
        } else {
            case
        }
    };
    let h = |s: String| s.into_bytes();
    vec![
        Case::new(c, "no key", wire::post(CHAT, &body), 401)
            .code("invalid_api_key")
            .no_param(),
        with(
            "wrong key",
            h("Authorization: Bearer wrong-key".into()),
            401,
        ),
        with(
            "key as Basic",
            h(format!("Authorization: Basic {key}")),
            401,
        ),
        with(
            "key without a scheme",
            h(format!("Authorization: {key}")),
            401,
        ),
        with(
            "key as Token",
            h(format!("Authorization: Token {key}")),
            401,
        ),
        // Anthropic's clients send the key as X-Api-Key: accepted, but only the whole key.
        with("key in X-Api-Key", h(format!("X-Api-Key: {key}")), 200),
        with(
            "wrong key in X-Api-Key",
            h(format!("X-Api-Key: {key}x")),
            401,
        ),
        with(
            "key plus a suffix",
            h(format!("Authorization: Bearer {key}x")),
            401,
        ),
        with(
            "key minus its last byte",
            h(format!("Authorization: Bearer {}", &key[..key.len() - 1])),
            401,
        ),
        with("empty Bearer", h("Authorization: Bearer ".into()), 401),
        with(
            "invalid UTF-8 in the header",
            [&b"Authorization: Bearer \xff\xfe"[..], key.as_bytes()].concat(),
            401,
        ),
        Case::new(
            c,
            "key in the query string",
            wire::post(&format!("{CHAT}?api_key={key}"), &body),
            401,
        )
        .code("invalid_api_key"),
        Case::new(c, "models without a key", wire::get("/v1/models", &[]), 401)
            .code("invalid_api_key"),
        Case::new(c, "metrics without a key", wire::get("/metrics", &[]), 401)
            .code("invalid_api_key"),
        with(
            "right key (control)",
            h(format!("Authorization: Bearer {key}")),
            200,
        ),
        with(
            "lower-case scheme (control)",
            h(format!("Authorization: bearer {key}")),
            200,
        ),
        Case::new(
            c,
            "metrics with the key (control)",
            wire::get("/metrics", &[h(format!("Authorization: Bearer {key}"))]),
            200,
        ),
        Case::new(
            c,
            "health without a key (control)",
            wire::get("/health", &[]),
            200,
        ),
    ]
}
