//! The single-threaded core: model, context, projector and token-row reader together, with the
//! two prefill paths (weighted embedding rows, and llama.cpp's own evaluation) and generation.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::llama::{
    Batch, Context, ContextParams, Model, Mtmd, MtmdParams, Token, TokenEmbeddings,
};

use super::lru::{ContentKey, Lru};
use super::prompt::Prompt;
use super::prompt_cache::prompt_units;
use super::{EngineError, ModalityWeights};

/// Settings of a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Context parameters (window, batch, threads, sequences, hidden states).
    pub context: ContextParams,
    /// Run the vision encoder on the GPU when available.
    pub mtmd_use_gpu: bool,
    /// Bytes of projected image rows kept for images seen again.
    pub image_cache_bytes: usize,
}

impl Default for RuntimeConfig {
    /// A context ready for DMS: hidden-state output on, and sequences for the answer, the clean
    /// unimodal pass and four dropout passes.
    fn default() -> Self {
        let context = ContextParams {
            n_seq_max: 6,
            hidden_states: true,
            ..ContextParams::default()
        };
        Self {
            context,
            mtmd_use_gpu: false,
            image_cache_bytes: 256 << 20,
        }
    }
}

/// What a prefill did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prefill {
    /// Next free position of the sequence.
    pub n_past: i32,
    /// Time spent in the vision encoder.
    pub image_encode: Duration,
    /// Total prefill time (including image encoding).
    pub total: Duration,
    /// Image chunks whose rows came from the embedding cache.
    pub image_cache_hits: usize,
    /// Prompt positions copied from the DMS signal passes' prefix instead of decoded.
    pub pass_prefix_positions: usize,
}

/// Model, context, projector and token rows on one thread.
pub struct Runtime<'m> {
    pub(super) model: &'m Model,
    pub(super) ctx: Context<'m>,
    pub(super) mtmd: Option<Mtmd<'m>>,
    pub(super) rows: TokenEmbeddings,
    /// Positions one request may use (the whole context unless the worker shares it).
    pub(super) slot_ctx: usize,
    /// First sequence id the DMS signal passes may use (answers use the ones below).
    pub(super) signal_seq_base: i32,
    /// Projected image rows by image chunk key.
    pub(super) embeddings: Lru<Vec<f32>>,
    /// The tokens of the pass prefix the first signal sequence holds at positions 0.., if any.
    pub(super) pass_prefix: Option<Vec<Token>>,
    /// Fault injection (tests only): panic after the next decode of parallel signal passes.
    pub(super) fault_signal_pass: bool,
    /// The unimodal hidden states of the last MWC measurement, by the key of its unimodal
    /// prompts: a weight grid asks for the same ones at every point.
    pub(super) mwc_unimodal: Option<(ContentKey, Vec<Vec<f32>>)>,
}

impl<'m> Runtime<'m> {
    /// Creates the context (and projector, when `mmproj` is given) for `model`.
    pub fn new(
        model: &'m Model,
        mmproj: Option<&Path>,
        config: &RuntimeConfig,
    ) -> Result<Self, EngineError> {
        let rows = TokenEmbeddings::open(model.path(), model.n_embd(), model.token_row_scale())?;
        let mtmd = match mmproj {
            Some(p) => {
                let params = MtmdParams {
                    use_gpu: config.mtmd_use_gpu,
                    n_threads: config.context.n_threads,
                };
                Some(Mtmd::new(model, p, &params)?)
            }
            None => None,
        };
        let ctx = Context::new(model, &config.context)?;
        let slot_ctx = ctx.n_ctx();
        Ok(Self {
            model,
            ctx,
            mtmd,
            rows,
            slot_ctx,
            signal_seq_base: 1,
            embeddings: Lru::new(config.image_cache_bytes),
            pass_prefix: None,
            fault_signal_pass: false,
            mwc_unimodal: None,
        })
    }

    /// The model.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The context, for direct decoding (tests, examples). The caller may change any
    /// sequence, so the signal passes forget the prefix they kept.
    pub fn context(&mut self) -> &mut Context<'m> {
        self.pass_prefix = None;
        &mut self.ctx
    }

    /// The projector, if one is loaded.
    pub fn mtmd(&self) -> Option<&Mtmd<'m>> {
        self.mtmd.as_ref()
    }

    /// Logits at the last output row of the last decode.
    pub fn last_logits(&self) -> Result<&[f32], EngineError> {
        Ok(self.ctx.logits(-1)?)
    }

    pub(super) fn check_fits(&self, prompt: &Prompt) -> Result<(), EngineError> {
        let needed = prompt.n_positions() + 1;
        if needed > self.slot_ctx {
            return Err(crate::llama::LlamaError::ContextFull {
                needed,
                n_ctx: self.slot_ctx,
            }
            .into());
        }
        Ok(())
    }

    /// An empty batch for up to `capacity` embedding rows of this model (with M-RoPE position
    /// sets when the model uses them).
    pub(super) fn row_batch(&self, capacity: usize) -> Batch {
        let width = self.model.n_embd_inp();
        if self.model.uses_mrope() {
            Batch::embeddings_mrope(capacity, width)
        } else {
            Batch::embeddings(capacity, width)
        }
    }

    /// Decodes rows in batches of at most `n_batch`, asking for logits on the very last row
    /// when `logits_last`.
    pub(super) fn decode_rows(
        &mut self,
        rows: &[f32],
        n_past: &mut i32,
        seq: i32,
        logits_last: bool,
    ) -> Result<(), EngineError> {
        let width = self.model.n_embd_inp();
        let n_rows = rows.len() / width;
        let per_batch = self.ctx.n_batch().max(1);
        let mut batch = self.row_batch(per_batch.min(n_rows));
        for (b, block) in rows.chunks(per_batch * width).enumerate() {
            batch.clear();
            for (i, row) in block.chunks_exact(width).enumerate() {
                let last = b * per_batch + i + 1 == n_rows;
                batch.push_row(row, *n_past, seq, logits_last && last)?;
                *n_past += 1;
            }
            self.ctx.decode(&batch)?;
        }
        Ok(())
    }

    /// Prefills `prompt` into sequence `seq` from position 0 with its user text and images
    /// scaled by `weights` (see [`Runtime::prefill_from`]).
    pub fn prefill_weighted(
        &mut self,
        prompt: &Prompt,
        weights: &ModalityWeights,
        seq: i32,
    ) -> Result<Prefill, EngineError> {
        let units = prompt_units(prompt, weights);
        self.prefill_from(prompt, weights, seq, &units, 0)
    }

    /// Prefills `prompt` the way llama.cpp itself does (token ids for text,
    /// `mtmd_helper_eval_chunks` for the whole multimodal prompt). Weights are all 1 by nature.
    pub fn prefill_reference(&mut self, prompt: &Prompt, seq: i32) -> Result<Prefill, EngineError> {
        self.check_fits(prompt)?;
        let start = Instant::now();
        let mut n_past = 0;
        if let Some(bos) = prompt.bos {
            decode_tokens(&mut self.ctx, &[bos], &mut n_past, seq, false)?;
        }
        match &self.mtmd {
            Some(mtmd) => {
                let chunks = prompt.reference_chunks(mtmd)?;
                n_past = mtmd.eval_chunks(&mut self.ctx, &chunks, n_past, seq)?;
            }
            None => {
                let tokens = prompt.text_tokens();
                let tokens = &tokens[usize::from(prompt.bos.is_some())..];
                decode_tokens(&mut self.ctx, tokens, &mut n_past, seq, true)?;
            }
        }
        Ok(Prefill {
            n_past,
            image_encode: Duration::ZERO,
            total: start.elapsed(),
            image_cache_hits: 0,
            pass_prefix_positions: 0,
        })
    }
}

/// Decodes token ids on `seq` from `n_past` in batches of at most `n_batch`, asking for logits
/// on the very last token when `logits_last`.
pub(super) fn decode_tokens(
    ctx: &mut Context<'_>,
    tokens: &[Token],
    n_past: &mut i32,
    seq: i32,
    logits_last: bool,
) -> Result<(), EngineError> {
    let per_batch = ctx.n_batch().max(1);
    let mut batch = Batch::tokens(per_batch.min(tokens.len()));
    for (k, block) in tokens.chunks(per_batch).enumerate() {
        batch.clear();
        for (i, &t) in block.iter().enumerate() {
            batch.push_token(
                t,
                *n_past,
                seq,
                logits_last && k * per_batch + i + 1 == tokens.len(),
            )?;
            *n_past += 1;
        }
        ctx.decode(&batch)?;
    }
    Ok(())
}
