//! The web chat page (`web/`), embedded into the binary at build time and served at `/`.
//!
//! The page is plain HTML, CSS and JavaScript with no build step and nothing loaded from
//! elsewhere, so it works offline. Its routes never need an API key: the key is typed into the
//! page, which then sends it as `Authorization: Bearer` on its API calls.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page, `web/index.html`.
pub const INDEX_HTML: &str = include_str!("../../web/index.html");
/// The page's script, `web/app.js`.
pub const APP_JS: &str = include_str!("../../web/app.js");
/// The page's style sheet, `web/style.css`.
pub const STYLE_CSS: &str = include_str!("../../web/style.css");

/// The page's routes: `/`, `/index.html`, `/app.js` and `/style.css`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route("/index.html", get(|| async { asset("index.html") }))
        .route("/app.js", get(|| async { asset("app.js") }))
        .route("/style.css", get(|| async { asset("style.css") }))
}

/// One file of the page with its content type, `Cache-Control: no-cache` (a new binary's page
/// is picked up on reload) and a restrictive content security policy (no inline script, nothing
/// from other origins).
///
/// With `LLAMA_DMS_WEB_DIR` set, the file is read from that folder instead, so the page can be
/// edited without recompiling; the embedded copy answers when the file cannot be read.
fn asset(name: &str) -> Response {
    let (embedded, content_type) = match name {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => (INDEX_HTML, "text/html; charset=utf-8"),
    };
    let body = std::env::var_os("LLAMA_DMS_WEB_DIR")
        .and_then(|dir| std::fs::read_to_string(std::path::Path::new(&dir).join(name)).ok())
        .unwrap_or_else(|| embedded.to_string());
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; \
                 script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
                 frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}
