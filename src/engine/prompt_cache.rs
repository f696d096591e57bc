//! The prefill every request goes through, and the reuse of a slot's KV memory across requests:
//! the next turn of a chat (or the same image again) continues from the longest prefix that is
//! already in the sequence instead of evaluating the whole prompt again.
//!
//! A prompt is laid out as [`Unit`]s: text decoded by token id (weight 1), user text decoded as
//! scaled embedding rows (weight not 1), and image chunks keyed by the image's pixels and the
//! weight applied to them. Two prompts share KV exactly as far as their units agree. Projected
//! image rows come from a bounded LRU keyed by the image's pixels, so an image seen again is not
//! encoded again even when its KV is gone. Evidence whose weight is below
//! [`LEAVE_OUT_BELOW`](crate::dms::LEAVE_OUT_BELOW) has no units: it is left out of the prompt.

use std::time::Instant;

use crate::dms::is_left_out;
use crate::llama::{Chunk, ChunkKind, Token};

use super::lru::{content_key, ContentKey};
use super::prompt::{Piece, Prompt};
use super::runtime::{decode_tokens, Prefill, Runtime};
use super::{EngineError, ModalityWeights};

/// What occupies one stretch of KV positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// One token decoded by id.
    Token(Token),
    /// One user-text token decoded as its embedding row times a weight (the weight's bits).
    Scaled { token: Token, weight: u32 },
    /// One image chunk: a hash of its pixels, ordinal and weight, and the positions it uses.
    Image { key: ContentKey, n_pos: usize },
}

impl Unit {
    fn n_pos(&self) -> usize {
        match self {
            Unit::Image { n_pos, .. } => *n_pos,
            _ => 1,
        }
    }
}

/// Positions covered by `units`.
pub fn positions(units: &[Unit]) -> usize {
    units.iter().map(Unit::n_pos).sum()
}

/// Length of the common prefix of two unit lists.
pub fn common_prefix(a: &[Unit], b: &[Unit]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A text token under weight `w`.
fn text_unit(token: Token, w: f32) -> Unit {
    if w == 1.0 {
        Unit::Token(token)
    } else {
        Unit::Scaled {
            token,
            weight: w.to_bits(),
        }
    }
}

/// The units of `prompt` when its user text and images are scaled by `weights`.
pub fn prompt_units(prompt: &Prompt, weights: &ModalityWeights) -> Vec<Unit> {
    let mut units: Vec<Unit> = prompt.bos.map(Unit::Token).into_iter().collect();
    for piece in &prompt.pieces {
        match piece {
            Piece::Text { tokens, evidence } => {
                let w = if *evidence { weights.text } else { 1.0 };
                if !is_left_out(w) {
                    units.extend(tokens.iter().map(|&t| text_unit(t, w)));
                }
            }
            Piece::Image { index, chunks } => {
                let w = weights.images.get(*index).copied().unwrap_or(1.0);
                let mut ordinal = 0;
                for chunk in chunks.iter() {
                    if chunk.kind() == ChunkKind::Text {
                        units.extend(chunk.tokens().iter().map(|&t| Unit::Token(t)));
                        continue;
                    }
                    let chunk_key = prompt.image_chunk_key(*index, ordinal);
                    units.push(Unit::Image {
                        key: content_key(&[&chunk_key, &w.to_bits().to_le_bytes()]),
                        n_pos: chunk.n_pos(),
                    });
                    ordinal += 1;
                }
            }
        }
    }
    units
}

impl Runtime<'_> {
    /// When the DMS signal passes left a prefix in KV (usually the system prompt) that
    /// `units` start with beyond the `keep` units sequence `seq` already holds, copies it
    /// into `seq` instead of decoding it again. Returns the units `seq` now holds.
    pub fn adopt_pass_prefix(&mut self, seq: i32, units: &[Unit], keep: usize) -> usize {
        let Some(tokens) = &self.pass_prefix else {
            return keep;
        };
        let n = tokens.len();
        // At least one unit must be left to decode (its logits start the answer).
        if n <= keep || n >= units.len() {
            return keep;
        }
        let same = units[..n]
            .iter()
            .zip(tokens)
            .all(|(u, t)| matches!(u, Unit::Token(x) if x == t));
        if !same {
            return keep;
        }
        self.ctx.remove_seq(seq, keep as i32, -1);
        self.ctx
            .copy_seq(self.signal_seq_base, seq, keep as i32, n as i32);
        n
    }

    /// Prefills `prompt` into sequence `seq` with its user text and images scaled by `weights`
    /// (everything else by 1), continuing after the first `keep` of its `units` (from
    /// [`prompt_units`]) that the sequence already holds; `keep` = 0 starts afresh. Text at
    /// weight 1 is decoded by token id, exactly as llama.cpp does, so weights of 1 give
    /// llama.cpp's own result.
    pub fn prefill_from(
        &mut self,
        prompt: &Prompt,
        weights: &ModalityWeights,
        seq: i32,
        units: &[Unit],
        keep: usize,
    ) -> Result<Prefill, EngineError> {
        weights
            .check(prompt.n_images())
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        self.check_fits(prompt)?;
        let start = Instant::now();
        let keep = keep.min(units.len().saturating_sub(1));
        let mut out = Prefill {
            n_past: positions(&units[..keep]) as i32,
            ..Prefill::default()
        };
        self.ctx.remove_seq(seq, out.n_past, -1);
        // Text waiting to be decoded, with its weight; the unit cursor skips what is kept.
        let mut pending: Vec<(Token, f32)> = Vec::new();
        let mut cursor = 0;
        let take_text =
            |pending: &mut Vec<(Token, f32)>, cursor: &mut usize, tokens: &[Token], w: f32| {
                for &t in tokens {
                    if *cursor >= keep {
                        pending.push((t, w));
                    }
                    *cursor += 1;
                }
            };
        if let Some(bos) = prompt.bos {
            take_text(&mut pending, &mut cursor, &[bos], 1.0);
        }
        for piece in &prompt.pieces {
            match piece {
                Piece::Text { tokens, evidence } => {
                    let w = if *evidence { weights.text } else { 1.0 };
                    if !is_left_out(w) {
                        take_text(&mut pending, &mut cursor, tokens, w);
                    }
                }
                Piece::Image { index, chunks } => {
                    let mut ordinal = 0;
                    for chunk in chunks.iter() {
                        match chunk.kind() {
                            ChunkKind::Text => {
                                take_text(&mut pending, &mut cursor, chunk.tokens(), 1.0)
                            }
                            ChunkKind::Image if cursor < keep => {
                                cursor += 1;
                                ordinal += 1;
                            }
                            ChunkKind::Image => {
                                cursor += 1;
                                self.flush_text(&mut pending, &mut out.n_past, seq, false)?;
                                let (mut rows, hit) =
                                    self.image_rows(prompt, *index, ordinal, &chunk, &mut out)?;
                                out.image_cache_hits += usize::from(hit);
                                ordinal += 1;
                                let w = weights.images[*index];
                                if w != 1.0 {
                                    rows.iter_mut().for_each(|v| *v *= w);
                                }
                                let mtmd = self.mtmd.as_ref().ok_or_else(no_projector)?;
                                out.n_past = mtmd.decode_image(
                                    &mut self.ctx,
                                    &chunk,
                                    &mut rows,
                                    out.n_past,
                                    seq,
                                )?;
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
        self.flush_text(&mut pending, &mut out.n_past, seq, true)?;
        out.total = start.elapsed();
        Ok(out)
    }

    /// Decodes pending text in runs of equal weight: token ids at weight 1, scaled rows
    /// otherwise; logits on the very last token when `logits_last`.
    fn flush_text(
        &mut self,
        pending: &mut Vec<(Token, f32)>,
        n_past: &mut i32,
        seq: i32,
        logits_last: bool,
    ) -> Result<(), EngineError> {
        let runs: Vec<&[(Token, f32)]> = pending.chunk_by(|a, b| a.1 == b.1).collect();
        let width = self.model.n_embd_inp();
        for (k, run) in runs.iter().enumerate() {
            let last = logits_last && k + 1 == runs.len();
            let tokens: Vec<Token> = run.iter().map(|(t, _)| *t).collect();
            let w = run[0].1;
            if w == 1.0 {
                decode_tokens(&mut self.ctx, &tokens, n_past, seq, last)?;
            } else {
                let mut rows = Vec::with_capacity(tokens.len() * width);
                self.rows.append_rows(&tokens, w, width, &mut rows)?;
                self.decode_rows(&rows, n_past, seq, last)?;
            }
        }
        pending.clear();
        Ok(())
    }

    /// The projected rows of the `ordinal`-th image chunk of image `index` of `prompt`, from the
    /// embedding cache or else the encoder (whose time is added to `out`). Also says whether
    /// they came from the cache.
    pub(super) fn image_rows(
        &mut self,
        prompt: &Prompt,
        index: usize,
        ordinal: usize,
        chunk: &Chunk<'_>,
        out: &mut Prefill,
    ) -> Result<(Vec<f32>, bool), EngineError> {
        let key = prompt.image_chunk_key(index, ordinal);
        if let Some(rows) = self.embeddings.get(key) {
            return Ok((rows.clone(), true));
        }
        let t = Instant::now();
        let mtmd = self.mtmd.as_mut().ok_or_else(no_projector)?;
        let rows = mtmd.encode(chunk)?;
        out.image_encode += t.elapsed();
        self.embeddings
            .put(key, rows.clone(), rows.len() * std::mem::size_of::<f32>());
        Ok((rows, false))
    }
}

fn no_projector() -> EngineError {
    EngineError::InvalidRequest("this model has no vision projector".into())
}
