//! A small safe wrapper over `llama-cpp-sys-2` (llama.cpp + mtmd).
//!
//! This module is the only place in the crate with `unsafe`. Every type here owns exactly one
//! llama.cpp object and frees it on drop; borrowed objects carry a lifetime (`Context<'m>` borrows
//! its `Model`). None of the types are `Send`: the engine keeps them on one worker thread.
//!
//! Failures come back as [`LlamaError`]; where llama.cpp only logs the reason (for example the
//! mmproj/text width mismatch), the last error line it logged on this thread is attached.

mod batch;
mod context;
mod gguf;
mod log;
mod model;
mod mtmd;
mod sampler;
mod template;

use std::path::PathBuf;

pub use batch::Batch;
pub use context::{default_threads, Context, ContextParams};
pub use gguf::TokenEmbeddings;
pub use model::{builtin_chat_templates, Model, ModelParams, Token};
pub use mtmd::{Bitmap, Chunk, ChunkKind, Chunks, Mtmd, MtmdParams, PromptPart};
pub use sampler::{json_schema_to_grammar, Sampler, SamplerParams};
pub use template::{apply_chat_template, ChatMessage};

use llama_cpp_sys_2 as sys;

/// Everything that can go wrong inside the llama.cpp wrapper.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    /// A model or projector path does not exist or is not a file.
    #[error("file not found: {0}")]
    FileNotFound(PathBuf),
    /// A path could not be passed to C (it contains a NUL byte or is not UTF-8).
    #[error("invalid path: {0}")]
    InvalidPath(PathBuf),
    /// llama.cpp refused to load the text model.
    #[error("failed to load model {path}: {reason}")]
    ModelLoad { path: PathBuf, reason: String },
    /// llama.cpp refused to create a context.
    #[error("failed to create context: {0}")]
    ContextInit(String),
    /// The projector's output width does not match the text model's input width.
    #[error("mmproj {path} produces {mmproj}-wide embeddings but the text model expects n_embd = {model}")]
    WidthMismatch {
        path: PathBuf,
        mmproj: usize,
        model: usize,
    },
    /// mtmd refused to load the projector.
    #[error("failed to load mmproj {path}: {reason}")]
    MmprojLoad { path: PathBuf, reason: String },
    /// The GGUF file could not be read (truncated, wrong tensor, ...).
    #[error("GGUF {path}: {reason}")]
    Gguf { path: PathBuf, reason: String },
    /// Text could not be tokenized.
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    /// An image could not be turned into model tokens.
    #[error("image preprocessing failed: {0}")]
    Image(String),
    /// The vision encoder failed on an image chunk.
    #[error("image encoding failed: {0}")]
    Encode(String),
    /// The prompt (plus what we want to generate) does not fit in the context window.
    #[error("prompt needs {needed} positions but the context holds {n_ctx}")]
    ContextFull { needed: usize, n_ctx: usize },
    /// `llama_decode` failed with the given status code.
    #[error("decode failed (code {code}): {reason}")]
    Decode { code: i32, reason: String },
    /// A batch was used beyond its capacity or with the wrong row width.
    #[error("batch misuse: {0}")]
    Batch(String),
    /// No chat template could render the conversation.
    #[error("chat template error: {0}")]
    Template(String),
    /// A sampler could not be built (e.g. an invalid grammar).
    #[error("sampler error: {0}")]
    Sampler(String),
}

/// Result alias for the wrapper.
pub type Result<T> = std::result::Result<T, LlamaError>;

/// Initialises the llama.cpp backend and routes its logs into `tracing`. Idempotent.
pub fn init_backend() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        log::install();
        // SAFETY: called exactly once per process (guarded by `Once`) before any other llama call.
        unsafe { sys::llama_backend_init() };
    });
}

/// Whether this build of llama.cpp can offload layers to a GPU (CUDA, Vulkan or Metal feature).
pub fn supports_gpu_offload() -> bool {
    init_backend();
    // SAFETY: pure query on the initialised backend registry.
    unsafe { sys::llama_supports_gpu_offload() }
}

/// Turns a path into a C string, checking it names an existing file first.
fn c_path(path: &std::path::Path) -> Result<std::ffi::CString> {
    if !path.is_file() {
        return Err(LlamaError::FileNotFound(path.to_path_buf()));
    }
    let s = path
        .to_str()
        .ok_or_else(|| LlamaError::InvalidPath(path.to_path_buf()))?;
    std::ffi::CString::new(s).map_err(|_| LlamaError::InvalidPath(path.to_path_buf()))
}
