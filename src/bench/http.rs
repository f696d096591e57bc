//! Timing streamed chat completions against any OpenAI-compatible server (ours or a peer such
//! as llama.cpp's `llama-server`), with the same requests, so the two can be compared.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// One streamed request, timed on the client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpSample {
    /// From sending the request to the first non-empty content delta.
    pub ttft_ms: f64,
    /// From sending the request to the end of the stream.
    pub total_ms: f64,
    /// Generated tokens (the server's `usage` when it sends one, else the content chunks).
    pub completion_tokens: usize,
}

impl HttpSample {
    /// Tokens per second after the first one (`NaN` with fewer than two tokens).
    pub fn decode_tok_s(&self) -> f64 {
        let span = self.total_ms - self.ttft_ms;
        if self.completion_tokens > 1 && span > 0.0 {
            (self.completion_tokens - 1) as f64 * 1000.0 / span
        } else {
            f64::NAN
        }
    }
}

/// A streaming, greedy chat-completions body for `model`: `system`, then the image (PNG) and
/// `question`.
pub fn chat_body(
    model: &str,
    system: &str,
    image: Option<&[u8]>,
    question: &str,
    max_tokens: usize,
) -> Value {
    let mut content = Vec::new();
    if let Some(png) = image {
        let b64 = base64::engine::general_purpose::STANDARD.encode(png);
        content.push(json!({
            "type": "image_url",
            "image_url": {"url": format!("data:image/png;base64,{b64}")}
        }));
    }
    content.push(json!({"type": "text", "text": question}));
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": content}
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true}
    })
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout(Duration::from_secs(300))
        .build()
}

fn with_key(request: ureq::Request, api_key: Option<&str>) -> ureq::Request {
    match api_key {
        Some(key) => request.set("Authorization", &format!("Bearer {key}")),
        None => request,
    }
}

fn describe(url: &str, e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, r) => {
            let text = r.into_string().unwrap_or_default();
            format!(
                "{url}: HTTP {code}: {}",
                text.chars().take(300).collect::<String>()
            )
        }
        other => format!("{url}: {other}"),
    }
}

/// The first model that `<base>/models` lists (the one a single-model server runs).
pub fn first_model(base: &str, api_key: Option<&str>) -> Result<String, String> {
    let url = format!("{}/models", base.trim_end_matches('/'));
    let text = with_key(agent().get(&url), api_key)
        .call()
        .map_err(|e| describe(&url, e))?
        .into_string()
        .map_err(|e| format!("{url}: {e}"))?;
    let list: Value = serde_json::from_str(&text).map_err(|e| format!("{url}: bad JSON: {e}"))?;
    list.pointer("/data/0/id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("{url}: no model listed"))
}

/// Sends `body` to `<base>/chat/completions` (`base` ends in `/v1`) and times the stream.
pub fn stream_chat(base: &str, api_key: Option<&str>, body: &Value) -> Result<HttpSample, String> {
    let url = format!("{}/chat/completions", base.trim_end_matches('/'));
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout(Duration::from_secs(300))
        .build();
    let mut request = agent.post(&url).set("Content-Type", "application/json");
    if let Some(key) = api_key {
        request = request.set("Authorization", &format!("Bearer {key}"));
    }
    let start = Instant::now();
    let response = request
        .send_string(&body.to_string())
        .map_err(|e| describe(&url, e))?;
    let mut first = None;
    let (mut chunks, mut usage) = (0usize, None);
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.map_err(|e| format!("{url}: reading the stream: {e}"))?;
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value =
            serde_json::from_str(data).map_err(|e| format!("{url}: bad stream chunk: {e}"))?;
        if let Some(err) = chunk.get("error") {
            return Err(format!("{url}: error in stream: {err}"));
        }
        let content = chunk
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !content.is_empty() {
            first.get_or_insert_with(|| start.elapsed());
            chunks += 1;
        }
        if let Some(n) = chunk
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
        {
            usage = Some(n as usize);
        }
    }
    let total = start.elapsed();
    let first = first.ok_or_else(|| format!("{url}: the stream had no content"))?;
    Ok(HttpSample {
        ttft_ms: first.as_secs_f64() * 1000.0,
        total_ms: total.as_secs_f64() * 1000.0,
        completion_tokens: usage.unwrap_or(chunks),
    })
}

/// Sends every body of `bodies` at once, one client thread each, to `<base>/chat/completions`
/// and returns their generated tokens together per second of wall time (from the first send
/// to the end of the last stream).
pub fn concurrent_tok_s(
    base: &str,
    api_key: Option<&str>,
    bodies: &[Value],
) -> Result<f64, String> {
    let start = Instant::now();
    let samples: Vec<Result<HttpSample, String>> = std::thread::scope(|scope| {
        let clients: Vec<_> = bodies
            .iter()
            .map(|body| scope.spawn(move || stream_chat(base, api_key, body)))
            .collect();
        clients
            .into_iter()
            .map(|c| {
                c.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });
    let wall_s = start.elapsed().as_secs_f64();
    let mut tokens = 0;
    for sample in samples {
        tokens += sample?.completion_tokens;
    }
    Ok(tokens as f64 / wall_s.max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_speed_counts_the_tokens_after_the_first() {
        let s = HttpSample {
            ttft_ms: 100.0,
            total_ms: 1100.0,
            completion_tokens: 11,
        };
        assert_eq!(s.decode_tok_s(), 10.0);
        let one = HttpSample {
            completion_tokens: 1,
            ..s
        };
        assert!(one.decode_tok_s().is_nan());
    }

    #[test]
    fn bodies_carry_the_image_as_a_data_uri() {
        let b = chat_body("m", "sys", Some(&[1, 2, 3]), "q", 4);
        let url = b.pointer("/messages/1/content/0/image_url/url").unwrap();
        assert_eq!(url, "data:image/png;base64,AQID");
        assert_eq!(b["stream"], true);
        assert!(chat_body("m", "sys", None, "q", 4)
            .pointer("/messages/1/content/1")
            .is_none());
    }
}
