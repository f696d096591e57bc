//! The request parser: arbitrary JSON bodies through the real path (`ApiJson` extraction, then
//! `to_engine_request` / `base_request`) never panic; every rejection is a 4xx with a message;
//! every accepted request satisfies the engine's invariants.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::Request;
use llama_dms::api::chat::{base_request, to_engine_request};
use llama_dms::api::media::MediaPolicy;
use llama_dms::api::types::GenerationRequest;
use llama_dms::api::{ApiError, ApiJson, AppState, Limits};
use llama_dms::dms::Registry;
use llama_dms::engine::{ContentPart, DmsMode, EngineConfig, EngineHandle, GenerateRequest};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::property;

const N_CTX: usize = 512;
const MAX_IMAGES: usize = 3;
const MAX_IMAGE_BYTES: usize = 96;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

/// A server state with a real (tiny) engine and the shipped scheduler plugins, as the handlers
/// see it: `to_engine_request` checks `dms.scheduler` against the engine's registry.
fn state() -> &'static AppState {
    static STATE: OnceLock<AppState> = OnceLock::new();
    STATE.get_or_init(|| {
        let tiny = crate::common::tiny_models();
        let mut config = EngineConfig::new(&tiny.model, Some(tiny.mmproj.clone()));
        config.runtime.context.n_ctx = N_CTX as u32;
        config.runtime.context.n_threads = 1;
        let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
        config.schedulers = Arc::new(Registry::load_dir(&plugins).expect("plugins"));
        let state = AppState::new(
            Vec::new(),
            Limits {
                max_body_bytes: 1 << 20,
                max_images: MAX_IMAGES,
                media: MediaPolicy {
                    allowed_path: None,
                    max_bytes: MAX_IMAGE_BYTES,
                    allow_remote: false,
                },
            },
        );
        state.set_engine(EngineHandle::start(config).expect("engine"));
        state
    })
}

/// Requests the chat conversion accepted (so the invariants are not checked vacuously).
static ACCEPTED: AtomicUsize = AtomicUsize::new(0);

/// The body through the server's own JSON extractor.
fn parse(body: Vec<u8>) -> Result<GenerationRequest, ApiError> {
    let request = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    runtime()
        .block_on(ApiJson::<GenerationRequest>::from_request(request, &()))
        .map(|ApiJson(r)| r)
}

fn check_rejection(e: &ApiError) -> Result<(), TestCaseError> {
    prop_assert!(
        e.status.is_client_error(),
        "status {} for {:?}",
        e.status,
        e
    );
    prop_assert!(!e.message.trim().is_empty(), "empty message: {:?}", e);
    let body = e.body();
    prop_assert_eq!(body["error"]["message"].as_str(), Some(e.message.as_str()));
    if let Some(p) = &e.param {
        prop_assert!(!p.is_empty(), "empty param: {:?}", e);
    }
    Ok(())
}

/// The shared sampling invariants of an accepted request.
fn check_sampling(r: &GenerateRequest) -> Result<(), TestCaseError> {
    prop_assert!(
        (1..=N_CTX).contains(&r.max_tokens),
        "max_tokens {}",
        r.max_tokens
    );
    let s = &r.sampling;
    for (name, v, lo, hi) in [
        ("temperature", s.temperature, 0.0, 2.0),
        ("top_p", s.top_p, 0.0, 1.0),
        ("min_p", s.min_p, 0.0, 1.0),
        ("presence_penalty", s.presence_penalty, -2.0, 2.0),
        ("frequency_penalty", s.frequency_penalty, -2.0, 2.0),
    ] {
        prop_assert!(v.is_finite() && (lo..=hi).contains(&v), "{} = {}", name, v);
    }
    prop_assert!(s.top_k >= 0, "top_k {}", s.top_k);
    Ok(())
}

/// Checks one body through both endpoints' conversions.
fn check_body(body: Vec<u8>) -> Result<(), TestCaseError> {
    let req = match parse(body) {
        Ok(r) => r,
        Err(e) => return check_rejection(&e),
    };
    match base_request(&req, N_CTX) {
        Ok(r) => check_sampling(&r)?,
        Err(e) => check_rejection(&e)?,
    }
    let chat = match to_engine_request(req, state(), N_CTX) {
        Ok(r) => r,
        Err(e) => return check_rejection(&e),
    };
    ACCEPTED.fetch_add(1, Ordering::Relaxed);
    check_sampling(&chat)?;
    prop_assert!(!chat.messages.is_empty());
    let n_images = chat
        .messages
        .iter()
        .flat_map(|m| &m.content)
        .filter(|p| matches!(p, ContentPart::Image(_)))
        .count();
    prop_assert!(n_images <= MAX_IMAGES, "{} images", n_images);
    for m in &chat.messages {
        for p in &m.content {
            if let ContentPart::Image(bytes) = p {
                prop_assert!(
                    bytes.len() <= MAX_IMAGE_BYTES,
                    "{} image bytes",
                    bytes.len()
                );
            }
        }
    }
    if let Some(k) = chat.top_logprobs {
        prop_assert!(k <= 20, "top_logprobs {}", k);
    }
    let d = &chat.dms;
    prop_assert!(d.mc_samples <= 16, "mc_samples {}", d.mc_samples);
    prop_assert!(
        d.dropout.is_finite() && (0.0..=0.9).contains(&d.dropout),
        "dropout {}",
        d.dropout
    );
    if d.mode == DmsMode::Fixed {
        // The weights the engine will apply: one per image, finite and >= 0.
        let w = d.weights.as_ref();
        prop_assert!(w.is_some(), "fixed mode without weights");
        let w = w.unwrap();
        prop_assert!(w.check(n_images).is_ok(), "{:?} for {} images", w, n_images);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Strategies.

/// Numbers that stress conversions: extremes, tiny, negative zero, beyond f32, integers.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (-4i64..600).prop_map(|n| json!(n)),
        2 => (-3.0f64..3.0).prop_map(|x| json!(x)),
        1 => prop::sample::select(vec![
            json!(0), json!(-0.0), json!(1), json!(20), json!(21), json!(512), json!(513),
            json!(i64::MIN), json!(i64::MAX), json!(u64::MAX), json!(i32::MAX), json!(i32::MIN),
            json!(u32::MAX), json!(1e39), json!(-1e39), json!(f64::MAX), json!(f64::MIN),
            json!(5e-324), json!(1e-45), json!(2.0000001), json!(0.9000001), json!(16), json!(17),
        ]),
        1 => any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(|x| json!(x)),
        1 => any::<i64>().prop_map(|n| json!(n)),
    ]
}

/// Strings: short, special, NaN-ish, control characters, long.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z ]{0,12}",
        2 => any::<String>().prop_map(|s| s.chars().take(40).collect()),
        1 => prop::sample::select(vec![
            "", "NaN", "nan", "Infinity", "-inf", "1e999", "null", "true", "0", "-1",
            "off", "fixed", "rule", "learned", "RULE", "user", "system", "assistant",
            "developer", "tool", "<|im_start|>", "\u{0}", "\u{E000}0\u{E002}", "{{x}}",
            "data:image/png;base64,aGk=", "data:image/png;base64,***", "file:///etc/passwd",
            "http://127.0.0.1/x.png", "data:", "data:image/gif;base64,",
        ].into_iter().map(String::from).collect::<Vec<_>>()),
        1 => (1usize..20_000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// An array nested `depth` times around `null` (beyond serde_json's recursion limit of 128).
fn deep(depth: usize) -> Value {
    let mut v = Value::Null;
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

/// An object with some of `fields` (each a name and its value strategy) and a few unknown keys.
fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let picks: Vec<_> = fields
        .into_iter()
        .map(|(name, s)| prop::option::weighted(0.3, s).prop_map(move |v| (name, v)))
        .collect();
    (picks, prop::collection::vec((text(), any_json()), 0..2))
        .prop_map(|(picked, extra)| {
            let mut m = Map::new();
            for (name, v) in picked {
                if let Some(v) = v {
                    m.insert(name.to_string(), v);
                }
            }
            for (k, v) in extra {
                m.insert(k, v);
            }
            Value::Object(m)
        })
        .boxed()
}

/// A field value: usually well typed, sometimes anything.
fn or_any(good: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![12 => good, 1 => any_json()].boxed()
}

fn data_uri() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![
            "image/png",
            "image/jpeg",
            "image/gif",
            "text/plain",
            "IMAGE/PNG",
        ]),
        prop::collection::vec(any::<u8>(), 0..140),
        any::<bool>(),
    )
        .prop_map(|(mime, bytes, b64)| {
            use base64::Engine as _;
            let payload = base64::engine::general_purpose::STANDARD.encode(bytes);
            let enc = if b64 { ";base64" } else { "" };
            json!(format!("data:{mime}{enc},{payload}"))
        })
}

fn part() -> BoxedStrategy<Value> {
    let image_url = object(vec![
        (
            "url",
            or_any(prop_oneof![data_uri(), text().prop_map(Value::String)]),
        ),
        ("detail", or_any(text().prop_map(Value::String))),
    ]);
    prop_oneof![
        3 => (text(), any::<bool>()).prop_map(|(t, typed)| if typed {
            json!({"type": "text", "text": t})
        } else {
            json!({"text": t})
        }),
        3 => image_url.prop_map(|u| json!({"type": "image_url", "image_url": u})),
        1 => object(vec![
            ("type", or_any(prop::sample::select(vec!["text", "image_url", "input_audio", "Text"]).prop_map(|s| json!(s)))),
            ("text", or_any(text().prop_map(Value::String))),
            ("image_url", any_json().boxed()),
        ]),
    ]
    .boxed()
}

fn message() -> BoxedStrategy<Value> {
    let role = prop_oneof![
        4 => prop::sample::select(vec!["user", "system", "assistant", "developer"]).prop_map(|s| json!(s)),
        1 => text().prop_map(Value::String),
    ];
    let content = prop_oneof![
        3 => text().prop_map(Value::String),
        3 => prop::collection::vec(part(), 0..5).prop_map(Value::Array),
        1 => Just(Value::Null),
    ];
    object(vec![("role", or_any(role)), ("content", or_any(content))])
}

fn dms() -> BoxedStrategy<Value> {
    let mode = prop::sample::select(vec!["off", "fixed", "rule", "learned", "Rule", "auto"])
        .prop_map(|s| json!(s));
    let weights = object(vec![
        (
            "images",
            or_any(prop::collection::vec(number(), 0..5).prop_map(Value::Array)),
        ),
        ("text", or_any(number())),
    ]);
    object(vec![
        ("mode", or_any(mode)),
        ("scheduler", or_any(text().prop_map(Value::String))),
        ("weights", or_any(weights)),
        ("mc_samples", or_any(number())),
        ("dropout", or_any(number())),
    ])
}

/// A request body with the real field names and random types and values.
fn request() -> BoxedStrategy<Value> {
    let num = || or_any(number());
    let flag = || or_any(any::<bool>().prop_map(Value::Bool));
    let strings = || {
        or_any(prop_oneof![
            text().prop_map(Value::String),
            prop::collection::vec(text(), 0..4).prop_map(|v| json!(v)),
        ])
    };
    let format = prop_oneof![
        Just(json!({"type": "text"})),
        Just(json!({"type": "json_object"})),
        any_json().prop_map(
            |s| json!({"type": "json_schema", "json_schema": {"name": "x", "schema": s}})
        ),
        Just(json!({"type": "json_schema"})),
    ];
    let messages = prop_oneof![
        6 => prop::collection::vec(message(), 0..6).prop_map(Value::Array),
        1 => (100usize..300).prop_map(deep),
    ];
    object(vec![
        ("model", or_any(text().prop_map(Value::String))),
        ("messages", or_any(messages)),
        ("prompt", strings()),
        (
            "logprobs",
            or_any(prop_oneof![any::<bool>().prop_map(Value::Bool), number()]),
        ),
        ("top_logprobs", num()),
        ("dms", dms()),
        ("max_tokens", num()),
        ("max_completion_tokens", num()),
        ("temperature", num()),
        ("top_p", num()),
        ("top_k", num()),
        ("min_p", num()),
        ("seed", num()),
        ("stop", strings()),
        ("presence_penalty", num()),
        ("frequency_penalty", num()),
        ("n", num()),
        ("stream", flag()),
        (
            "stream_options",
            or_any(object(vec![("include_usage", flag())])),
        ),
        ("ignore_eos", flag()),
        ("response_format", or_any(format)),
    ])
}

/// A value in `[lo, hi]` widened by a third on each side (so edges and just-outside values come).
fn near(lo: f64, hi: f64) -> BoxedStrategy<Value> {
    let span = (hi - lo) / 3.0;
    prop_oneof![
        3 => (lo..=hi).prop_map(|x| json!(x)),
        1 => ((lo - span)..=(hi + span)).prop_map(|x| json!(x)),
        1 => prop::sample::select(vec![lo, hi]).prop_map(|x| json!(x)),
    ]
    .boxed()
}

fn near_int(lo: i64, hi: i64) -> BoxedStrategy<Value> {
    prop_oneof![3 => (lo..=hi).prop_map(|n| json!(n)), 1 => ((lo - 2)..=(hi + 2)).prop_map(|n| json!(n))].boxed()
}

/// A mostly valid request: a real conversation, and in-range-ish optional fields.
fn valid_request() -> BoxedStrategy<Value> {
    let good_part = prop_oneof![
        3 => text().prop_map(|t| json!({"type": "text", "text": t})),
        1 => prop::collection::vec(any::<u8>(), 0..100).prop_map(|b| {
            use base64::Engine as _;
            let url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(b));
            json!({"type": "image_url", "image_url": {"url": url}})
        }),
    ];
    let content = prop_oneof![
        text().prop_map(Value::String),
        prop::collection::vec(good_part, 0..4).prop_map(Value::Array),
    ];
    let message = (
        prop::sample::select(vec!["user", "system", "assistant", "developer"]),
        content,
    )
        .prop_map(|(role, content)| json!({"role": role, "content": content}));
    let weights = (prop::collection::vec(near(0.0, 3.0), 0..4), near(0.0, 3.0))
        .prop_map(|(images, text)| json!({"images": images, "text": text}));
    let dms = object(vec![
        (
            "mode",
            prop::sample::select(vec!["off", "fixed", "rule", "learned"])
                .prop_map(|s| json!(s))
                .boxed(),
        ),
        (
            "scheduler",
            prop::sample::select(vec![
                "rule-default",
                "learned-colours",
                "script-example",
                "off",
                "nope",
            ])
            .prop_map(|s| json!(s))
            .boxed(),
        ),
        ("weights", weights.boxed()),
        ("mc_samples", near_int(0, 16)),
        ("dropout", near(0.0, 0.9)),
    ]);
    let fields = object(vec![
        ("max_tokens", near_int(1, N_CTX as i64)),
        ("max_completion_tokens", near_int(1, N_CTX as i64)),
        ("temperature", near(0.0, 2.0)),
        ("top_p", near(0.0, 1.0)),
        ("min_p", near(0.0, 1.0)),
        ("top_k", near_int(0, 100)),
        ("presence_penalty", near(-2.0, 2.0)),
        ("frequency_penalty", near(-2.0, 2.0)),
        ("top_logprobs", near_int(0, 20)),
        ("logprobs", any::<bool>().prop_map(Value::Bool).boxed()),
        ("n", near_int(1, 1)),
        ("seed", number().boxed()),
        ("dms", dms),
    ]);
    (prop::collection::vec(message, 1..5), fields)
        .prop_map(|(messages, mut fields)| {
            fields["messages"] = Value::Array(messages);
            fields
        })
        .boxed()
}

/// Text-level damage to a serialised body.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(usize),
    Insert(usize, String),
    Flip(usize, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    let splice = prop::sample::select(vec![
        "1e999",
        "NaN",
        "-Infinity",
        "\"\\ud800\"",
        "\\u0000",
        "\u{0}",
        "]",
        "}",
        "{",
        ",",
        ":",
        "\"",
        "\\",
        "-",
        "0x10",
        "01",
        "[[[[[[[[",
        "\u{feff}",
        "\u{fffd}",
        " \"a\":1,",
    ]);
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), splice.prop_map(String::from)).prop_map(|(i, s)| Damage::Insert(i, s)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Flip(i, b)),
    ]
}

fn apply(mut bytes: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        let len = bytes.len().max(1);
        match d {
            Damage::Truncate(i) => bytes.truncate(i % len),
            Damage::Insert(i, s) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, s.bytes());
            }
            Damage::Flip(i, b) => {
                if !bytes.is_empty() {
                    let at = i % bytes.len();
                    bytes[at] ^= b | 1;
                }
            }
        }
    }
    bytes
}

#[test]
fn request_parser_structured_json() {
    let before = ACCEPTED.load(Ordering::Relaxed);
    let bodies = prop_oneof![request(), valid_request()];
    property("request_parser_structured_json", 5000, bodies, |body| {
        check_body(serde_json::to_vec(&body).expect("serialise"))
    });
    let accepted = ACCEPTED.load(Ordering::Relaxed) - before;
    eprintln!("request_parser_structured_json: {accepted} accepted");
    assert!(accepted >= 500, "only {accepted} of 5000 requests accepted");
}

#[test]
fn request_parser_damaged_json() {
    let strategy = (request(), prop::collection::vec(damage(), 1..4));
    property(
        "request_parser_damaged_json",
        3000,
        strategy,
        |(body, damage)| {
            check_body(apply(
                serde_json::to_vec(&body).expect("serialise"),
                &damage,
            ))
        },
    );
}

#[test]
fn request_parser_arbitrary_bytes() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        any_json().prop_map(|v| serde_json::to_vec(&v).expect("serialise")),
    ];
    property("request_parser_arbitrary_bytes", 3000, bytes, check_body);
}

/// Regression cases found or worth pinning: each is rejected with a 4xx, or accepted sanely.
#[test]
fn request_parser_pinned_cases() {
    let cases = [
        json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 1e39}),
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": u64::MAX}),
        json!({"messages": [{"role": "user", "content": "hi"}], "seed": u64::MAX}),
        json!({"messages": [{"role": "user", "content": "hi"}], "top_k": i64::MIN}),
        json!({"messages": [{"role": "user", "content": "hi"}], "dms": {"mode": "fixed", "weights": {"images": [], "text": 1e39}}}),
        json!({"messages": [{"role": "user", "content": "hi"}], "dms": {"weights": {"images": [], "text": -0.0}}}),
        json!({"messages": [{"role": "user", "content": "hi"}], "dms": {"mc_samples": -1}}),
        json!({"messages": deep(400)}),
    ];
    for c in cases {
        if let Err(e) = check_body(serde_json::to_vec(&c).unwrap()) {
            panic!("{c}: {e}");
        }
    }
    for raw in [
        "{\"messages\": [], \"temperature\": 1e999}",
        "{\"model\": \"\\ud800\"}",
        "",
    ] {
        if let Err(e) = check_body(raw.as_bytes().to_vec()) {
            panic!("{raw}: {e}");
        }
    }
}
