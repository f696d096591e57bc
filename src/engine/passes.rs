//! The signal passes' mechanics: a unimodal prompt cut into prefix / modality body / suffix,
//! several bodies decoded as parallel sequences behind one shared prefix, and a short greedy
//! continuation of a pass (where the answer is decided).

use crate::dms::{argmax, mean_pool, Pooling};
use crate::llama::{Batch, Chunk, ChunkKind, LlamaError, Token};

use super::pass_blocks::decode_blocks;
use super::prompt::{Piece, Prompt};
use super::runtime::Runtime;
use super::{EngineError, ModalityWeights};

/// One pass body: rows, which of them belong to the measured modality, which attend to each
/// other non-causally (the image rows of a Gemma 3 style projector), and where each goes: its
/// positions `(t, y, x)` from the body's start (all three equal but for an M-RoPE image's rows)
/// and the positions the whole body takes.
#[derive(Default)]
pub(super) struct Body {
    pub(super) rows: Vec<f32>,
    pub(super) modality: Vec<bool>,
    pub(super) non_causal: Vec<bool>,
    pub(super) pos: Vec<[i32; 3]>,
    pub(super) n_pos: i32,
}

impl Body {
    /// A body of the same layout holding `rows` (as many as this one's).
    pub(super) fn with_rows(&self, rows: Vec<f32>) -> Self {
        Self {
            rows,
            modality: self.modality.clone(),
            non_causal: self.non_causal.clone(),
            pos: self.pos.clone(),
            n_pos: self.n_pos,
        }
    }

    /// Lays out `n` more rows at the next positions, one each.
    fn flag(&mut self, n: usize, modality: bool, non_causal: bool) {
        let at = self.n_pos;
        self.pos.extend((at..at + n as i32).map(|p| [p; 3]));
        self.n_pos += n as i32;
        self.modality.extend(std::iter::repeat_n(modality, n));
        self.non_causal.extend(std::iter::repeat_n(non_causal, n));
    }

    /// Lays out an M-RoPE image chunk's rows at `pos` (from the body's start), the image taking
    /// `n_pos` positions.
    fn flag_image_at(&mut self, pos: Vec<[i32; 3]>, n_pos: usize, non_causal: bool) {
        self.modality.extend(std::iter::repeat_n(true, pos.len()));
        self.non_causal
            .extend(std::iter::repeat_n(non_causal, pos.len()));
        self.pos.extend(pos);
        self.n_pos += n_pos as i32;
    }
}

/// Rows of a unimodal prompt cut around the modality.
pub(super) struct Unimodal {
    pub(super) prefix: Vec<f32>,
    /// The tokens whose rows `prefix` holds (all at weight 1).
    pub(super) prefix_tokens: Vec<Token>,
    pub(super) body: Body,
    pub(super) suffix: Vec<f32>,
}

/// Logits at the end of a pass and the mean hidden state over its modality rows.
pub(super) struct PassOutput {
    pub(super) logits: Vec<f32>,
    pub(super) hidden_mean: Option<Vec<f32>>,
    /// The position after the pass's last row.
    pub(super) end: i32,
}

/// One row of the parallel passes.
#[derive(Clone, Copy)]
pub(super) struct PassRow<'a> {
    pub(super) row: &'a [f32],
    /// `(t, y, x)`: all equal but for an M-RoPE image's rows.
    pub(super) pos: [i32; 3],
    pub(super) seq: i32,
    /// `Some((pass, is_last_row))`: logits for the last row, else the hidden state.
    pub(super) output: Option<(usize, bool)>,
    pub(super) non_causal: bool,
}

impl Runtime<'_> {
    /// Rows of a unimodal prompt split into prefix / modality body / suffix. For the text
    /// prompt the body spans the evidence pieces; for an image prompt it is the image piece,
    /// whose encoded rows are `encoded`, pooled as `pooling` says. With `joint` weights the
    /// prompt is the whole request: user text and images both count as modality rows, each
    /// scaled by its weight. `None` when the prompt has no modality rows (e.g. a request
    /// without evidence).
    pub(super) fn unimodal_rows(
        &self,
        prompt: &Prompt,
        encoded: &[Vec<f32>],
        pooling: Pooling,
        joint: Option<&ModalityWeights>,
    ) -> Result<Option<Unimodal>, EngineError> {
        let width = self.model().n_embd_inp();
        let is_modality = |p: &Piece| match p {
            Piece::Text { evidence, .. } => *evidence && (encoded.is_empty() || joint.is_some()),
            Piece::Image { .. } => true,
        };
        let Some(first) = prompt.pieces.iter().position(is_modality) else {
            return Ok(None);
        };
        let last = prompt.pieces.iter().rposition(is_modality).unwrap_or(first);
        let mut u = Unimodal {
            prefix: Vec::new(),
            prefix_tokens: Vec::new(),
            body: Body::default(),
            suffix: Vec::new(),
        };
        if let Some(bos) = prompt.bos {
            self.rows.append_rows(&[bos], 1.0, width, &mut u.prefix)?;
            u.prefix_tokens.push(bos);
        }
        let mut image_chunk = 0;
        for (k, piece) in prompt.pieces.iter().enumerate() {
            match piece {
                Piece::Text { tokens, evidence } => {
                    let weight = match joint {
                        Some(w) if *evidence => w.text,
                        _ => 1.0,
                    };
                    let mut rows = Vec::new();
                    self.rows.append_rows(tokens, weight, width, &mut rows)?;
                    if k < first {
                        u.prefix.extend_from_slice(&rows);
                        u.prefix_tokens.extend_from_slice(tokens);
                    } else if k > last {
                        u.suffix.extend_from_slice(&rows);
                    } else {
                        u.body.flag(rows.len() / width, *evidence, false);
                        u.body.rows.extend_from_slice(&rows);
                    }
                }
                Piece::Image { chunks, index } => {
                    let weight =
                        joint.map_or(1.0, |w| w.images.get(*index).copied().unwrap_or(1.0));
                    for chunk in chunks.iter() {
                        if chunk.kind() == ChunkKind::Image {
                            let rows = encoded.get(image_chunk).ok_or_else(|| {
                                EngineError::Internal("image rows missing for a signal pass".into())
                            })?;
                            image_chunk += 1;
                            let mtmd = self.mtmd.as_ref();
                            let non_causal = mtmd.is_some_and(|m| m.non_causal(&chunk));
                            let mut rows = if mtmd.is_some_and(|m| m.uses_mrope()) {
                                let (rows, pos, n_pos) =
                                    mrope_image(&chunk, rows, width, pooling, u.body.n_pos);
                                u.body.flag_image_at(pos, n_pos, non_causal);
                                rows
                            } else {
                                let rows = pooling.apply(rows, width);
                                u.body.flag(rows.len() / width, true, non_causal);
                                rows
                            };
                            if weight != 1.0 {
                                rows.iter_mut().for_each(|v| *v *= weight);
                            }
                            u.body.rows.extend_from_slice(&rows);
                        } else {
                            let start = u.body.rows.len() / width;
                            self.rows
                                .append_rows(chunk.tokens(), 1.0, width, &mut u.body.rows)?;
                            u.body.flag(u.body.rows.len() / width - start, false, false);
                        }
                    }
                }
            }
        }
        if u.suffix.is_empty() {
            return Err(EngineError::InvalidRequest(
                "the chat template must end with text".into(),
            ));
        }
        Ok(Some(u))
    }

    /// Runs `u`'s prefix + body + suffix for every body in `bodies` as parallel sequences
    /// (1, 2, ...): the prefix is decoded once and shared by sequence copies, the bodies go in
    /// as few decodes as the batch size allows, in groups that fit the free sequences and the
    /// context. With `keep_first` the first pass stays in the first signal sequence (for a
    /// continuation, see [`Runtime::continue_greedy`]); its next position is `PassOutput::end`.
    pub(super) fn run_passes(
        &mut self,
        u: &Unimodal,
        bodies: &[Body],
        keep_first: bool,
    ) -> Result<Vec<PassOutput>, EngineError> {
        let (prefix, suffix) = (&u.prefix, &u.suffix);
        let width = self.model().n_embd_inp();
        let n_prefix = prefix.len() / width;
        let per_pass = bodies[0].rows.len() / width + suffix.len() / width;
        let base = self.signal_seq_base;
        let free_seqs = (self.ctx.params().n_seq_max as i32 - base).max(0) as usize;
        let n_ctx = self.ctx.n_ctx();
        let fit = self.slot_ctx.saturating_sub(n_prefix) / per_pass.max(1);
        if free_seqs == 0 {
            return Err(EngineError::Internal(
                "the context has no sequences left for the DMS signal passes".into(),
            ));
        }
        let group = free_seqs.min(fit).min(bodies.len());
        if group == 0 {
            return Err(LlamaError::ContextFull {
                needed: n_prefix + per_pass,
                n_ctx,
            }
            .into());
        }
        let want_hidden = self.ctx.params().hidden_states;
        let mut outputs = Vec::with_capacity(bodies.len());
        for (g, chunk) in bodies.chunks(group).enumerate() {
            let seqs: Vec<i32> = (base..base + chunk.len() as i32).collect();
            let pos = self.pass_prefix_in_kv(prefix, &u.prefix_tokens)?;
            for &s in &seqs[1..] {
                self.ctx.copy_seq(base, s, -1, -1);
            }
            let mut entries: Vec<PassRow<'_>> = Vec::new();
            for (p, body) in chunk.iter().enumerate() {
                let seq = seqs[p];
                let hidden_pass = want_hidden && g == 0 && p == 0;
                let flags = body.modality.iter().zip(&body.non_causal).zip(&body.pos);
                let rows = body.rows.chunks_exact(width);
                for (row, ((flagged, non_causal), rel)) in rows.zip(flags) {
                    entries.push(PassRow {
                        row,
                        pos: rel.map(|r| pos + r),
                        seq,
                        output: (hidden_pass && *flagged).then_some((p, false)),
                        non_causal: *non_causal,
                    });
                }
                let n_suffix = suffix.len() / width;
                for (k, row) in suffix.chunks_exact(width).enumerate() {
                    entries.push(PassRow {
                        row,
                        pos: [pos + body.n_pos + k as i32; 3],
                        seq,
                        output: (k + 1 == n_suffix).then_some((p, true)),
                        non_causal: false,
                    });
                }
            }
            let mut pass_out: Vec<PassOutput> = chunk
                .iter()
                .map(|body| PassOutput {
                    logits: Vec::new(),
                    hidden_mean: None,
                    end: pos + body.n_pos + (suffix.len() / width) as i32,
                })
                .collect();
            let mut hidden_sum: Vec<f64> = Vec::new();
            let mut hidden_n = 0usize;
            let per_batch = self.ctx.n_batch().max(1);
            let mut batch = self.row_batch(per_batch.min(entries.len()));
            for block in decode_blocks(&entries, per_batch)? {
                batch.clear();
                for e in &block {
                    batch.push_row_at(e.row, e.pos, e.seq, e.output.is_some())?;
                }
                if block[0].non_causal {
                    self.ctx.decode_non_causal(&batch)?;
                } else {
                    self.ctx.decode(&batch)?;
                }
                if seqs.len() > 1 && std::mem::take(&mut self.fault_signal_pass) {
                    panic!("injected fault at the SignalPass stage");
                }
                for (i, e) in block.iter().enumerate() {
                    match e.output {
                        Some((p, true)) => pass_out[p].logits = self.ctx.logits(i as i32)?.to_vec(),
                        Some((_, false)) => {
                            let h = self.ctx.hidden_state(i as i32)?;
                            hidden_sum.resize(h.len(), 0.0);
                            hidden_sum
                                .iter_mut()
                                .zip(h)
                                .for_each(|(s, v)| *s += f64::from(*v));
                            hidden_n += 1;
                        }
                        None => {}
                    }
                }
            }
            if hidden_n > 0 {
                pass_out[0].hidden_mean = Some(
                    hidden_sum
                        .iter()
                        .map(|s| (s / hidden_n as f64) as f32)
                        .collect(),
                );
            }
            // The prefix stays on the first sequence for the next passes (often the next
            // request's too: the same system prompt).
            if !(keep_first && g == 0) {
                self.ctx.remove_seq(base, pos, -1);
            }
            for &s in &seqs[1..] {
                self.ctx.remove_seq(s, -1, -1);
            }
            outputs.extend(pass_out);
        }
        Ok(outputs)
    }

    /// Frees every signal-pass sequence and forgets the prefix the first one kept: after an
    /// error or a panic in the middle of the passes their KV is in no known state, and left
    /// behind it would fail every later request with an image that measures signals.
    pub(super) fn clear_signal_passes(&mut self) {
        let n_seq = self.ctx.params().n_seq_max as i32;
        for seq in self.signal_seq_base..n_seq {
            self.ctx.remove_seq(seq, -1, -1);
        }
        self.pass_prefix = None;
        self.fault_signal_pass = false;
    }

    /// Makes the first signal sequence hold exactly `prefix`, the rows of `tokens` (reusing
    /// it when it already does), and returns the next position.
    fn pass_prefix_in_kv(&mut self, prefix: &[f32], tokens: &[Token]) -> Result<i32, EngineError> {
        let base = self.signal_seq_base;
        let n_prefix = (prefix.len() / self.model().n_embd_inp()) as i32;
        if self.pass_prefix.as_deref() == Some(tokens) {
            self.ctx.remove_seq(base, n_prefix, -1);
            return Ok(n_prefix);
        }
        self.pass_prefix = None;
        self.ctx.remove_seq(base, -1, -1);
        let mut pos = 0;
        if n_prefix > 0 {
            self.decode_rows(prefix, &mut pos, base, false)?;
        }
        self.pass_prefix = Some(tokens.to_vec());
        Ok(pos)
    }
}

/// An M-RoPE image chunk's `rows` for a pass starting at body position `at`: the rows (pooled
/// over their grid as `pooling` says), their positions `(t, y, x)` and the positions the image
/// takes. Unpooled, exactly mtmd's; pooled, the smaller grid laid out the same way (all rows
/// at `t = at`, `y`/`x` offset by row and column, the image taking `max(w, h)` positions).
fn mrope_image(
    chunk: &Chunk<'_>,
    rows: &[f32],
    width: usize,
    pooling: Pooling,
    at: i32,
) -> (Vec<f32>, Vec<[i32; 3]>, usize) {
    let pos = chunk.image_positions(at);
    let side = |k: usize| {
        pos.iter()
            .map(|p| (p[k] - at + 1) as usize)
            .max()
            .unwrap_or(0)
    };
    let (grid_w, grid_h) = (side(2), side(1));
    let n_rows = rows.len() / width.max(1);
    if grid_w * grid_h != n_rows {
        return (rows.to_vec(), pos, chunk.n_pos());
    }
    let (pooled, w, h) = pooling.apply_grid(rows, width, grid_w, grid_h);
    if (w, h) == (grid_w, grid_h) {
        return (pooled, pos, chunk.n_pos());
    }
    let pos = (0..h)
        .flat_map(|y| (0..w).map(move |x| [at, at + y as i32, at + x as i32]))
        .collect();
    (pooled, pos, w.max(h))
}

/// Mean of the modality rows of a body (`None` if it has none).
pub(super) fn mean_of_flagged(body: &Body, width: usize) -> Option<Vec<f32>> {
    let rows: Vec<f32> = body
        .rows
        .chunks_exact(width)
        .zip(&body.modality)
        .filter(|(_, f)| **f)
        .flat_map(|(r, _)| r.iter().copied())
        .collect();
    (!rows.is_empty()).then(|| mean_pool(&rows, width))
}

/// A greedy continuation of a pass: the tokens chosen and the logits before each of them.
pub(super) struct Continuation {
    /// Logits at each step (the first are the pass's own last logits).
    pub(super) logits: Vec<Vec<f32>>,
    /// The greedy token of each step (an end-of-generation token ends the list, not included).
    pub(super) tokens: Vec<Token>,
}

impl Runtime<'_> {
    /// Continues the pass that `run_passes(.., keep_first = true)` left in the first signal
    /// sequence: up to `steps` greedy tokens after `first` (its last logits) at position `end`,
    /// then removes everything after `prefix_len` from that sequence again.
    pub(super) fn continue_greedy(
        &mut self,
        first: Vec<f32>,
        end: i32,
        prefix_len: i32,
        steps: usize,
    ) -> Result<Continuation, EngineError> {
        let base = self.signal_seq_base;
        let result = self.greedy_steps(first, end, steps);
        self.ctx.remove_seq(base, prefix_len, -1);
        result
    }

    fn greedy_steps(
        &mut self,
        first: Vec<f32>,
        end: i32,
        steps: usize,
    ) -> Result<Continuation, EngineError> {
        let base = self.signal_seq_base;
        let mut out = Continuation {
            logits: vec![first],
            tokens: Vec::new(),
        };
        let mut batch = Batch::tokens(1);
        let mut pos = end;
        while out.tokens.len() < steps.max(1) {
            let logits = out.logits.last().map(Vec::as_slice).unwrap_or_default();
            let token = argmax(logits) as Token;
            if self.model().is_eog(token) {
                break;
            }
            out.tokens.push(token);
            if out.tokens.len() == steps.max(1) || pos as usize + 1 >= self.ctx.n_ctx() {
                break;
            }
            batch.clear();
            batch.push_token(token, pos, base, true)?;
            self.ctx.decode(&batch)?;
            out.logits.push(self.ctx.logits(0)?.to_vec());
            pos += 1;
        }
        Ok(out)
    }
}

impl Runtime<'_> {
    /// The logits before each token of `continuation` when it follows `prompt` (token ids,
    /// BOS included): `continuation.len()` distributions, the first at the prompt's end. Run on
    /// the second signal sequence, which is empty before and after.
    pub(super) fn teacher_forced_logits(
        &mut self,
        prompt: &[Token],
        continuation: &[Token],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let seq = self.signal_seq_base + 1;
        if seq >= self.ctx.params().n_seq_max as i32 {
            return Err(EngineError::Internal(
                "no sequence left for the null pass".into(),
            ));
        }
        let tokens: Vec<Token> = prompt
            .iter()
            .chain(
                continuation
                    .iter()
                    .take(continuation.len().saturating_sub(1)),
            )
            .copied()
            .collect();
        if tokens.len() > self.slot_ctx {
            return Err(LlamaError::ContextFull {
                needed: tokens.len(),
                n_ctx: self.slot_ctx,
            }
            .into());
        }
        let first_output = prompt.len().saturating_sub(1);
        let result = self.decode_collecting(&tokens, seq, first_output);
        self.ctx.remove_seq(seq, -1, -1);
        result
    }

    fn decode_collecting(
        &mut self,
        tokens: &[Token],
        seq: i32,
        first_output: usize,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let per_batch = self.ctx.n_batch().max(1);
        let mut batch = Batch::tokens(per_batch.min(tokens.len().max(1)));
        let mut out = Vec::new();
        for (b, block) in tokens.chunks(per_batch).enumerate() {
            batch.clear();
            for (i, &t) in block.iter().enumerate() {
                let at = b * per_batch + i;
                batch.push_token(t, at as i32, seq, at >= first_output)?;
            }
            self.ctx.decode(&batch)?;
            for i in 0..block.len() {
                if b * per_batch + i >= first_output {
                    out.push(self.ctx.logits(i as i32)?.to_vec());
                }
            }
        }
        Ok(out)
    }
}
