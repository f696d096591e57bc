//! A real `llama-dms serve` on 127.0.0.1 answering the official `openai` and `anthropic`
//! Python packages (installed into a virtualenv by `scripts/deps`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{start_server as start, start_server_with as start_with};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LLAMA_DMS_PYTHON") {
        return p.into();
    }
    let venv = common::cache_dir().join("venv/bin/python");
    assert!(
        venv.is_file(),
        "{} is missing: run scripts/deps first (it installs the openai package)",
        venv.display()
    );
    venv
}

/// The `openai` client script (the server needs `--parallel 2`, for `n=2`).
fn run_client(base: &str) {
    run_script("openai_client.py", base);
}

/// Runs `tests/python/SCRIPT BASE_URL IMAGE` and checks it printed `ok:`.
fn run_script(script: &str, base: &str) {
    let image = common::scratch().join("client-red.png");
    std::fs::write(&image, common::png(32, 32, [230, 20, 20])).unwrap();
    let script = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python())
        .args([script.as_str(), base, image.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stdout}");
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.starts_with("ok:"));
}

#[test]
fn openai_client_on_the_tiny_model() {
    let tiny = common::tiny_models();
    let (_server, base) = start_with(&tiny.model, &tiny.mmproj, &["--parallel", "2"]);
    run_client(&base);
}

#[test]
fn openai_client_on_the_demo_model() {
    let Some(demo) = common::demo_paths() else {
        return;
    };
    let (_server, base) = start_with(&demo.model, &demo.mmproj, &["--parallel", "2"]);
    run_client(&base);
}

#[test]
fn anthropic_client_on_the_tiny_model() {
    let tiny = common::tiny_models();
    let (_server, base) = start(&tiny.model, &tiny.mmproj);
    // The anthropic client adds `/v1/messages` to a base without `/v1`.
    run_script("anthropic_client.py", base.trim_end_matches("/v1"));
}

#[test]
fn anthropic_client_on_the_demo_model() {
    let Some(demo) = common::demo_paths() else {
        return;
    };
    let (_server, base) = start(&demo.model, &demo.mmproj);
    run_script("anthropic_client.py", base.trim_end_matches("/v1"));
}
