//! Shared helpers for the integration tests: synthesised models, test images, SmolLM2 download.
#![allow(dead_code)]

pub mod dms;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use llama_dms::engine::{Prompt, Runtime, RuntimeConfig};
use llama_dms::llama::ContextParams;
use llama_dms::models::demo::{self, DemoPaths};
use llama_dms::models::{smollm2, tiny};

/// The tiny text model and its mmproj, written once per test binary.
pub fn tiny_models() -> &'static tiny::TinyModelPaths {
    static PATHS: OnceLock<(tempfile::TempDir, tiny::TinyModelPaths)> = OnceLock::new();
    &PATHS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let paths = tiny::write_tiny_models(dir.path(), 7).expect("write tiny models");
            (dir, paths)
        })
        .1
}

/// A scratch directory that lives as long as the test binary.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

/// Where downloaded models are cached between runs (`LLAMA_DMS_CACHE`, else ~/.cache/llama-dms).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LLAMA_DMS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            home.join(".cache/llama-dms")
        })
}

/// SmolLM2-135M-Instruct, downloaded on first use; `None` (with the reason printed) only when
/// the download is impossible here. Under CI (`CI` set to anything but `false`/`0`) a model that
/// cannot be downloaded fails the test instead: CI never passes a test it could not run.
pub fn smollm2() -> Option<PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| match smollm2::ensure(&cache_dir(), false) {
        Ok(p) => Some(p),
        Err(smollm2::FetchError::Download(reason)) if in_ci() => {
            panic!("CI: SmolLM2 is needed but could not be downloaded: {reason}")
        }
        Err(smollm2::FetchError::Download(reason)) => {
            eprintln!("SKIPPED: SmolLM2 could not be downloaded: {reason}");
            None
        }
        Err(e) => panic!("SmolLM2 fetch failed: {e}"),
    })
    .clone()
}

/// Whether the tests run under CI (`CI` set, and not to `false` or `0`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A solid-colour PNG.
pub fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb(rgb));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// A PNG with a deterministic gradient (so different images give different embeddings).
pub fn gradient_png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 7 + u32::from(seed)) as u8,
            (y * 5) as u8,
            ((x + y) * 3 + u32::from(seed) * 11) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// Runtime settings for tests: small context, few threads, `n_seq` sequences.
pub fn test_config(n_ctx: u32, n_seq: u32) -> RuntimeConfig {
    RuntimeConfig {
        context: ContextParams {
            n_ctx,
            n_batch: 512,
            n_ubatch: 512,
            n_threads: 2,
            n_seq_max: n_seq,
            hidden_states: true,
        },
        ..RuntimeConfig::default()
    }
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Logits at the last prompt position after a fresh prefill of `prompt` on sequence 0, either
/// llama.cpp's own way (`weights: None`) or through weighted embedding rows.
pub fn last_logits(
    rt: &mut Runtime<'_>,
    prompt: &Prompt,
    weights: Option<&llama_dms::engine::ModalityWeights>,
) -> Vec<f32> {
    rt.context().clear_memory();
    match weights {
        None => rt.prefill_reference(prompt, 0).expect("reference prefill"),
        Some(w) => rt.prefill_weighted(prompt, w, 0).expect("weighted prefill"),
    };
    rt.last_logits().expect("logits").to_vec()
}

/// The demo (SmolLM2 + colour projector), prepared once in the shared model cache; `None` only
/// when SmolLM2 cannot be downloaded.
pub fn demo_paths() -> Option<DemoPaths> {
    static PATHS: OnceLock<Option<DemoPaths>> = OnceLock::new();
    PATHS
        .get_or_init(|| {
            smollm2()?;
            Some(demo::prepare(&cache_dir(), false).expect("demo prepares"))
        })
        .clone()
}

/// Kills the server when the test ends, however it ends.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `llama-dms serve` on a free loopback port with `model` and `mmproj` and waits until
/// `/health` answers 200. Returns the server and its `/v1` base URL.
pub fn start_server(model: &Path, mmproj: &Path) -> (Server, String) {
    start_server_with(model, mmproj, &[])
}

/// [`start_server`] with extra `serve` flags.
pub fn start_server_with(model: &Path, mmproj: &Path, extra: &[&str]) -> (Server, String) {
    start_server_env(model, mmproj, extra, &[])
}

/// [`start_server_with`] with extra environment variables for the server process.
pub fn start_server_env(
    model: &Path,
    mmproj: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Server, String) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(if extra.contains(&"--threads") {
            &[][..]
        } else {
            &["--threads", "2"][..]
        })
        .args([
            "--model",
            model.to_str().unwrap(),
            "--mmproj",
            mmproj.to_str().unwrap(),
        ])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", port))
            .and_then(|mut s| {
                use std::io::{Read, Write};
                s.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"))
            })
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (server, format!("http://127.0.0.1:{port}/v1"))
}

/// The port of a `http://127.0.0.1:PORT/v1` base URL.
pub fn port_of(base: &str) -> u16 {
    base.trim_end_matches("/v1")
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in the base URL")
}

/// Sends SIGTERM to the server process.
pub fn send_sigterm(server: &Server) {
    let pid = server.0.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
}

/// Fails with the command's stderr unless it exited successfully.
pub fn succeeded(o: &std::process::Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Every line of a JSON Lines file, parsed.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
