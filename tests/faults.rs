//! Faults against a real `llama-dms serve` on 127.0.0.1 (tiny model, one server per case):
//! clients that hang up mid-upload and mid-stream, slowloris headers and bodies, SIGTERM while
//! generating past the grace period, a broken plugin file, the model file deleted after start,
//! and worker panics (through the engine's `LLAMA_DMS_FAULT_PANIC_ON` test hook), one of them in
//! the middle of the DMS signal passes. Each case records what it expected and saw in
//! `$CARGO_TARGET_DIR/reliability/faults.json`.
//! (SIGTERM with requests that finish within the grace period: `tests/server.rs`.)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Every case's record, written out after each one.
static RECORDS: Mutex<Vec<Value>> = Mutex::new(Vec::new());

/// Records a case and fails the test when it did not pass.
fn record(case: &str, expected: &str, observed: String, pass: bool) {
    let mut records = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
    records.push(json!({"case": case, "expected": expected, "observed": observed, "pass": pass}));
    records.sort_by(|a, b| a["case"].as_str().cmp(&b["case"].as_str()));
    let dir = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("reliability");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("faults.json"),
        serde_json::to_string_pretty(&*records).unwrap(),
    );
    drop(records);
    assert!(pass, "{case}: expected {expected}; observed {observed}");
}

/// The tiny model's server with `extra` flags (one thread: the machine is shared).
fn server(extra: &[&str], env: &[(&str, &str)]) -> (common::Server, u16) {
    let tiny = common::tiny_models();
    let mut args = vec!["--threads", "1"];
    args.extend_from_slice(extra);
    let (server, base) = common::start_server_env(&tiny.model, &tiny.mmproj, &args, env);
    (server, common::port_of(&base))
}

/// One request with `Connection: close`; (status, body), status 0 when no response came.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, "connection refused".into());
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

fn chat_body(text: &str, max_tokens: usize, stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
           "temperature": 0, "stream": stream})
}

/// A short chat answered 200 within `limit`; the elapsed time.
fn served_within(port: u16, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let (status, body) = http(
        port,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body("Hello there.", 4, false)),
    );
    let took = started.elapsed();
    if status == 200 && took < limit {
        Ok(took)
    } else {
        Err(format!("status {status} after {took:?}: {body}"))
    }
}

/// Opens a long streaming chat and returns its reader once the first content chunk arrived.
fn open_stream(port: u16, text: &str, max_tokens: usize) -> BufReader<TcpStream> {
    let body = json!({"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                      "ignore_eos": true, "stream": true})
    .to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("\"content\":\"") {
        line.clear();
    }
    assert!(line.contains("data:"), "no content chunk arrived");
    reader
}

/// Reads until the server closes the connection (or `limit` passes): what came, and whether
/// and when it closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    while started.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => {
                return (
                    String::from_utf8_lossy(&got).into(),
                    Some(started.elapsed()),
                )
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                return (
                    String::from_utf8_lossy(&got).into(),
                    Some(started.elapsed()),
                )
            }
        }
    }
    (String::from_utf8_lossy(&got).into(), None)
}

#[test]
fn clients_hanging_up_mid_upload_and_mid_stream_free_their_slot() {
    let (_server, port) = server(&["--parallel", "1"], &[]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n").unwrap();
    s.write_all(&[b' '; 50_000]).unwrap();
    drop(s);
    let after = served_within(port, Duration::from_secs(20));
    record(
        "disconnect mid-upload",
        "the next request is served promptly (200)",
        format!("{after:?}"),
        after.is_ok(),
    );

    // One slot: a stream of 3000 tokens hung up after its first chunk must free it.
    drop(open_stream(port, "Tell me a long story.", 3000));
    let after = served_within(port, Duration::from_secs(20));
    record(
        "disconnect mid-stream",
        "generation cancelled; the only slot serves the next request (200)",
        format!("{after:?}"),
        after.is_ok(),
    );
}

#[test]
fn slowloris_headers_and_bodies_are_timed_out() {
    let (_server, port) = server(&["--header-timeout", "2", "--body-timeout", "3"], &[]);
    // Headers trickled one byte per second, an idle connection, and a body trickled slowly.
    let trickle = |head: &'static [u8], body: &'static [u8]| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = w.write_all(head);
            for b in body {
                std::thread::sleep(Duration::from_millis(700));
                if w.write_all(&[*b]).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || read_until_closed(&mut s, Duration::from_secs(30)))
    };
    let headers = trickle(
        b"",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}",
    );
    let idle = trickle(b"", b"");
    let body = trickle(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n",
        b"{\"messages\": [{\"role\": \"user\", \"content\": \"slow slow slow slow slow slow slow slow\"}]}",
    );
    std::thread::sleep(Duration::from_millis(500));
    let meanwhile = served_within(port, Duration::from_secs(20));
    record(
        "normal request during slowloris",
        "served (200) while three slow clients hold connections",
        format!("{meanwhile:?}"),
        meanwhile.is_ok(),
    );
    let (got, closed) = headers.join().unwrap();
    record(
        "slowloris headers",
        "connection closed soon after --header-timeout 2 s",
        format!("closed after {closed:?}, response {:?}", got.lines().next()),
        closed.is_some_and(|t| t < Duration::from_secs(12)),
    );
    let (_, closed) = idle.join().unwrap();
    record(
        "idle connection",
        "closed soon after --header-timeout 2 s",
        format!("closed after {closed:?}"),
        closed.is_some_and(|t| t < Duration::from_secs(12)),
    );
    let (got, closed) = body.join().unwrap();
    record(
        "slowloris body",
        "408 with an OpenAI error and the connection closed soon after --body-timeout 3 s",
        format!("closed after {closed:?}, response {:?}", got.lines().next()),
        closed.is_some_and(|t| t < Duration::from_secs(15))
            && got.starts_with("HTTP/1.1 408")
            && got.contains("\"error\""),
    );
}

#[test]
fn sigterm_past_the_grace_period_closes_streams_and_exits() {
    let (mut server, port) = server(
        &[
            "--parallel",
            "2",
            "--shutdown-timeout",
            "1",
            "--ctx-size",
            "65536",
        ],
        &[],
    );
    let mut stream = open_stream(port, "Tell me a long story.", 60000);
    let plain = std::thread::spawn(move || {
        http(
            port,
            "POST",
            "/v1/chat/completions",
            Some(
                &json!({"messages": [{"role": "user", "content": "Another long story."}],
                         "max_tokens": 60000, "ignore_eos": true}),
            ),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    common::send_sigterm(&server);
    let mut exit = None;
    while started.elapsed() < Duration::from_secs(30) && exit.is_none() {
        exit = server.0.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rest = String::new();
    let read = stream.read_to_string(&mut rest);
    let (status, _) = plain.join().unwrap();
    let refused = TcpStream::connect(("127.0.0.1", port)).is_err();
    record(
        "SIGTERM past --shutdown-timeout",
        "exit 0 within a few seconds; the running stream ends with an error event (the engine has stopped); the running non-streaming request gets 503; new connections refused",
        format!(
            "exit {exit:?} after {:?}; stream read {:?}, error event {}; non-streaming status {status}; refused {refused}",
            started.elapsed(),
            read.as_ref().map(|_| "EOF").map_err(|e| e.kind()),
            rest.contains("engine has stopped")
        ),
        exit.is_some_and(|e| e.success())
            && started.elapsed() < Duration::from_secs(15)
            && read.is_ok()
            && rest.contains("engine has stopped")
            && status == 503
            && refused,
    );
}

#[test]
fn a_broken_plugin_file_stops_start_up_with_its_name() {
    let tiny = common::tiny_models();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.toml"), "name = \"x\"\nkind = [oops").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args(["serve", "--port", &common::free_port().to_string()])
        .args(["--model", tiny.model.to_str().unwrap()])
        .args(["--plugins", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    record(
        "plugin file fails to load",
        "serve exits non-zero at once with a message naming the file",
        format!("exit {:?}: {}", out.status.code(), err.trim()),
        !out.status.success() && err.contains("broken.toml"),
    );
}

#[test]
fn deleting_the_model_file_after_start_changes_nothing() {
    let tiny = common::tiny_models();
    let dir = tempfile::tempdir().unwrap();
    let (model, mmproj) = (dir.path().join("m.gguf"), dir.path().join("p.gguf"));
    std::fs::copy(&tiny.model, &model).unwrap();
    std::fs::copy(&tiny.mmproj, &mmproj).unwrap();
    let (_server, base) = common::start_server_with(&model, &mmproj, &["--threads", "1"]);
    let port = common::port_of(&base);
    std::fs::remove_file(&model).unwrap();
    std::fs::remove_file(&mmproj).unwrap();
    use base64::Engine as _;
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(common::png(16, 16, [200, 10, 10]))
    );
    let image = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "colour?"}]}],
        "max_tokens": 4});
    let statuses: Vec<u16> = (0..3)
        .flat_map(|i| {
            let text = chat_body(&format!("Question {i}."), 4, false);
            [
                http(port, "POST", "/v1/chat/completions", Some(&text)).0,
                http(port, "POST", "/v1/chat/completions", Some(&image)).0,
            ]
        })
        .collect();
    let health = http(port, "GET", "/health", None).0;
    record(
        "model file deleted after start",
        "text and image requests still 200 (llama.cpp read/mapped the files at load time)",
        format!("statuses {statuses:?}, /health {health}"),
        statuses.iter().all(|&s| s == 200) && health == 200,
    );
}

#[test]
fn a_worker_panic_fails_only_its_own_request() {
    let (_server, port) = server(
        &["--parallel", "2", "--ctx-size", "8192"],
        &[("LLAMA_DMS_FAULT_PANIC_ON", "BOOM")],
    );
    let lone = http(
        port,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body("A calm question.", 40, false)),
    );
    assert_eq!(lone.0, 200, "{}", lone.1);
    // A long neighbour shares the decode batch while the panics happen.
    let mut neighbour = open_stream(port, "Tell me a long story.", 3000);
    let mut observed = Vec::new();
    let mut pass = true;
    for marker in ["BOOM", "BOOM@dms", "BOOM@prefill", "BOOM@decode"] {
        let (status, body) = http(
            port,
            "POST",
            "/v1/chat/completions",
            Some(&chat_body(&format!("Please {marker} now."), 16, false)),
        );
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let shaped = v["error"]["type"] == "server_error" && v["error"]["message"].is_string();
        pass &= status == 500 && shaped;
        observed.push(format!("{marker}: {status} {}", v["error"]["message"]));
    }
    // A streaming request that panics mid-decode gets an error event, then [DONE].
    let mut s = open_stream(port, "Stream BOOM@decode please.", 16);
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    let stream_ok = rest.contains("\"error\"") && rest.contains("[DONE]");
    pass &= stream_ok;
    observed.push(format!("stream BOOM@decode: error event {stream_ok}"));
    // The neighbour goes on generating; the slots are free again; the same answer as before.
    let mut line = String::new();
    let mut chunks = 0;
    while chunks < 10 && neighbour.read_line(&mut line).unwrap_or(0) > 0 {
        if line.contains("\"error\"") || line.contains("[DONE]") {
            break;
        }
        chunks += usize::from(line.starts_with("data:"));
        line.clear();
    }
    let neighbour_ok = chunks == 10;
    drop(neighbour);
    let again = http(
        port,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body("A calm question.", 40, false)),
    );
    // (The same answer is likely, not certain: batched decoding is not bit-identical.)
    let same = again.1.contains(&lone_content(&lone.1));
    pass &= neighbour_ok && again.0 == 200;
    let (_, metrics) = http(port, "GET", "/metrics", None);
    let failed = metrics
        .lines()
        .find(|l| l.starts_with("llama_dms_requests_failed_total"))
        .unwrap_or_default()
        .to_string();
    pass &= failed == "llama_dms_requests_failed_total 5";
    observed.push(format!(
        "neighbour stream still running {neighbour_ok}; a later request {} with the same answer {same}; {failed}",
        again.0
    ));
    record(
        "worker panic (prompt, dms, prefill, decode stages)",
        "that request gets 500 (OpenAI error shape; a stream gets an error event), the others go on, the server keeps serving",
        observed.join("; "),
        pass,
    );
}

#[test]
fn a_panic_in_the_signal_passes_leaves_no_kv_behind() {
    use base64::Engine as _;
    let (_server, port) = server(&[], &[("LLAMA_DMS_FAULT_PANIC_ON", "BOOM")]);
    let png = std::fs::read("examples/red.png").unwrap();
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    );
    // An image, evidence and a question: the rule mode measures signals.
    let body = |evidence: &str| {
        json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": evidence},
                {"type": "text", "text": "What is the main color of this image?"}]}],
               "max_tokens": 8, "temperature": 0, "dms": {"mode": "rule"}})
    };
    let text_signals = |evidence: &str| {
        let (status, text) = http(port, "POST", "/v1/chat/completions", Some(&body(evidence)));
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, v["dms"]["signals"]["text"].clone())
    };
    let before = text_signals("Maybe it is blue.");
    let (status, _) = http(
        port,
        "POST",
        "/v1/chat/completions",
        Some(&body("It is red. BOOM@signal-pass")),
    );
    let mut observed = vec![format!("panicking request: {status}")];
    let mut pass = status == 500 && before.0 == 200 && before.1.is_object();
    // The next requests measure signals again, in the same sequences, and measure the same (up
    // to float noise from another batch layout); KV left behind fails them.
    let close = |a: &Value, b: &Value| {
        ["confidence", "uncertainty"].iter().all(|k| {
            let (x, y) = (a[k].as_f64(), b[k].as_f64());
            x.zip(y).is_some_and(|(x, y)| (x - y).abs() < 1e-6)
        })
    };
    for _ in 0..2 {
        let after = text_signals("Maybe it is blue.");
        pass &= after.0 == 200 && close(&after.1, &before.1);
        observed.push(format!(
            "then: {} {} (before: {})",
            after.0, after.1, before.1
        ));
    }
    record(
        "worker panic in the middle of the DMS signal passes",
        "that request gets 500; the signal passes' KV is freed, so the next rule requests with an image succeed and measure what they measured before",
        observed.join("; "),
        pass,
    );
}

/// The `content` of a non-streaming answer, as it appears (escaped) in the JSON text.
fn lone_content(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap();
    serde_json::to_string(&v["choices"][0]["message"]["content"]).unwrap()
}
