//! `llama-dms bench`: load time, time to first token, prefill/decode speed, image encoding and
//! the caches under each DMS mode, and optionally the same requests against a peer server;
//! writes `bench.json`, `bench.md` and bar charts (see [`crate::bench`]).

use std::future::IntoFuture;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{exit_code, fail, write_report, ModelArgs};
use crate::api::{router, AppState, Limits};
use crate::bench::http::{chat_body, concurrent_tok_s, first_model, stream_chat, HttpSample};
use crate::bench::report::{
    aims, markdown, mode_ratios, peer_ratios, write_plots, BenchReport, HttpFigures, PeerComparison,
};
use crate::bench::{
    bench_image, mode_round, peak_rss_mib, system_prompt, ModeFigures, ModeRound, Stat,
    IMAGE_QUESTION, TEXT_QUESTION,
};
use crate::engine::EngineHandle;
use crate::eval::parse_modes;

/// Arguments of `llama-dms bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Model and runtime.
    #[command(flatten)]
    pub model: ModelArgs,
    /// DMS modes to time, comma-separated (off, rule, learned); ratios are taken to `off`.
    #[arg(long, value_delimiter = ',', default_value = "off,rule,learned")]
    pub modes: Vec<String>,
    /// Repetitions of every variant (medians are reported, with min and max).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Tokens generated for the text-only prompt (decode speed is measured on them).
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Base URL of another OpenAI-compatible server on the same GGUFs (e.g.
    /// `http://127.0.0.1:8081/v1` for llama.cpp's llama-server) to compare against.
    #[arg(long)]
    pub peer: Option<String>,
    /// With `--peer`: clients that send text prompts at once for the aggregate tokens/s (0
    /// skips it). Give our engine as many slots (`--parallel`) as the peer has.
    #[arg(long, default_value_t = 4)]
    pub concurrent: usize,
    /// API key for the peer.
    #[arg(long, env = "LLAMA_DMS_PEER_API_KEY")]
    pub peer_api_key: Option<String>,
    /// Output directory.
    #[arg(long, default_value = "results/bench")]
    pub out: PathBuf,
}

pub(super) fn bench(args: &BenchArgs) -> ExitCode {
    let modes = match parse_modes(&args.modes) {
        Ok(s) => s,
        Err(e) => return fail(2, &e),
    };
    if args.reps == 0 || args.max_tokens < 2 {
        return fail(2, "--reps must be at least 1 and --max-tokens at least 2");
    }
    let config = match args.model.engine_config() {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        return fail(2, &format!("cannot create {}: {e}", args.out.display()));
    }
    let file_name = |p: &std::path::Path| {
        p.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (model, mmproj) = (
        file_name(&config.model),
        config.mmproj.as_deref().map(file_name),
    );
    let (threads, n_gpu_layers) = (config.runtime.context.n_threads, config.n_gpu_layers);

    let start = Instant::now();
    let engine = match EngineHandle::start(config) {
        Ok(e) => e,
        Err(e) => return fail(exit_code(&e), &e.to_string()),
    };
    let load_ms = start.elapsed().as_secs_f64() * 1000.0;
    if args.modes.iter().any(|m| m == "learned") && engine.schedulers().default_learned().is_none()
    {
        return fail(
            2,
            "mode learned needs a learned scheduler plugin (see --plugins), or leave it out of --modes",
        );
    }

    let peer_rounds = match (&args.peer, args.concurrent) {
        (None, _) => 0,
        (Some(_), 0) => args.reps + 1,
        (Some(_), _) => 2 * (args.reps + 1),
    };
    let bar = ProgressBar::new(((args.reps + 1) * modes.len() + peer_rounds) as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Repetition 0 warms every mode up and is not counted; the order of the modes rotates
    // from one repetition to the next so drift does not favour any of them.
    let mut rounds: Vec<Vec<ModeRound>> = vec![Vec::new(); modes.len()];
    for rep in 0..=args.reps {
        for k in 0..modes.len() {
            let i = (k + rep) % modes.len();
            let (name, dms) = &modes[i];
            bar.set_message(format!("repetition {rep} / {name}"));
            let nonce = 0x5eed_0000 + (rep * 64 + i) as u64;
            match mode_round(&engine, dms, nonce, args.max_tokens) {
                Ok(r) if rep > 0 => rounds[i].push(r),
                Ok(_) => {}
                Err(e) => {
                    bar.abandon();
                    return fail(exit_code(&e), &format!("{name}: {e}"));
                }
            }
            bar.inc(1);
        }
    }
    let figures: Vec<ModeFigures> = modes
        .iter()
        .zip(&rounds)
        .map(|((name, _), r)| ModeFigures::of(name, r))
        .collect();

    let peer = match &args.peer {
        Some(url) => match compare_with_peer(&engine, url, args, &bar) {
            Ok(p) => Some(p),
            Err(e) => {
                bar.abandon();
                return fail(1, &format!("--peer: {e}"));
            }
        },
        None => None,
    };
    bar.finish_and_clear();

    let ratios = mode_ratios(&figures);
    let report = BenchReport {
        model,
        mmproj,
        threads,
        n_gpu_layers,
        reps: args.reps,
        max_tokens: args.max_tokens,
        load_ms,
        peak_rss_mib: peak_rss_mib(),
        aims: aims(&ratios, peer.as_ref()),
        ratios,
        modes: figures,
        peer,
    };
    let md = markdown(&report);
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    let files = [("bench.json", json.as_str()), ("bench.md", md.as_str())];
    write_report(&args.out, &files, write_plots(&report, &args.out), &md)
}

/// Serves our engine on a loopback port and sends the same streamed requests to it and to
/// the peer, alternating which goes first.
fn compare_with_peer(
    engine: &EngineHandle,
    peer_url: &str,
    args: &BenchArgs,
    bar: &ProgressBar,
) -> Result<PeerComparison, String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("async runtime: {e}"))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = AppState::new(Vec::new(), Limits::default());
    state.set_engine(engine.clone());
    runtime.spawn(axum::serve(listener, router(state, &[])).into_future());
    let ours_url = format!("http://{addr}/v1");
    let peer_url = peer_url.trim_end_matches('/').to_string();
    let peer_key = args.peer_api_key.as_deref();

    #[derive(Default)]
    struct Side {
        text: Vec<HttpSample>,
        image: Vec<HttpSample>,
        aggregate_tok_s: Vec<f64>,
    }
    let mut sides = [Side::default(), Side::default()];
    let mut image_error = None;
    let servers = [(ours_url.as_str(), None), (peer_url.as_str(), peer_key)];
    let models = [
        first_model(servers[0].0, None)?,
        first_model(servers[1].0, peer_key)?,
    ];
    for rep in 0..=args.reps {
        bar.set_message(format!("peer repetition {rep}"));
        let nonce = 0x9ee7_0000 + rep as u64 * 64;
        let png = bench_image(nonce + 1);
        for k in 0..2 {
            let side = (k + rep) % 2;
            let (url, key) = servers[side];
            let model = &models[side];
            let text_body = chat_body(
                model,
                &system_prompt(nonce),
                None,
                TEXT_QUESTION,
                args.max_tokens,
            );
            let text = stream_chat(url, key, &text_body)?;
            let image = if side == 1 && image_error.is_some() {
                None
            } else {
                let system = system_prompt(nonce + 1);
                let body = chat_body(model, &system, Some(&png), IMAGE_QUESTION, 8);
                match stream_chat(url, key, &body) {
                    Ok(s) => Some(s),
                    Err(e) if side == 1 => {
                        image_error = Some(e);
                        None
                    }
                    Err(e) => return Err(e),
                }
            };
            if rep > 0 {
                sides[side].text.push(text);
                sides[side].image.extend(image);
            }
        }
        bar.inc(1);
    }
    // Then several clients at once, each with its own prompt, the sides taking turns.
    for rep in (0..=args.reps).filter(|_| args.concurrent > 0) {
        bar.set_message(format!(
            "peer repetition {rep}, {} clients",
            args.concurrent
        ));
        for k in 0..2 {
            let side = (k + rep) % 2;
            let (url, key) = servers[side];
            let bodies: Vec<_> = (0..args.concurrent)
                .map(|c| {
                    let nonce = 0xa66e_0000 + (rep * 64 + c) as u64;
                    let system = system_prompt(nonce);
                    chat_body(&models[side], &system, None, TEXT_QUESTION, args.max_tokens)
                })
                .collect();
            let rate = concurrent_tok_s(url, key, &bodies)?;
            if rep > 0 {
                sides[side].aggregate_tok_s.push(rate);
            }
        }
        bar.inc(1);
    }
    let figures = |s: &Side| HttpFigures {
        ttft_text_ms: Stat::of(&s.text.iter().map(|x| x.ttft_ms).collect::<Vec<_>>()),
        ttft_image_ms: Stat::of(&s.image.iter().map(|x| x.ttft_ms).collect::<Vec<_>>()),
        decode_tok_s: Stat::of(&s.text.iter().map(|x| x.decode_tok_s()).collect::<Vec<_>>()),
        aggregate_tok_s: Stat::of(&s.aggregate_tok_s),
    };
    let (ours, peer) = (figures(&sides[0]), figures(&sides[1]));
    Ok(PeerComparison {
        url: peer_url,
        concurrent: args.concurrent,
        ours_over_peer: peer_ratios(&ours, &peer),
        ours,
        peer,
        image_error,
    })
}
