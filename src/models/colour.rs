//! The hand-built "colour-word" projector: a LLaVA `mlp` mmproj (arch `clip`) whose output for
//! every image patch is the text model's own input embedding of the English word for that
//! patch's colour. Nothing is trained; llama.cpp's stock mtmd code runs it.
//!
//! The pipeline inside llama.cpp and what each tensor does:
//! - pixels / 255, with image_mean 0 and image_std 1, so every channel is in [0, 1];
//! - `v.patch_embd` (a stride-`patch` convolution) takes the per-channel mean of each patch into
//!   dims 0..3 of the patch vector; position embeddings are zero;
//! - the single transformer block is loaded but not run (the LLaVA graph stops at the
//!   second-to-last block when no feature layers are set);
//! - `mm.0` + GELU: for each RGB-cube corner `p`, `f_p(x) = sum_c p_c x_c + (1-p_c)(1-x_c)` is 3
//!   at `p` and at most 2 at any other corner. Two hidden units per colour,
//!   `GELU(g (f_p - t))` and `GELU(g (f_p - t - d))`, differ by `g d` once `f_p > t + d` and by
//!   0 when `f_p < t`: a sharp step (GELU(z) = z for large z);
//! - `mm.2` maps each unit pair to `+E_p / (g d)` and `-E_p / (g d)`, so a patch near corner `p`
//!   comes out as `E_p`, the embedding row of the colour word. A patch near no corner (grey)
//!   comes out as zeros, and the model has to guess.

use super::clip::ClipSpec;
use super::gguf_writer::GgufWriter;

/// A named colour the projector can see: an RGB-cube corner and its word (with the leading
/// space, as it appears mid-sentence, so that it is one token in a GPT-2 style vocabulary).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NamedColour {
    /// Corner of the RGB cube, each channel 0 or 1.
    pub rgb: [f32; 3],
    /// The word, e.g. `" red"`.
    pub word: &'static str,
}

/// The eight corners of the RGB cube. Two corners carry the word SmolLM2 itself uses for them:
/// fed its embedding of `" cyan"`, SmolLM2-135M answers "blue" (8 of 8 cases wrong in our
/// measurement), while with `" turquoise"`, a common name of that hue, it names it; `" purple"`
/// stands for magenta, which is not a single token in its vocabulary.
pub const COLOURS: [NamedColour; 8] = [
    NamedColour {
        rgb: [0.0, 0.0, 0.0],
        word: " black",
    },
    NamedColour {
        rgb: [1.0, 0.0, 0.0],
        word: " red",
    },
    NamedColour {
        rgb: [0.0, 1.0, 0.0],
        word: " green",
    },
    NamedColour {
        rgb: [0.0, 0.0, 1.0],
        word: " blue",
    },
    NamedColour {
        rgb: [1.0, 1.0, 0.0],
        word: " yellow",
    },
    NamedColour {
        rgb: [0.0, 1.0, 1.0],
        word: " turquoise",
    },
    NamedColour {
        rgb: [1.0, 0.0, 1.0],
        word: " purple",
    },
    NamedColour {
        rgb: [1.0, 1.0, 1.0],
        word: " white",
    },
];

/// Geometry and step shape of the projector.
#[derive(Debug, Clone, Copy)]
pub struct ColourProjectorParams {
    /// Image side in pixels (images are resized to it).
    pub image_size: usize,
    /// Patch side in pixels: `(image_size / patch)^2` image tokens.
    pub patch: usize,
    /// Threshold on `f_p` (3 = exactly the corner; 2 = L1 distance below 1).
    pub threshold: f32,
    /// Width of the soft step.
    pub step: f32,
    /// Gain that makes GELU act as a step.
    pub gain: f32,
}

impl Default for ColourProjectorParams {
    /// 32x32 images in 8-pixel patches: 16 image tokens, which answered best in the prototype.
    fn default() -> Self {
        Self {
            image_size: 32,
            patch: 8,
            threshold: 2.0,
            step: 0.1,
            gain: 200.0,
        }
    }
}

/// Vision tower width: 3 colour channels, padded.
const V_EMBD: usize = 8;

/// Builds the projector. `word_rows[k]` is the text model's input embedding of `COLOURS[k].word`
/// (all rows `n_embd` wide).
pub fn colour_mmproj(word_rows: &[Vec<f32>], params: &ColourProjectorParams) -> GgufWriter {
    assert_eq!(
        word_rows.len(),
        COLOURS.len(),
        "one embedding row per colour"
    );
    let n_embd = word_rows[0].len();
    assert!(
        word_rows.iter().all(|r| r.len() == n_embd),
        "rows of equal width"
    );
    let spec = ClipSpec {
        name: "colour-word projector (hand-constructed, untrained)",
        description: "Patch mean RGB -> nearest RGB-cube corner -> the text model's embedding of that colour word",
        file_type: 0,
        image_size: params.image_size,
        patch_size: params.patch,
        v_embd: V_EMBD,
        v_ff: 2 * V_EMBD,
        n_layer: 1,
        n_head: 1,
        n_embd_out: n_embd,
        image_mean: [0.0; 3],
        image_std: [1.0; 3],
    };
    let mut w = GgufWriter::new();
    spec.write_keys(&mut w);
    let (p, v) = (params.patch, V_EMBD);

    // Patch embedding: output dim c = mean of input channel c over the patch.
    // ggml shape [kw, kh, in, out]; memory order out, in, kh, kw.
    let mut kernel = vec![0.0f32; v * 3 * p * p];
    for c in 0..3 {
        let start = (c * 3 + c) * p * p;
        kernel[start..start + p * p].fill(1.0 / (p * p) as f32);
    }
    w.add_tensor_f32("v.patch_embd.weight", &[p, p, 3, v], kernel);
    w.add_tensor_f32(
        "v.position_embd.weight",
        &[v, spec.n_patches()],
        vec![0.0; v * spec.n_patches()],
    );

    // One dummy block: loaded (attn_out, ffn_up and ffn_down must exist) but never executed.
    let zeros = |n: usize| vec![0.0f32; n];
    for name in ["attn_q", "attn_k", "attn_v", "attn_out"] {
        w.add_tensor_f32(&format!("v.blk.0.{name}.weight"), &[v, v], zeros(v * v));
        w.add_tensor_f32(&format!("v.blk.0.{name}.bias"), &[v], zeros(v));
    }
    for ln in ["ln1", "ln2"] {
        w.add_tensor_f32(&format!("v.blk.0.{ln}.weight"), &[v], vec![1.0; v]);
        w.add_tensor_f32(&format!("v.blk.0.{ln}.bias"), &[v], zeros(v));
    }
    w.add_tensor_f32(
        "v.blk.0.ffn_up.weight",
        &[v, spec.v_ff],
        zeros(v * spec.v_ff),
    );
    w.add_tensor_f32("v.blk.0.ffn_up.bias", &[spec.v_ff], zeros(spec.v_ff));
    w.add_tensor_f32(
        "v.blk.0.ffn_down.weight",
        &[spec.v_ff, v],
        zeros(v * spec.v_ff),
    );
    w.add_tensor_f32("v.blk.0.ffn_down.bias", &[v], zeros(v));

    // Projector: two hidden units per colour forming a step on f_p, mapped to the word row.
    let hidden = 2 * COLOURS.len();
    let (g, d, t) = (params.gain, params.step, params.threshold);
    let mut mm0 = zeros(hidden * v); // memory order [hidden][v]
    let mut mm0_bias = zeros(hidden);
    let mut mm2 = zeros(n_embd * hidden); // memory order [n_embd][hidden]
    for (k, colour) in COLOURS.iter().enumerate() {
        // f_p(x) = sum_c (2 p_c - 1) x_c + sum_c (1 - p_c)
        let constant: f32 = colour.rgb.iter().map(|pc| 1.0 - pc).sum();
        for (j, offset) in [0.0, d].into_iter().enumerate() {
            let h = 2 * k + j;
            for c in 0..3 {
                mm0[h * v + c] = g * (2.0 * colour.rgb[c] - 1.0);
            }
            mm0_bias[h] = g * (constant - t - offset);
            let sign = if j == 0 { 1.0 } else { -1.0 };
            for (e, value) in word_rows[k].iter().enumerate() {
                mm2[e * hidden + h] = sign * value / (g * d);
            }
        }
    }
    w.add_tensor_f32("mm.0.weight", &[v, hidden], mm0);
    w.add_tensor_f32("mm.0.bias", &[hidden], mm0_bias);
    w.add_tensor_f32("mm.2.weight", &[hidden, n_embd], mm2);
    w.add_tensor_f32("mm.2.bias", &[n_embd], zeros(n_embd));
    w
}

/// The projector's output for one patch of mean colour `rgb` (a plain-Rust model of what
/// llama.cpp computes, with tanh-GELU), used to check the construction.
pub fn reference_output(
    word_rows: &[Vec<f32>],
    params: &ColourProjectorParams,
    rgb: [f32; 3],
) -> Vec<f32> {
    let gelu = |z: f32| 0.5 * z * (1.0 + (0.797_884_6 * (z + 0.044_715 * z * z * z)).tanh());
    let (g, d, t) = (params.gain, params.step, params.threshold);
    let mut out = vec![0.0f32; word_rows[0].len()];
    for (k, colour) in COLOURS.iter().enumerate() {
        let f: f32 = (0..3)
            .map(|c| colour.rgb[c] * rgb[c] + (1.0 - colour.rgb[c]) * (1.0 - rgb[c]))
            .sum();
        let step = (gelu(g * (f - t)) - gelu(g * (f - t - d))) / (g * d);
        for (o, e) in out.iter_mut().zip(&word_rows[k]) {
            *o += step * e;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Vec<f32>> {
        (0..8)
            .map(|k| {
                (0..16)
                    .map(|e| ((k * 16 + e) as f32 * 0.37).sin())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn corners_map_to_their_word_and_grey_to_nothing() {
        let (rows, params) = (rows(), ColourProjectorParams::default());
        for (k, colour) in COLOURS.iter().enumerate() {
            let out = reference_output(&rows, &params, colour.rgb);
            let err: f32 = out
                .iter()
                .zip(&rows[k])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-3, "{} off by {err}", colour.word);
            // A slightly off shade still lands on the same word.
            let shade = colour.rgb.map(|c| if c > 0.5 { 0.85 } else { 0.12 });
            let out = reference_output(&rows, &params, shade);
            let err: f32 = out
                .iter()
                .zip(&rows[k])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-3, "{} shade off by {err}", colour.word);
        }
        let grey = reference_output(&rows, &params, [0.5, 0.5, 0.5]);
        assert!(grey.iter().all(|v| v.abs() < 1e-6));
    }

    #[test]
    fn the_file_is_deterministic() {
        let params = ColourProjectorParams::default();
        assert_eq!(
            colour_mmproj(&rows(), &params).to_bytes(),
            colour_mmproj(&rows(), &params).to_bytes()
        );
    }
}
