//! The multimodal side (mtmd): projector context, bitmaps, tokenized chunks, image encode/decode.

use std::ffi::c_char;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::{c_path, log, Context, LlamaError, Model, Result, Token};

/// How to create the mtmd (projector) context.
#[derive(Debug, Clone)]
pub struct MtmdParams {
    /// Run the vision encoder on the GPU when the build has one.
    pub use_gpu: bool,
    /// CPU threads for the vision encoder.
    pub n_threads: i32,
}

impl Default for MtmdParams {
    fn default() -> Self {
        Self {
            use_gpu: false,
            n_threads: super::context::default_threads(),
        }
    }
}

/// A loaded projector (mmproj) tied to its text model.
pub struct Mtmd<'m> {
    ptr: NonNull<sys::mtmd_context>,
    model: &'m Model,
    path: PathBuf,
}

impl<'m> Mtmd<'m> {
    /// Loads an mmproj GGUF for `model`. A projector whose output width differs from the
    /// model's input width gives [`LlamaError::WidthMismatch`] naming both widths.
    pub fn new(model: &'m Model, path: &Path, params: &MtmdParams) -> Result<Self> {
        let c = c_path(path)?;
        // SAFETY: returns a plain struct of defaults.
        let mut mp = unsafe { sys::mtmd_context_params_default() };
        mp.use_gpu = params.use_gpu;
        mp.n_threads = params.n_threads.max(1);
        mp.print_timings = false;
        mp.warmup = false;
        log::clear_last_error();
        // SAFETY: valid path and model pointer; the model outlives this context ('m).
        let raw = unsafe { sys::mtmd_init_from_file(c.as_ptr(), model.as_ptr(), mp) };
        match NonNull::new(raw) {
            Some(ptr) => Ok(Self {
                ptr,
                model,
                path: path.to_path_buf(),
            }),
            None => {
                let reason = log::last_error();
                Err(match parse_width_mismatch(&reason) {
                    Some((model, mmproj)) => LlamaError::WidthMismatch {
                        path: path.to_path_buf(),
                        mmproj,
                        model,
                    },
                    None => LlamaError::MmprojLoad {
                        path: path.to_path_buf(),
                        reason,
                    },
                })
            }
        }
    }

    /// The projector file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the projector accepts images.
    pub fn supports_vision(&self) -> bool {
        // SAFETY: valid mtmd context.
        unsafe { sys::mtmd_support_vision(self.ptr.as_ptr()) }
    }

    /// Whether the model places image rows with M-RoPE position sets (Qwen2-VL and relatives).
    pub fn uses_mrope(&self) -> bool {
        // SAFETY: valid mtmd context.
        unsafe { sys::mtmd_decode_use_mrope(self.ptr.as_ptr()) }
    }

    /// Whether the rows of `chunk` attend to each other non-causally (Gemma 3's images).
    pub fn non_causal(&self, chunk: &Chunk<'_>) -> bool {
        // SAFETY: valid mtmd context and a chunk owned by live `Chunks`.
        unsafe { sys::mtmd_decode_use_non_causal(self.ptr.as_ptr(), chunk.ptr) }
    }

    /// The text marker that stands for one media item in a prompt (`<__media__>`).
    pub fn marker(&self) -> String {
        // SAFETY: returns a static NUL-terminated string owned by the context.
        let p = unsafe { sys::mtmd_get_marker(self.ptr.as_ptr()) };
        if p.is_null() {
            return "<__media__>".into();
        }
        // SAFETY: non-null, NUL-terminated.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    }

    /// Tokenizes a prompt given as parts (text with its own `parse_special`, or an image) into
    /// chunks. No BOS is added: the caller decides.
    pub fn tokenize(&self, parts: &[PromptPart<'_>]) -> Result<Chunks> {
        let texts: Vec<sys::mtmd_input_text> = parts
            .iter()
            .map(|p| match p {
                PromptPart::Text {
                    text,
                    parse_special,
                } => sys::mtmd_input_text {
                    text: text.as_ptr().cast::<c_char>(),
                    text_len: text.len(),
                    add_special: false,
                    parse_special: *parse_special,
                },
                PromptPart::Image(_) => sys::mtmd_input_text {
                    text: std::ptr::null(),
                    text_len: 0,
                    add_special: false,
                    parse_special: false,
                },
            })
            .collect();
        let raw_parts: Vec<sys::mtmd_input_part> = parts
            .iter()
            .zip(&texts)
            .map(|(p, t)| match p {
                PromptPart::Text { .. } => sys::mtmd_input_part {
                    text: t,
                    bitmap: std::ptr::null(),
                },
                PromptPart::Image(b) => sys::mtmd_input_part {
                    text: std::ptr::null(),
                    bitmap: b.ptr.as_ptr(),
                },
            })
            .collect();
        let part_ptrs: Vec<*const sys::mtmd_input_part> =
            raw_parts.iter().map(|p| p as *const _).collect();
        let chunks = Chunks::new();
        log::clear_last_error();
        // SAFETY: every part points at a live `mtmd_input_text` (whose text borrows a live `&str`
        // with explicit length) or a live bitmap; all outlive the call. `chunks` is a fresh output.
        let code = unsafe {
            sys::mtmd_tokenize_from_parts(
                self.ptr.as_ptr(),
                chunks.ptr.as_ptr(),
                part_ptrs.as_ptr(),
                part_ptrs.len(),
                false,
            )
        };
        match code {
            0 => Ok(chunks),
            _ => Err(LlamaError::Image(log::last_error())),
        }
    }

    /// Runs the vision encoder on an image chunk and returns its embedding rows
    /// (`n_tokens * n_embd_inp` floats, row-major), ready to be scaled and decoded.
    pub fn encode(&mut self, chunk: &Chunk<'_>) -> Result<Vec<f32>> {
        if chunk.kind() != ChunkKind::Image {
            return Err(LlamaError::Encode("not an image chunk".into()));
        }
        log::clear_last_error();
        // SAFETY: valid mtmd context and a chunk owned by live `Chunks`.
        let code = unsafe { sys::mtmd_encode_chunk(self.ptr.as_ptr(), chunk.ptr) };
        if code != 0 {
            return Err(LlamaError::Encode(log::last_error()));
        }
        let n = chunk.n_tokens() * self.model.n_embd_inp();
        // SAFETY: after a successful encode the output buffer holds n_tokens * n_embd_inp floats
        // (documented in mtmd.h); we copy it out before any other mtmd call can replace it.
        let out = unsafe {
            let p = sys::mtmd_get_output_embd(self.ptr.as_ptr());
            if p.is_null() {
                return Err(LlamaError::Encode("encoder produced no output".into()));
            }
            std::slice::from_raw_parts(p, n).to_vec()
        };
        Ok(out)
    }

    /// Decodes precomputed image rows for `chunk` into sequence `seq` starting at `n_past`,
    /// handling the model's image positions (M-RoPE) and attention mode. Returns the new `n_past`.
    pub fn decode_image(
        &self,
        ctx: &mut Context<'_>,
        chunk: &Chunk<'_>,
        rows: &mut [f32],
        n_past: i32,
        seq: i32,
    ) -> Result<i32> {
        let expected = chunk.n_tokens() * self.model.n_embd_inp();
        if rows.len() != expected {
            return Err(LlamaError::Batch(format!(
                "image rows have {} floats, chunk needs {expected}",
                rows.len()
            )));
        }
        let mut new_past = n_past;
        log::clear_last_error();
        // SAFETY: contexts are valid; `rows` holds exactly the floats the chunk needs and stays
        // borrowed for the call; no callback is passed.
        let code = unsafe {
            sys::mtmd_helper_decode_image_chunk(
                self.ptr.as_ptr(),
                ctx.as_ptr(),
                chunk.ptr,
                rows.as_mut_ptr(),
                n_past,
                seq,
                ctx.n_batch() as i32,
                &mut new_past,
                None,
                std::ptr::null_mut(),
            )
        };
        if code != 0 {
            return Err(LlamaError::Decode {
                code,
                reason: log::last_error(),
            });
        }
        Ok(new_past)
    }

    /// llama.cpp's own evaluation of one chunk at `n_past` of `seq`. Returns the new `n_past`.
    pub fn eval_chunk(
        &self,
        ctx: &mut Context<'_>,
        chunk: &Chunk<'_>,
        n_past: i32,
        seq: i32,
        logits_last: bool,
    ) -> Result<i32> {
        let mut new_past = n_past;
        log::clear_last_error();
        // SAFETY: contexts and the chunk (owned by live `Chunks`) are valid for the call.
        let code = unsafe {
            sys::mtmd_helper_eval_chunk_single(
                self.ptr.as_ptr(),
                ctx.as_ptr(),
                chunk.ptr,
                n_past,
                seq,
                ctx.n_batch() as i32,
                logits_last,
                &mut new_past,
            )
        };
        if code != 0 {
            return Err(LlamaError::Decode {
                code,
                reason: log::last_error(),
            });
        }
        Ok(new_past)
    }

    /// llama.cpp's own evaluation of all chunks (token ids for text, encoder output for images),
    /// with logits for the last position. The reference our weighted path must match.
    pub fn eval_chunks(
        &self,
        ctx: &mut Context<'_>,
        chunks: &Chunks,
        n_past: i32,
        seq: i32,
    ) -> Result<i32> {
        let mut new_past = n_past;
        log::clear_last_error();
        // SAFETY: contexts and chunks are valid for the call.
        let code = unsafe {
            sys::mtmd_helper_eval_chunks(
                self.ptr.as_ptr(),
                ctx.as_ptr(),
                chunks.ptr.as_ptr(),
                n_past,
                seq,
                ctx.n_batch() as i32,
                true,
                &mut new_past,
            )
        };
        if code != 0 {
            return Err(LlamaError::Decode {
                code,
                reason: log::last_error(),
            });
        }
        Ok(new_past)
    }
}

impl Drop for Mtmd<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the mtmd context and free it exactly once.
        unsafe { sys::mtmd_free(self.ptr.as_ptr()) };
    }
}

/// Pulls `(text n_embd, mmproj n_embd)` out of mtmd's mismatch message.
fn parse_width_mismatch(reason: &str) -> Option<(usize, usize)> {
    if !reason.contains("mismatch between text model") {
        return None;
    }
    let mut nums = reason
        .split("n_embd = ")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
    Some((nums.next()?, nums.next()?))
}

/// An RGB image in mtmd's own format.
pub struct Bitmap {
    ptr: NonNull<sys::mtmd_bitmap>,
}

impl Bitmap {
    /// Copies tightly packed RGB8 pixels (`width * height * 3` bytes).
    pub fn from_rgb(width: u32, height: u32, rgb: &[u8]) -> Result<Self> {
        let needed = width as usize * height as usize * 3;
        if width == 0 || height == 0 || rgb.len() != needed {
            return Err(LlamaError::Image(format!(
                "{width}x{height} RGB image needs {needed} bytes, got {}",
                rgb.len()
            )));
        }
        // SAFETY: `rgb` holds exactly width*height*3 bytes, which mtmd copies.
        let raw = unsafe { sys::mtmd_bitmap_init(width, height, rgb.as_ptr()) };
        let ptr = NonNull::new(raw)
            .ok_or_else(|| LlamaError::Image("bitmap allocation failed".into()))?;
        Ok(Self { ptr })
    }
}

impl Drop for Bitmap {
    fn drop(&mut self) {
        // SAFETY: we own the bitmap and free it exactly once.
        unsafe { sys::mtmd_bitmap_free(self.ptr.as_ptr()) };
    }
}

/// One piece of a prompt handed to [`Mtmd::tokenize`].
pub enum PromptPart<'a> {
    /// Text; `parse_special` turns control-token text into control tokens.
    Text { text: &'a str, parse_special: bool },
    /// One image.
    Image(&'a Bitmap),
}

/// The tokenized prompt: text and media chunks in order.
pub struct Chunks {
    ptr: NonNull<sys::mtmd_input_chunks>,
    _not_send: PhantomData<*mut ()>,
}

impl Chunks {
    fn new() -> Self {
        // SAFETY: allocates an empty chunk list; freed in Drop.
        let raw = unsafe { sys::mtmd_input_chunks_init() };
        Self {
            ptr: NonNull::new(raw).expect("mtmd_input_chunks_init returned null (out of memory)"),
            _not_send: PhantomData,
        }
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        // SAFETY: valid chunk list.
        unsafe { sys::mtmd_input_chunks_size(self.ptr.as_ptr()) }
    }

    /// Whether there are no chunks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunk at `i` (panics when out of range, like slice indexing).
    pub fn get(&self, i: usize) -> Chunk<'_> {
        assert!(i < self.len(), "chunk index {i} out of range");
        // SAFETY: `i` is in range; the chunk lives as long as `self`.
        let ptr = unsafe { sys::mtmd_input_chunks_get(self.ptr.as_ptr(), i) };
        Chunk {
            ptr,
            _owner: PhantomData,
        }
    }

    /// All chunks in order.
    pub fn iter(&self) -> impl Iterator<Item = Chunk<'_>> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Total positions the chunks occupy in the KV memory.
    pub fn n_pos(&self) -> usize {
        self.iter().map(|c| c.n_pos()).sum()
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        // SAFETY: we own the list and free it exactly once.
        unsafe { sys::mtmd_input_chunks_free(self.ptr.as_ptr()) };
    }
}

/// What a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// Text token ids.
    Text,
    /// Image tokens (to be encoded).
    Image,
    /// Audio (not used by this crate).
    Audio,
}

/// A borrowed chunk of a [`Chunks`] list.
pub struct Chunk<'c> {
    ptr: *const sys::mtmd_input_chunk,
    _owner: PhantomData<&'c Chunks>,
}

impl Chunk<'_> {
    /// The chunk's kind.
    pub fn kind(&self) -> ChunkKind {
        // SAFETY: valid chunk pointer while the owning list lives.
        match unsafe { sys::mtmd_input_chunk_get_type(self.ptr) } {
            sys::MTMD_INPUT_CHUNK_TYPE_TEXT => ChunkKind::Text,
            sys::MTMD_INPUT_CHUNK_TYPE_IMAGE => ChunkKind::Image,
            _ => ChunkKind::Audio,
        }
    }

    /// Number of tokens (text tokens or image embedding rows).
    pub fn n_tokens(&self) -> usize {
        // SAFETY: valid chunk pointer.
        unsafe { sys::mtmd_input_chunk_get_n_tokens(self.ptr) }
    }

    /// Number of KV positions the chunk occupies (differs from `n_tokens` with M-RoPE).
    pub fn n_pos(&self) -> usize {
        // SAFETY: valid chunk pointer.
        unsafe { sys::mtmd_input_chunk_get_n_pos(self.ptr) as usize }
    }

    /// The decoder positions `(t, y, x)` of an image chunk's rows when it starts at `pos_0`
    /// (M-RoPE models: `t = pos_0`, `y`/`x` offset by the row's place in the grid; otherwise
    /// `pos_0 + i` in all three). Empty for other chunks.
    pub fn image_positions(&self, pos_0: i32) -> Vec<[i32; 3]> {
        // SAFETY: valid chunk pointer; the image tokens it returns (or null) live with it.
        let image = unsafe { sys::mtmd_input_chunk_get_tokens_image(self.ptr) };
        if image.is_null() {
            return Vec::new();
        }
        (0..self.n_tokens())
            .map(|i| {
                // SAFETY: non-null image tokens of this chunk and `i < n_tokens`.
                let p = unsafe { sys::mtmd_image_tokens_get_decoder_pos(image, pos_0, i) };
                [p.t as i32, p.y as i32, p.x as i32]
            })
            .collect()
    }

    /// The token ids of a text chunk (empty for media chunks).
    pub fn tokens(&self) -> &[Token] {
        if self.kind() != ChunkKind::Text {
            return &[];
        }
        let mut n = 0usize;
        // SAFETY: text chunk; mtmd writes the count and returns a pointer to `n` tokens owned by
        // the chunk, which outlives the returned borrow.
        unsafe {
            let p = sys::mtmd_input_chunk_get_tokens_text(self.ptr, &mut n);
            if p.is_null() || n == 0 {
                return &[];
            }
            std::slice::from_raw_parts(p, n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_width_mismatch;

    #[test]
    fn width_mismatch_message_is_parsed() {
        let msg = "mtmd_init_from_file: error: mismatch between text model (n_embd = 576) and mmproj (n_embd = 64)\nhint: ...";
        assert_eq!(parse_width_mismatch(msg), Some((576, 64)));
        assert_eq!(parse_width_mismatch("something else"), None);
    }
}
