//! An owned `llama_batch` holding either token ids or embedding rows.

use std::cell::RefCell;

use llama_cpp_sys_2 as sys;

use super::{LlamaError, Result, Token};

/// A batch for `llama_decode`: token ids *or* embedding rows (never both), each with a position,
/// one sequence id, and whether its output (logits / hidden state) is wanted. Embedding rows of
/// an M-RoPE model carry a set of positions each (see [`Batch::embeddings_mrope`]).
pub struct Batch {
    raw: sys::llama_batch,
    capacity: usize,
    /// `Some(width)` for an embedding batch, `None` for a token batch.
    embd_width: Option<usize>,
    n_outputs: usize,
    mrope: Option<MropePositions>,
}

/// The M-RoPE position sets `(t, y, x, z)` of a batch's rows, and the section-major array
/// llama.cpp reads them from (`pos[j * n + i]`: set member `j` of row `i`, `n` rows), which can
/// only be laid out once the batch is complete.
#[derive(Default)]
struct MropePositions {
    sets: Vec<[i32; 4]>,
    laid_out: RefCell<Vec<i32>>,
}

impl Batch {
    /// A batch of up to `capacity` token ids.
    pub fn tokens(capacity: usize) -> Self {
        Self::new(capacity, None)
    }

    /// A batch of up to `capacity` embedding rows, each `width` floats.
    pub fn embeddings(capacity: usize, width: usize) -> Self {
        Self::new(capacity, Some(width))
    }

    /// Like [`Batch::embeddings`], for a model whose rows carry M-RoPE position sets: a row
    /// pushed with one position `p` gets `(p, p, p, 0)`, as llama.cpp gives text tokens.
    pub fn embeddings_mrope(capacity: usize, width: usize) -> Self {
        let mut batch = Self::new(capacity, Some(width));
        batch.mrope = Some(MropePositions::default());
        batch
    }

    fn new(capacity: usize, embd_width: Option<usize>) -> Self {
        let capacity = capacity.max(1);
        // SAFETY: allocates arrays for `capacity` entries with one sequence id each; freed in Drop.
        let raw =
            unsafe { sys::llama_batch_init(capacity as i32, embd_width.unwrap_or(0) as i32, 1) };
        Self {
            raw,
            capacity,
            embd_width,
            n_outputs: 0,
            mrope: None,
        }
    }

    /// Number of entries added so far.
    pub fn len(&self) -> usize {
        self.raw.n_tokens as usize
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of entries that asked for an output.
    pub fn n_outputs(&self) -> usize {
        self.n_outputs
    }

    /// Removes all entries (keeps the allocation).
    pub fn clear(&mut self) {
        self.raw.n_tokens = 0;
        self.n_outputs = 0;
        if let Some(m) = &mut self.mrope {
            m.sets.clear();
        }
    }

    fn push_meta(&mut self, pos: i32, seq: i32, output: bool) -> Result<usize> {
        let i = self.len();
        if i >= self.capacity {
            return Err(LlamaError::Batch(format!(
                "batch full ({} entries)",
                self.capacity
            )));
        }
        // SAFETY: `i < capacity`, and llama_batch_init allocated `capacity` entries for pos,
        // n_seq_id, seq_id (each with room for one id) and logits.
        unsafe {
            *self.raw.pos.add(i) = pos;
            *self.raw.n_seq_id.add(i) = 1;
            *(*self.raw.seq_id.add(i)) = seq;
            *self.raw.logits.add(i) = i8::from(output);
        }
        self.raw.n_tokens += 1;
        self.n_outputs += usize::from(output);
        Ok(i)
    }

    /// Adds one token id at position `pos` of sequence `seq`.
    pub fn push_token(&mut self, token: Token, pos: i32, seq: i32, output: bool) -> Result<()> {
        if self.embd_width.is_some() {
            return Err(LlamaError::Batch(
                "token added to an embedding batch".into(),
            ));
        }
        let i = self.push_meta(pos, seq, output)?;
        // SAFETY: token batches have a token array of `capacity` entries and `i < capacity`.
        unsafe { *self.raw.token.add(i) = token };
        Ok(())
    }

    /// Adds one embedding row at position `pos` of sequence `seq`.
    pub fn push_row(&mut self, row: &[f32], pos: i32, seq: i32, output: bool) -> Result<()> {
        self.push_row_at(row, [pos, pos, pos], seq, output)
    }

    /// Adds one embedding row at the positions `(t, y, x)` of sequence `seq`: all three (and
    /// `z = 0`) in an M-RoPE batch, only `t` in any other.
    pub fn push_row_at(
        &mut self,
        row: &[f32],
        [t, y, x]: [i32; 3],
        seq: i32,
        output: bool,
    ) -> Result<()> {
        let width = self
            .embd_width
            .ok_or_else(|| LlamaError::Batch("row added to a token batch".into()))?;
        if row.len() != width {
            return Err(LlamaError::Batch(format!(
                "row of {} floats, batch width {width}",
                row.len()
            )));
        }
        let i = self.push_meta(t, seq, output)?;
        if let Some(m) = &mut self.mrope {
            m.sets.push([t, y, x, 0]);
        }
        // SAFETY: embedding batches have `capacity * width` floats; row `i` starts at `i * width`
        // and `i < capacity`; `row` has exactly `width` floats and does not overlap the batch.
        unsafe {
            std::ptr::copy_nonoverlapping(row.as_ptr(), self.raw.embd.add(i * width), width);
        }
        Ok(())
    }

    /// The raw batch, for `llama_decode` (to be used before the batch changes again).
    pub(super) fn raw(&self) -> sys::llama_batch {
        let mut raw = self.raw;
        if let Some(m) = &self.mrope {
            let n = m.sets.len();
            let mut laid_out = m.laid_out.borrow_mut();
            laid_out.clear();
            laid_out.resize(4 * n, 0);
            for (i, set) in m.sets.iter().enumerate() {
                for (j, p) in set.iter().enumerate() {
                    laid_out[j * n + i] = *p;
                }
            }
            // llama.cpp only reads `pos`; the array stays untouched until the next `raw` call,
            // which needs the batch again.
            raw.pos = laid_out.as_mut_ptr();
        }
        raw
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: `raw` was allocated by llama_batch_init and is freed exactly once here.
        unsafe { sys::llama_batch_free(self.raw) };
    }
}
