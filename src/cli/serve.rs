//! `llama-dms serve`: the OpenAI-compatible HTTP server.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{exit_code, fail, ModelArgs};
use crate::api::media::MediaPolicy;
use crate::api::{router, AppState, Limits};
use crate::engine::EngineHandle;

/// `serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
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
    /// Seconds that running requests may take to finish after Ctrl-C/SIGTERM; then they are
    /// cancelled and the server exits.
    #[arg(long, env = "LLAMA_DMS_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
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
        let state = AppState::new(api_keys, limits);
        let app = router(state.clone(), &args.cors_origins);
        let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stopping_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped(stopping.clone()))
                .into_future(),
        );
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
        state.set_engine(engine);
        let grace = Duration::from_secs(args.shutdown_timeout);
        tokio::select! {
            done = &mut server => match done {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) => fail(1, &format!("server error: {e}")),
                Err(e) => fail(1, &format!("server task failed: {e}")),
            },
            _ = async { stopped(stopping).await; tokio::time::sleep(grace).await } => {
                eprintln!(
                    "llama-dms: requests still running after {}s are cancelled",
                    grace.as_secs()
                );
                ExitCode::SUCCESS
            }
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM; axum then stops accepting and lets open requests finish
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
