//! What `llama-dms bench` writes: the figures as JSON (stable field names), a Markdown table,
//! and bar charts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ratio, ModeFigures, Stat};
use crate::plot::{bar_chart, Bar, PlotError};

/// Figures of one side of a peer comparison (both measured over HTTP by the same client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpFigures {
    /// Time to first token of the text-only prompt (ms).
    pub ttft_text_ms: Option<Stat>,
    /// Time to first token of a prompt with a new image (ms); `None` if the server refused it.
    pub ttft_image_ms: Option<Stat>,
    /// Decode speed of the text-only prompt after the first token (tokens per second).
    pub decode_tok_s: Option<Stat>,
    /// Tokens per second of wall time over all clients when several send text prompts at
    /// once (`None` when not measured).
    #[serde(default)]
    pub aggregate_tok_s: Option<Stat>,
}

/// Ours against another OpenAI-compatible server, same requests, alternating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerComparison {
    /// The peer's base URL.
    pub url: String,
    /// Clients sending at once for the aggregate figure (0: not measured).
    #[serde(default)]
    pub concurrent: usize,
    /// Our server (DMS off), over HTTP on loopback.
    pub ours: HttpFigures,
    /// The peer.
    pub peer: HttpFigures,
    /// Our median over the peer's for each figure.
    pub ours_over_peer: BTreeMap<String, Option<f64>>,
    /// Why image prompts could not be compared, if they could not.
    pub image_error: Option<String>,
}

/// One of the aims and whether this run met it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aim {
    /// What is aimed for, in words.
    pub aim: String,
    /// The measured ratio.
    pub value: Option<f64>,
    /// Whether it is met (`None` when it could not be measured in this run).
    pub met: Option<bool>,
}

/// Everything one `bench` run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Text model file name.
    pub model: String,
    /// Projector file name.
    pub mmproj: Option<String>,
    /// CPU threads.
    pub threads: i32,
    /// Layers offloaded to the GPU.
    pub n_gpu_layers: i32,
    /// Repetitions per variant.
    pub reps: usize,
    /// Tokens generated for the text-only prompt.
    pub max_tokens: usize,
    /// Time to load the model and projector (ms).
    pub load_ms: f64,
    /// Peak resident memory of the process at the end (MiB).
    pub peak_rss_mib: Option<f64>,
    /// Figures per DMS mode, in-process.
    pub modes: Vec<ModeFigures>,
    /// Ratios of medians: `ttft_text_vs_off`, `ttft_image_vs_off` (per mode) and
    /// `repeat_vs_first_image` (per mode).
    pub ratios: BTreeMap<String, BTreeMap<String, Option<f64>>>,
    /// The comparison with `--peer`, when asked for.
    pub peer: Option<PeerComparison>,
    /// The aims.
    pub aims: Vec<Aim>,
}

/// The ratios of `modes` (see [`BenchReport::ratios`]).
pub fn mode_ratios(modes: &[ModeFigures]) -> BTreeMap<String, BTreeMap<String, Option<f64>>> {
    let off = modes.iter().find(|m| m.mode == "off");
    let vs_off = |f: fn(&ModeFigures) -> Option<Stat>| -> BTreeMap<String, Option<f64>> {
        modes
            .iter()
            .map(|m| (m.mode.clone(), ratio(f(m), off.and_then(f))))
            .collect()
    };
    let mut out = BTreeMap::new();
    out.insert("ttft_text_vs_off".into(), vs_off(|m| m.ttft_text_ms));
    out.insert("ttft_image_vs_off".into(), vs_off(|m| m.ttft_image_ms));
    out.insert(
        "repeat_vs_first_image".into(),
        modes
            .iter()
            .map(|m| {
                (
                    m.mode.clone(),
                    ratio(m.ttft_repeat_image_ms, m.ttft_image_ms),
                )
            })
            .collect(),
    );
    out
}

/// The ratios `ours / peer` of a comparison.
pub fn peer_ratios(ours: &HttpFigures, peer: &HttpFigures) -> BTreeMap<String, Option<f64>> {
    BTreeMap::from([
        (
            "ttft_text".into(),
            ratio(ours.ttft_text_ms, peer.ttft_text_ms),
        ),
        (
            "ttft_image".into(),
            ratio(ours.ttft_image_ms, peer.ttft_image_ms),
        ),
        (
            "decode_tok_s".into(),
            ratio(ours.decode_tok_s, peer.decode_tok_s),
        ),
        (
            "aggregate_tok_s".into(),
            ratio(ours.aggregate_tok_s, peer.aggregate_tok_s),
        ),
    ])
}

/// The aims checked against `ratios` and `peer`.
pub fn aims(
    ratios: &BTreeMap<String, BTreeMap<String, Option<f64>>>,
    peer: Option<&PeerComparison>,
) -> Vec<Aim> {
    let get = |table: &str, key: &str| {
        ratios
            .get(table)
            .and_then(|t| t.get(key))
            .copied()
            .flatten()
    };
    let aim = |aim: &str, value: Option<f64>, ok: fn(f64) -> bool| Aim {
        aim: aim.into(),
        value,
        met: value.map(ok),
    };
    let vs_peer = |key: &str| peer.and_then(|p| p.ours_over_peer.get(key).copied().flatten());
    vec![
        aim(
            "rule time to first token (new image) <= 1.5x off",
            get("ttft_image_vs_off", "rule"),
            |v| v <= 1.5,
        ),
        aim(
            "rule time to first token, same image again <= 0.5x its first",
            get("repeat_vs_first_image", "rule"),
            |v| v <= 0.5,
        ),
        aim(
            "off: decode tokens/s >= 1.0x the peer's",
            vs_peer("decode_tok_s"),
            |v| v >= 1.0,
        ),
        aim(
            "off: aggregate tokens/s, concurrent clients, >= 1.0x the peer's",
            vs_peer("aggregate_tok_s"),
            |v| v >= 1.0,
        ),
        aim(
            "off: time to first token (text) <= 1.05x the peer's",
            vs_peer("ttft_text"),
            |v| v <= 1.05,
        ),
        aim(
            "off: time to first token (image) <= 1.05x the peer's",
            vs_peer("ttft_image"),
            |v| v <= 1.05,
        ),
    ]
}

fn cell(s: Option<Stat>) -> String {
    match s {
        Some(s) => format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max),
        None => "–".into(),
    }
}

fn num(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2}"))
}

/// The report as Markdown tables.
pub fn markdown(r: &BenchReport) -> String {
    let mut md = format!(
        "# Benchmark: {}\n\n{} repetitions per variant, {} threads, {} GPU layers; \
         medians with (min–max). Model load {:.0} ms; peak RSS {}.\n\n",
        r.model,
        r.reps,
        r.threads,
        r.n_gpu_layers,
        r.load_ms,
        r.peak_rss_mib.map_or("–".into(), |m| format!("{m:.0} MiB")),
    );
    md.push_str(
        "| mode | TTFT text ms | TTFT image ms | TTFT same image again ms | encode ms | DMS ms | \
         prefill tok/s | decode tok/s |\n|---|---|---|---|---|---|---|---|\n",
    );
    for m in &r.modes {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            m.mode,
            cell(m.ttft_text_ms),
            cell(m.ttft_image_ms),
            cell(m.ttft_repeat_image_ms),
            cell(m.image_encode_ms),
            cell(m.dms_ms),
            cell(m.prefill_tok_s),
            cell(m.decode_tok_s),
        ));
    }
    md.push_str("\n| ratio of medians | ");
    let modes: Vec<&str> = r.modes.iter().map(|m| m.mode.as_str()).collect();
    md.push_str(&modes.join(" | "));
    md.push_str(" |\n|---|");
    md.push_str(&"---|".repeat(modes.len()));
    md.push('\n');
    for (name, table) in &r.ratios {
        md.push_str(&format!("| {name} |"));
        for m in &modes {
            md.push_str(&format!(" {} |", num(table.get(*m).copied().flatten())));
        }
        md.push('\n');
    }
    md.push_str(
        "\n## DMS stage of a new image prompt, per pass family (ms)\n\n\
         | mode | encode | image passes | text passes | total |\n|---|---|---|---|---|\n",
    );
    for m in r.modes.iter().filter(|m| m.mode != "off") {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            m.mode,
            cell(m.dms_encode_ms),
            cell(m.dms_image_passes_ms),
            cell(m.dms_text_passes_ms),
            cell(m.dms_ms),
        ));
    }
    if let Some(p) = &r.peer {
        md.push_str(&format!(
            "\n## Against {} (same requests over HTTP, alternating; ours with DMS off; \
             aggregate: {} clients at once)\n\n\
             | figure | ours | peer | ours / peer |\n|---|---|---|---|\n",
            p.url, p.concurrent
        ));
        let rows = [
            (
                "TTFT text ms",
                p.ours.ttft_text_ms,
                p.peer.ttft_text_ms,
                "ttft_text",
            ),
            (
                "TTFT image ms",
                p.ours.ttft_image_ms,
                p.peer.ttft_image_ms,
                "ttft_image",
            ),
            (
                "decode tok/s",
                p.ours.decode_tok_s,
                p.peer.decode_tok_s,
                "decode_tok_s",
            ),
            (
                "aggregate tok/s",
                p.ours.aggregate_tok_s,
                p.peer.aggregate_tok_s,
                "aggregate_tok_s",
            ),
        ];
        for (label, ours, peer, key) in rows {
            let q = p.ours_over_peer.get(key).copied().flatten();
            md.push_str(&format!(
                "| {label} | {} | {} | {} |\n",
                cell(ours),
                cell(peer),
                num(q)
            ));
        }
        if let Some(e) = &p.image_error {
            md.push_str(&format!("\nImage prompts not compared: {e}\n"));
        }
    }
    md.push_str("\n| aim | measured | met |\n|---|---|---|\n");
    for a in &r.aims {
        let met = match a.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not measured",
        };
        md.push_str(&format!("| {} | {} | {met} |\n", a.aim, num(a.value)));
    }
    md
}

/// Writes `bench_ttft.png` (time to first token per prompt kind and mode) and, with a peer,
/// `bench_peer.png`; returns the paths written.
pub fn write_plots(r: &BenchReport, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let bar = |group: &str, variant: &str, s: Option<Stat>| {
        s.map(|s| Bar {
            group: group.into(),
            variant: variant.into(),
            median: s.median,
            min: s.min,
            max: s.max,
        })
    };
    let mut bars = Vec::new();
    for m in &r.modes {
        bars.extend(bar("text prompt", &m.mode, m.ttft_text_ms));
        bars.extend(bar("new image", &m.mode, m.ttft_image_ms));
        bars.extend(bar("same image again", &m.mode, m.ttft_repeat_image_ms));
    }
    let mut written = Vec::new();
    let path = dir.join("bench_ttft.png");
    bar_chart(&path, "Time to first token per DMS mode", "ms", &bars)?;
    written.push(path);
    if let Some(p) = &r.peer {
        let mut bars = Vec::new();
        for (side, f) in [("llama-dms", &p.ours), ("peer", &p.peer)] {
            bars.extend(bar("TTFT text (ms)", side, f.ttft_text_ms));
            bars.extend(bar("TTFT image (ms)", side, f.ttft_image_ms));
            bars.extend(bar("decode (tok/s)", side, f.decode_tok_s));
            bars.extend(bar("aggregate (tok/s)", side, f.aggregate_tok_s));
        }
        let path = dir.join("bench_peer.png");
        bar_chart(&path, "llama-dms against the peer", "ms or tokens/s", &bars)?;
        written.push(path);
    }
    Ok(written)
}
