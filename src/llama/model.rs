//! The text model: loading, shape queries, and the vocabulary (tokenize / detokenize).

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::{c_path, init_backend, log, LlamaError, Result};

/// A token id of the model's vocabulary.
pub type Token = i32;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct ModelParams {
    /// Layers to offload to the GPU (0 = CPU only, negative = all).
    pub n_gpu_layers: i32,
    /// Memory-map the file instead of reading it.
    pub use_mmap: bool,
    /// Load only the vocabulary (a tokenizer: no weights, no decoding).
    pub vocab_only: bool,
}

impl Default for ModelParams {
    fn default() -> Self {
        Self {
            n_gpu_layers: 0,
            use_mmap: true,
            vocab_only: false,
        }
    }
}

/// A loaded llama.cpp model (weights + vocabulary).
pub struct Model {
    ptr: NonNull<sys::llama_model>,
    path: PathBuf,
    /// A chat template used instead of the GGUF's (see [`Model::override_chat_template`]).
    template_override: Option<String>,
}

// SAFETY: a loaded model is never mutated through this wrapper (every method takes `&self`
// and only reads: metadata, tokenisation, token lookups, which llama-server also calls from
// several threads at once), and llama.cpp frees it only in Drop.
unsafe impl Send for Model {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for Model {}

impl Model {
    /// Whether `token` is an id of the vocabulary (llama.cpp aborts on others).
    pub fn has_token(&self, token: Token) -> bool {
        (0..self.n_vocab() as Token).contains(&token)
    }

    /// Loads a GGUF text model.
    pub fn load(path: &Path, params: &ModelParams) -> Result<Self> {
        init_backend();
        let c = c_path(path)?;
        // SAFETY: returns a plain struct of defaults.
        let mut mp = unsafe { sys::llama_model_default_params() };
        mp.n_gpu_layers = params.n_gpu_layers;
        mp.vocab_only = params.vocab_only;
        if !params.use_mmap {
            mp.load_mode = sys::LLAMA_LOAD_MODE_NONE;
        }
        log::clear_last_error();
        // SAFETY: `c` is a valid NUL-terminated path; params come from llama's own defaults.
        let raw = unsafe { sys::llama_model_load_from_file(c.as_ptr(), mp) };
        let ptr = NonNull::new(raw).ok_or_else(|| LlamaError::ModelLoad {
            path: path.to_path_buf(),
            reason: log::last_error(),
        })?;
        Ok(Self {
            ptr,
            path: path.to_path_buf(),
            template_override: None,
        })
    }

    /// The raw pointer, for the other wrapper types.
    pub(super) fn as_ptr(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    fn vocab(&self) -> *const sys::llama_vocab {
        // SAFETY: the model pointer is valid for the lifetime of `self`.
        unsafe { sys::llama_model_get_vocab(self.ptr.as_ptr()) }
    }

    /// The file this model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Width of the hidden state (`n_embd`).
    pub fn n_embd(&self) -> usize {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_embd(self.ptr.as_ptr()) as usize }
    }

    /// Width of an input embedding row (`n_embd_inp`, >= `n_embd`; larger for Qwen3-VL deepstack).
    pub fn n_embd_inp(&self) -> usize {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_embd_inp(self.ptr.as_ptr()) as usize }
    }

    /// Whether positions come in M-RoPE sets (Qwen2-VL and relatives): four numbers per
    /// embedding row instead of one.
    pub fn uses_mrope(&self) -> bool {
        // SAFETY: valid model pointer.
        let rope = unsafe { sys::llama_model_rope_type(self.ptr.as_ptr()) };
        rope == sys::LLAMA_ROPE_TYPE_MROPE || rope == sys::LLAMA_ROPE_TYPE_IMROPE
    }

    /// Number of transformer layers.
    pub fn n_layer(&self) -> usize {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_layer(self.ptr.as_ptr()) as usize }
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        // SAFETY: the vocab pointer belongs to the model.
        unsafe { sys::llama_vocab_n_tokens(self.vocab()) as usize }
    }

    /// Training context length.
    pub fn n_ctx_train(&self) -> usize {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_ctx_train(self.ptr.as_ptr()) as usize }
    }

    /// A metadata string value (`general.architecture`, ...), if present.
    pub fn meta(&self, key: &str) -> Option<String> {
        let key = CString::new(key).ok()?;
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: `buf` is writable for `buf.len()` bytes; llama writes a NUL-terminated string.
            let n = unsafe {
                sys::llama_model_meta_val_str(
                    self.ptr.as_ptr(),
                    key.as_ptr(),
                    buf.as_mut_ptr().cast::<c_char>(),
                    buf.len(),
                )
            };
            if n < 0 {
                return None;
            }
            if (n as usize) < buf.len() {
                buf.truncate(n as usize);
                return Some(String::from_utf8_lossy(&buf).into_owned());
            }
            buf.resize(n as usize + 1, 0);
        }
    }

    /// The architecture name (`llama`, `gemma3`, `qwen2vl`, ...).
    pub fn architecture(&self) -> String {
        self.meta("general.architecture").unwrap_or_default()
    }

    /// A human-readable description (architecture, size, quantisation).
    pub fn description(&self) -> String {
        let mut buf = vec![0u8; 256];
        // SAFETY: `buf` is writable for its length; llama NUL-terminates within it.
        let n = unsafe {
            sys::llama_model_desc(
                self.ptr.as_ptr(),
                buf.as_mut_ptr().cast::<c_char>(),
                buf.len(),
            )
        };
        buf.truncate(n.max(0) as usize);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The factor llama.cpp applies to *token* input rows (but not to embedding inputs).
    ///
    /// Gemma 3/3n/4 multiply looked-up token rows by `sqrt(n_embd)` inside `build_inp_embd`, so
    /// text rows fed as embeddings must be pre-scaled to match. Older Gemma scale every input
    /// in the graph, which needs no correction.
    pub fn token_row_scale(&self) -> f32 {
        match self.architecture().as_str() {
            "gemma3" | "gemma3n" | "gemma4" | "gemma-embedding" => (self.n_embd() as f32).sqrt(),
            _ => 1.0,
        }
    }

    /// Uses `template` instead of the GGUF's chat template: a Jinja template, or the name of
    /// one of llama.cpp's built-in templates (see [`builtin_chat_templates`]).
    pub fn override_chat_template(&mut self, template: String) {
        self.template_override = Some(template);
    }

    /// The model's chat template: the override if one was set, else the GGUF's
    /// (`tokenizer.chat_template`), if it has one.
    pub fn chat_template(&self) -> Option<String> {
        if let Some(t) = &self.template_override {
            return Some(t.clone());
        }
        // SAFETY: valid model; a null name asks for the default template. The returned string is
        // owned by the model and copied before `self` can go away.
        let p = unsafe { sys::llama_model_chat_template(self.ptr.as_ptr(), std::ptr::null()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: non-null, NUL-terminated, owned by the model.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// Beginning-of-sequence token.
    pub fn token_bos(&self) -> Token {
        // SAFETY: valid vocab.
        unsafe { sys::llama_vocab_bos(self.vocab()) }
    }

    /// End-of-sequence token.
    pub fn token_eos(&self) -> Token {
        // SAFETY: valid vocab.
        unsafe { sys::llama_vocab_eos(self.vocab()) }
    }

    /// Whether the vocabulary wants a BOS token at the start of a prompt.
    pub fn add_bos(&self) -> bool {
        // SAFETY: valid vocab.
        unsafe { sys::llama_vocab_get_add_bos(self.vocab()) }
    }

    /// Whether `token` ends generation (EOS, EOT, `<|im_end|>`, ...).
    pub fn is_eog(&self, token: Token) -> bool {
        // SAFETY: valid vocab; llama checks the id range itself.
        unsafe { sys::llama_vocab_is_eog(self.vocab(), token) }
    }

    /// Tokenizes `text`. `parse_special` turns control-token text (`<|im_start|>`) into control
    /// tokens; keep it off for user-supplied text so users cannot inject them.
    pub fn tokenize(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<Token>> {
        let len = i32::try_from(text.len())
            .map_err(|_| LlamaError::Tokenize("text longer than 2 GiB".into()))?;
        let mut out = vec![0 as Token; text.len() + 2];
        for _ in 0..2 {
            // SAFETY: `text` is valid for `len` bytes (no NUL needed); `out` is writable for its length.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab(),
                    text.as_ptr().cast::<c_char>(),
                    len,
                    out.as_mut_ptr(),
                    out.len() as i32,
                    add_bos,
                    parse_special,
                )
            };
            if n >= 0 {
                out.truncate(n as usize);
                return Ok(out);
            }
            if n == i32::MIN {
                return Err(LlamaError::Tokenize("too many tokens".into()));
            }
            out.resize((-n) as usize, 0);
        }
        Err(LlamaError::Tokenize(
            "tokenizer reported inconsistent sizes".into(),
        ))
    }

    /// The raw bytes of one token's text (may be a partial UTF-8 sequence). Control tokens
    /// render as their text only when `special` is true.
    pub fn token_bytes(&self, token: Token, special: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        loop {
            // SAFETY: `buf` is writable for its length; the vocab checks the token id.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.vocab(),
                    token,
                    buf.as_mut_ptr().cast::<c_char>(),
                    buf.len() as i32,
                    0,
                    special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }

    /// Detokenizes a whole sequence (lossy for invalid UTF-8).
    pub fn detokenize(&self, tokens: &[Token]) -> String {
        let bytes: Vec<u8> = tokens
            .iter()
            .flat_map(|&t| self.token_bytes(t, false))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: we own the model; contexts borrowing it have been dropped (lifetimes enforce it).
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) };
    }
}

/// The names of llama.cpp's built-in chat templates (`chatml`, `llama3`, `gemma`, ...).
pub fn builtin_chat_templates() -> Vec<String> {
    // SAFETY: with a null output and length 0 llama.cpp only returns the count.
    let n = unsafe { sys::llama_chat_builtin_templates(std::ptr::null_mut(), 0) };
    let mut names: Vec<*const c_char> = vec![std::ptr::null(); n.max(0) as usize];
    // SAFETY: `names` has room for `n` pointers; llama.cpp fills them with static strings.
    let n = unsafe { sys::llama_chat_builtin_templates(names.as_mut_ptr(), names.len()) };
    names
        .iter()
        .take(n.max(0) as usize)
        .filter(|p| !p.is_null())
        // SAFETY: non-null static NUL-terminated strings owned by llama.cpp.
        .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .collect()
}
