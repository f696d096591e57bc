//! The HTTP API through `Router::oneshot` on a real (tiny) engine: every error class answers
//! with the right status and an OpenAI-shaped body, and good requests get OpenAI shapes.

mod common;
// The `dms` extension's request fields: `dms_role` and the server's default mode.
#[path = "api/dms.rs"]
mod dms;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use llama_dms::api::chat::{base_request, DEFAULT_MAX_TOKENS};
use llama_dms::api::types::GenerationRequest;
use llama_dms::api::{router, AppState, Limits, ModelNames};
use llama_dms::engine::{EngineConfig, EngineHandle, GenerateRequest, Message, Role};
use serde_json::{json, Value};
use tower::ServiceExt;

fn engine(queue: usize) -> EngineHandle {
    engine_with_ctx(queue, 256)
}

fn engine_with_ctx(queue: usize, n_ctx: u32) -> EngineHandle {
    let tiny = common::tiny_models();
    let mut config = EngineConfig::new(&tiny.model, Some(tiny.mmproj.clone()));
    config.runtime.context.n_ctx = n_ctx;
    config.runtime.context.n_threads = 1;
    config.queue_capacity = queue;
    config.max_image_pixels = 128 * 128;
    EngineHandle::start(config).unwrap()
}

fn app_with(engine: EngineHandle, keys: &[&str]) -> Router {
    let limits = Limits {
        max_body_bytes: 64 * 1024,
        max_images: 2,
        ..Limits::default()
    };
    let state = AppState::new(keys.iter().map(|k| k.to_string()).collect(), limits);
    state.set_engine(engine);
    router(state, &[])
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<String>,
    key: Option<&str>,
) -> (StatusCode, Value, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value, retry)
}

/// `POST /v1/chat/completions` with `body`.
async fn post_chat(
    app: &Router,
    body: Option<String>,
    key: Option<&str>,
) -> (StatusCode, Value, String) {
    call(app, "POST", "/v1/chat/completions", body, key).await
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, case: &str) {
    assert_eq!(status, expected, "{case}: {body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: {body}"
    );
    assert!(
        e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(),
        "{case}: {body}"
    );
}

fn data_uri(bytes: &[u8], mime: &str) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn chat(content: Value, extra: Value) -> String {
    let mut body = json!({"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body.to_string()
}

fn image_part(url: String) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

#[tokio::test]
async fn bad_requests_get_400_with_openai_errors() {
    let app = app_with(engine(4), &[]);
    let png = data_uri(&common::png(16, 16, [255, 0, 0]), "image/png");
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("malformed JSON", "{\"messages\": [".into(), None),
        (
            "trailing garbage",
            format!("{} x", chat(json!("hi"), json!({}))),
            None,
        ),
        (
            "messages not a list",
            json!({"messages": "hi"}).to_string(),
            Some("messages"),
        ),
        (
            "temperature wrong type",
            chat(json!("hi"), json!({"temperature": "hot"})),
            Some("temperature"),
        ),
        (
            "temperature out of range",
            chat(json!("hi"), json!({"temperature": 7})),
            Some("temperature"),
        ),
        (
            "unknown role",
            json!({"messages": [{"role": "wizard", "content": "hi"}]}).to_string(),
            None,
        ),
        (
            "empty messages",
            json!({"messages": []}).to_string(),
            Some("messages"),
        ),
        ("n > 1", chat(json!("hi"), json!({"n": 2})), Some("n")),
        (
            "max_tokens 0",
            chat(json!("hi"), json!({"max_tokens": 0})),
            Some("max_tokens"),
        ),
        (
            "max_tokens negative",
            chat(json!("hi"), json!({"max_tokens": -5})),
            Some("max_tokens"),
        ),
        (
            "bad base64",
            chat(
                json!([image_part("data:image/png;base64,@@@".into())]),
                json!({}),
            ),
            None,
        ),
        (
            "unsupported MIME",
            chat(
                json!([image_part(data_uri(b"hi", "text/plain"))]),
                json!({}),
            ),
            None,
        ),
        (
            "not an image",
            chat(
                json!([image_part(data_uri(b"plain text", "image/png"))]),
                json!({}),
            ),
            None,
        ),
        (
            "truncated PNG",
            chat(
                json!([image_part(data_uri(
                    &common::png(16, 16, [1, 2, 3])[..40],
                    "image/png"
                ))]),
                json!({}),
            ),
            None,
        ),
        (
            "too many images",
            chat(
                json!([
                    image_part(png.clone()),
                    image_part(png.clone()),
                    image_part(png.clone())
                ]),
                json!({}),
            ),
            Some("messages"),
        ),
        (
            "image too large",
            chat(
                json!([image_part(data_uri(
                    &common::png(200, 200, [0, 0, 0]),
                    "image/png"
                ))]),
                json!({}),
            ),
            None,
        ),
        (
            "remote URL",
            chat(
                json!([image_part("http://127.0.0.1/x.png".into())]),
                json!({}),
            ),
            None,
        ),
        (
            "file outside allowed path",
            chat(json!([image_part("file:///etc/passwd".into())]), json!({})),
            None,
        ),
        (
            "prompt longer than the context",
            chat(json!("the image ".repeat(300)), json!({})),
            None,
        ),
        (
            "unknown dms mode",
            chat(json!("hi"), json!({"dms": {"mode": "magic"}})),
            Some("dms.mode"),
        ),
        (
            "negative dms weights",
            chat(
                json!("hi"),
                json!({"dms": {"mode": "fixed", "weights": {"images": [], "text": -1.0}}}),
            ),
            Some("dms.weights"),
        ),
        (
            "absurd mc_samples",
            chat(
                json!("hi"),
                json!({"dms": {"mode": "rule", "mc_samples": 1000000}}),
            ),
            Some("dms.mc_samples"),
        ),
        (
            "unknown dms field",
            chat(json!("hi"), json!({"dms": {"mood": "rule"}})),
            None,
        ),
        (
            "unknown scheduler",
            chat(
                json!([image_part(png.clone()), {"type": "text", "text": "hi"}]),
                json!({"dms": {"mode": "rule", "scheduler": "nope"}}),
            ),
            None,
        ),
    ];
    for (case, body, param) in cases {
        let (status, value, _) = post_chat(&app, Some(body), None).await;
        assert_error(status, &value, StatusCode::BAD_REQUEST, case);
        if let Some(p) = param {
            assert_eq!(value["error"]["param"], p, "{case}: {value}");
        }
    }
    // Still healthy and answering.
    let (status, value, _) = post_chat(&app, Some(chat(json!("hi"), json!({}))), None).await;
    assert_eq!(status, StatusCode::OK, "{value}");
}

#[tokio::test]
async fn auth_not_found_and_body_limit() {
    let app = app_with(engine(4), &["secret-1", "secret-2"]);
    let body = chat(json!("hi"), json!({}));
    let (s, v, _) = post_chat(&app, Some(body.clone()), None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "no key");
    let (s, v, _) = call(&app, "GET", "/v1/models", None, Some("secret-3")).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "wrong key");
    let (s, _, _) = call(&app, "GET", "/health", None, None).await;
    assert_eq!(s, StatusCode::OK, "health stays public");
    let (s, v, _) = call(&app, "GET", "/props", None, None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "props need the key");
    let tokenize = json!({"content": "hi"}).to_string();
    let (s, v, _) = call(&app, "POST", "/tokenize", Some(tokenize), None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "tokenize needs the key");
    let (s, v, _) = call(&app, "GET", "/v1/models", None, Some("secret-2")).await;
    assert_eq!(s, StatusCode::OK);
    let id = v["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(v["data"][0]["vision"], true);

    let (s, v, _) = call(&app, "GET", "/v1/nothing-here", None, Some("secret-1")).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "unknown route");
    let (s, v, _) = call(&app, "GET", "/nope", None, None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "unknown route outside /v1");
    let (s, v, _) = call(&app, "GET", "/v1/models/nope", None, Some("secret-1")).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "unknown model id");
    let (s, _, _) = call(
        &app,
        "GET",
        &format!("/v1/models/{id}"),
        None,
        Some("secret-1"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Any model name is accepted with one model (clients hard-code `gpt-4o`); the response
    // names the model served.
    let other_model = chat(json!("hi"), json!({"model": "gpt-4o", "max_tokens": 2}));
    let (s, v, _) = post_chat(&app, Some(other_model.clone()), Some("secret-1")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["model"], id.as_str());

    let huge = chat(json!("x".repeat(100 * 1024)), json!({}));
    let (s, v, _) = post_chat(&app, Some(huge), Some("secret-1")).await;
    assert_error(s, &v, StatusCode::PAYLOAD_TOO_LARGE, "body over the limit");
}

#[tokio::test]
async fn aliases_name_the_model_and_strict_names_refuse_others() {
    let state = AppState::new(Vec::new(), Limits::default()).with_model_names(ModelNames {
        aliases: vec!["tiny-chat".into(), "gpt-4o".into()],
        strict: true,
    });
    state.set_engine(engine(4));
    let app = router(state, &[]);
    let (s, v, _) = call(&app, "GET", "/v1/models", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let card = &v["data"][0];
    assert_eq!(card["id"], "tiny-chat");
    let aliases = card["aliases"].as_array().unwrap();
    assert_eq!(aliases[0], "gpt-4o");
    let file_name = aliases[1].as_str().unwrap().to_string();
    for id in ["tiny-chat", "gpt-4o", file_name.as_str()] {
        let (s, v, _) = call(&app, "GET", &format!("/v1/models/{id}"), None, None).await;
        assert_eq!(s, StatusCode::OK, "{id}: {v}");
        assert_eq!(v["id"], "tiny-chat");
        let body = chat(json!("hi"), json!({"model": id, "max_tokens": 2}));
        let (s, v, _) = post_chat(&app, Some(body), None).await;
        assert_eq!(s, StatusCode::OK, "{id}: {v}");
        assert_eq!(v["model"], "tiny-chat", "responses name the first alias");
    }
    let (s, props, _) = call(&app, "GET", "/props", None, None).await;
    assert_eq!(s, StatusCode::OK, "{props}");
    assert_eq!(props["model"], "tiny-chat");
    assert_eq!(props["model_file"], file_name.as_str());
    assert_eq!(props["strict_model_name"], true);
    assert_eq!(props["modalities"]["vision"], true);
    assert_eq!(props["total_slots"], 1);
    assert!(props["n_ctx"].as_u64().unwrap() > 0 && props["n_vocab"].as_u64().unwrap() > 0);
    assert!(props["chat_template"]
        .as_str()
        .unwrap()
        .contains("im_start"));
    assert_eq!(props["dms"]["default_mode"], "off");
    assert!(props["dms"]["schedulers"].is_array());
    let wrong = chat(json!("hi"), json!({"model": "llama-3-70b"}));
    let (s, v, _) = post_chat(&app, Some(wrong), None).await;
    assert_error(
        s,
        &v,
        StatusCode::NOT_FOUND,
        "a name the strict server does not serve",
    );
    assert_eq!(v["error"]["param"], "model");
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let engine = engine_with_ctx(1, 2048);
    let app = app_with(engine.clone(), &[]);
    let long = || {
        let mut r = GenerateRequest::new(vec![Message::text(Role::User, "Tell me a long story.")]);
        r.max_tokens = 1800;
        r.sampling.ignore_eos = true;
        r
    };
    // One request running (it has produced text) and one waiting fill a queue of one.
    let mut running = engine.submit(long()).unwrap();
    assert!(matches!(
        running.recv().await,
        Some(llama_dms::engine::Event::Text(_))
    ));
    let waiting = engine.submit(long()).unwrap();
    let busy = (running, waiting);
    let (s, v, retry) = post_chat(&app, Some(chat(json!("hi"), json!({}))), None).await;
    assert_error(s, &v, StatusCode::TOO_MANY_REQUESTS, "queue full");
    assert_eq!(retry, "1", "Retry-After is set");
    drop(busy);
}

#[tokio::test]
async fn good_requests_get_openai_shapes() {
    let app = app_with(engine(4), &[]);
    let png = data_uri(&common::png(32, 32, [0, 0, 255]), "image/png");
    let content = json!([image_part(png), {"type": "text", "text": "What colour?"}]);
    let extra = json!({"seed": 3, "stop": ["zzz"], "cache_prompt": true, "dms": {"mode": "fixed", "weights": {"images": [0.5], "text": 1.0}}});
    let (s, v, _) = post_chat(&app, Some(chat(content.clone(), extra)), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(matches!(
        v["choices"][0]["finish_reason"].as_str(),
        Some("stop" | "length")
    ));
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() >= 16);
    assert_eq!(v["dms"]["weights"]["images"][0], 0.5);

    let (s, v, _) = post_chat(
        &app,
        Some(chat(
            content,
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        )),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().expect("SSE text");
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let usage: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let last: Value = serde_json::from_str(events[events.len() - 3]).unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string() && last["dms"].is_object());
}

#[tokio::test]
async fn health_is_503_while_loading() {
    let state = AppState::new(Vec::new(), Limits::default());
    let app = router(state, &[]);
    let (s, _, _) = call(&app, "GET", "/health", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, v, _) = post_chat(&app, Some(chat(json!("hi"), json!({}))), None).await;
    assert_error(s, &v, StatusCode::SERVICE_UNAVAILABLE, "loading");
    let (s, v, _) = call(&app, "GET", "/v1/dms/schedulers", None, None).await;
    assert_error(
        s,
        &v,
        StatusCode::SERVICE_UNAVAILABLE,
        "schedulers while loading",
    );
    let (s, _, _) = call(&app, "GET", "/", None, None).await;
    assert_eq!(s, StatusCode::OK, "the page answers while the model loads");
}

#[tokio::test]
async fn schedulers_list_needs_the_key_and_names_kinds() {
    let app = app_with(engine(4), &["secret-1"]);
    let (s, v, _) = call(&app, "GET", "/v1/dms/schedulers", None, None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "schedulers without a key");
    let (s, v, _) = call(&app, "GET", "/v1/dms/schedulers", None, Some("secret-1")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "list");
    let kinds: Vec<(String, String)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("rule-default".into(), "rule".into())),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|(id, _)| id == "off"), "{kinds:?}");
}

#[tokio::test]
async fn the_web_page_is_public_with_content_types() {
    let app = app_with(engine(4), &["secret-1"]);
    for (path, content_type, needle) in [
        ("/", "text/html", "app.js"),
        ("/index.html", "text/html", "style.css"),
        ("/app.js", "text/javascript", "/v1/chat/completions"),
        ("/style.css", "text/css", "prefers-color-scheme"),
    ] {
        let req = Request::get(path).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path} without a key");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        assert!(
            header("content-security-policy").contains("script-src 'self'"),
            "{path}"
        );
        let body = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains(needle), "{path} lacks {needle}");
    }
}

#[tokio::test]
async fn n_choices_are_generated_side_by_side_up_to_the_slots() {
    let tiny = common::tiny_models();
    let mut config = EngineConfig::new(&tiny.model, Some(tiny.mmproj.clone()));
    config.runtime.context.n_ctx = 256;
    config.runtime.context.n_threads = 1;
    config.parallel = 2;
    let app = app_with(EngineHandle::start(config).unwrap(), &[]);
    // Sampled with seeds s and s + 1: two choices, usually different; the prompt counted once.
    let body = chat(
        json!("hi"),
        json!({"n": 2, "max_tokens": 8, "temperature": 1.5, "seed": 7, "ignore_eos": true}),
    );
    let (s, v, _) = post_chat(&app, Some(body.clone()), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert!(c["message"]["content"].is_string());
    }
    assert_ne!(
        choices[0]["message"]["content"],
        choices[1]["message"]["content"]
    );
    assert_eq!(v["usage"]["completion_tokens"], 16);
    let (_, again, _) = post_chat(&app, Some(body), None).await;
    assert_eq!(
        again["choices"], v["choices"],
        "seeded: the same choices again"
    );
    // Streamed: every chunk names its choice; each choice ends once; usage sums them.
    let stream = chat(
        json!("hi"),
        json!({"n": 2, "max_tokens": 3, "stream": true, "stream_options": {"include_usage": true},
            "ignore_eos": true}),
    );
    let (s, v, _) = post_chat(&app, Some(stream), None).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for index in [0, 1] {
        let of = |c: &&Value| c["choices"][0]["index"] == index;
        let finished = chunks
            .iter()
            .filter(of)
            .filter(|c| c["choices"][0]["finish_reason"].is_string())
            .count();
        assert_eq!(finished, 1, "choice {index}: {text}");
        let content: String = chunks
            .iter()
            .filter(of)
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(!content.is_empty(), "choice {index}: {text}");
    }
    let usage = chunks.last().unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 6, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
    // More choices than slots: refused, naming `n`.
    let three = chat(json!("hi"), json!({"n": 3}));
    let (s, v, _) = post_chat(&app, Some(three), None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "n above --parallel");
    assert_eq!(v["error"]["param"], "n");
}

#[tokio::test]
async fn tokenize_and_detokenize_round_trip() {
    let app = app_with(engine(4), &[]);
    let post = |path: &'static str, body: Value| {
        let app = app.clone();
        async move { call(&app, "POST", path, Some(body.to_string()), None).await }
    };
    let text = "The colour of the sky is blue, 空は青い.";
    let (s, v, _) = post("/tokenize", json!({"content": text})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ids = v["tokens"].clone();
    assert!(ids.as_array().unwrap().len() > 5, "{v}");
    let (s, back, _) = post("/detokenize", json!({"tokens": ids})).await;
    assert_eq!(s, StatusCode::OK, "{back}");
    assert_eq!(back["content"], text);
    // Control tokens parse as themselves (the tiny vocabulary's <|im_start|> is id 1), unless
    // asked not to; pieces come with their text.
    let (_, v, _) = post(
        "/tokenize",
        json!({"content": "<|im_start|>", "with_pieces": true}),
    )
    .await;
    assert_eq!(v["tokens"], json!([{"id": 1, "piece": "<|im_start|>"}]));
    let (_, v, _) = post(
        "/tokenize",
        json!({"content": "<|im_start|>", "parse_special": false}),
    )
    .await;
    assert!(v["tokens"].as_array().unwrap().len() > 1, "{v}");
    for (path, body, param) in [
        ("/detokenize", json!({"tokens": [1_000_000]}), "tokens"),
        ("/detokenize", json!({"tokens": [-1]}), "tokens"),
        ("/detokenize", json!({"tokens": "hi"}), "tokens"),
        ("/tokenize", json!({"content": 3}), "content"),
    ] {
        let (s, v, _) = post(path, body.clone()).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, &format!("{path} {body}"));
        assert_eq!(v["error"]["param"], param, "{path} {body}: {v}");
    }
}

#[tokio::test]
async fn a_chat_template_override_renders_the_prompt() {
    let tiny = common::tiny_models();
    let mut config = EngineConfig::new(&tiny.model, Some(tiny.mmproj.clone()));
    config.runtime.context.n_ctx = 256;
    config.runtime.context.n_threads = 1;
    config.chat_template = Some(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}\
         {% if add_generation_prompt %}<assistant>{% endif %}"
            .into(),
    );
    let app = app_with(EngineHandle::start(config).unwrap(), &[]);
    let (_, props, _) = call(&app, "GET", "/props", None, None).await;
    assert!(
        props["chat_template"]
            .as_str()
            .unwrap()
            .starts_with("{% for m"),
        "{props}"
    );
    let body = chat(json!("Hello there"), json!({"max_tokens": 1}));
    let (s, v, _) = post_chat(&app, Some(body), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Exactly the tokens of the rendered text.
    let rendered = json!({"content": "<user>Hello there<assistant>"}).to_string();
    let (_, tokens, _) = call(&app, "POST", "/tokenize", Some(rendered), None).await;
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        tokens["tokens"].as_array().unwrap().len()
    );
}

#[tokio::test]
async fn logit_bias_penalties_typical_p_and_stop_bounds() {
    let app = app_with(engine(4), &[]);
    let complete = |extra: Value| {
        let mut body = json!({"prompt": "The colour of the sky is", "max_tokens": 4,
            "temperature": 0, "repeat_penalty": 1.0});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body.to_string()
    };
    // The tiny vocabulary's byte tokens: byte b is token 3 + b ('Z' = 93, '[' = 94).
    let forced = complete(json!({"logit_bias": {"93": 100, "94": 90}}));
    let (s, v, _) = call(&app, "POST", "/v1/completions", Some(forced), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["choices"][0]["text"], "ZZZZ",
        "+100 all but forces a token"
    );
    let kept_out = complete(json!({"logit_bias": {"93": -100, "94": 90}}));
    let (s, v, _) = call(&app, "POST", "/v1/completions", Some(kept_out), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["text"], "[[[[", "-100 keeps 'Z' out");
    // Penalties and typical sampling are taken; a repetition penalty changes the greedy answer
    // of a forced repetition.
    let penalised = complete(json!({"logit_bias": {"93": 10, "94": 9.9},
        "repeat_penalty": 10.0, "repeat_last_n": 8, "typical_p": 0.9}));
    let (s, v, _) = call(&app, "POST", "/v1/completions", Some(penalised), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_ne!(v["choices"][0]["text"], "ZZZZ", "{v}");
    for (extra, param) in [
        (json!({"logit_bias": {"93": 101}}), "logit_bias"),
        (json!({"logit_bias": {"x": 1}}), "logit_bias"),
        (json!({"logit_bias": {"-3": 1}}), "logit_bias"),
        (json!({"logit_bias": {"1000000": 1}}), "logit_bias"),
        (json!({"typical_p": 1.5}), "typical_p"),
        (json!({"repeat_penalty": -1}), "repeat_penalty"),
        (json!({"repeat_last_n": -2}), "repeat_last_n"),
        (json!({"stop": vec!["x"; 17]}), "stop"),
        (json!({"stop": ["y".repeat(257)]}), "stop"),
        (json!({"stop": [""]}), "stop"),
    ] {
        let (s, v, _) = call(
            &app,
            "POST",
            "/v1/completions",
            Some(complete(extra.clone())),
            None,
        )
        .await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, &format!("{extra}"));
        assert_eq!(v["error"]["param"], param, "{extra}");
    }
    // Without max_tokens an answer stops at the default cap, or at the context if smaller.
    let bare: GenerationRequest = serde_json::from_value(json!({"prompt": "x"})).unwrap();
    let cap = |n_ctx| base_request(&bare, n_ctx).unwrap().max_tokens;
    assert_eq!(cap(8192), DEFAULT_MAX_TOKENS);
    assert_eq!(cap(256), 256);
}

#[tokio::test]
async fn text_completions_logprobs_and_response_format() {
    let app = app_with(engine(4), &[]);
    let body = json!({"prompt": "The colour of the sky is", "max_tokens": 5, "temperature": 0})
        .to_string();
    let (s, v, _) = call(&app, "POST", "/v1/completions", Some(body), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(v["choices"][0]["text"].is_string());
    assert_eq!(v["usage"]["completion_tokens"], 5);

    let stream =
        json!({"prompt": ["once upon a time"], "max_tokens": 3, "stream": true}).to_string();
    let (s, v, _) = call(&app, "POST", "/v1/completions", Some(stream), None).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    assert!(
        text.contains("\"object\":\"text_completion\"")
            && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    let two = json!({"prompt": ["a", "b"]}).to_string();
    let (s, v, _) = call(&app, "POST", "/v1/completions", Some(two), None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "two prompts");

    let greedy = chat(
        json!("hi"),
        json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 4}),
    );
    let (s, v, _) = post_chat(&app, Some(greedy), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(entry["token"], top[0]["token"], "{entry}");
    }
    let bad = chat(json!("hi"), json!({"logprobs": true, "top_logprobs": 50}));
    let (s, v, _) = post_chat(&app, Some(bad), None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "top_logprobs over 20");

    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false});
    let structured = chat(
        json!("Answer in JSON."),
        json!({"max_tokens": 60, "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}),
    );
    let (s, v, _) = post_chat(&app, Some(structured), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let out = v["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?} is not JSON: {e}"));
    assert!(parsed["ok"].is_boolean(), "{parsed}");
    let unknown = chat(json!("hi"), json!({"response_format": {"type": "xml"}}));
    let (s, v, _) = post_chat(&app, Some(unknown), None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "unknown response_format");
}

#[tokio::test]
async fn metrics_need_the_key_unless_made_public() {
    let limits = || Limits::default();
    let keyed = AppState::new(vec!["secret-1".into()], limits());
    keyed.set_engine(engine(4));
    let app = router(keyed, &[]);
    let (s, v, _) = call(&app, "GET", "/metrics", None, None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "metrics without a key");
    let (s, _, _) = call(&app, "GET", "/metrics", None, Some("secret-1")).await;
    assert_eq!(s, StatusCode::OK, "metrics with the key");
    let (s, _, _) = call(&app, "GET", "/health", None, None).await;
    assert_eq!(s, StatusCode::OK, "health stays public");

    let public = AppState::new(vec!["secret-1".into()], limits()).with_public_metrics(true);
    public.set_engine(engine(4));
    let app = router(public, &[]);
    let (s, v, _) = call(&app, "GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK, "--metrics-public: {v}");
    let (s, v, _) = call(&app, "GET", "/v1/models", None, None).await;
    assert_error(
        s,
        &v,
        StatusCode::UNAUTHORIZED,
        "the API still needs the key",
    );
}

#[test]
fn keys_match_whole_and_only_whole() {
    use llama_dms::api::key_matches;
    let keys = vec!["sk-one".to_string(), "sk-two-longer".to_string()];
    assert!(key_matches(&keys, b"sk-one"));
    assert!(key_matches(&keys, b"sk-two-longer"));
    for wrong in [
        &b""[..],
        b"sk-on",
        b"sk-one ",
        b"sk-two",
        b"SK-ONE",
        b"\xff",
    ] {
        assert!(!key_matches(&keys, wrong), "{wrong:?}");
    }
    assert!(!key_matches(&[], b"sk-one"));
}
