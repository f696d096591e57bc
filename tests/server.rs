//! A real `llama-dms serve` on 127.0.0.1 (tiny model) spoken to over raw HTTP: stop strings,
//! seeded sampling, metrics, and a client that disconnects mid-stream.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn chat(port: u16, extra: Value) -> (u16, Value) {
    let mut body = json!({"messages": [{"role": "user", "content": "Tell me about the image."}], "max_tokens": 24});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, text) = http(port, "POST", "/v1/chat/completions", Some(&body));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn content(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn stop_strings_seeds_and_metrics() {
    let tiny = common::tiny_models();
    let (_server, base) = common::start_server(&tiny.model, &tiny.mmproj);
    let port = common::port_of(&base);

    let (s, plain) = chat(port, json!({"temperature": 0}));
    assert_eq!(s, 200, "{plain}");
    let text = content(&plain);
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 8, "answer too short to cut: {text:?}");
    let stop: String = chars[4..7].iter().collect();
    let expected: String = text[..text.find(&stop).unwrap()].to_string();
    let (_, stopped) = chat(
        port,
        json!({"temperature": 0, "stop": [stop.clone(), "never-appears"]}),
    );
    assert_eq!(content(&stopped), expected, "stop {stop:?} in {text:?}");
    assert!(!content(&stopped).contains(&stop));
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");

    let (_, a) = chat(port, json!({"temperature": 1.0, "seed": 5}));
    let (_, b) = chat(port, json!({"temperature": 1.0, "seed": 5}));
    let (_, c) = chat(port, json!({"temperature": 1.0, "seed": 6}));
    assert_eq!(content(&a), content(&b), "same seed, same text");
    assert_ne!(content(&a), content(&c), "another seed, another text");

    let png = base64_png();
    let image = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png}}, {"type": "text", "text": "colour?"}]}],
                        "max_tokens": 2, "dms": {"mode": "fixed", "weights": {"images": [0.6], "text": 1.4}}});
    let (s, _) = http(port, "POST", "/v1/chat/completions", Some(&image));
    assert_eq!(s, 200);
    let (s, metrics) = http(port, "GET", "/metrics", None);
    assert_eq!(s, 200);
    for line in [
        "llama_dms_requests_completed_total 6",
        "llama_dms_image_weight_count 1",
        "llama_dms_image_weight_bucket{le=\"0.5\"} 0",
        "llama_dms_image_weight_bucket{le=\"0.75\"} 1",
        "llama_dms_queue_depth 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    assert!(metrics.contains("llama_dms_http_requests_total"));
}

fn base64_png() -> String {
    use base64::Engine as _;
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(common::png(32, 32, [9, 9, 200]))
    )
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_the_engine() {
    let tiny = common::tiny_models();
    let (_server, base) = common::start_server(&tiny.model, &tiny.mmproj);
    let port = common::port_of(&base);
    drop(open_stream(port, 3000)); // hang up mid-stream

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http(port, "GET", "/metrics", None);
        if metrics
            .lines()
            .any(|l| l == "llama_dms_requests_cancelled_total 1")
        {
            let generated: u64 = metrics
                .lines()
                .find_map(|l| l.strip_prefix("llama_dms_generated_tokens_total "))
                .and_then(|v| v.parse().ok())
                .unwrap();
            assert!(
                generated < 3000,
                "the generation ran to the end: {generated}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the disconnect did not cancel the generation:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, answer) = chat(port, json!({"temperature": 0, "max_tokens": 4}));
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn two_slots_serve_eight_simultaneous_clients() {
    let tiny = common::tiny_models();
    let (_server, base) =
        common::start_server_with(&tiny.model, &tiny.mmproj, &["--parallel", "2"]);
    let port = common::port_of(&base);
    let ask = move |i: usize| {
        let prompt = format!("Client {i} asks: what is in the image?");
        let body = json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 16, "temperature": 0});
        let (status, text) = http(port, "POST", "/v1/chat/completions", Some(&body));
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, content(&value))
    };
    let alone: Vec<(u16, String)> = (0..8).map(ask).collect();
    let together: Vec<(u16, String)> = (0..8)
        .map(|i| std::thread::spawn(move || ask(i)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.0, 200);
        assert_eq!(a, b, "client {i} got a different answer under load");
    }
    let (_, metrics) = http(port, "GET", "/metrics", None);
    assert!(
        metrics
            .lines()
            .any(|l| l == "llama_dms_requests_completed_total 16"),
        "{metrics}"
    );
}

#[test]
fn api_keys_come_from_a_file() {
    let tiny = common::tiny_models();
    let keys = common::scratch().join("keys.txt");
    std::fs::write(&keys, "# team keys\nkey-one\n\n  key-two  \n").unwrap();
    let (_server, base) = common::start_server_with(
        &tiny.model,
        &tiny.mmproj,
        &["--api-key-file", keys.to_str().unwrap()],
    );
    let port = common::port_of(&base);
    let get = |key: Option<&str>| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET /v1/models HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split(' ').nth(1).unwrap_or_default().to_string()
    };
    assert_eq!(get(None), "401");
    assert_eq!(get(Some("key-three")), "401");
    assert_eq!(get(Some("key-one")), "200");
    assert_eq!(get(Some("key-two")), "200");
}

/// Sends SIGTERM to the server and waits (at most `limit`) for it to exit.
fn terminate(server: &mut common::Server, limit: Duration) -> std::process::ExitStatus {
    common::send_sigterm(server);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a streaming chat and returns its reader once the first content chunk arrived.
fn open_stream(port: u16, max_tokens: usize) -> BufReader<TcpStream> {
    let body = json!({"messages": [{"role": "user", "content": "Tell me a long story."}],
                      "max_tokens": max_tokens, "ignore_eos": true, "stream": true})
    .to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 && !line.contains("\"content\":\"") {
        line.clear();
    }
    assert!(line.contains("data:"), "no content chunk arrived");
    reader
}

#[test]
fn sigterm_lets_running_streams_finish_and_then_exits() {
    let tiny = common::tiny_models();
    let (mut server, base) = common::start_server(&tiny.model, &tiny.mmproj);
    let port = common::port_of(&base);
    let mut reader = open_stream(port, 40);
    let status = terminate(&mut server, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    assert!(
        rest.contains("\"finish_reason\":\"length\"") && rest.contains("data: [DONE]"),
        "the running stream was cut short: ...{}",
        &rest[rest.len().saturating_sub(300)..]
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still accepting"
    );
}

#[test]
fn sigterm_cancels_what_outlasts_the_shutdown_timeout() {
    let tiny = common::tiny_models();
    let (mut server, base) = common::start_server_with(
        &tiny.model,
        &tiny.mmproj,
        &["--shutdown-timeout", "1", "--ctx-size", "65536"],
    );
    let port = common::port_of(&base);
    let _reader = open_stream(port, 60000);
    let started = Instant::now();
    let status = terminate(&mut server, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "exit took {:?}",
        started.elapsed()
    );
}

#[test]
fn serve_dms_sets_the_mode_of_requests_without_one() {
    let tiny = common::tiny_models();
    let (_server, base) = common::start_server_with(&tiny.model, &tiny.mmproj, &["--dms", "rule"]);
    let port = common::port_of(&base);
    let (s, list) = http(port, "GET", "/v1/dms/schedulers", None);
    assert_eq!(s, 200, "{list}");
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["default_mode"], "rule", "{list}");

    let image = |dms: Option<Value>| {
        let mut body = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": base64_png()}},
            {"type": "text", "text": "My friend says it is red. What is the main colour of this image?"}]}],
            "max_tokens": 2, "temperature": 0});
        if let Some(d) = dms {
            body["dms"] = d;
        }
        let (s, text) = http(port, "POST", "/v1/chat/completions", Some(&body));
        assert_eq!(s, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["dms"].clone()
    };
    let default = image(None);
    assert_eq!(default["mode"], "rule", "{default}");
    assert_eq!(default["scheduler"], "rule-default", "{default}");
    assert!(default["signals"].is_object(), "no signals: {default}");
    assert_eq!(default["weights"]["images"].as_array().unwrap().len(), 1);
    let explicit = image(Some(json!({"mode": "rule"})));
    assert_eq!(
        default["weights"], explicit["weights"],
        "the rule's weights, as if asked for"
    );
    let off = image(Some(json!({"mode": "off"})));
    assert_eq!(off["mode"], "off", "a request's own mode wins: {off}");
    assert!(off["signals"].is_null(), "{off}");
}

#[test]
fn serve_dms_learned_without_a_learned_plugin_fails_at_start_up() {
    let tiny = common::tiny_models();
    let no_plugins = common::scratch().join("no-learned-plugins");
    std::fs::create_dir_all(&no_plugins).unwrap();
    let port = common::free_port().to_string();
    let mut args = vec!["serve", "--port", port.as_str(), "--model"];
    args.push(tiny.model.to_str().unwrap());
    args.extend(["--mmproj", tiny.mmproj.to_str().unwrap()]);
    args.extend(["--plugins", no_plugins.to_str().unwrap()]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args(&args)
        .env("LLAMA_DMS_DMS_MODE", "learned")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--dms learned") && stderr.contains("learned scheduler plugin"),
        "{stderr}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err(),
        "it must not listen"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args(&args)
        .args(["--dms", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad --dms value");
}
