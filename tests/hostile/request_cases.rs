//! Hostile requests about the JSON itself: syntax, types, roles, messages, sizes, nesting,
//! numeric limits, `dms`, and lying `Content-Length` headers.

use serde_json::{json, Value};

use super::cases::{chat, post_json, with_image, Case, CHAT, COMPLETIONS, IMAGE};
use super::wire;

pub fn malformed() -> Vec<Case> {
    let (c, u) = ("malformed_json", "invalid_utf8");
    let ok = chat(json!("hi"), json!({})).to_string();
    vec![
        Case::new(
            c,
            "truncated JSON",
            wire::post(CHAT, &ok[..ok.len() / 2]),
            400,
        )
        .no_param(),
        Case::new(
            c,
            "trailing garbage",
            wire::post(CHAT, format!("{ok} x")),
            400,
        )
        .no_param(),
        Case::new(c, "not JSON at all", wire::post(CHAT, "hello there"), 400).no_param(),
        Case::new(c, "empty body", wire::post(CHAT, ""), 400).no_param(),
        Case::new(c, "top-level array", wire::post(CHAT, "[1, 2]"), 400).no_param(),
        Case::new(c, "top-level string", wire::post(CHAT, "\"hi\""), 400).no_param(),
        Case::new(
            c,
            "single quotes",
            wire::post(CHAT, "{'messages': []}"),
            400,
        )
        .no_param(),
        Case::new(
            c,
            "NaN literal",
            wire::post(CHAT, ok.replace("\"temperature\":0", "\"temperature\":NaN")),
            400,
        )
        .no_param(),
        Case::new(
            c,
            "number overflow",
            wire::post(
                CHAT,
                ok.replace("\"temperature\":0", "\"temperature\":1e999"),
            ),
            400,
        ),
        Case::new(
            u,
            "lone surrogate escape",
            wire::post(
                CHAT,
                r#"{"messages": [{"role": "user", "content": "\ud800"}]}"#,
            ),
            400,
        ),
        Case::new(
            u,
            "invalid UTF-8 in a string",
            wire::post(
                CHAT,
                [
                    &br#"{"messages": [{"role": "user", "content": "caf"#[..],
                    b"\xff\xfe",
                    b"\"}]}",
                ]
                .concat(),
            ),
            400,
        ),
        Case::new(
            u,
            "truncated UTF-8 sequence",
            wire::post(
                CHAT,
                [
                    &br#"{"messages": [{"role": "user", "content": "x"#[..],
                    b"\xe2\x82",
                    b"\"}]}",
                ]
                .concat(),
            ),
            400,
        ),
        Case::new(
            u,
            "invalid UTF-8 outside strings",
            wire::post(CHAT, b"{\xc3\x28: 1}"),
            400,
        )
        .no_param(),
        Case::new(
            c,
            "completions: truncated JSON",
            wire::post(COMPLETIONS, "{\"prompt\": \"a"),
            400,
        )
        .no_param(),
    ]
}

/// A wrong-typed value for every top-level field, then nested ones.
pub fn wrong_types() -> Vec<Case> {
    let c = "wrong_types";
    let fields: [(&'static str, Value); 21] = [
        ("model", json!({"x": 1})),
        ("messages", json!("hi")),
        ("prompt", json!(5)),
        ("logprobs", json!({"x": 1})),
        ("top_logprobs", json!("3")),
        ("dms", json!("rule")),
        ("max_tokens", json!("ten")),
        ("max_completion_tokens", json!(1.5)),
        ("temperature", json!("hot")),
        ("top_p", json!([])),
        ("top_k", json!(1.5)),
        ("min_p", json!(true)),
        ("seed", json!("abc")),
        ("stop", json!(5)),
        ("presence_penalty", json!("0")),
        ("frequency_penalty", json!({})),
        ("n", json!("one")),
        ("stream", json!("yes")),
        ("stream_options", json!("usage")),
        ("ignore_eos", json!(1)),
        ("response_format", json!("json")),
    ];
    let mut out: Vec<Case> = fields
        .into_iter()
        .map(|(field, bad)| {
            let mut body = chat(json!("hi"), json!({}));
            body[field] = bad;
            Case::new(
                c,
                format!("{field} of the wrong type"),
                post_json(&body),
                400,
            )
            .param(field)
        })
        .collect();
    let nested = [
        (
            "content a number",
            json!({"messages": [{"role": "user", "content": 42}]}),
            "messages[0].content",
        ),
        (
            "message a string",
            json!({"messages": ["hi"]}),
            "messages[0]",
        ),
        (
            "role a number",
            json!({"messages": [{"role": 7, "content": "hi"}]}),
            "messages[0].role",
        ),
        (
            "image_url a string",
            chat(
                json!([{"type": "image_url", "image_url": "data:x"}]),
                json!({}),
            ),
            "messages[0].content",
        ),
        (
            "image url a number",
            chat(
                json!([{"type": "image_url", "image_url": {"url": 5}}]),
                json!({}),
            ),
            "messages[0].content",
        ),
        (
            "part without type",
            chat(json!([{"text": "hi"}]), json!({})),
            "messages[0].content",
        ),
        (
            "unknown part type",
            chat(json!([{"type": "audio", "audio": "x"}]), json!({})),
            "messages[0].content",
        ),
        (
            "dms.mc_samples a string",
            chat(
                json!("hi"),
                json!({"dms": {"mode": "rule", "mc_samples": "many"}}),
            ),
            "dms.mc_samples",
        ),
        (
            "dms.weights.text a string",
            chat(
                json!("hi"),
                json!({"dms": {"mode": "fixed", "weights": {"images": [], "text": "NaN"}}}),
            ),
            "dms.weights.text",
        ),
    ];
    out.extend(
        nested
            .into_iter()
            .map(|(name, body, param)| Case::new(c, name, post_json(&body), 400).param(param)),
    );
    out
}

pub fn messages() -> Vec<Case> {
    let (r, e) = ("unknown_roles", "empty_messages");
    let role = |name: &str, role: Value| {
        let body = json!({"messages": [{"role": role, "content": "hi"}]});
        Case::new(r, name, post_json(&body), 400).param("messages[0].role")
    };
    vec![
        role("role wizard", json!("wizard")),
        role("role function (legacy, unsupported)", json!("function")),
        Case::new(
            r,
            "tool message without tool_call_id",
            post_json(&json!({"messages": [{"role": "tool", "content": "12 C"}]})),
            400,
        )
        .param("messages[0].tool_call_id"),
        Case::new(
            r,
            "tool_calls on a user message",
            post_json(&json!({"messages": [{"role": "user", "content": "hi",
                "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}}]}]})),
            400,
        )
        .param("messages[0].tool_calls"),
        Case::new(
            r,
            "tools not a list",
            post_json(&json!({"messages": [{"role": "user", "content": "hi"}], "tools": "all"})),
            400,
        )
        .param("tools"),
        Case::new(
            r,
            "tool_choice a number",
            post_json(&json!({"messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": 3})),
            400,
        )
        .param("tool_choice"),
        Case::new(
            r,
            "a required call with response_format",
            post_json(&json!({"messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": "required", "response_format": {"type": "json_object"}})),
            400,
        )
        .param("response_format"),
        role("role in capitals", json!("USER")),
        role("empty role", json!("")),
        Case::new(
            r,
            "role missing",
            post_json(&json!({"messages": [{"content": "hi"}]})),
            400,
        )
        .param("messages[0]"),
        Case::new(
            e,
            "messages empty",
            post_json(&json!({"messages": []})),
            400,
        )
        .param("messages"),
        Case::new(
            e,
            "messages absent",
            post_json(&json!({"max_tokens": 3})),
            400,
        )
        .param("messages"),
        Case::new(
            e,
            "messages null",
            post_json(&json!({"messages": null})),
            400,
        )
        .param("messages"),
        Case::new(
            e,
            "completions: no prompt",
            wire::post(COMPLETIONS, "{}"),
            400,
        )
        .param("prompt"),
        Case::new(
            e,
            "completions: empty prompt list",
            wire::post(COMPLETIONS, r#"{"prompt": []}"#),
            400,
        )
        .param("prompt"),
    ]
}

pub fn huge_and_deep() -> Vec<Case> {
    let (h, d) = ("huge_strings", "deep_nesting");
    let nest = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let deep_schema = (0..300).fold(
        json!({"type": "string"}),
        |inner, _| json!({"type": "object", "properties": {"a": inner}, "required": ["a"]}),
    );
    let ok = chat(json!("hi"), json!({})).to_string();
    vec![
        Case::new(h, "body over --max-body-mb", post_json(&chat(json!("x".repeat(2 << 20)), json!({}))), 413).no_param(),
        Case::new(h, "model name of 200 KB", post_json(&chat(json!("hi"), json!({"model": "m".repeat(200_000)}))), 400).param("model"),
        Case::new(h, "text of 600 KB (far over the context)", post_json(&chat(json!("word ".repeat(120_000)), json!({}))), 400),
        Case::new(h, "image URL of 900 KB garbage", post_json(&chat(with_image("x".repeat(900_000)), json!({}))), 400).param(IMAGE),
        // Unknown fields are skipped without recursion: safe, and answered normally.
        Case::new(d, "10000 nested arrays in an unknown field (skipped)", wire::post(CHAT, ok.replacen('{', &format!("{{\"x\": {},", nest(10_000)), 1)), 200),
        Case::new(d, "10000 nested arrays as a JSON schema", wire::post(CHAT, ok.replacen('{', &format!("{{\"response_format\": {{\"type\": \"json_schema\", \"json_schema\": {{\"schema\": {}}}}},", nest(10_000)), 1)), 400).no_param(),
        Case::new(d, "nested arrays as content", wire::post(CHAT, format!(r#"{{"messages": [{{"role": "user", "content": {}}}]}}"#, nest(5_000))), 400),
        Case::new(d, "nested objects in dms", wire::post(CHAT, format!(r#"{{"messages": [], "dms": {}{}}}"#, "{\"a\":".repeat(5_000), "}".repeat(5_000))), 400),
        Case::new(d, "a JSON schema 300 levels deep", post_json(&chat(json!("hi"), json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": deep_schema}}}))), 400).no_param(),
        Case::new(d, "a JSON schema that refers to itself", post_json(&chat(json!("hi"), json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#"}}}}))), 400).param("response_format"),
        Case::new(d, "a JSON schema with a dangling $ref", post_json(&chat(json!("hi"), json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}}))), 400).param("response_format"),
    ]
}

pub fn limits_and_dms() -> Vec<Case> {
    let (p, mt, n, d) = ("prompt_too_long", "max_tokens", "n_over_1", "bad_dms");
    let long = "the image ".repeat(400);
    let hi = |extra: Value| post_json(&chat(json!("hi"), extra));
    let dms = |v: Value| hi(json!({"dms": v}));
    let one_image = |extra: Value| {
        post_json(&chat(
            with_image(wire::data_uri(&wire::png(16, 16), "image/png")),
            extra,
        ))
    };
    vec![
        Case::new(p, "chat prompt over the context", post_json(&chat(json!(long), json!({}))), 400),
        Case::new(p, "streamed chat prompt over the context", post_json(&chat(json!(long), json!({"stream": true}))), 400),
        Case::new(p, "completions prompt over the context", wire::post(COMPLETIONS, json!({"prompt": long}).to_string()), 400),
        Case::new(p, "streamed completions prompt over the context", wire::post(COMPLETIONS, json!({"prompt": long, "stream": true}).to_string()), 400),
        Case::new(p, "streamed chat with a bad image", post_json(&chat(with_image(wire::data_uri(b"not an image", "image/png")), json!({"stream": true}))), 400),
        Case::new(mt, "max_tokens -1", hi(json!({"max_tokens": -1})), 400).param("max_tokens"),
        Case::new(mt, "max_tokens 0", hi(json!({"max_tokens": 0})), 400).param("max_tokens"),
        Case::new(mt, "max_tokens 10^12", hi(json!({"max_tokens": 1_000_000_000_000i64})), 400).param("max_tokens"),
        Case::new(mt, "max_tokens i64::MIN", hi(json!({"max_tokens": i64::MIN})), 400).param("max_tokens"),
        Case::new(mt, "max_tokens 2^64", wire::post(CHAT, r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 18446744073709551616}"#), 400).param("max_tokens"),
        Case::new(mt, "max_completion_tokens -5", hi(json!({"max_completion_tokens": -5})), 400).param("max_completion_tokens"),
        Case::new(n, "n 2", hi(json!({"n": 2})), 400).param("n"),
        Case::new(n, "n 0", hi(json!({"n": 0})), 400).param("n"),
        Case::new(n, "n -1", hi(json!({"n": -1})), 400).param("n"),
        Case::new(n, "n 10^9", hi(json!({"n": 1_000_000_000})), 400).param("n"),
        Case::new(d, "negative text weight", dms(json!({"mode": "fixed", "weights": {"images": [], "text": -1.0}})), 400).param("dms.weights"),
        Case::new(d, "negative image weight", one_image(json!({"dms": {"mode": "fixed", "weights": {"images": [-0.5], "text": 1.0}}})), 400).param("dms.weights"),
        Case::new(d, "infinite weight (1e39 overflows f32)", dms(json!({"mode": "fixed", "weights": {"images": [], "text": 1e39}})), 400).param("dms.weights"),
        Case::new(d, "NaN weight", wire::post(CHAT, r#"{"messages": [{"role": "user", "content": "hi"}], "dms": {"mode": "fixed", "weights": {"images": [], "text": NaN}}}"#), 400),
        Case::new(d, "weights for 2 images, 1 sent", one_image(json!({"dms": {"mode": "fixed", "weights": {"images": [1.0, 1.0], "text": 1.0}}})), 400).param("dms.weights"),
        Case::new(d, "fixed without weights", dms(json!({"mode": "fixed"})), 400).param("dms.weights"),
        Case::new(d, "negative weight under rule (unused, still refused)", dms(json!({"mode": "rule", "weights": {"images": [], "text": -2.0}})), 400).param("dms.weights"),
        Case::new(d, "unknown mode", dms(json!({"mode": "magic"})), 400).param("dms.mode"),
        Case::new(d, "unknown scheduler", one_image(json!({"dms": {"mode": "rule", "scheduler": "no-such-plugin"}})), 400).param("dms.scheduler"),
        Case::new(d, "mc_samples 10^6", dms(json!({"mode": "rule", "mc_samples": 1_000_000})), 400).param("dms.mc_samples"),
        Case::new(d, "mc_samples -1", dms(json!({"mode": "rule", "mc_samples": -1})), 400).param("dms.mc_samples"),
        Case::new(d, "dropout 5", dms(json!({"mode": "rule", "dropout": 5.0})), 400).param("dms.dropout"),
        Case::new(d, "dropout -0.1", dms(json!({"mode": "rule", "dropout": -0.1})), 400).param("dms.dropout"),
        Case::new(d, "unknown dms field", dms(json!({"mood": "rule"})), 400).param("dms.mood"),
        Case::new(d, "temperature 1e39 (infinite)", hi(json!({"temperature": 1e39})), 400).param("temperature"),
    ]
}

pub fn content_length() -> Vec<Case> {
    let c = "content_length";
    let body = chat(json!("hi"), json!({})).to_string();
    let len = body.len();
    let shorter = wire::request("POST", CHAT, &[], body.as_bytes(), Some(len - 10));
    let mut longer_closed = wire::request("POST", CHAT, &[], body.as_bytes(), Some(len + 100));
    longer_closed.half_close = true;
    let longer_open = wire::request("POST", CHAT, &[], body.as_bytes(), Some(len + 100));
    let huge = wire::request("POST", CHAT, &[], body.as_bytes(), Some(1 << 40));
    vec![
        Case::new(c, "shorter than the body", shorter, 400).no_param(),
        Case::new(c, "longer, client half-closes", longer_closed, 400).no_param(),
        Case::new(c, "longer, client waits (body timeout)", longer_open, 408).code("timeout"),
        Case::new(c, "claims a terabyte", huge, 413).no_param(),
    ]
}
