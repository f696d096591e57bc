//! `GET /metrics` in the Prometheus text format, and the request counter/logging middleware.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::engine::WEIGHT_BUCKETS;

/// HTTP-level counters.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
}

/// Counts every response by status class and logs method, path, status and latency (never
/// headers or bodies, so no API key or image bytes).
pub async fn count_and_log(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    let m = &state.http;
    m.requests.fetch_add(1, Ordering::Relaxed);
    if status.is_client_error() {
        m.client_errors.fetch_add(1, Ordering::Relaxed);
    } else if status.is_server_error() {
        m.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(%method, %path, status = status.as_u16(), latency_ms = start.elapsed().as_secs_f64() * 1000.0, "request");
    response
}

/// The metrics page.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let h = &state.http;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
    // (name, type, help, value)
    let mut rows: Vec<(&str, &str, &str, String)> = vec![
        (
            "http_requests_total",
            "counter",
            "HTTP requests answered.",
            load(&h.requests),
        ),
        (
            "http_client_errors_total",
            "counter",
            "4xx answers.",
            load(&h.client_errors),
        ),
        (
            "http_server_errors_total",
            "counter",
            "5xx answers.",
            load(&h.server_errors),
        ),
    ];
    let engine_stats = state.engine().ok().map(|e| e.stats());
    if let Some(s) = &engine_stats {
        let tps = if s.decode_seconds > 0.0 {
            s.generated_tokens as f64 / s.decode_seconds
        } else {
            0.0
        };
        rows.extend([
            (
                "requests_completed_total",
                "counter",
                "Generations finished.",
                s.completed.to_string(),
            ),
            (
                "requests_failed_total",
                "counter",
                "Generations that failed.",
                s.failed.to_string(),
            ),
            (
                "requests_cancelled_total",
                "counter",
                "Generations abandoned by the client.",
                s.cancelled.to_string(),
            ),
            (
                "queue_depth",
                "gauge",
                "Requests waiting for the engine.",
                s.queue_depth.to_string(),
            ),
            (
                "max_batched_requests",
                "gauge",
                "Most requests decoded in one step.",
                s.max_batched.to_string(),
            ),
            (
                "prompt_tokens_total",
                "counter",
                "Prompt tokens processed.",
                s.prompt_tokens.to_string(),
            ),
            (
                "generated_tokens_total",
                "counter",
                "Tokens generated.",
                s.generated_tokens.to_string(),
            ),
            (
                "generation_tokens_per_second",
                "gauge",
                "Generated tokens per second of decoding.",
                format!("{tps:.3}"),
            ),
            (
                "image_encode_seconds_total",
                "counter",
                "Time in the vision encoder.",
                format!("{:.6}", s.image_encode_seconds),
            ),
            (
                "dms_seconds_total",
                "counter",
                "Time in the DMS stage.",
                format!("{:.6}", s.dms_seconds),
            ),
        ]);
    }
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        let _ = writeln!(out, "# HELP llama_dms_{name} {help}\n# TYPE llama_dms_{name} {kind}\nllama_dms_{name} {value}");
    }
    if let Some(s) = engine_stats {
        let _ = writeln!(out, "# HELP llama_dms_image_weight Image weights applied by DMS.\n# TYPE llama_dms_image_weight histogram");
        let mut cumulative = 0;
        for (i, count) in s.weight_buckets.iter().enumerate() {
            cumulative += count;
            let le = WEIGHT_BUCKETS
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "llama_dms_image_weight_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "llama_dms_image_weight_sum {:.3}\nllama_dms_image_weight_count {cumulative}",
            s.weight_sum
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}
