//! The single-threaded core: model, context, projector and token-row reader together, with the
//! two prefill paths (weighted embedding rows, and llama.cpp's own evaluation) and generation.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::llama::{
    Batch, ChunkKind, Context, ContextParams, Model, Mtmd, MtmdParams, Token, TokenEmbeddings,
};

use super::prompt::{Piece, Prompt};
use super::{EngineError, ModalityWeights};

/// Settings of a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Context parameters (window, batch, threads, sequences, hidden states).
    pub context: ContextParams,
    /// Run the vision encoder on the GPU when available.
    pub mtmd_use_gpu: bool,
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
        })
    }

    /// The model.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The context (for direct decoding in tests and the DMS stage).
    pub fn context(&mut self) -> &mut Context<'m> {
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
        let mut batch = Batch::embeddings(per_batch.min(n_rows), width);
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

    /// Prefills `prompt` into sequence `seq` (from position 0) as embedding rows: image rows are
    /// multiplied by their image weight, user-text rows by the text weight, everything else by 1.
    pub fn prefill_weighted(
        &mut self,
        prompt: &Prompt,
        weights: &ModalityWeights,
        seq: i32,
    ) -> Result<Prefill, EngineError> {
        self.prefill_weighted_encoded(prompt, weights, seq, &[])
    }

    /// [`Runtime::prefill_weighted`] with images already encoded: `encoded[i][j]` holds the rows
    /// of the `j`-th image chunk of image `i` (images missing from `encoded` are encoded here).
    pub fn prefill_weighted_encoded(
        &mut self,
        prompt: &Prompt,
        weights: &ModalityWeights,
        seq: i32,
        encoded: &[Vec<Vec<f32>>],
    ) -> Result<Prefill, EngineError> {
        weights
            .check(prompt.n_images())
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        self.check_fits(prompt)?;
        let start = Instant::now();
        let width = self.model.n_embd_inp();
        let mut out = Prefill::default();
        let mut pending: Vec<f32> = Vec::new();
        if let Some(bos) = prompt.bos {
            self.rows.append_rows(&[bos], 1.0, width, &mut pending)?;
        }
        for piece in &prompt.pieces {
            match piece {
                Piece::Text { tokens, user } => {
                    let w = if *user { weights.text } else { 1.0 };
                    self.rows.append_rows(tokens, w, width, &mut pending)?;
                }
                Piece::Image { index, chunks } => {
                    let mut image_chunk = 0;
                    for chunk in chunks.iter() {
                        match chunk.kind() {
                            ChunkKind::Image => {
                                self.decode_rows(
                                    &std::mem::take(&mut pending),
                                    &mut out.n_past,
                                    seq,
                                    false,
                                )?;
                                let mtmd = self.mtmd.as_mut().ok_or_else(no_projector)?;
                                let mut rows =
                                    match encoded.get(*index).and_then(|e| e.get(image_chunk)) {
                                        Some(rows) => rows.clone(),
                                        None => {
                                            let t = Instant::now();
                                            let rows = mtmd.encode(&chunk)?;
                                            out.image_encode += t.elapsed();
                                            rows
                                        }
                                    };
                                image_chunk += 1;
                                let w = weights.images[*index];
                                if w != 1.0 {
                                    rows.iter_mut().for_each(|v| *v *= w);
                                }
                                out.n_past = mtmd.decode_image(
                                    &mut self.ctx,
                                    &chunk,
                                    &mut rows,
                                    out.n_past,
                                    seq,
                                )?;
                            }
                            ChunkKind::Text => {
                                self.rows
                                    .append_rows(chunk.tokens(), 1.0, width, &mut pending)?
                            }
                            ChunkKind::Audio => {
                                return Err(EngineError::InvalidRequest(
                                    "audio input is not supported".into(),
                                ))
                            }
                        }
                    }
                }
            }
        }
        if pending.is_empty() {
            return Err(EngineError::InvalidRequest(
                "the prompt must end with text".into(),
            ));
        }
        self.decode_rows(&pending, &mut out.n_past, seq, true)?;
        out.total = start.elapsed();
        Ok(out)
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

fn no_projector() -> EngineError {
    EngineError::InvalidRequest("this model has no vision projector".into())
}
