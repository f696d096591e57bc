//! The web chat page in a real browser: `tests/web/chat.mjs` drives headless Chromium
//! (Debian's `/usr/bin/chromium`, through npm's `playwright-core` installed by `scripts/deps`)
//! against live servers on the tiny model (one open, one with an API key and `--dms rule`). Screenshots (desktop, dark, phone width) land in
//! `$CARGO_TARGET_DIR/web-screenshots` (else `target/web-screenshots`) as CI artifacts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The node_modules folder `scripts/deps` installs playwright-core into.
fn node_modules() -> PathBuf {
    common::cache_dir().join("node").join("node_modules")
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("web-screenshots")
}

/// Fails (never skips) when the browser or the driver is missing.
fn require_browser_tools() {
    let hint = "run scripts/deps (it installs chromium, nodejs, npm and playwright-core)";
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: {hint}"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: {hint}"
    );
    let driver = node_modules().join("playwright-core").join("package.json");
    assert!(driver.exists(), "{} is missing: {hint}", driver.display());
}

#[test]
fn chat_page_in_headless_chromium() {
    require_browser_tools();
    let tiny = common::tiny_models();
    // Built-in schedulers only (no learned one), so that mode `learned` is refused (a 400).
    let no_plugins = common::scratch().join("no-plugins");
    let (_server, v1) = common::start_server_with(
        &tiny.model,
        &tiny.mmproj,
        &["--plugins", no_plugins.to_str().unwrap()],
    );
    let base = v1.trim_end_matches("/v1").to_string();
    let key = "web-test-key";
    let (_keyed, keyed_v1) = common::start_server_with(
        &tiny.model,
        &tiny.mmproj,
        &["--api-key", key, "--dms", "rule"],
    );
    let keyed = keyed_v1.trim_end_matches("/v1").to_string();
    let out = screenshot_dir();
    std::fs::create_dir_all(&out).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/chat.mjs");
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(&script)
        .arg(&base)
        .arg(&out)
        .args([&keyed, key])
        .env("NODE_PATH", node_modules())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser test ran over 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "tests/web/chat.mjs failed ({status}); its checks are printed above"
    );
    for shot in ["desktop.png", "desktop-dark.png", "phone.png"] {
        let path = out.join(shot);
        assert!(path.exists(), "{} was not written", path.display());
    }
    eprintln!(
        "browser test passed in {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
}
