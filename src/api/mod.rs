//! The OpenAI-compatible HTTP API (axum). It knows the engine only through [`EngineHandle`]
//! and nothing of llama.cpp.

pub mod chat;
pub mod error;
pub mod media;
pub mod metrics;
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
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::engine::EngineHandle;

use chat::Shape;
pub use error::ApiError;
use media::MediaPolicy;
use types::{GenerationRequest, LogprobsField, ModelCard};

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
        }
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
        .route("/models", get(list_models))
        .route("/models/{id}", get(get_model))
        .route("/dms/schedulers", get(list_schedulers))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let mut app = Router::new()
        .route("/metrics", get(metrics::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .nest("/v1", v1)
        .route("/health", get(health))
        .merge(web::routes())
        .fallback(|| async { ApiError::not_found("unknown route") })
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
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

/// Checks `Authorization: Bearer <key>` in constant time when keys are configured.
async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.api_keys.is_empty() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = state.api_keys.iter().fold(false, |acc, key| {
        acc | bool::from(key.as_bytes().ct_eq(given.as_bytes()))
    });
    if ok {
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
            if path.is_empty() || path == "." || inner.is_syntax() || inner.is_eof() {
                ApiError::bad_request(message)
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
    check_model(req.model.as_deref(), &info.name)?;
    let (streaming, include_usage) = stream_flags(&req);
    let request = chat::to_engine_request(req, &state, info.n_ctx)?;
    respond(
        &state,
        request,
        info.name,
        Shape::Chat,
        streaming,
        include_usage,
    )
    .await
}

/// `POST /v1/completions`: a raw text prompt, no chat template.
async fn completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<GenerationRequest>,
) -> Result<Response, ApiError> {
    let info = state.engine()?.info().clone();
    check_model(req.model.as_deref(), &info.name)?;
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
    respond(
        &state,
        request,
        info.name,
        Shape::Text,
        streaming,
        include_usage,
    )
    .await
}

fn stream_flags(f: &GenerationRequest) -> (bool, bool) {
    let include_usage = f.stream_options.as_ref().is_some_and(|o| o.include_usage);
    (f.stream.unwrap_or(false), include_usage)
}

fn check_model(requested: Option<&str>, loaded: &str) -> Result<(), ApiError> {
    match requested {
        Some(m) if !m.is_empty() && m != loaded => Err(ApiError::not_found(format!(
            "model {m:?} not found; this server runs {loaded:?}"
        ))),
        _ => Ok(()),
    }
}

async fn respond(
    state: &AppState,
    request: crate::engine::GenerateRequest,
    model: String,
    shape: Shape,
    streaming: bool,
    include_usage: bool,
) -> Result<Response, ApiError> {
    if streaming {
        chat::stream(state, request, model, shape, include_usage)
    } else {
        chat::complete(state, request, model, shape).await
    }
}

fn model_card(state: &AppState, engine: &EngineHandle) -> ModelCard {
    let info = engine.info();
    ModelCard {
        id: info.name.clone(),
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
    if card.id != id {
        return Err(ApiError::not_found(format!("model {id:?} not found")));
    }
    Ok(axum::Json(card).into_response())
}

/// `GET /v1/dms/schedulers`: the schedulers a request's `dms.scheduler` may name, with their
/// kind (`rule`, `learned`, `script`, `off`, ...).
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
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

async fn health(State(state): State<AppState>) -> Response {
    match state.engine() {
        Ok(engine) => {
            axum::Json(json!({"status": "ok", "model": engine.info().name})).into_response()
        }
        Err(e) => (e.status, axum::Json(json!({"status": "loading"}))).into_response(),
    }
}
