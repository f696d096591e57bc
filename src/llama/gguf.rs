//! Text-token input rows read straight from the GGUF `token_embd.weight` table.
//!
//! `llama.h` has no input-embedding getter, so we locate the tensor with ggml's gguf reader and
//! dequantise the rows we need with ggml's own type traits (exact for every ggml type).

use std::ffi::CStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use llama_cpp_sys_2 as sys;

use super::{c_path, LlamaError, Result, Token};

/// Reader of input-embedding rows for text tokens.
pub struct TokenEmbeddings {
    file: File,
    path: PathBuf,
    ggml_type: sys::ggml_type,
    to_float: Option<unsafe extern "C" fn(*const std::ffi::c_void, *mut f32, i64)>,
    data_offset: u64,
    row_bytes: usize,
    n_rows: usize,
    n_embd: usize,
    scale: f32,
}

impl TokenEmbeddings {
    /// Opens `token_embd.weight` of the model at `path`; rows are `n_embd` wide and multiplied by
    /// `scale` (the architecture's token-row scale, see [`super::Model::token_row_scale`]).
    pub fn open(path: &Path, n_embd: usize, scale: f32) -> Result<Self> {
        let err = |reason: String| LlamaError::Gguf {
            path: path.to_path_buf(),
            reason,
        };
        let c = c_path(path)?;
        let params = sys::gguf_init_params {
            no_alloc: true,
            ctx: std::ptr::null_mut(),
        };
        // SAFETY: valid path; with no_alloc and no ctx only the header is read.
        let g = unsafe { sys::gguf_init_from_file(c.as_ptr(), params) };
        if g.is_null() {
            return Err(err("not a readable GGUF file".into()));
        }
        // SAFETY: `g` is a valid gguf context until gguf_free below; the name is NUL-terminated.
        let (tid, ggml_type, data_offset, size) = unsafe {
            let tid = sys::gguf_find_tensor(g, c"token_embd.weight".as_ptr());
            let info = if tid < 0 {
                None
            } else {
                Some((
                    sys::gguf_get_tensor_type(g, tid),
                    (sys::gguf_get_data_offset(g) + sys::gguf_get_tensor_offset(g, tid)) as u64,
                    sys::gguf_get_tensor_size(g, tid),
                ))
            };
            sys::gguf_free(g);
            match info {
                Some((t, o, s)) => (tid, t, o, s),
                None => return Err(err("no token_embd.weight tensor".into())),
            }
        };
        debug_assert!(tid >= 0);
        // SAFETY: ggml_row_size is a pure function of a valid type id (from the file's header).
        let row_bytes = unsafe { sys::ggml_row_size(ggml_type, n_embd as i64) };
        // SAFETY: type traits are a static table indexed by a valid type id.
        let traits = unsafe { &*sys::ggml_get_type_traits(ggml_type) };
        if row_bytes == 0 || size % row_bytes != 0 {
            return Err(err(format!(
                "token_embd.weight is not a table of {n_embd}-wide rows"
            )));
        }
        let to_float = traits.to_float;
        if ggml_type != sys::GGML_TYPE_F32 && to_float.is_none() {
            // SAFETY: type_name is a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(traits.type_name) }.to_string_lossy();
            return Err(err(format!(
                "cannot dequantise token_embd.weight of type {name}"
            )));
        }
        let file = File::open(path).map_err(|e| err(e.to_string()))?;
        let len = file.metadata().map_err(|e| err(e.to_string()))?.len();
        if data_offset + size as u64 > len {
            return Err(err(format!(
                "file is truncated ({len} bytes, token_embd.weight ends at {})",
                data_offset + size as u64
            )));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            ggml_type,
            to_float,
            data_offset,
            row_bytes,
            n_rows: size / row_bytes,
            n_embd,
            scale,
        })
    }

    /// Width of a row.
    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    /// Number of rows (the vocabulary size of the table).
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Appends the input rows of `tokens`, each multiplied by `weight` (and the token scale),
    /// padded with zeros up to `width` (for models whose `n_embd_inp` exceeds `n_embd`).
    pub fn append_rows(
        &self,
        tokens: &[Token],
        weight: f32,
        width: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let mut raw = vec![0u8; self.row_bytes];
        let factor = weight * self.scale;
        for &t in tokens {
            let id = usize::try_from(t)
                .ok()
                .filter(|&i| i < self.n_rows)
                .ok_or_else(|| LlamaError::Gguf {
                    path: self.path.clone(),
                    reason: format!("token {t} has no embedding row"),
                })?;
            self.file
                .read_exact_at(&mut raw, self.data_offset + (id * self.row_bytes) as u64)
                .map_err(|e| LlamaError::Gguf {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
            let start = out.len();
            out.resize(start + width.max(self.n_embd), 0.0);
            let row = &mut out[start..start + self.n_embd];
            match self.to_float {
                Some(f) if self.ggml_type != sys::GGML_TYPE_F32 => {
                    // SAFETY: `raw` holds one full row (row_bytes) of this type and `row` has
                    // room for exactly n_embd floats, which is what the row dequantises to.
                    unsafe { f(raw.as_ptr().cast(), row.as_mut_ptr(), self.n_embd as i64) };
                }
                _ => {
                    for (v, b) in row.iter_mut().zip(raw.chunks_exact(4)) {
                        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
            }
            if factor != 1.0 {
                row.iter_mut().for_each(|v| *v *= factor);
            }
        }
        Ok(())
    }
}
