//! A real `llama-dms serve` on 127.0.0.1 answering the official `openai` Python package
//! (installed into a virtualenv by `scripts/deps`).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(model: &std::path::Path, mmproj: &std::path::Path) -> (Server, String) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--threads",
            "2",
        ])
        .args([
            "--model",
            model.to_str().unwrap(),
            "--mmproj",
            mmproj.to_str().unwrap(),
        ])
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

fn run_client(base: &str) {
    let image = common::scratch().join("client-red.png");
    std::fs::write(&image, common::png(32, 32, [230, 20, 20])).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");
    let out = Command::new(python())
        .args([script, base, image.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "openai client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.starts_with("ok:"));
}

#[test]
fn openai_client_on_the_tiny_model() {
    let tiny = common::tiny_models();
    let (_server, base) = start(&tiny.model, &tiny.mmproj);
    run_client(&base);
}

#[test]
fn openai_client_on_the_demo_model() {
    let Some(demo) = common::demo_paths() else {
        return;
    };
    let (_server, base) = start(&demo.model, &demo.mmproj);
    run_client(&base);
}
