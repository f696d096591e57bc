//! Property-based fuzzing (proptest) of the hostile-input surfaces: the request parser, the
//! chat-template input, the image decoder limits and the DMS maths.
//!
//! Every property runs a fixed number of cases from a fixed seed, so CI time is bounded and a
//! failure reproduces. Two environment variables widen a local hunt:
//! `FUZZ_PROPS_SEED=<u64>` (another seed for every property) and `FUZZ_PROPS_SCALE=<n>` (n times
//! the cases). Each property writes its outcome to `$CARGO_TARGET_DIR/reliability/fuzz.json`
//! (`target/` when the variable is unset).

mod common;

#[path = "fuzz_props/dms.rs"]
mod dms;
#[path = "fuzz_props/image.rs"]
mod image_limits;
#[path = "fuzz_props/request.rs"]
mod request;
#[path = "fuzz_props/template.rs"]
mod template;

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};

/// Where the summary goes.
fn summary_path() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
    target.join("reliability").join("fuzz.json")
}

/// Serialises the read-modify-write of the summary between the test threads.
static SUMMARY: Mutex<()> = Mutex::new(());

/// Updates this property's entry of the summary file.
fn record(name: &str, entry: Value) {
    let _guard = SUMMARY.lock().unwrap_or_else(|e| e.into_inner());
    let path = summary_path();
    let mut doc: Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    doc["suite"] = json!("tests/fuzz_props.rs");
    if !doc["properties"].is_object() {
        doc["properties"] = json!({});
    }
    doc["properties"][name] = entry;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create the reliability folder");
    }
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    let text = serde_json::to_string_pretty(&doc).expect("summary serialises") + "\n";
    std::fs::write(&tmp, text).expect("write the summary");
    std::fs::rename(&tmp, &path).expect("replace the summary");
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// FNV-1a of the property name: each property's default seed.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs `test` on `cases` values of `strategy` (shrinking a failure), records the outcome in
/// the summary, and panics with the minimal failing input if there was one.
pub fn property<S>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let cases = cases.saturating_mul(env_u64("FUZZ_PROPS_SCALE").unwrap_or(1).max(1) as u32);
    let seed = env_u64("FUZZ_PROPS_SEED").unwrap_or_else(|| name_seed(name));
    let mut bytes = [0u8; 32];
    let mut s = seed;
    for chunk in bytes.chunks_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        chunk.copy_from_slice(&s.to_le_bytes());
    }
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let executions = AtomicU64::new(0);
    let start = Instant::now();
    let result = runner.run(&strategy, |v| {
        executions.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    let seconds = start.elapsed().as_secs_f64();
    let (outcome, failure) = match &result {
        Ok(()) => ("passed", Value::Null),
        Err(e) => ("failed", json!(e.to_string())),
    };
    record(
        name,
        json!({
            "cases": cases,
            "executions": executions.load(Ordering::Relaxed),
            "seed": seed,
            "result": outcome,
            "failure": failure,
            "seconds": (seconds * 1000.0).round() / 1000.0,
        }),
    );
    if let Err(e) = result {
        panic!("property {name} failed (seed {seed}): {e}");
    }
}

/// Records a property that could not run here (e.g. a model that cannot be downloaded).
pub fn skipped(name: &str, reason: &str) {
    eprintln!("SKIPPED: {name}: {reason}");
    record(
        name,
        json!({"cases": 0, "executions": 0, "result": "skipped", "failure": reason}),
    );
}
