//! The OpenAI-compatible HTTP API (axum). It knows the engine only through [`EngineHandle`]
//! and nothing of llama.cpp.

pub mod anthropic;
pub mod chat;
pub mod error;
pub mod media;
pub mod metrics;
pub mod respond;
pub mod response_types;
pub mod responses;
pub mod tokens;
pub mod tools;
mod translate;
pub mod types;
pub mod web;

use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::engine::{DmsMode, EngineHandle};

use chat::Shape;
pub use error::ApiError;
use media::MediaPolicy;
use types::{DmsProps, GenerationRequest, LogprobsField, Modalities, ModelCard, Props};

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most images in one request.
    pub max_images: usize,
    /// Where images may come from and how big they may be.
    pub media: MediaPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 20 << 20,
            max_images: 8,
            media: MediaPolicy {
                allowed_path: None,
                max_bytes: 16 << 20,
                allow_remote: false,
            },
        }
    }
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    engine: Arc<OnceLock<EngineHandle>>,
    /// Accepted API keys (none: no authentication).
    pub api_keys: Arc<Vec<String>>,
    /// Request limits.
    pub limits: Arc<Limits>,
    /// Server start (Unix seconds), reported as the model's `created`.
    pub started: u64,
    /// HTTP counters for `/metrics`.
    pub http: Arc<metrics::HttpMetrics>,
    /// Serve `/metrics` without a key even when keys are set (`--metrics-public`).
    pub metrics_public: bool,
    /// The DMS mode of a chat request whose `dms` object names none (`serve --dms`).
    pub default_dms: DmsMode,
    /// What the model answers to (`serve --alias`, `--strict-model-name`).
    pub model_names: Arc<ModelNames>,
}

/// The names a request's `model` may give. In single-model mode any name is accepted (clients
/// that hard-code `gpt-4o` work, as with llama-server) unless `strict`, and responses name the
/// first alias, or else the model file.
#[derive(Debug, Clone, Default)]
pub struct ModelNames {
    /// Names the model is served under, the first one reported in responses.
    pub aliases: Vec<String>,
    /// Answer 404 to any name but the file's and the aliases.
    pub strict: bool,
}

impl ModelNames {
    /// The name responses report for the model loaded as `loaded`.
    pub fn served(&self, loaded: &str) -> String {
        self.aliases
            .first()
            .cloned()
            .unwrap_or_else(|| loaded.to_string())
    }

    /// Whether `name` is one of the model's own names (the file's or an alias).
    pub fn is_known(&self, name: &str, loaded: &str) -> bool {
        name == loaded || self.aliases.iter().any(|a| a == name)
    }
}

impl AppState {
    /// State whose engine is set later with [`AppState::set_engine`] (the server answers 503
    /// until then).
    pub fn new(api_keys: Vec<String>, limits: Limits) -> Self {
        Self {
            engine: Arc::new(OnceLock::new()),
            api_keys: Arc::new(api_keys),
            limits: Arc::new(limits),
            started: chat::now(),
            http: Arc::default(),
            metrics_public: false,
            default_dms: DmsMode::Off,
            model_names: Arc::default(),
        }
    }

    /// Sets the names the model is served under and whether other names are refused.
    pub fn with_model_names(mut self, names: ModelNames) -> Self {
        self.model_names = Arc::new(names);
        self
    }

    /// Sets the DMS mode of chat requests that name none (`off` unless set). The caller checks
    /// that the mode can run (a learned default needs a learned scheduler plugin).
    pub fn with_default_dms(mut self, mode: DmsMode) -> Self {
        self.default_dms = mode;
        self
    }

    /// Opens `/metrics` to clients without a key (it is behind the key by default whenever
    /// keys are set).
    pub fn with_public_metrics(mut self, public: bool) -> Self {
        self.metrics_public = public;
        self
    }

    /// Hands over the loaded engine.
    pub fn set_engine(&self, engine: EngineHandle) {
        let _ = self.engine.set(engine);
    }

    /// The engine, or 503 while the model is loading.
    pub fn engine(&self) -> Result<&EngineHandle, ApiError> {
        self.engine
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }
}

/// The routes, with auth, body limit and optional CORS.
pub fn router(state: AppState, cors_origins: &[String]) -> Router {
    let v1 = Router::new()
        .route("/chat/completions", post(chat_completions))
        .route("/completions", post(completions))
        .route("/messages", post(anthropic::messages))
        .route("/responses", post(responses::responses))
        .route("/models", get(list_models))
        .route("/models/{id}", get(get_model))
        .route("/dms/schedulers", get(list_schedulers))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let mut metrics_route = Router::new().route("/metrics", get(metrics::metrics));
    if !state.metrics_public {
        metrics_route = metrics_route.route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    }
    let mut app = metrics_route
        .nest("/v1", v1)
        .route("/health", get(health))
        .merge(
            Router::new()
                .route("/props", get(props))
                .route("/tokenize", post(tokens::tokenize))
                .route("/detokenize", post(tokens::detokenize))
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    require_api_key,
                )),
        )
        .merge(web::routes())
        .fallback(|| async { ApiError::not_found("unknown route") })
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            declared_body_limit,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count_and_log,
        ))
        .with_state(state);
    if !cors_origins.is_empty() {
        let origins: Vec<HeaderValue> =
            cors_origins.iter().filter_map(|o| o.parse().ok()).collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    app
}

/// Answers 413 at once when `Content-Length` already claims more than the body limit (instead
/// of waiting for a body that may never come).
async fn declared_body_limit(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.limits.max_body_bytes as u64) {
        return ApiError::too_large().into_response();
    }
    next.run(request).await
}

/// Whether `given` is one of `keys`. Both sides are hashed first and every key is compared,
/// so the time taken depends neither on where a guess differs nor on the keys' lengths.
pub fn key_matches(keys: &[String], given: &[u8]) -> bool {
    let given = Sha256::digest(given);
    let hit = keys.iter().fold(Choice::from(0), |acc, key| {
        acc | Sha256::digest(key.as_bytes()).ct_eq(&given)
    });
    bool::from(hit)
}

/// The key of an `Authorization: Bearer <key>` header (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> &[u8] {
    let (scheme, rest) = value.split_at(value.len().min(7));
    if scheme.eq_ignore_ascii_case(b"bearer ") {
        rest.trim_ascii()
    } else {
        b""
    }
}

/// Checks `Authorization: Bearer <key>` in constant time when keys are configured.
async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.api_keys.is_empty() {
        return next.run(request).await;
    }
    // `Authorization: Bearer KEY` (OpenAI) or `x-api-key: KEY` (Anthropic).
    let headers = request.headers();
    let given = match (headers.get(header::AUTHORIZATION), headers.get("x-api-key")) {
        (Some(v), _) => bearer(v.as_bytes()),
        (None, Some(v)) => v.as_bytes(),
        (None, None) => &b""[..],
    };
    // An empty key never matches (not even a configured empty one).
    if !given.is_empty() && key_matches(&state.api_keys, given) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// A JSON body whose rejection is our OpenAI-shaped error.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    /// Parses the body as JSON whatever its `Content-Type` (curl's `-d` sends form type), and
    /// names the offending field on a type error.
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large()
                } else {
                    ApiError::bad_request(format!(
                        "cannot read the request body: {}",
                        r.body_text()
                    ))
                }
            })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = format!("invalid JSON body: {inner}");
            // serde_json reports some type errors (a number where an enum goes) as syntax
            // errors: when the body is valid JSON, the fault is the value at `path`.
            let valid = || serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
            let object = bytes.trim_ascii_start().first() == Some(&b'{');
            let too_deep = message.contains("recursion limit exceeded");
            if inner.is_eof() || too_deep || (inner.is_syntax() && !valid()) {
                ApiError::bad_request(message)
            } else if !object {
                ApiError::bad_request("the request body must be a JSON object")
            } else if path.is_empty() || path == "." {
                ApiError::bad_request(message)
            } else if inner.is_syntax() {
                ApiError::bad_param(
                    &path,
                    format!("invalid JSON body: {path} has a value of the wrong type"),
                )
            } else {
                ApiError::bad_param(&path, message)
            }
        })?;
        de.end()
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        Ok(Self(value))
    }
}

async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<GenerationRequest>,
) -> Result<Response, ApiError> {
    let info = state.engine()?.info().clone();
    let served = check_model(req.model.as_deref(), &state.model_names, &info.name)?;
    chat::check_logit_bias_ids(&req, info.n_vocab)?;
    let (streaming, include_usage) = stream_flags(&req);
    let n = chat::choices_asked(&req, info.slots)?;
    let chat = chat::to_chat_request(req, &state, info.n_ctx)?;
    let reply = respond::Reply {
        n,
        model: served,
        shape: Shape::Chat,
        include_usage,
        tools: chat.tools,
        image_params: chat.image_params,
    };
    respond(&state, chat.request, reply, streaming).await
}

/// `POST /v1/completions`: a raw text prompt, no chat template.
async fn completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<GenerationRequest>,
) -> Result<Response, ApiError> {
    let info = state.engine()?.info().clone();
    let served = check_model(req.model.as_deref(), &state.model_names, &info.name)?;
    chat::check_logit_bias_ids(&req, info.n_vocab)?;
    let prompt = match req.prompt.clone().map(|p| p.into_vec()) {
        Some(v) if v.len() == 1 => v.into_iter().next().unwrap_or_default(),
        _ => return Err(ApiError::bad_param("prompt", "send exactly one prompt")),
    };
    let (streaming, include_usage) = stream_flags(&req);
    let mut request = chat::base_request(&req, info.n_ctx)?;
    match req.logprobs {
        Some(LogprobsField::Count(k)) if (0..=20).contains(&k) => {
            request.top_logprobs = Some(k as usize)
        }
        Some(LogprobsField::Count(_)) => {
            return Err(ApiError::bad_param(
                "logprobs",
                "logprobs must be in [0, 20]",
            ))
        }
        Some(LogprobsField::Flag(true)) => request.top_logprobs = Some(0),
        _ => {}
    }
    request.raw_prompt = Some(prompt);
    let reply = respond::Reply {
        n: chat::choices_asked(&req, info.slots)?,
        model: served,
        shape: Shape::Text,
        include_usage,
        tools: None,
        image_params: Vec::new(),
    };
    respond(&state, request, reply, streaming).await
}

fn stream_flags(f: &GenerationRequest) -> (bool, bool) {
    let include_usage = f.stream_options.as_ref().is_some_and(|o| o.include_usage);
    (f.stream.unwrap_or(false), include_usage)
}

/// Longest `model` a request may name.
pub const MAX_MODEL_NAME_BYTES: usize = 256;

/// The name to report for a request that asked for `requested`: any name is accepted unless
/// the names are strict, in which case only the model's own are (404 otherwise).
pub(crate) fn check_model(
    requested: Option<&str>,
    names: &ModelNames,
    loaded: &str,
) -> Result<String, ApiError> {
    let served = names.served(loaded);
    if requested.is_some_and(|m| m.len() > MAX_MODEL_NAME_BYTES) {
        return Err(ApiError::bad_param(
            "model",
            format!("model names are at most {MAX_MODEL_NAME_BYTES} bytes"),
        ));
    }
    match requested {
        Some(m) if names.strict && !m.is_empty() && !names.is_known(m, loaded) => {
            // Echo at most a short prefix of what the client sent.
            let shown: String = m.chars().take(64).collect();
            let more = if shown.len() < m.len() { "..." } else { "" };
            let mut error = ApiError::not_found(format!(
                "model {shown:?}{more} not found; this server runs {served:?}"
            ));
            error.param = Some("model".into());
            Err(error)
        }
        _ => Ok(served),
    }
}

async fn respond(
    state: &AppState,
    request: crate::engine::GenerateRequest,
    reply: respond::Reply,
    streaming: bool,
) -> Result<Response, ApiError> {
    if streaming {
        respond::stream(state, request, reply).await
    } else {
        respond::complete(state, request, reply).await
    }
}

fn model_card(state: &AppState, engine: &EngineHandle) -> ModelCard {
    let info = engine.info();
    let served = state.model_names.served(&info.name);
    let aliases = state
        .model_names
        .aliases
        .iter()
        .chain([&info.name])
        .filter(|n| **n != served)
        .cloned()
        .collect();
    ModelCard {
        id: served,
        aliases,
        object: "model",
        created: state.started,
        owned_by: "llama-dms",
        vision: info.vision,
        context_length: info.n_ctx,
        description: info.description.clone(),
    }
}

async fn list_models(State(state): State<AppState>) -> Result<Response, ApiError> {
    let card = model_card(&state, state.engine()?);
    Ok(axum::Json(json!({"object": "list", "data": [card]})).into_response())
}

async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let card = model_card(&state, state.engine()?);
    if card.id != id && !card.aliases.contains(&id) {
        return Err(ApiError::not_found(format!("model {id:?} not found")));
    }
    Ok(axum::Json(card).into_response())
}

/// `GET /v1/dms/schedulers`: the schedulers a request's `dms.scheduler` may name, with their
/// kind (`rule`, `learned`, `script`, `off`, ...), and the `default_mode` of a request whose
/// `dms` object names no mode.
async fn list_schedulers(State(state): State<AppState>) -> Result<Response, ApiError> {
    let registry = state.engine()?.schedulers();
    let data: Vec<_> = registry
        .names()
        .into_iter()
        .map(|name| {
            let kind = registry
                .get(&name)
                .map_or_else(|| "custom".to_string(), |s| s.kind().to_string());
            json!({"id": name, "object": "dms.scheduler", "kind": kind})
        })
        .collect();
    Ok(
        axum::Json(json!({"object": "list", "data": data, "default_mode": state.default_dms}))
            .into_response(),
    )
}

/// `GET /props` (needs the key when keys are set).
async fn props(State(state): State<AppState>) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let info = engine.info();
    let names = &state.model_names;
    Ok(axum::Json(Props {
        model: names.served(&info.name),
        model_file: info.name.clone(),
        aliases: names.aliases.clone(),
        strict_model_name: names.strict,
        description: info.description.clone(),
        architecture: info.architecture.clone(),
        n_ctx: info.n_ctx,
        n_vocab: info.n_vocab,
        n_embd: info.n_embd,
        total_slots: info.slots,
        chat_template: info.chat_template.clone(),
        modalities: Modalities {
            vision: info.vision,
            audio: false,
        },
        dms: DmsProps {
            default_mode: state.default_dms,
            schedulers: engine.schedulers().names(),
        },
        version: env!("CARGO_PKG_VERSION"),
    })
    .into_response())
}

async fn health(State(state): State<AppState>) -> Response {
    match state.engine() {
        Ok(engine) => {
            axum::Json(json!({"status": "ok", "model": engine.info().name})).into_response()
        }
        Err(e) => (e.status, axum::Json(json!({"status": "loading"}))).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_nothing_else_counts() {
        assert_eq!(bearer(b"Bearer k1"), b"k1");
        assert_eq!(bearer(b"bearer  k1 "), b"k1");
        assert_eq!(bearer(b"BEARER k1"), b"k1");
        for other in [
            &b"Basic k1"[..],
            b"k1",
            b"Token k1",
            b"Bearer",
            b"Bearerk1",
            b"",
        ] {
            assert_eq!(bearer(other), b"", "{other:?}");
        }
    }
}
