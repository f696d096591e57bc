//! An inference context: KV memory, decode, and the outputs (logits, hidden states).

use std::marker::PhantomData;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::{log, Batch, LlamaError, Model, Result};

/// How to create a context.
#[derive(Debug, Clone)]
pub struct ContextParams {
    /// Context window in tokens (shared by all sequences: the KV cache is unified).
    pub n_ctx: u32,
    /// Largest batch one `decode` call accepts.
    pub n_batch: u32,
    /// Physical micro-batch size.
    pub n_ubatch: u32,
    /// CPU threads for generation and prompt processing.
    pub n_threads: i32,
    /// Maximum number of parallel sequences.
    pub n_seq_max: u32,
    /// Also output the last-layer hidden state of every output row.
    pub hidden_states: bool,
}

impl Default for ContextParams {
    fn default() -> Self {
        Self {
            n_ctx: 4096,
            n_batch: 512,
            n_ubatch: 512,
            n_threads: default_threads(),
            n_seq_max: 1,
            hidden_states: false,
        }
    }
}

/// The number of physical cores (llama.cpp threads fight when oversubscribed).
pub fn default_threads() -> i32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as i32)
}

/// A llama.cpp context borrowing its [`Model`].
pub struct Context<'m> {
    ptr: NonNull<sys::llama_context>,
    model: &'m Model,
    params: ContextParams,
    _not_send: PhantomData<*mut ()>,
}

impl<'m> Context<'m> {
    /// Creates a context for `model`.
    pub fn new(model: &'m Model, params: &ContextParams) -> Result<Self> {
        // SAFETY: returns a plain struct of defaults.
        let mut cp = unsafe { sys::llama_context_default_params() };
        cp.n_ctx = params.n_ctx;
        cp.n_batch = params.n_batch;
        cp.n_ubatch = params.n_ubatch.min(params.n_batch);
        cp.n_seq_max = params.n_seq_max.max(1);
        cp.n_threads = params.n_threads.max(1);
        cp.n_threads_batch = params.n_threads.max(1);
        cp.embeddings = params.hidden_states;
        cp.pooling_type = sys::LLAMA_POOLING_TYPE_NONE;
        cp.kv_unified = true;
        log::clear_last_error();
        // SAFETY: the model pointer is valid and outlives the context ('m).
        let raw = unsafe { sys::llama_init_from_model(model.as_ptr(), cp) };
        let ptr = NonNull::new(raw).ok_or_else(|| LlamaError::ContextInit(log::last_error()))?;
        Ok(Self {
            ptr,
            model,
            params: params.clone(),
            _not_send: PhantomData,
        })
    }

    /// The raw pointer, for mtmd helpers.
    pub(super) fn as_ptr(&self) -> *mut sys::llama_context {
        self.ptr.as_ptr()
    }

    /// The model this context runs.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The parameters this context was created with.
    pub fn params(&self) -> &ContextParams {
        &self.params
    }

    /// Context window in tokens.
    pub fn n_ctx(&self) -> usize {
        // SAFETY: valid context.
        unsafe { sys::llama_n_ctx(self.ptr.as_ptr()) as usize }
    }

    /// Largest batch one decode accepts.
    pub fn n_batch(&self) -> usize {
        // SAFETY: valid context.
        unsafe { sys::llama_n_batch(self.ptr.as_ptr()) as usize }
    }

    /// Runs the model on a batch, filling the KV memory and the requested outputs.
    pub fn decode(&mut self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        log::clear_last_error();
        // SAFETY: the batch was built by `Batch` (consistent arrays, `n_tokens` <= capacity; an
        // M-RoPE batch's `pos` is its own array of 4 * n_tokens positions, alive while `batch` is
        // borrowed here).
        let code = unsafe { sys::llama_decode(self.ptr.as_ptr(), batch.raw()) };
        if code == 0 {
            Ok(())
        } else {
            Err(LlamaError::Decode {
                code,
                reason: log::last_error(),
            })
        }
    }

    /// Like [`Context::decode`] with full (non-causal) attention among the batch's rows of each
    /// sequence, as Gemma 3 attends over an image; causal attention is back on afterwards,
    /// also when the decode fails.
    pub fn decode_non_causal(&mut self, batch: &Batch) -> Result<()> {
        // SAFETY: valid context; the flag only changes how the next graphs mask attention.
        unsafe { sys::llama_set_causal_attn(self.ptr.as_ptr(), false) };
        let result = self.decode(batch);
        // SAFETY: as above.
        unsafe { sys::llama_set_causal_attn(self.ptr.as_ptr(), true) };
        result
    }

    /// Logits of output row `i` of the last decode (`i` is the batch index; -1 = last output).
    pub fn logits(&self, i: i32) -> Result<&[f32]> {
        // SAFETY: valid context; llama returns null for an index without output.
        let p = unsafe { sys::llama_get_logits_ith(self.ptr.as_ptr(), i) };
        if p.is_null() {
            return Err(LlamaError::Batch(format!("no logits for batch index {i}")));
        }
        // SAFETY: a non-null logits row has n_vocab floats, valid until the next decode, which
        // needs `&mut self` and so cannot happen while this borrow lives.
        Ok(unsafe { std::slice::from_raw_parts(p, self.model.n_vocab()) })
    }

    /// Last-layer hidden state (after the output norm) of output row `i` of the last decode.
    /// Needs `hidden_states: true` in [`ContextParams`].
    pub fn hidden_state(&self, i: i32) -> Result<&[f32]> {
        if !self.params.hidden_states {
            return Err(LlamaError::Batch(
                "context created without hidden-state output".into(),
            ));
        }
        // SAFETY: valid context; llama returns null for an index without output.
        let p = unsafe { sys::llama_get_embeddings_ith(self.ptr.as_ptr(), i) };
        if p.is_null() {
            return Err(LlamaError::Batch(format!(
                "no hidden state for batch index {i}"
            )));
        }
        // SAFETY: a non-null embeddings row has n_embd floats, valid until the next decode.
        Ok(unsafe { std::slice::from_raw_parts(p, self.model.n_embd()) })
    }

    fn memory(&self) -> sys::llama_memory_t {
        // SAFETY: valid context; the memory handle lives as long as the context.
        unsafe { sys::llama_get_memory(self.ptr.as_ptr()) }
    }

    /// Forgets every sequence.
    pub fn clear_memory(&mut self) {
        // SAFETY: valid memory handle.
        unsafe { sys::llama_memory_clear(self.memory(), true) };
    }

    /// Removes positions `[p0, p1)` of sequence `seq` (`-1` = open end; `seq` -1 = all sequences).
    pub fn remove_seq(&mut self, seq: i32, p0: i32, p1: i32) -> bool {
        // SAFETY: valid memory handle; llama validates the ranges.
        unsafe { sys::llama_memory_seq_rm(self.memory(), seq, p0, p1) }
    }

    /// Makes positions `[p0, p1)` of `src` also belong to `dst` (shares the KV cells).
    pub fn copy_seq(&mut self, src: i32, dst: i32, p0: i32, p1: i32) {
        // SAFETY: valid memory handle; llama validates the ids and ranges.
        unsafe { sys::llama_memory_seq_cp(self.memory(), src, dst, p0, p1) };
    }

    /// Largest position stored for `seq`, or -1 if it is empty.
    pub fn seq_pos_max(&self, seq: i32) -> i32 {
        // SAFETY: valid memory handle.
        unsafe { sys::llama_memory_seq_pos_max(self.memory(), seq) }
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the context and free it exactly once.
        unsafe { sys::llama_free(self.ptr.as_ptr()) };
    }
}
