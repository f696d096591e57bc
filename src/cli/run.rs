//! `llama-dms run`: one prompt, answer streamed to stdout, timings and DMS decision to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{exit_code, fail, ModelArgs};
use crate::engine::{
    ConfidenceVariant, ConsistencyVariant, ContentPart, DmsMode, DmsReport, DmsSettings,
    EngineHandle, Event, GenerateRequest, Message, ModalityWeights, Role,
};
use crate::llama::SamplerParams;

/// The DMS mode as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DmsModeArg {
    /// No weighting (exactly llama.cpp).
    Off,
    /// The weights given by --image-weight / --text-weight.
    Fixed,
    /// Rule-based scheduler.
    Rule,
    /// Learned scheduler.
    Learned,
}

/// DMS flags of a one-shot run.
#[derive(Debug, Clone, Args)]
pub struct DmsArgs {
    /// How modality weights are chosen (default: fixed when a weight is given, else off).
    #[arg(long)]
    pub dms: Option<DmsModeArg>,
    /// Scheduler plugin by name (see --plugins).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Weight of every image's embedding rows (implies --dms fixed).
    #[arg(long)]
    pub image_weight: Option<f32>,
    /// Weight of the user text's embedding rows (implies --dms fixed).
    #[arg(long)]
    pub text_weight: Option<f32>,
    /// Monte-Carlo dropout passes per modality (default 4).
    #[arg(long)]
    pub mc_samples: Option<usize>,
    /// Dropout rate of those passes (default 0.3).
    #[arg(long)]
    pub dropout: Option<f32>,
    /// 2x2 average-pool image rows for the signal passes (cheaper).
    #[arg(long)]
    pub pool_images: bool,
    /// Image rows above which the signal passes pool an image 2x2 again, until at most this
    /// many remain (0: no limit; default 64).
    #[arg(long)]
    pub max_image_rows: Option<usize>,
    /// Consistency signal the scheduler sees (default input).
    #[arg(long, value_parser = ["js", "hidden", "input"])]
    pub consistency: Option<String>,
    /// Confidence variant the scheduler sees (default topk).
    #[arg(long, value_parser = ["top1", "topk", "margin", "entropy", "mean", "first", "shift", "gain"])]
    pub confidence: Option<String>,
    /// Greedy tokens of each unimodal pass among which the answer position is found
    /// (default 10).
    #[arg(long)]
    pub answer_tokens: Option<usize>,
}

impl DmsArgs {
    /// The engine settings for `n_images` images.
    pub fn settings(&self, n_images: usize) -> DmsSettings {
        let fixed = self.image_weight.is_some() || self.text_weight.is_some();
        let mode = match self.dms {
            Some(DmsModeArg::Off) => DmsMode::Off,
            Some(DmsModeArg::Fixed) => DmsMode::Fixed,
            Some(DmsModeArg::Rule) => DmsMode::Rule,
            Some(DmsModeArg::Learned) => DmsMode::Learned,
            None if fixed => DmsMode::Fixed,
            None => DmsMode::Off,
        };
        let d = DmsSettings::default();
        DmsSettings {
            mode,
            scheduler: self.scheduler.clone(),
            weights: Some(ModalityWeights {
                images: vec![self.image_weight.unwrap_or(1.0); n_images],
                text: self.text_weight.unwrap_or(1.0),
            }),
            mc_samples: self.mc_samples.unwrap_or(d.mc_samples),
            dropout: self.dropout.unwrap_or(d.dropout),
            pool_images: self.pool_images,
            max_image_rows: self.max_image_rows.unwrap_or(d.max_image_rows),
            consistency: match self.consistency.as_deref() {
                Some("hidden") => ConsistencyVariant::Hidden,
                Some("input") => ConsistencyVariant::Input,
                Some("js") => ConsistencyVariant::Js,
                _ => d.consistency,
            },
            confidence: match self.confidence.as_deref() {
                Some("margin") => ConfidenceVariant::Margin,
                Some("entropy") => ConfidenceVariant::Entropy,
                Some("mean") => ConfidenceVariant::Mean,
                Some("first") => ConfidenceVariant::First,
                Some("top1") => ConfidenceVariant::Top1,
                Some("topk") => ConfidenceVariant::Topk,
                Some("shift") => ConfidenceVariant::Shift,
                Some("gain") => ConfidenceVariant::Gain,
                _ => d.confidence,
            },
            answer_tokens: self.answer_tokens.unwrap_or(d.answer_tokens),
            seed: 0,
        }
    }
}

/// `run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image file to show the model (repeatable).
    #[arg(long = "image", short = 'i')]
    pub images: Vec<PathBuf>,
    /// The question.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Optional system prompt.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub dms: DmsArgs,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Maximum tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128)]
    pub max_tokens: usize,
}

pub(super) fn run_once(args: &RunArgs) -> ExitCode {
    let config = match args.model.engine_config() {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    let mut content = Vec::new();
    for path in &args.images {
        match std::fs::read(path) {
            Ok(bytes) => content.push(ContentPart::Image(bytes)),
            Err(e) => return fail(2, &format!("cannot read image {}: {e}", path.display())),
        }
    }
    content.push(ContentPart::Text(args.prompt.clone()));
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message::text(Role::System, system.clone()));
    }
    messages.push(Message {
        role: Role::User,
        content,
    });
    let engine = match EngineHandle::start(config) {
        Ok(e) => e,
        Err(e) => return fail(exit_code(&e), &e.to_string()),
    };
    let request = GenerateRequest {
        messages,
        sampling: SamplerParams {
            temperature: args.temperature,
            seed: args.seed,
            ..SamplerParams::default()
        },
        max_tokens: args.max_tokens,
        stop: Vec::new(),
        dms: args.dms.settings(args.images.len()),
        ..GenerateRequest::new(Vec::new())
    };
    let mut events = match engine.submit(request) {
        Ok(s) => s,
        Err(e) => return fail(exit_code(&e), &e.to_string()),
    };
    let mut stdout = std::io::stdout().lock();
    while let Some(event) = events.blocking_recv() {
        match event {
            Event::Text(piece) => {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
            Event::Logprob(_) => {} // not requested by `run`
            Event::Done(done) => {
                let _ = writeln!(stdout);
                let t = done.timings;
                eprintln!(
                    "[{} prompt tokens, {} generated, finish: {:?}] image encode {:.1} ms, prefill {:.1} ms, decode {:.1} ms ({:.1} tok/s)",
                    done.usage.prompt_tokens,
                    done.usage.completion_tokens,
                    done.finish_reason,
                    t.image_encode_ms,
                    t.prefill_ms,
                    t.decode_ms,
                    done.usage.completion_tokens as f64 / (t.decode_ms / 1000.0).max(1e-9),
                );
                eprintln!("{}", describe_dms(&done.dms));
                return ExitCode::SUCCESS;
            }
            Event::Error(e) => {
                let _ = writeln!(stdout);
                return fail(exit_code(&e), &e.to_string());
            }
        }
    }
    fail(1, "the engine stopped without finishing the request")
}

/// One human-readable paragraph about the DMS decision of a request.
pub fn describe_dms(report: &DmsReport) -> String {
    let images: Vec<String> = report
        .weights
        .images
        .iter()
        .map(|w| format!("{w:.3}"))
        .collect();
    let mut out = format!(
        "dms: {} ({:?}); weights: images [{}], text {:.3}; {:.1} ms",
        report.scheduler,
        report.mode,
        images.join(", "),
        report.weights.text,
        report.timings_ms.total_ms
    );
    if let Some(s) = &report.signals {
        for (i, m) in s.images.iter().enumerate() {
            let cons = s.consistency.get(i).copied().unwrap_or(f32::NAN);
            out.push_str(&format!(
                "\n  image {i}: confidence {:.3}, uncertainty {:.4}, consistency {cons:.3}",
                m.confidence, m.uncertainty
            ));
        }
        out.push_str(&format!(
            "\n  text: confidence {:.3}, uncertainty {:.4}",
            s.text.confidence, s.text.uncertainty
        ));
        if report.image_cache_hits > 0 {
            out.push_str(&format!(
                "\n  ({} image(s) from the signal cache)",
                report.image_cache_hits
            ));
        }
    }
    out
}
