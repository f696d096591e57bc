//! Hostile input against a real `llama-dms serve` (tiny model), spoken to over raw TCP: every
//! bad request gets the right 4xx and an OpenAI-shaped error, nothing hangs, and the server
//! stays healthy and still answers a normal request. Writes a per-class report to
//! `$CARGO_TARGET_DIR/reliability/hostile.json`.

#[path = "hostile/cases.rs"]
mod cases;
mod common;
#[path = "hostile/media_cases.rs"]
mod media_cases;
#[path = "hostile/request_cases.rs"]
mod request_cases;
#[path = "hostile/wire.rs"]
mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use cases::{Case, Ctx, Field};
use wire::Reply;

/// The longest any case may take (the body timeout of the server under test is 2 s).
const CASE_LIMIT: Duration = Duration::from_secs(30);

fn field_ok(value: &Value, expected: Field) -> bool {
    match expected {
        Field::Any => value.is_string() || value.is_null(),
        Field::Null => value.is_null(),
        Field::Is(s) => value == s,
    }
}

/// Checks one answer against its case.
fn check(case: &Case, reply: &Reply) -> Result<(), String> {
    if reply.status != case.status {
        return Err(format!(
            "status {} (expected {})",
            reply.status, case.status
        ));
    }
    let Some(kind) = case.kind else {
        return Ok(());
    };
    let e = &reply.body["error"];
    let message_ok = e["message"].as_str().is_some_and(|m| !m.is_empty());
    let shape_ok = reply.body.as_object().is_some_and(|o| o.len() == 1)
        && e.as_object().is_some_and(|o| o.len() == 4)
        && message_ok
        && e["type"].is_string()
        && field_ok(&e["param"], Field::Any)
        && field_ok(&e["code"], Field::Any);
    if !shape_ok || !reply.headers.contains("content-type: application/json") {
        return Err("not an OpenAI-shaped JSON error".into());
    }
    if e["type"] != kind {
        return Err(format!("error.type {} (expected {kind})", e["type"]));
    }
    if !field_ok(&e["param"], case.param) {
        return Err(format!(
            "error.param {} (expected {:?})",
            e["param"], case.param
        ));
    }
    if !field_ok(&e["code"], case.code) {
        return Err(format!(
            "error.code {} (expected {:?})",
            e["code"], case.code
        ));
    }
    Ok(())
}

/// Per-class tallies (cases, passed, controls expecting 2xx) of every test in this binary,
/// written out after each test.
static REPORT: Mutex<BTreeMap<String, (usize, usize, usize)>> = Mutex::new(BTreeMap::new());
static FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn report_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("reliability").join("hostile.json")
}

/// Runs `cases` in order against `port`, checking `/health` after each class; records the
/// results and returns the failures.
fn run(port: u16, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    let mut tally: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for (i, case) in cases.iter().enumerate() {
        let outcome = wire::exchange(port, &case.wire, CASE_LIMIT).and_then(|reply| {
            if reply.elapsed > slowest.0 {
                slowest = (reply.elapsed, case.name.clone());
            }
            check(case, &reply).map_err(|e| format!("{e}: {}", reply.body))
        });
        let t = tally.entry(case.class.to_string()).or_default();
        t.0 += 1;
        t.2 += usize::from(case.status < 400);
        match outcome {
            Ok(()) => t.1 += 1,
            Err(e) => {
                let mut e = e;
                e.truncate(400);
                failures.push(format!("[{}] {}: {e}", case.class, case.name));
            }
        }
        let class_ends = cases.get(i + 1).is_none_or(|next| next.class != case.class);
        if class_ends {
            match wire::exchange(port, &wire::get("/health", &[]), CASE_LIMIT) {
                Ok(r) if r.status == 200 => {}
                other => failures.push(format!(
                    "[{}] /health afterwards: {:?}",
                    case.class,
                    other.map(|r| r.status)
                )),
            }
        }
    }
    let mut report = REPORT.lock().unwrap_or_else(|p| p.into_inner());
    for (class, (n, ok, controls)) in tally {
        let t = report.entry(class).or_default();
        t.0 += n;
        t.1 += ok;
        t.2 += controls;
    }
    eprintln!("slowest case: {} ({:?})", slowest.1, slowest.0);
    let mut all_failures = FAILURES.lock().unwrap_or_else(|p| p.into_inner());
    all_failures.extend(failures.iter().cloned());
    let (total, passed, controls) = report
        .values()
        .fold((0, 0, 0), |(a, b, c), (n, ok, k)| (a + n, b + ok, c + k));
    let classes: serde_json::Map<String, Value> = report
        .iter()
        .map(|(c, (n, ok, k))| (c.clone(), json!({"cases": n, "passed": ok, "controls": k})))
        .collect();
    let doc = json!({"suite": "tests/hostile.rs", "cases": total, "passed": passed,
        "hostile_cases": total - controls, "controls": controls,
        "classes": classes, "failures": *all_failures});
    let path = report_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create the report folder");
    }
    let text = serde_json::to_string_pretty(&doc).expect("report JSON");
    std::fs::write(&path, text + "\n").expect("write the report");
    failures
}

/// A normal chat request still gets a normal answer.
fn assert_still_answers(port: u16, headers: &[Vec<u8>]) {
    let body = cases::chat(json!("Say hello."), json!({})).to_string();
    let wire = wire::request("POST", cases::CHAT, headers, body.as_bytes(), None);
    let reply = wire::exchange(port, &wire, CASE_LIMIT).expect("an answer");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["object"], "chat.completion");
    assert!(reply.body["choices"][0]["message"]["content"].is_string());
}

#[test]
fn hostile_requests_get_openai_errors_and_the_server_survives() {
    let tiny = common::tiny_models();
    let root = tempfile::tempdir().expect("tempdir");
    let media = root.path().join("media");
    std::fs::create_dir(&media).expect("media folder");
    std::fs::write(media.join("red.png"), common::png(16, 16, [255, 0, 0])).expect("red.png");
    let outside = root.path().join("outside.png");
    std::fs::write(&outside, common::png(16, 16, [0, 0, 255])).expect("outside.png");
    std::os::unix::fs::symlink(&outside, media.join("link.png")).expect("symlink");
    let media = media.canonicalize().expect("canonical media path");
    let (_server, base) = common::start_server_with(
        &tiny.model,
        &tiny.mmproj,
        &[
            "--ctx-size",
            "256",
            "--max-images",
            "2",
            "--max-body-mb",
            "1",
            "--body-timeout",
            "2",
            "--allowed-media-path",
            media.to_str().expect("UTF-8 temp path"),
            "--allow-remote-media",
        ],
    );
    let port = common::port_of(&base);
    let ctx = Ctx {
        port,
        media,
        outside,
    };
    let cases = cases::all(&ctx);
    let bad = cases.iter().filter(|c| c.status >= 400).count();
    let failures = run(port, &cases);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(bad >= 40, "only {bad} hostile cases");
    assert_still_answers(port, &[]);
}

#[test]
fn auth_cases_on_a_server_with_a_key() {
    const KEY: &str = "sk-hostile-test-key-0123456789";
    let tiny = common::tiny_models();
    let (_server, base) = common::start_server_with(
        &tiny.model,
        &tiny.mmproj,
        &["--ctx-size", "256", "--api-key", KEY],
    );
    let port = common::port_of(&base);
    let failures = run(port, &cases::auth(KEY));
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_still_answers(port, &[format!("Authorization: Bearer {KEY}").into_bytes()]);
}
