//! The inference engine: one worker thread owns the model, context and projector; callers talk
//! to it through a cloneable [`EngineHandle`].
//!
//! A request goes in over a bounded queue and its events (text pieces, then done or an error)
//! come back over a channel of its own. Dropping the [`EventStream`] cancels the request. A
//! failing (or panicking) request never takes the worker down; a model that fails to load is
//! reported by [`EngineHandle::start`] itself.
//!
//! Test hook: `LLAMA_DMS_FAULT_PANIC_ON=MARK` (read once at start; inert when unset) makes the
//! worker panic on requests whose text contains `MARK` (see `fault.rs`), so that the tests can
//! check that a panic only fails its own request.

pub mod decoding;
pub mod dms_settings;
pub mod dms_stage;
mod fault;
pub mod image;
pub mod lru;
mod mwc;
mod pass_blocks;
mod passes;
pub mod prompt;
pub mod prompt_cache;
pub mod runtime;
pub mod split;
pub mod stats;
pub mod text;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc as tmpsc;

use crate::llama::{LlamaError, SamplerParams};

pub use crate::dms::ModalityWeights;
pub use decoding::{Decoding, Emitted, GenerateOptions, Generation, Step, TokenLogprob};
pub use dms_settings::{
    ConfidenceVariant, ConsistencyVariant, DmsMode, DmsReport, DmsSettings, DmsTimings,
    SignalVariants,
};
pub use dms_stage::{pick_scheduler, SignalCache, MEASURED_WEIGHT_STEP};
pub use image::{decode_image, ImageError, RgbImage};
pub use prompt::{ContentPart, Message, Prompt, Role};
pub use runtime::{Runtime, RuntimeConfig};
pub use stats::{EngineStats, StatsSnapshot, WEIGHT_BUCKETS};

/// Engine errors, typed so that callers (CLI, HTTP) can map them to exit codes or statuses.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// llama.cpp failed (load, decode, tokenize, ...).
    #[error(transparent)]
    Llama(#[from] LlamaError),
    /// An image could not be used.
    #[error("image {index}: {source}")]
    Image { index: usize, source: ImageError },
    /// The request itself is wrong (missing images, weights of the wrong length, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The queue is full; try again later.
    #[error("the engine queue is full")]
    QueueFull,
    /// The engine has stopped.
    #[error("the engine has shut down")]
    ShutDown,
    /// The worker panicked while serving this request (it keeps serving others).
    #[error("internal error while serving the request: {0}")]
    Internal(String),
}

impl EngineError {
    /// Whether the caller (not the server) is at fault.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            EngineError::Image { .. }
                | EngineError::InvalidRequest(_)
                | EngineError::Llama(
                    LlamaError::ContextFull { .. } | LlamaError::Tokenize(_) | LlamaError::Image(_)
                )
        )
    }
}

/// What a caller asks the engine to do.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Sampling settings.
    pub sampling: SamplerParams,
    /// Maximum tokens to generate.
    pub max_tokens: usize,
    /// Strings that end generation (not included in the output).
    pub stop: Vec<String>,
    /// How the modality weights are chosen (default: off, i.e. exactly llama.cpp's evaluation).
    pub dms: DmsSettings,
    /// Constrain the output to JSON (any object, or a JSON schema).
    pub response_format: Option<ResponseFormat>,
    /// Report each token's log-probability with this many alternatives.
    pub top_logprobs: Option<usize>,
    /// A raw text prompt used instead of `messages` (no chat template; control-token text is
    /// parsed, as in llama.cpp's completion endpoint).
    pub raw_prompt: Option<String>,
    /// Score this text as the answer instead of generating one: nothing is sampled, and
    /// [`Done::score`] holds its log-likelihood given the (weighted) prompt.
    pub score: Option<String>,
    /// Also measure the Modality Weight Consistency loss of the applied weights (three extra
    /// clean passes; for evaluation) into [`DmsReport::mwc`].
    pub measure_mwc: bool,
}

/// Structured-output constraint, turned into a llama.cpp grammar.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON matching this schema.
    JsonSchema(serde_json::Value),
}

impl ResponseFormat {
    /// The GBNF grammar (llama.cpp's own JSON-schema converter).
    pub fn grammar(&self) -> Result<String, EngineError> {
        let schema = match self {
            ResponseFormat::JsonObject => serde_json::json!({"type": "object"}),
            ResponseFormat::JsonSchema(s) => s.clone(),
        };
        crate::llama::json_schema_to_grammar(&schema.to_string())
            .map_err(|e| EngineError::InvalidRequest(format!("response_format: {e}")))
    }
}

impl GenerateRequest {
    /// A request with default sampling and no weighting.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            sampling: SamplerParams::default(),
            max_tokens: 256,
            stop: Vec::new(),
            dms: DmsSettings::default(),
            response_format: None,
            top_logprobs: None,
            raw_prompt: None,
            score: None,
            measure_mwc: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The caller went away.
    Cancelled,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens (text tokens plus image embedding rows).
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt positions reused from the slot's previous request (not evaluated again).
    pub cached_tokens: usize,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Vision encoder time (0 when every image came from the caches).
    pub image_encode_ms: f64,
    /// Image chunks whose projected rows came from the embedding cache instead of the encoder.
    pub image_cache_hits: usize,
    /// Prompt positions whose KV was copied from the DMS signal passes' shared prefix
    /// (usually the system prompt) instead of being decoded again.
    pub pass_prefix_positions: usize,
    /// Prompt processing time (excluding image encoding).
    pub prefill_ms: f64,
    /// Generation time.
    pub decode_ms: f64,
}

/// The final event of a successful request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Done {
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Time spent per stage.
    pub timings: Timings,
    /// What the DMS stage decided (weights, signals, scheduler, timings).
    pub dms: DmsReport,
    /// Log-likelihood of [`GenerateRequest::score`]'s text (natural log), when it was asked for.
    pub score: Option<f64>,
}

/// What the engine sends back for a request.
#[derive(Debug)]
pub enum Event {
    /// A piece of generated text (complete UTF-8).
    Text(String),
    /// One generated token's log-probabilities (only when asked for).
    Logprob(Box<TokenLogprob>),
    /// Generation finished.
    Done(Box<Done>),
    /// The request failed.
    Error(EngineError),
}

/// The events of one request. Dropping it cancels the request.
pub struct EventStream {
    rx: tmpsc::UnboundedReceiver<Event>,
}

impl EventStream {
    /// Waits for the next event (async). `None` after the last one.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Waits for the next event from synchronous code.
    pub fn blocking_recv(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }
}

/// How to start an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Text model GGUF.
    pub model: PathBuf,
    /// Chat template instead of the GGUF's: Jinja text or a llama.cpp built-in name.
    pub chat_template: Option<String>,
    /// Projector GGUF (needed for images).
    pub mmproj: Option<PathBuf>,
    /// Layers offloaded to the GPU.
    pub n_gpu_layers: i32,
    /// Runtime settings (context, threads).
    pub runtime: RuntimeConfig,
    /// Requests generated at the same time (their decode steps share one batch).
    pub parallel: usize,
    /// Requests that may wait in the queue.
    pub queue_capacity: usize,
    /// Largest image accepted, in pixels.
    pub max_image_pixels: u64,
    /// The DMS schedulers (built-ins plus plugin files).
    pub schedulers: Arc<crate::dms::Registry>,
    /// Images whose DMS results are cached.
    pub signal_cache_images: usize,
}

impl EngineConfig {
    /// Defaults for a model (and optional projector).
    pub fn new(model: impl Into<PathBuf>, mmproj: Option<PathBuf>) -> Self {
        Self {
            model: model.into(),
            chat_template: None,
            mmproj,
            n_gpu_layers: 0,
            runtime: RuntimeConfig::default(),
            parallel: 1,
            queue_capacity: 16,
            max_image_pixels: 4096 * 4096,
            schedulers: Arc::new(crate::dms::Registry::builtin()),
            signal_cache_images: 32,
        }
    }
}

/// Facts about the loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// File stem of the model, used as its API name.
    pub name: String,
    /// llama.cpp's description (architecture, size, quantisation).
    pub description: String,
    /// Architecture (`llama`, `gemma3`, ...).
    pub architecture: String,
    /// Context window of the running context.
    pub n_ctx: usize,
    /// Hidden width.
    pub n_embd: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Whether images are accepted.
    pub vision: bool,
    /// Requests generated at once (`parallel`).
    pub slots: usize,
    /// The GGUF's chat template, if it has one.
    pub chat_template: Option<String>,
}

struct Job {
    request: GenerateRequest,
    events: tmpsc::UnboundedSender<Event>,
    /// Where the fault-injection hook makes this request panic (tests only).
    fault: Option<fault::Stage>,
}

/// The request to stop the worker, and its answer.
#[derive(Default)]
pub(crate) struct Stop {
    requested: AtomicBool,
    finished: Mutex<bool>,
    finished_cv: Condvar,
}

impl Stop {
    /// Whether [`EngineHandle::shut_down`] was called.
    fn requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// Marks the worker finished (its model and context freed).
    fn finish(&self) {
        if let Ok(mut f) = self.finished.lock() {
            *f = true;
        }
        self.finished_cv.notify_all();
    }
}

/// Marks the worker finished when dropped: declared before the model, it drops after it.
struct FinishOnDrop(Arc<Stop>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// A cloneable, thread-safe handle to the engine worker.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: mpsc::SyncSender<Job>,
    stop: Arc<Stop>,
    info: Arc<ModelInfo>,
    stats: Arc<EngineStats>,
    schedulers: Arc<crate::dms::Registry>,
    fault: Arc<fault::FaultHook>,
    tokenizer: Arc<crate::llama::Model>,
}

impl EngineHandle {
    /// Starts the worker and waits until the model is loaded (or failed to load).
    pub fn start(config: EngineConfig) -> Result<Self, EngineError> {
        let (jobs, queue) = mpsc::sync_channel(config.queue_capacity.max(1));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let worker_stats = Arc::clone(&stats);
        let schedulers = Arc::clone(&config.schedulers);
        let model_path = config.model.clone();
        let stop = Arc::new(Stop::default());
        let worker_stop = FinishOnDrop(Arc::clone(&stop));
        std::thread::Builder::new()
            .name("llama-dms-engine".into())
            .spawn(move || worker::run(config, queue, ready_tx, &worker_stats, worker_stop))
            .map_err(|e| EngineError::Internal(format!("cannot spawn the engine thread: {e}")))?;
        let info = ready_rx.recv().map_err(|_| EngineError::ShutDown)??;
        // The vocabulary alone, for tokenising off the engine thread.
        let vocab_only = crate::llama::ModelParams {
            vocab_only: true,
            ..Default::default()
        };
        let tokenizer = Arc::new(crate::llama::Model::load(&model_path, &vocab_only)?);
        Ok(Self {
            tokenizer,
            jobs,
            stop,
            info: Arc::new(info),
            stats,
            schedulers,
            fault: Arc::new(fault::FaultHook::from_env()),
        })
    }

    /// Stops the worker: running and queued requests end with [`EngineError::ShutDown`] and
    /// the model is freed. Returns whether that finished within `wait`. Call it before the
    /// process exits while requests may still run: llama.cpp must not be decoding while the
    /// process tears down its globals.
    pub fn shut_down(&self, wait: Duration) -> bool {
        self.stop.requested.store(true, Ordering::Relaxed);
        let Ok(finished) = self.stop.finished.lock() else {
            return false;
        };
        match self
            .stop
            .finished_cv
            .wait_timeout_while(finished, wait, |f| !*f)
        {
            Ok((f, _)) => *f,
            Err(_) => false,
        }
    }

    /// What the worker has done so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The loaded model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The model's vocabulary (loaded apart from the engine's model: tokenising with it never
    /// waits for the engine thread).
    pub fn tokenizer(&self) -> Arc<crate::llama::Model> {
        Arc::clone(&self.tokenizer)
    }

    /// The DMS schedulers requests may name.
    pub fn schedulers(&self) -> &crate::dms::Registry {
        &self.schedulers
    }

    /// Queues a request; fails at once with [`EngineError::QueueFull`] when the queue is full.
    pub fn submit(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        let (events, rx) = tmpsc::unbounded_channel();
        self.stats.enqueued();
        let fault = self.fault.stage(&request);
        let job = Job {
            request,
            events,
            fault,
        };
        self.jobs.try_send(job).map_err(|e| {
            self.stats.dequeued();
            match e {
                mpsc::TrySendError::Full(_) => EngineError::QueueFull,
                mpsc::TrySendError::Disconnected(_) => EngineError::ShutDown,
            }
        })?;
        Ok(EventStream { rx })
    }
}
