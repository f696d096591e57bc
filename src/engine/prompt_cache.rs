//! Reuse of a slot's KV memory across requests: the next turn of a chat (or the same image
//! again) continues from the longest prefix that is already in the sequence instead of
//! evaluating the whole prompt again. Only the unweighted (`off`) path is cached: weighted rows
//! depend on the weights of each request.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use crate::llama::{ChunkKind, Token};

use super::image::RgbImage;
use super::prompt::{Piece, Prompt};
use super::runtime::{decode_tokens, Prefill, Runtime};
use super::EngineError;

/// What occupies one stretch of KV positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// One token decoded by id.
    Token(Token),
    /// One image chunk: a hash of its image's pixels and its ordinal, and the positions it uses.
    Image { key: u64, n_pos: usize },
}

impl Unit {
    fn n_pos(&self) -> usize {
        match self {
            Unit::Token(_) => 1,
            Unit::Image { n_pos, .. } => *n_pos,
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

fn image_keys(prompt: &Prompt, images: &[RgbImage]) -> Vec<u64> {
    let mut keys = Vec::new();
    for piece in &prompt.pieces {
        if let Piece::Image { index, chunks } = piece {
            let n = chunks
                .iter()
                .filter(|c| c.kind() == ChunkKind::Image)
                .count();
            for ordinal in 0..n {
                let mut h = DefaultHasher::new();
                images[*index].pixels.hash(&mut h);
                (images[*index].width, images[*index].height, ordinal).hash(&mut h);
                keys.push(h.finish());
            }
        }
    }
    keys
}

impl Runtime<'_> {
    /// The units of `prompt` as llama.cpp's own evaluation lays them out.
    pub fn reference_units(
        &self,
        prompt: &Prompt,
        images: &[RgbImage],
    ) -> Result<Vec<Unit>, EngineError> {
        let mut units: Vec<Unit> = prompt.bos.map(Unit::Token).into_iter().collect();
        match &self.mtmd {
            Some(mtmd) => {
                let mut keys = image_keys(prompt, images).into_iter();
                for chunk in prompt.reference_chunks(mtmd)?.iter() {
                    match chunk.kind() {
                        ChunkKind::Text => {
                            units.extend(chunk.tokens().iter().map(|&t| Unit::Token(t)))
                        }
                        _ => units.push(Unit::Image {
                            key: keys.next().unwrap_or_default(),
                            n_pos: chunk.n_pos(),
                        }),
                    }
                }
            }
            None => {
                let tokens = prompt.text_tokens();
                units.extend(
                    tokens[usize::from(prompt.bos.is_some())..]
                        .iter()
                        .map(|&t| Unit::Token(t)),
                );
            }
        }
        Ok(units)
    }

    /// llama.cpp's own evaluation of `prompt` on `seq`, continuing after the first `keep`
    /// units already in the sequence (`keep` = 0: a cold start with the plain reference path).
    pub fn prefill_reference_from(
        &mut self,
        prompt: &Prompt,
        seq: i32,
        units: &[Unit],
        keep: usize,
    ) -> Result<Prefill, EngineError> {
        let keep = keep.min(units.len().saturating_sub(1));
        if keep == 0 {
            self.ctx.remove_seq(seq, -1, -1);
            return self.prefill_reference(prompt, seq);
        }
        self.check_fits(prompt)?;
        let start = Instant::now();
        let mut n_past = positions(&units[..keep]) as i32;
        self.ctx.remove_seq(seq, n_past, -1);
        // Walk the units (BOS, then the chunks) and evaluate those after `keep`.
        let mut cursor = usize::from(prompt.bos.is_some());
        let mut tokens: Vec<Token> = Vec::new();
        match &self.mtmd {
            Some(mtmd) => {
                for chunk in prompt.reference_chunks(mtmd)?.iter() {
                    if chunk.kind() == ChunkKind::Text {
                        for &t in chunk.tokens() {
                            if cursor >= keep {
                                tokens.push(t);
                            }
                            cursor += 1;
                        }
                        continue;
                    }
                    if cursor >= keep {
                        decode_tokens(&mut self.ctx, &tokens, &mut n_past, seq, false)?;
                        tokens.clear();
                        n_past = mtmd.eval_chunk(&mut self.ctx, &chunk, n_past, seq, false)?;
                    }
                    cursor += 1;
                }
            }
            None => tokens.extend_from_slice(&prompt.text_tokens()[keep..]),
        }
        decode_tokens(&mut self.ctx, &tokens, &mut n_past, seq, true)?;
        Ok(Prefill {
            n_past,
            image_encode: Duration::ZERO,
            total: start.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_positions() {
        let a = vec![
            Unit::Token(1),
            Unit::Image { key: 7, n_pos: 16 },
            Unit::Token(2),
        ];
        let b = vec![
            Unit::Token(1),
            Unit::Image { key: 7, n_pos: 16 },
            Unit::Token(3),
        ];
        assert_eq!(common_prefix(&a, &b), 2);
        assert_eq!(positions(&a[..2]), 17);
        let c = vec![Unit::Token(1), Unit::Image { key: 8, n_pos: 16 }];
        assert_eq!(common_prefix(&a, &c), 1);
    }
}
