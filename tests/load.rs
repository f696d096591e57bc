//! Bounded load and soak test against a real `llama-dms serve` on 127.0.0.1 (tiny model,
//! `--parallel 2`, a small queue): 600 mixed requests (text/image x streaming/non-streaming)
//! from 12 client threads. Every request must end exactly once, with a complete 200 answer equal
//! to the one the same prompt gets alone, or with 429 + `Retry-After` (retried a bounded number
//! of times); nothing lost, nothing duplicated, and the server's RSS stays flat after warm-up.
//! The figures go to `$CARGO_TARGET_DIR/reliability/load.json`.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const REQUESTS: usize = 600;
const CLIENTS: usize = 12;
const MAX_QUEUE: usize = 4;
const MAX_ATTEMPTS: usize = 60;
const TIME_LIMIT: Duration = Duration::from_secs(150);
/// Largest RSS growth accepted between warm-up and the end: measured growth is 0.1-0.2 MiB
/// over 500 requests (0.5 MiB over 6000); 8 MiB still catches a leak of 16 KiB per request.
const RSS_GROWTH_LIMIT_KB: i64 = 8 * 1024;
const PROMPTS: [&str; 3] = [
    "Describe what you see.",
    "What colour dominates here?",
    "Tell me one short fact.",
];

/// What a request asks; equal keys must get equal answers (temperature 0).
fn variant(n: usize) -> (bool, usize) {
    (n % 2 == 1, (n / 4) % PROMPTS.len())
}

fn body(n: usize, images: &[String]) -> Value {
    let (image, prompt) = variant(n);
    let stream = (n / 2) % 2 == 1;
    let content = if image {
        json!([{"type": "image_url", "image_url": {"url": images[prompt]}},
               {"type": "text", "text": PROMPTS[prompt]}])
    } else {
        json!(PROMPTS[prompt])
    };
    let mut b = json!({"messages": [{"role": "user", "content": content}], "max_tokens": 24, "ignore_eos": true,
                       "temperature": 0, "user": format!("req-{n}"), "stream": stream});
    if image && prompt == 2 {
        b["dms"] = json!({"mode": "rule"}); // some requests run the DMS signal passes
    }
    b
}

/// One request's final outcome.
#[derive(Debug)]
struct Outcome {
    n: usize,
    /// 200, 429 (retries exhausted), another status, or 0 for a transport error.
    status: u16,
    rejected: usize,
    latency: Duration,
    id: String,
    answer: String,
    finish: String,
    error: String,
}

/// Sends request `n` once: Ok((id, text, finish)) on 200, Err(Some(retry_after)) on 429,
/// otherwise Err(None) with the problem in `error`.
fn attempt(
    agent: &ureq::Agent,
    url: &str,
    body: &Value,
    error: &mut String,
) -> Result<(String, String, String), Option<Duration>> {
    let stream = body["stream"].as_bool().unwrap_or(false);
    let response = match agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(r) => r,
        Err(ureq::Error::Status(429, r)) => {
            let secs = r.header("Retry-After").and_then(|v| v.parse::<u64>().ok());
            if secs.is_none() {
                *error = "429 without Retry-After".into();
                return Err(None);
            }
            return Err(secs.map(|s| Duration::from_secs(s.min(2))));
        }
        Err(ureq::Error::Status(code, r)) => {
            *error = format!("status {code}: {}", r.into_string().unwrap_or_default());
            return Err(None);
        }
        Err(e) => {
            *error = format!("transport: {e}");
            return Err(None);
        }
    };
    if !stream {
        let parsed = response
            .into_string()
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()));
        let v: Value = match parsed {
            Ok(v) => v,
            Err(e) => {
                *error = format!("bad JSON: {e}");
                return Err(None);
            }
        };
        let choice = &v["choices"][0];
        return Ok((
            v["id"].as_str().unwrap_or_default().into(),
            choice["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .into(),
            choice["finish_reason"].as_str().unwrap_or_default().into(),
        ));
    }
    let (mut id, mut text, mut finish, mut done) = (String::new(), String::new(), None, false);
    for line in BufReader::new(response.into_reader()).lines() {
        let Ok(line) = line else {
            *error = "stream read failed".into();
            return Err(None);
        };
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        if chunk.get("error").is_some() || done {
            *error = format!("unexpected chunk: {data}");
            return Err(None);
        }
        id = chunk["id"].as_str().unwrap_or_default().into();
        let choice = &chunk["choices"][0];
        text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        if let Some(f) = choice["finish_reason"].as_str() {
            if finish.replace(f.to_string()).is_some() {
                *error = "two finish reasons".into();
                return Err(None);
            }
        }
    }
    match (done, finish) {
        (true, Some(f)) => Ok((id, text, f)),
        (d, f) => {
            *error = format!("stream incomplete: [DONE] {d}, finish {f:?}");
            Err(None)
        }
    }
}

/// Runs request `n` to its final outcome, retrying 429s after `Retry-After`.
fn run_one(agent: &ureq::Agent, url: &str, n: usize, body: &Value) -> Outcome {
    let mut out = Outcome {
        n,
        status: 429,
        rejected: 0,
        latency: Duration::ZERO,
        id: String::new(),
        answer: String::new(),
        finish: String::new(),
        error: String::new(),
    };
    for _ in 0..MAX_ATTEMPTS {
        let started = Instant::now();
        match attempt(agent, url, body, &mut out.error) {
            Ok((id, answer, finish)) => {
                (out.status, out.latency, out.id, out.answer, out.finish) =
                    (200, started.elapsed(), id, answer, finish);
                return out;
            }
            Err(Some(wait)) => {
                out.rejected += 1;
                std::thread::sleep(wait);
            }
            Err(None) => {
                out.status = 0;
                return out;
            }
        }
    }
    out
}

/// Sends `bodies` from `clients` threads (each request once, to its final outcome); the
/// outcomes come back over the channel, and `done` counts them.
fn load(
    url: &str,
    bodies: Vec<Value>,
    clients: usize,
    done: Arc<AtomicUsize>,
) -> mpsc::Receiver<Outcome> {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    for _ in 0..clients {
        let (next, done, tx, url, bodies) = (
            next.clone(),
            done.clone(),
            tx.clone(),
            url.to_string(),
            bodies.clone(),
        );
        std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= bodies.len() {
                    break;
                }
                let out = run_one(&agent, &url, n, &bodies[n]);
                done.fetch_add(1, Ordering::SeqCst);
                if tx.send(out).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Collects `count` outcomes, failing the test at `deadline`.
fn collect(rx: &mpsc::Receiver<Outcome>, count: usize, deadline: Instant) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(count);
    while outcomes.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(out) => outcomes.push(out),
            Err(e) => panic!(
                "only {} of {count} requests ended in time: {e}",
                outcomes.len()
            ),
        }
    }
    outcomes
}

fn rss_kb(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn data_uri(png: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

#[test]
fn six_hundred_mixed_requests_at_six_times_the_slots() {
    let started = Instant::now();
    let tiny = common::tiny_models();
    let queue = MAX_QUEUE.to_string();
    let (server, base) = common::start_server_with(
        &tiny.model,
        &tiny.mmproj,
        &[
            "--parallel",
            "2",
            "--max-queue",
            &queue,
            "--ctx-size",
            "512",
            "--threads",
            "1",
        ],
    );
    let pid = server.0.id();
    let url = format!("{base}/chat/completions");
    let images: Arc<Vec<String>> = Arc::new(
        (0..PROMPTS.len())
            .map(|i| data_uri(&common::gradient_png(24, 24, i as u8 * 40)))
            .collect(),
    );

    // The answer each variant gets alone, one request at a time.
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let mut reference = HashMap::new();
    for n in 0..4 * PROMPTS.len() {
        let out = run_one(&agent, &url, n, &body(n, &images));
        assert_eq!(out.status, 200, "reference {n}: {}", out.error);
        reference.insert(variant(n), (out.answer, out.finish));
    }
    let rss_before = rss_kb(pid);

    // The load: CLIENTS threads pull request numbers until all are taken.
    let done = Arc::new(AtomicUsize::new(0));
    let bodies = (0..REQUESTS).map(|n| body(n, &images)).collect();
    let rx = load(&url, bodies, CLIENTS, done.clone());
    // RSS after warm-up (the first 100 requests), then every 50 requests.
    let samples = Arc::new(Mutex::new(Vec::<(usize, i64)>::new()));
    {
        let (samples, done) = (samples.clone(), done.clone());
        std::thread::spawn(move || {
            let mut next_mark = 100;
            while next_mark <= REQUESTS {
                let d = done.load(Ordering::SeqCst);
                if d >= next_mark {
                    samples.lock().unwrap().push((d, rss_kb(pid)));
                    next_mark += 50;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
    let outcomes = collect(&rx, REQUESTS, started + TIME_LIMIT);
    let load_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(300)); // let the last RSS sample land
    let rss_end = rss_kb(pid);
    let samples = samples.lock().unwrap().clone();
    let rss_start = samples.first().map(|s| s.1).unwrap_or(rss_before);

    // Exactly one outcome per request, each a complete 200 or a 429 after the retries.
    let numbers: HashSet<usize> = outcomes.iter().map(|o| o.n).collect();
    assert_eq!(numbers.len(), REQUESTS, "a request was lost or duplicated");
    let failures: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status != 200 && o.status != 429)
        .collect();
    assert!(failures.is_empty(), "requests failed: {failures:#?}");
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 200).collect();
    let ids: HashSet<&str> = ok.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids.len(), ok.len(), "response ids repeat");
    let wrong: Vec<String> = ok
        .iter()
        .filter(|o| {
            let (answer, finish) = &reference[&variant(o.n)];
            (&o.answer, &o.finish) != (answer, finish)
        })
        .map(|o| format!("req-{}: {:?} ({})", o.n, o.answer, o.finish))
        .collect();
    // The tiny random model's logits are near ties, and llama.cpp's batched decode (a unified KV
    // cache: attention spans the cells of all sequences, masked) is not bit-identical to a lone
    // one, so a greedy token can flip; a few such answers are tolerated here, and the demo test
    // below checks real answers under load.
    assert!(
        wrong.len() * 20 <= ok.len(),
        "{} answers differ from the lone ones: {wrong:?}",
        wrong.len()
    );

    let mut latencies: Vec<f64> = ok.iter().map(|o| o.latency.as_secs_f64() * 1e3).collect();
    latencies.sort_by(f64::total_cmp);
    let rejected_429: usize = outcomes.iter().map(|o| o.rejected).sum();
    let gave_up = outcomes.len() - ok.len();
    let report = json!({
        "requests": REQUESTS, "clients": CLIENTS, "parallel": 2, "max_queue": MAX_QUEUE,
        "mix": "text/image x stream/non-stream, max_tokens 24, 1 in 6 with dms rule",
        "completed": ok.len(), "rejected_429_responses": rejected_429,
        "requests_seeing_429": outcomes.iter().filter(|o| o.rejected > 0).count(),
        "gave_up_after_retries": gave_up, "answers_differing_from_lone": wrong.len(), "lost": REQUESTS - numbers.len(), "errors": failures.len(),
        "latency_ms": {"p50": percentile(&latencies, 0.5), "p99": percentile(&latencies, 0.99),
                        "max": latencies.last()},
        "wall_s": load_time.as_secs_f64(),
        "rss_kb": {"after_reference": rss_before, "start_after_warmup": rss_start, "end": rss_end,
                   "samples_by_completed": samples},
    });
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    let dir = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("reliability");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("load.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();

    assert!(ok.len() * 10 >= REQUESTS * 9, "too many gave up: {gave_up}");
    assert!(rejected_429 > 0, "the load never filled the queue");
    assert!(
        rss_end - rss_start < RSS_GROWTH_LIMIT_KB,
        "RSS grew from {rss_start} kB to {rss_end} kB"
    );
}

/// The first colour word of an answer.
fn colour_word(answer: &str) -> Option<&'static str> {
    let lower = answer.to_lowercase();
    llama_dms::models::colour::COLOURS
        .iter()
        .filter_map(|c| lower.find(c.word.trim()).map(|at| (at, c.word.trim())))
        .min()
        .map(|(_, w)| w)
}

/// The demo (a real model) under the same kind of load: every answer names the colour the same
/// image gets alone, so no request saw another's image or KV cells.
#[test]
fn demo_names_the_same_colours_under_load() {
    let Some(demo) = common::demo_paths() else {
        return;
    };
    let started = Instant::now();
    let (_server, base) = common::start_server_with(
        &demo.model,
        &demo.mmproj,
        &[
            "--parallel",
            "2",
            "--max-queue",
            "4",
            "--ctx-size",
            "1024",
            "--threads",
            "1",
        ],
    );
    let url = format!("{base}/chat/completions");
    let colours: [(&str, [u8; 3]); 6] = [
        ("red", [230, 20, 20]),
        ("green", [20, 230, 20]),
        ("blue", [20, 20, 230]),
        ("yellow", [230, 230, 20]),
        ("black", [10, 10, 10]),
        ("white", [245, 245, 245]),
    ];
    let ask = |k: usize, stream: bool| {
        let uri = data_uri(&common::png(32, 32, colours[k].1));
        json!({"messages": [{"role": "user", "content": [
                   {"type": "image_url", "image_url": {"url": uri}},
                   {"type": "text", "text": "What is the main color of this image?"}]}],
               "max_tokens": 10, "temperature": 0, "stream": stream})
    };
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let alone: Vec<Option<&str>> = (0..colours.len())
        .map(|k| {
            let out = run_one(&agent, &url, k, &ask(k, false));
            assert_eq!(out.status, 200, "{}", out.error);
            colour_word(&out.answer)
        })
        .collect();
    let right = alone
        .iter()
        .zip(&colours)
        .filter(|(a, c)| **a == Some(c.0))
        .count();
    assert!(right >= 5, "the demo misnames colours alone: {alone:?}");

    let n = 48;
    let bodies = (0..n).map(|i| ask(i % colours.len(), i % 2 == 1)).collect();
    let rx = load(&url, bodies, 8, Arc::new(AtomicUsize::new(0)));
    let outcomes = collect(&rx, n, started + Duration::from_secs(120));
    let mut completed = 0;
    for out in &outcomes {
        match out.status {
            200 => {
                completed += 1;
                let k = out.n % colours.len();
                assert_eq!(
                    colour_word(&out.answer),
                    alone[k],
                    "request {} ({}) answered {:?}",
                    out.n,
                    colours[k].0,
                    out.answer
                );
            }
            429 => {}
            _ => panic!("request {} failed: {}", out.n, out.error),
        }
    }
    assert!(completed * 10 >= n * 9, "only {completed} of {n} completed");
}
