//! Token-by-token generation of one sequence, as a step function so that the worker can batch
//! the decode steps of several requests into one `llama_decode` (continuous batching).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::dms::log_softmax;
use crate::llama::{Batch, Sampler, Token};

use super::runtime::Runtime;
use super::text::{Fed, TextStream};
use super::{EngineError, FinishReason};

/// Limits and extras of one generation.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions<'a> {
    /// Maximum tokens to generate.
    pub max_tokens: usize,
    /// Strings that end generation (not emitted).
    pub stops: &'a [String],
    /// Report each token's log-probability with this many alternatives (`None`: off).
    pub top_logprobs: Option<usize>,
}

/// What generation hands to its caller.
#[derive(Debug)]
pub enum Emitted<'a> {
    /// A piece of text (complete UTF-8, stop strings held back).
    Text(&'a str),
    /// One sampled token and its log-probabilities (before its text is released).
    Token(&'a TokenLogprob),
}

/// A sampled token with its log-probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    /// The token's text (lossy for partial UTF-8).
    pub token: String,
    /// The token's raw bytes.
    pub bytes: Vec<u8>,
    /// Natural-log probability.
    pub logprob: f32,
    /// The most likely tokens at this step: (text, bytes, logprob), best first.
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// What generation did.
#[derive(Debug, Clone, Copy)]
pub struct Generation {
    /// Tokens produced (the end-of-generation token is not counted).
    pub completion_tokens: usize,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Time spent generating.
    pub decode: Duration,
}

/// The state of one sequence being generated.
pub struct Decoding {
    /// Sequence id in the KV memory.
    pub seq: i32,
    /// Next free position.
    pub n_past: i32,
    /// Position limit of this sequence (its share of the context).
    pub n_ctx: usize,
    sampler: Sampler,
    text: TextStream,
    produced: usize,
    max_tokens: usize,
    top_logprobs: Option<usize>,
    started: Instant,
}

impl Decoding {
    /// Starts generating on `seq` after a prefill that ended at `n_past`.
    pub fn new(
        seq: i32,
        n_past: i32,
        n_ctx: usize,
        sampler: Sampler,
        options: &GenerateOptions<'_>,
    ) -> Self {
        Self {
            seq,
            n_past,
            n_ctx,
            sampler,
            text: TextStream::new(options.stops),
            produced: 0,
            max_tokens: options.max_tokens,
            top_logprobs: options.top_logprobs,
            started: Instant::now(),
        }
    }

    /// What was generated so far, with `reason` as the finish reason.
    pub fn summary(&self, reason: FinishReason) -> Generation {
        Generation {
            completion_tokens: self.produced,
            finish_reason: reason,
            decode: self.started.elapsed(),
        }
    }
}

/// The outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Decode this token at the sequence's `n_past` (then step again on its output row).
    Next(Token),
    /// Generation ended.
    Finished(FinishReason),
}

impl Runtime<'_> {
    /// Log-likelihood of `tokens` following the prompt that sequence `seq` holds up to
    /// `n_past` (its logits from the last decode): the tokens are decoded (teacher forcing)
    /// and their log-probabilities summed. Returns the sum and the new `n_past`.
    pub fn score_continuation(
        &mut self,
        seq: i32,
        n_past: i32,
        tokens: &[Token],
    ) -> Result<(f64, i32), EngineError> {
        let Some((&first, _)) = tokens.split_first() else {
            return Err(EngineError::InvalidRequest("nothing to score".into()));
        };
        if n_past as usize + tokens.len() > self.slot_ctx {
            return Err(crate::llama::LlamaError::ContextFull {
                needed: n_past as usize + tokens.len(),
                n_ctx: self.slot_ctx,
            }
            .into());
        }
        let logprob = |logits: &[f32], t: Token| {
            f64::from(
                log_softmax(logits)
                    .get(t as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY),
            )
        };
        let mut total = logprob(self.ctx.logits(-1)?, first);
        let mut pos = n_past;
        let fed = &tokens[..tokens.len() - 1];
        let per_batch = self.ctx.n_batch().max(1);
        let mut batch = Batch::tokens(per_batch.min(fed.len().max(1)));
        for (k, block) in fed.chunks(per_batch).enumerate() {
            batch.clear();
            for &t in block {
                batch.push_token(t, pos, seq, true)?;
                pos += 1;
            }
            self.ctx.decode(&batch)?;
            for i in 0..block.len() {
                total += logprob(self.ctx.logits(i as i32)?, tokens[k * per_batch + i + 1]);
            }
        }
        Ok((total, pos))
    }

    /// Samples the next token of `d` from output row `idx` of the last decode, emits its text
    /// (and log-probabilities), and says whether to go on. `emit` returns false to cancel.
    pub fn step(
        &mut self,
        d: &mut Decoding,
        idx: i32,
        emit: &mut dyn FnMut(Emitted<'_>) -> bool,
    ) -> Result<Step, EngineError> {
        if d.produced >= d.max_tokens {
            return Ok(self.finish(d, FinishReason::Length, emit));
        }
        let token = d.sampler.sample(&self.ctx, idx);
        if self.model.is_eog(token) {
            return Ok(self.finish(d, FinishReason::Stop, emit));
        }
        d.produced += 1;
        if let Some(k) = d.top_logprobs {
            let lp = self.token_logprob(idx, token, k)?;
            if !emit(Emitted::Token(&lp)) {
                return Ok(Step::Finished(FinishReason::Cancelled));
            }
        }
        match d.text.feed(&self.model.token_bytes(token, false)) {
            super::text::Fed::Text(piece) if !piece.is_empty() && !emit(Emitted::Text(&piece)) => {
                return Ok(Step::Finished(FinishReason::Cancelled));
            }
            Fed::Stop(piece) => {
                if !piece.is_empty() {
                    emit(Emitted::Text(&piece));
                }
                return Ok(Step::Finished(FinishReason::Stop));
            }
            Fed::Text(_) => {}
        }
        if d.produced >= d.max_tokens || d.n_past as usize + 1 >= d.n_ctx {
            return Ok(self.finish(d, FinishReason::Length, emit));
        }
        Ok(Step::Next(token))
    }

    /// Flushes held-back text and ends.
    fn finish(
        &self,
        d: &mut Decoding,
        reason: FinishReason,
        emit: &mut dyn FnMut(Emitted<'_>) -> bool,
    ) -> Step {
        let rest = d.text.finish();
        if !rest.is_empty() {
            emit(Emitted::Text(&rest));
        }
        Step::Finished(reason)
    }

    /// Generates on one sequence after a prefill that left logits on its last row (the
    /// single-request form of [`Runtime::step`]).
    pub fn generate(
        &mut self,
        n_past: i32,
        seq: i32,
        sampler: Sampler,
        options: &GenerateOptions<'_>,
        emit: &mut dyn FnMut(Emitted<'_>) -> bool,
    ) -> Result<Generation, EngineError> {
        let mut d = Decoding::new(seq, n_past, self.ctx.n_ctx(), sampler, options);
        let mut batch = Batch::tokens(1);
        loop {
            match self.step(&mut d, -1, emit)? {
                Step::Next(token) => {
                    batch.clear();
                    batch.push_token(token, d.n_past, seq, true)?;
                    self.ctx.decode(&batch)?;
                    d.n_past += 1;
                }
                Step::Finished(reason) => return Ok(d.summary(reason)),
            }
        }
    }

    /// The log-probability of `token` under output row `idx`, with the `k` most likely
    /// alternatives.
    fn token_logprob(&self, idx: i32, token: Token, k: usize) -> Result<TokenLogprob, EngineError> {
        let logp = crate::dms::log_softmax(self.ctx.logits(idx)?);
        let entry = |t: Token| {
            let bytes = self.model.token_bytes(t, false);
            (
                String::from_utf8_lossy(&bytes).into_owned(),
                bytes,
                logp[t as usize],
            )
        };
        let mut order: Vec<usize> = (0..logp.len()).collect();
        let k = k.min(order.len());
        if k > 0 {
            order.select_nth_unstable_by(k - 1, |a, b| logp[*b].total_cmp(&logp[*a]));
        }
        order.truncate(k);
        order.sort_by(|a, b| logp[*b].total_cmp(&logp[*a]));
        let (text, bytes, logprob) = entry(token);
        Ok(TokenLogprob {
            token: text,
            bytes,
            logprob,
            top: order.into_iter().map(|t| entry(t as Token)).collect(),
        })
    }
}
