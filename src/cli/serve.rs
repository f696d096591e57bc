//! `llama-dms serve`: the OpenAI-compatible HTTP server.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Args;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use super::{exit_code, fail, ModelArgs};
use crate::api::media::MediaPolicy;
use crate::api::{router, ApiError, AppState, Limits, ModelNames};
use crate::engine::{DmsMode, EngineHandle};

/// The DMS mode of API requests that name none (`serve --dms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultDmsMode {
    /// `rule` when `rule-default` was calibrated for the served model file (it measurably
    /// helps there: README, Results), else `learned` when the first learned plugin was trained
    /// for it, else `off`.
    Auto,
    /// No weighting (exactly llama.cpp).
    Off,
    /// The rule-based scheduler (`rule-default`).
    Rule,
    /// The first learned scheduler plugin (one must be loaded, see --plugins).
    Learned,
}

impl DefaultDmsMode {
    /// The mode this choice gives for `model_file` with `schedulers` loaded.
    pub fn resolve(self, schedulers: &crate::dms::Registry, model_file: &str) -> DmsMode {
        match self {
            DefaultDmsMode::Auto => {
                let fitted = |s: &std::sync::Arc<dyn crate::dms::Scheduler>| {
                    s.fitted_for() == Some(model_file)
                };
                if fitted(&schedulers.default_rule()) {
                    DmsMode::Rule
                } else if schedulers.default_learned().is_some_and(|s| fitted(&s)) {
                    DmsMode::Learned
                } else {
                    DmsMode::Off
                }
            }
            DefaultDmsMode::Off => DmsMode::Off,
            DefaultDmsMode::Rule => DmsMode::Rule,
            DefaultDmsMode::Learned => DmsMode::Learned,
        }
    }
}

/// `serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// DMS mode of a request whose `dms` object names no mode (or that has none); a request's
    /// own `dms.mode` always wins.
    #[arg(long, env = "LLAMA_DMS_DMS_MODE", value_enum, default_value_t = DefaultDmsMode::Auto)]
    pub dms: DefaultDmsMode,
    /// Address to listen on (loopback unless you mean otherwise).
    #[arg(long, env = "LLAMA_DMS_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port.
    #[arg(long, env = "LLAMA_DMS_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Accepted API key (repeatable; comma-separated in the variable). None: no authentication.
    #[arg(long = "api-key", env = "LLAMA_DMS_API_KEY", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    /// File with accepted API keys, one per line (blank lines and `#` comments ignored).
    #[arg(long, env = "LLAMA_DMS_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Origin allowed by CORS (repeatable). None: CORS off.
    #[arg(
        long = "cors-origin",
        env = "LLAMA_DMS_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Folder that `file://` image URLs may point into.
    #[arg(long, env = "LLAMA_DMS_ALLOWED_MEDIA_PATH")]
    pub allowed_media_path: Option<PathBuf>,
    /// Fetch http(s) image URLs (public addresses only; 10 s timeout; size limited by the body limit).
    #[arg(long, env = "LLAMA_DMS_ALLOW_REMOTE_MEDIA")]
    pub allow_remote_media: bool,
    /// Largest request body in MiB.
    #[arg(long, env = "LLAMA_DMS_MAX_BODY_MB", default_value_t = 20)]
    pub max_body_mb: usize,
    /// Most images per request.
    #[arg(long, env = "LLAMA_DMS_MAX_IMAGES", default_value_t = 8)]
    pub max_images: usize,
    /// Largest image in pixels (width x height).
    #[arg(long, env = "LLAMA_DMS_MAX_IMAGE_PIXELS", default_value_t = 4096 * 4096)]
    pub max_image_pixels: u64,
    /// A name the model is served under (repeatable; the first one is what responses and
    /// `/v1/models` report instead of the model file's name).
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// Answer 404 to a request naming another model than the file's or an alias (by default any
    /// name is accepted, as llama-server does with one model).
    #[arg(long, env = "LLAMA_DMS_STRICT_MODEL_NAME")]
    pub strict_model_name: bool,
    /// Serve `/metrics` without a key even when API keys are set (it needs one by default).
    #[arg(long, env = "LLAMA_DMS_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// Seconds that running requests may take to finish after Ctrl-C/SIGTERM; then they are
    /// cancelled and the server exits.
    #[arg(long, env = "LLAMA_DMS_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Requests that may wait for a free slot; more are answered 429 with `Retry-After`.
    #[arg(long, env = "LLAMA_DMS_MAX_QUEUE", default_value_t = 16)]
    pub max_queue: usize,
    /// Seconds a client may take to send a request's headers (also how long an idle
    /// keep-alive connection stays open).
    #[arg(long, env = "LLAMA_DMS_HEADER_TIMEOUT", default_value_t = 10)]
    pub header_timeout: u64,
    /// Seconds a client may take to send a request's body (then 408 and the connection closes).
    #[arg(long, env = "LLAMA_DMS_BODY_TIMEOUT", default_value_t = 30)]
    pub body_timeout: u64,
}

impl ServeArgs {
    /// The keys from `--api-key` and `--api-key-file`.
    fn api_keys(&self) -> Result<Vec<String>, String> {
        let mut keys: Vec<String> = self
            .api_keys
            .iter()
            .filter(|k| !k.is_empty())
            .cloned()
            .collect();
        if let Some(path) = &self.api_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--api-key-file {}: {e}", path.display()))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        Ok(keys)
    }

    fn limits(&self) -> Result<Limits, String> {
        let allowed_path = match &self.allowed_media_path {
            Some(p) => Some(
                p.canonicalize()
                    .map_err(|e| format!("--allowed-media-path {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let max_body_bytes = self.max_body_mb.max(1) << 20;
        Ok(Limits {
            max_body_bytes,
            max_images: self.max_images,
            media: MediaPolicy {
                allowed_path,
                max_bytes: max_body_bytes,
                allow_remote: self.allow_remote_media,
            },
        })
    }
}

/// Binds first (so `/health` answers 503 while the model loads), then loads the engine.
pub(super) fn serve(args: &ServeArgs) -> ExitCode {
    let mut config = match args.model.engine_config() {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    config.max_image_pixels = args.max_image_pixels;
    if args.dms == DefaultDmsMode::Learned && config.schedulers.default_learned().is_none() {
        return fail(
            2,
            &format!(
                "--dms learned needs a learned scheduler plugin, and none is loaded from {} \
                 (see --plugins)",
                args.model.plugins.display()
            ),
        );
    }
    let default_dms = args.dms.resolve(
        &config.schedulers,
        &super::trust::model_file_name(&config.model),
    );
    if args.dms == DefaultDmsMode::Auto {
        eprintln!(
            "llama-dms: default DMS mode {} (--dms auto: rule with a rule-default calibrated \
             for this model, else learned with a learned plugin trained for it)",
            default_dms.name()
        );
    }
    if args.max_queue == 0 || args.header_timeout == 0 || args.body_timeout == 0 {
        return fail(
            2,
            "--max-queue, --header-timeout and --body-timeout must be at least 1",
        );
    }
    config.queue_capacity = args.max_queue;
    let api_keys = match args.api_keys() {
        Ok(k) => k,
        Err(e) => return fail(2, &e),
    };
    let limits = match args.limits() {
        Ok(l) => l,
        Err(e) => return fail(2, &e),
    };
    let addr: SocketAddr = match format!("{}:{}", args.host, args.port).parse() {
        Ok(a) => a,
        Err(e) => return fail(2, &format!("invalid --host/--port: {e}")),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(1, &format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => return fail(2, &format!("cannot listen on {addr}: {e}")),
        };
        let state = AppState::new(api_keys, limits)
            .with_public_metrics(args.metrics_public)
            .with_default_dms(default_dms)
            .with_model_names(ModelNames {
                aliases: args.aliases.clone(),
                strict: args.strict_model_name,
            });
        let app = router(state.clone(), &args.cors_origins).layer(middleware::from_fn_with_state(
            Duration::from_secs(args.body_timeout),
            body_deadline,
        ));
        let (stopping_tx, stopping) = watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stopping_tx.send(true);
        });
        let header_timeout = Duration::from_secs(args.header_timeout);
        let mut server = tokio::spawn(accept_loop(listener, app, header_timeout, stopping.clone()));
        eprintln!("llama-dms: listening on http://{addr} (loading the model...)");
        let engine = match tokio::task::spawn_blocking(move || EngineHandle::start(config)).await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => return fail(exit_code(&e), &e.to_string()),
            Err(e) => return fail(1, &format!("model loading panicked: {e}")),
        };
        eprintln!(
            "llama-dms: model {} ready on http://{addr}",
            engine.info().name
        );
        state.set_engine(engine.clone());
        let grace = Duration::from_secs(args.shutdown_timeout);
        let code = tokio::select! {
            done = &mut server => match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, &format!("server task failed: {e}")),
            },
            _ = async { stopped(stopping).await; tokio::time::sleep(grace).await } => {
                eprintln!(
                    "llama-dms: requests still running after {}s are cancelled",
                    grace.as_secs()
                );
                ExitCode::SUCCESS
            }
        };
        // Stop the engine before the process exits: llama.cpp must not be mid-decode while
        // the process tears down (that crashed). Cut requests get an error event; give their
        // connections a moment to send it.
        let stopped_in_time =
            tokio::task::spawn_blocking(move || engine.shut_down(Duration::from_secs(10)))
                .await
                .unwrap_or(false);
        if !stopped_in_time {
            eprintln!("llama-dms: the engine did not stop within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        code
    })
}

/// Resolves once `rx` turns true (the shutdown signal arrived).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Accepts connections until the shutdown signal, serving each with HTTP/1.1 and a header
/// read timeout (slowloris clients are disconnected); then waits for the open connections to
/// finish their requests (idle ones close at once).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    stopping: watch::Receiver<bool>,
) {
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(stopping.clone()) => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let stop = stopping.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let mut stop = std::pin::pin!(stopped(stop));
            let mut signalled = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!("connection ended: {e}");
                        }
                        break;
                    }
                    _ = &mut stop, if !signalled => {
                        signalled = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
}

/// Gives every request body `limit` (from the end of its headers) to arrive; a slower one is
/// answered 408 and its connection closed.
async fn body_deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            expired: Arc::clone(&expired),
        })
    });
    let response = next.run(request).await;
    if !expired.load(Ordering::Relaxed) {
        return response;
    }
    let mut response = ApiError {
        status: StatusCode::REQUEST_TIMEOUT,
        message: format!(
            "the request body did not arrive within {}s",
            limit.as_secs()
        ),
        kind: "invalid_request_error",
        param: None,
        code: Some("timeout"),
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err("request body timed out".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves on Ctrl-C or SIGTERM; the accept loop then stops and lets open requests finish
/// (for at most `--shutdown-timeout` seconds).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("llama-dms: shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dms::{LearnedScheduler, Registry, TrainedInfo};

    #[test]
    fn auto_is_rule_or_learned_only_with_plugins_fitted_for_the_model() {
        let mut registry = Registry::builtin();
        assert_eq!(
            DefaultDmsMode::Auto.resolve(&registry, "m.gguf"),
            DmsMode::Off
        );
        let mut learned =
            LearnedScheduler::uniform("learned-m", &["consistency".into()], &[0.5, 1.0]);
        learned.trained = Some(TrainedInfo {
            command: String::new(),
            examples: 1,
            train_reward: 0.0,
            valid_reward: 0.0,
            valid_reward_uniform: 0.0,
            seed: 0,
            model: Some("m.gguf".into()),
        });
        registry.insert(std::sync::Arc::new(learned)).unwrap();
        assert_eq!(
            DefaultDmsMode::Auto.resolve(&registry, "m.gguf"),
            DmsMode::Learned
        );
        assert_eq!(
            DefaultDmsMode::Auto.resolve(&registry, "other.gguf"),
            DmsMode::Off
        );
        assert_eq!(
            DefaultDmsMode::Rule.resolve(&registry, "other.gguf"),
            DmsMode::Rule
        );
        // A rule-default calibrated for the model comes first.
        let dir = tempfile::tempdir().unwrap();
        let file = "kind = \"rule\"\nname = \"rule-default\"\nmodel = \"m.gguf\"\n";
        std::fs::write(dir.path().join("rule-default.toml"), file).unwrap();
        let calibrated = Registry::load_dir(dir.path()).unwrap();
        for (model, mode) in [("m.gguf", DmsMode::Rule), ("other.gguf", DmsMode::Off)] {
            assert_eq!(DefaultDmsMode::Auto.resolve(&calibrated, model), mode);
        }
        // The start-up log names the mode as the API does.
        for mode in [
            DmsMode::Off,
            DmsMode::Fixed,
            DmsMode::Rule,
            DmsMode::Learned,
        ] {
            assert_eq!(serde_json::to_value(mode).unwrap(), mode.name());
        }
    }
}
