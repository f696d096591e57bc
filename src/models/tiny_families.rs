//! Tiny random models of other vision-language families than LLaVA, for tests: each is a text
//! model of the family's llama.cpp architecture plus an mmproj of the family's projector type,
//! small enough (well under 1 MB each) to load and run in a fraction of a second.
//!
//! | family     | text arch | projector        | vision tower                      | image rows |
//! |------------|-----------|------------------|-----------------------------------|------------|
//! | `llava`    | `llama`   | `mlp`            | see [`super::tiny`]               | 16         |
//! | `gemma3`   | `gemma3`  | `gemma3`         | SigLIP, 64 px, patch 8, pool 2x2  | 16         |
//! | `idefics3` | `llama`   | `idefics3`       | SigLIP, 32 px tiles, shuffle 2x2  | 4 per tile |
//! | `qwen2vl`  | `qwen2vl` | `qwen2vl_merger` | ViT with 2D M-RoPE, patch 8, 2x2  | dynamic    |
//!
//! All share the tokenizer of [`super::tiny`] (same ids 0..400, ChatML template), with the
//! family's image delimiter tokens appended after id 399 so that llama.cpp's mtmd finds them:
//! Gemma 3's `<start_of_image>`/`<end_of_image>`, Idefics3's `\n\n`,
//! `<fake_token_around_image>` and `<global-img>`, Qwen2-VL's `<|vision_start|>` and
//! `<|vision_end|>`. Every text model has width [`TINY_N_EMBD`] and every projector outputs
//! rows of that width with entries of deviation about 1 (Gemma 3's token rows are stored at
//! deviation `1 / sqrt(n_embd)`, as llama.cpp scales them by `sqrt(n_embd)`).
//!
//! The weights are random and mean nothing. The same seed gives byte-identical files.

use std::fs;
use std::io;
use std::path::Path;

use super::gguf_writer::GgufWriter;
use super::tiny::{
    self, add_const, add_random, tiny_vocab, Rng, TinyModelPaths, TinyVocab, TINY_EMBD_STD,
    TINY_N_CTX_TRAIN, TINY_N_EMBD, TINY_N_FF, TINY_N_HEAD, TINY_N_HEAD_KV, TINY_N_LAYER,
};

/// A vision-language model family that [`write_tiny_family`] can synthesise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum TinyArch {
    /// LLaVA-1.5 style: `llama` text model, `clip`/`mlp` projector (the default; the same
    /// files `models tiny` always wrote).
    #[default]
    Llava,
    /// Gemma 3: `gemma3` text model, SigLIP tower with average pooling (`gemma3` projector);
    /// llama.cpp attends non-causally within the image.
    Gemma3,
    /// Idefics3 / SmolVLM: `llama` text model, SigLIP tower with pixel shuffle (`idefics3`
    /// projector); images are cut into tiles plus an overview.
    Idefics3,
    /// Qwen2-VL: `qwen2vl` text model with M-RoPE, ViT with 2D rotary positions and a 2x2
    /// patch merger (`qwen2vl_merger` projector); images keep their aspect ratio.
    Qwen2vl,
}

impl TinyArch {
    /// Every family, in a fixed order.
    pub const ALL: [TinyArch; 4] = [
        TinyArch::Llava,
        TinyArch::Gemma3,
        TinyArch::Idefics3,
        TinyArch::Qwen2vl,
    ];

    /// The family's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TinyArch::Llava => "llava",
            TinyArch::Gemma3 => "gemma3",
            TinyArch::Idefics3 => "idefics3",
            TinyArch::Qwen2vl => "qwen2vl",
        }
    }

    /// The llama.cpp architecture of the text model (`general.architecture`).
    pub fn text_arch(self) -> &'static str {
        match self {
            TinyArch::Llava | TinyArch::Idefics3 => "llama",
            TinyArch::Gemma3 => "gemma3",
            TinyArch::Qwen2vl => "qwen2vl",
        }
    }

    /// The mmproj's `clip.projector_type`.
    pub fn projector_type(self) -> &'static str {
        match self {
            TinyArch::Llava => "mlp",
            TinyArch::Gemma3 => "gemma3",
            TinyArch::Idefics3 => "idefics3",
            TinyArch::Qwen2vl => "qwen2vl_merger",
        }
    }

    /// Control tokens appended to the tiny vocabulary for this family (its image delimiters).
    pub fn extra_special_tokens(self) -> &'static [&'static str] {
        match self {
            TinyArch::Llava => &[],
            TinyArch::Gemma3 => &["<start_of_image>", "<end_of_image>"],
            TinyArch::Idefics3 => &["<fake_token_around_image>", "<global-img>"],
            TinyArch::Qwen2vl => &["<|vision_start|>", "<|vision_end|>"],
        }
    }

    /// The shape of the family's tiny vision tower.
    pub fn tower(self) -> TinyTower {
        let base = TinyTower {
            image_size: 32,
            patch_size: 8,
            v_embd: 32,
            v_ff: 64,
            n_layer: 2,
            n_head: 2,
            merge: 2,
        };
        match self {
            TinyArch::Llava => TinyTower {
                image_size: tiny::MMPROJ_IMAGE_SIZE,
                patch_size: tiny::MMPROJ_PATCH_SIZE,
                v_embd: tiny::MMPROJ_V_EMBD,
                v_ff: 32,
                merge: 1,
                ..base
            },
            TinyArch::Gemma3 | TinyArch::Qwen2vl => TinyTower {
                image_size: 64,
                ..base
            },
            TinyArch::Idefics3 => base,
        }
    }
}

/// The shape of a tiny vision tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinyTower {
    /// Side of the square input (a tile for Idefics3; Qwen2-VL takes other sizes too).
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Tower width.
    pub v_embd: usize,
    /// Tower feed-forward width.
    pub v_ff: usize,
    /// Tower blocks.
    pub n_layer: usize,
    /// Tower attention heads.
    pub n_head: usize,
    /// Patches merged per side into one output row (pooling, pixel shuffle or merger).
    pub merge: usize,
}

impl TinyTower {
    /// Patches of one square `image_size` input.
    pub fn n_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Output rows of one square `image_size` input.
    pub fn rows_per_image(&self) -> usize {
        self.n_patches() / (self.merge * self.merge)
    }
}

/// Idefics3's `clip.vision.preproc_image_size`: images are resized so that their longer side
/// is this many pixels, then cut into `image_size` tiles (a 2x2 grid for most shapes).
pub const IDEFICS3_LONGEST_EDGE: usize = 64;

/// Qwen2-VL's `rope.dimension_sections` (temporal, height, width, unused); they sum to half the
/// head dimension (16 / 2).
pub const QWEN2VL_ROPE_SECTIONS: [i32; 4] = [2, 3, 3, 0];

/// Writes the tiny text model and mmproj of `arch` into `dir` (created if missing). The llava
/// family writes `tiny-llama.gguf` and `tiny-mmproj.gguf` exactly as
/// [`tiny::write_tiny_models`]; the others `tiny-ARCH.gguf` and `tiny-ARCH-mmproj.gguf`.
/// The same `seed` gives byte-identical files.
pub fn write_tiny_family(dir: &Path, arch: TinyArch, seed: u64) -> io::Result<TinyModelPaths> {
    if arch == TinyArch::Llava {
        return tiny::write_tiny_models(dir, seed);
    }
    fs::create_dir_all(dir)?;
    let name = arch.name();
    let paths = TinyModelPaths {
        model: dir.join(format!("tiny-{name}.gguf")),
        mmproj: dir.join(format!("tiny-{name}-mmproj.gguf")),
    };
    text_model(arch, seed).write_to(&paths.model)?;
    // A different stream for the projector, as for the llava pair.
    mmproj(arch, seed ^ 0x6d6d_7072_6f6a_0001).write_to(&paths.mmproj)?;
    Ok(paths)
}

/// The tiny vocabulary with `arch`'s image delimiter tokens appended (control tokens; for
/// Idefics3 also the byte-level token `ĊĊ`, i.e. `"\n\n"`, with its merge).
pub fn family_vocab(arch: TinyArch) -> TinyVocab {
    let mut v = tiny_vocab();
    if arch == TinyArch::Idefics3 {
        v.tokens.push("ĊĊ".into());
        v.token_types.push(1);
        v.merges.push("Ċ Ċ".into());
    }
    for t in arch.extra_special_tokens() {
        v.tokens.push((*t).to_string());
        v.token_types.push(3);
    }
    v
}

/// The text model of `arch` (width [`TINY_N_EMBD`], [`TINY_N_LAYER`] layers).
fn text_model(arch: TinyArch, seed: u64) -> GgufWriter {
    let vocab = family_vocab(arch);
    let n_vocab = vocab.tokens.len();
    let (e, ff) = (TINY_N_EMBD, TINY_N_FF);
    let head_dim = e / TINY_N_HEAD;
    let n_embd_kv = head_dim * TINY_N_HEAD_KV;
    let gemma = arch == TinyArch::Gemma3;
    let qwen = arch == TinyArch::Qwen2vl;
    let a = arch.text_arch();
    let k = |key: &str| format!("{a}.{key}");
    let u = |n: usize| u32::try_from(n).expect("dimension fits in u32");

    let mut w = GgufWriter::new();
    w.add_string("general.architecture", a);
    w.add_string(
        "general.name",
        &format!("tiny-{} (random {a} test model)", arch.name()),
    );
    w.add_u32("general.file_type", 0); // all F32
    w.add_u32(&k("context_length"), u(TINY_N_CTX_TRAIN));
    w.add_u32(&k("embedding_length"), u(e));
    w.add_u32(&k("block_count"), u(TINY_N_LAYER));
    w.add_u32(&k("feed_forward_length"), u(ff));
    w.add_u32(&k("attention.head_count"), u(TINY_N_HEAD));
    w.add_u32(&k("attention.head_count_kv"), u(TINY_N_HEAD_KV));
    if gemma {
        w.add_u32(&k("attention.key_length"), u(head_dim));
        w.add_u32(&k("attention.value_length"), u(head_dim));
    }
    w.add_u32(&k("rope.dimension_count"), u(head_dim));
    if qwen {
        w.add_i32_array(&k("rope.dimension_sections"), &QWEN2VL_ROPE_SECTIONS);
    }
    let eps = if gemma { 1e-6 } else { 1e-5 };
    w.add_f32(&k("attention.layer_norm_rms_epsilon"), eps);
    w.add_f32(
        &k("rope.freq_base"),
        if qwen { 1_000_000.0 } else { 10_000.0 },
    );
    w.add_u32(&k("vocab_size"), u(n_vocab));

    tiny::write_tokenizer(&mut w, &vocab);

    let mut rng = Rng::new(seed);
    let r = &mut rng;
    // Gemma 3 multiplies looked-up rows by sqrt(n_embd) and ties the output to them: rows of
    // deviation 1/sqrt(n_embd) enter at deviation 1 and give logits of deviation about 1.
    let embd_std = if gemma {
        1.0 / (e as f32).sqrt()
    } else {
        TINY_EMBD_STD
    };
    add_random(&mut w, r, "token_embd.weight", &[e, n_vocab], embd_std);
    add_const(&mut w, "output_norm.weight", &[e], 1.0);
    if !gemma {
        add_random(&mut w, r, "output.weight", &[e, n_vocab], 0.3);
    }
    let std = 0.1;
    for i in 0..TINY_N_LAYER {
        let t = |name: &str| format!("blk.{i}.{name}");
        add_const(&mut w, &t("attn_norm.weight"), &[e], 1.0);
        add_random(&mut w, r, &t("attn_q.weight"), &[e, e], std);
        add_random(&mut w, r, &t("attn_k.weight"), &[e, n_embd_kv], std);
        add_random(&mut w, r, &t("attn_v.weight"), &[e, n_embd_kv], std);
        if qwen {
            add_random(&mut w, r, &t("attn_q.bias"), &[e], 0.02);
            add_random(&mut w, r, &t("attn_k.bias"), &[n_embd_kv], 0.02);
            add_random(&mut w, r, &t("attn_v.bias"), &[n_embd_kv], 0.02);
        }
        add_random(&mut w, r, &t("attn_output.weight"), &[e, e], std);
        if gemma {
            add_const(&mut w, &t("attn_q_norm.weight"), &[head_dim], 1.0);
            add_const(&mut w, &t("attn_k_norm.weight"), &[head_dim], 1.0);
            add_const(&mut w, &t("post_attention_norm.weight"), &[e], 1.0);
        }
        add_const(&mut w, &t("ffn_norm.weight"), &[e], 1.0);
        add_random(&mut w, r, &t("ffn_gate.weight"), &[e, ff], std);
        add_random(&mut w, r, &t("ffn_up.weight"), &[e, ff], std);
        add_random(&mut w, r, &t("ffn_down.weight"), &[ff, e], std);
        if gemma {
            add_const(&mut w, &t("post_ffw_norm.weight"), &[e], 1.0);
        }
    }
    w
}

/// The mmproj of `arch` (not llava): the `clip.*` keys, the vision tower and the projector.
fn mmproj(arch: TinyArch, seed: u64) -> GgufWriter {
    let t = arch.tower();
    let (v, vff, p) = (t.v_embd, t.v_ff, t.patch_size);
    let n_out = TINY_N_EMBD;
    let u = |n: usize| u32::try_from(n).expect("dimension fits in u32");
    let qwen = arch == TinyArch::Qwen2vl;

    let mut w = GgufWriter::new();
    w.add_string("general.architecture", "clip");
    w.add_string(
        "general.name",
        &format!("tiny-{}-mmproj (random test projector)", arch.name()),
    );
    w.add_string(
        "general.description",
        &format!(
            "Random {} vision tower and projector for tests; its output means nothing",
            arch.projector_type()
        ),
    );
    w.add_u32("general.file_type", 1); // F16 conv kernels, the rest F32
    w.add_bool("clip.has_vision_encoder", true);
    w.add_string("clip.projector_type", arch.projector_type());
    w.add_u32("clip.vision.image_size", u(t.image_size));
    w.add_u32("clip.vision.patch_size", u(p));
    w.add_u32("clip.vision.embedding_length", u(v));
    w.add_u32("clip.vision.feed_forward_length", u(vff));
    w.add_u32("clip.vision.projection_dim", u(n_out));
    w.add_u32("clip.vision.block_count", u(t.n_layer));
    w.add_u32("clip.vision.attention.head_count", u(t.n_head));
    w.add_f32("clip.vision.attention.layer_norm_epsilon", 1e-6);
    let (mean, std) = if qwen {
        // The OpenAI CLIP normalisation Qwen2-VL uses.
        (
            [0.481_454_66, 0.457_827_5, 0.408_210_73],
            [0.268_629_54, 0.261_302_6, 0.275_777_1],
        )
    } else {
        ([0.5; 3], [0.5; 3])
    };
    w.add_f32_array("clip.vision.image_mean", &mean);
    w.add_f32_array("clip.vision.image_std", &std);
    match arch {
        // SigLIP's GELU (tanh); Qwen2-VL's tower uses quick GELU, llama.cpp's default.
        TinyArch::Gemma3 | TinyArch::Idefics3 => w.add_bool("clip.use_gelu", true),
        TinyArch::Llava | TinyArch::Qwen2vl => {}
    }
    match arch {
        TinyArch::Gemma3 => w.add_u32("clip.vision.projector.scale_factor", u(t.merge)),
        TinyArch::Idefics3 => {
            w.add_u32("clip.vision.projector.scale_factor", u(t.merge));
            w.add_u32("clip.vision.preproc_image_size", u(IDEFICS3_LONGEST_EDGE));
        }
        TinyArch::Qwen2vl => w.add_u32("clip.vision.spatial_merge_size", u(t.merge)),
        TinyArch::Llava => {}
    }

    let mut rng = Rng::new(seed);
    let r = &mut rng;
    let inv_sqrt = |n: usize| 1.0 / (n as f32).sqrt();
    // Pixels are normalised to about [-1, 1]; conv kernels are F16 as in real mmproj files.
    // Qwen2-VL sums two kernels (its two video frames), each at half the variance.
    let n_kernels = if qwen { 2 } else { 1 };
    let kernel_std = inv_sqrt(p * p * 3 * n_kernels);
    for k in 0..n_kernels {
        let name = if k == 0 {
            "v.patch_embd.weight".to_string()
        } else {
            format!("v.patch_embd.weight.{k}")
        };
        let kernel = r.normals(p * p * 3 * v, kernel_std);
        w.add_tensor_f16(&name, &[p, p, 3, v], &kernel);
    }
    if !qwen {
        // SigLIP: a patch bias and learned position embeddings (Qwen2-VL rotates instead).
        add_random(&mut w, r, "v.patch_embd.bias", &[v], 0.1);
        add_random(
            &mut w,
            r,
            "v.position_embd.weight",
            &[v, t.n_patches()],
            0.1,
        );
    }
    for i in 0..t.n_layer {
        let b = |name: &str| format!("v.blk.{i}.{name}");
        for name in ["attn_q", "attn_k", "attn_v", "attn_out"] {
            add_random(
                &mut w,
                r,
                &b(&format!("{name}.weight")),
                &[v, v],
                inv_sqrt(v),
            );
            add_random(&mut w, r, &b(&format!("{name}.bias")), &[v], 0.02);
        }
        for ln in ["ln1", "ln2"] {
            add_const(&mut w, &b(&format!("{ln}.weight")), &[v], 1.0);
            add_const(&mut w, &b(&format!("{ln}.bias")), &[v], 0.0);
        }
        // ffn_down's ne[0] is the ff width, not the tower width, so llama.cpp's legacy up/down
        // swap does not kick in.
        add_random(&mut w, r, &b("ffn_up.weight"), &[v, vff], inv_sqrt(v));
        add_random(&mut w, r, &b("ffn_up.bias"), &[vff], 0.02);
        add_random(&mut w, r, &b("ffn_down.weight"), &[vff, v], inv_sqrt(vff));
        add_random(&mut w, r, &b("ffn_down.bias"), &[v], 0.02);
    }
    // The post norm puts every patch vector at unit scale, which sets the projector's scales.
    add_const(&mut w, "v.post_ln.weight", &[v], 1.0);
    add_const(&mut w, "v.post_ln.bias", &[v], 0.0);

    let merged = v * t.merge * t.merge;
    match arch {
        TinyArch::Gemma3 => {
            // Pooled rows are RMS-normed (times this weight), then multiplied by the
            // transpose of the input projection, stored [n_embd_text, v_embd].
            add_const(&mut w, "mm.soft_emb_norm.weight", &[v], 1.0);
            add_random(
                &mut w,
                r,
                "mm.input_projection.weight",
                &[n_out, v],
                inv_sqrt(v),
            );
        }
        TinyArch::Idefics3 => {
            add_random(
                &mut w,
                r,
                "mm.model.fc.weight",
                &[merged, n_out],
                inv_sqrt(merged),
            );
        }
        TinyArch::Qwen2vl => {
            // mm.0 -> GELU -> mm.2 on each 2x2 group of patches; E[GELU(z)^2] = 0.425 for
            // z ~ N(0, 1).
            add_random(
                &mut w,
                r,
                "mm.0.weight",
                &[merged, merged],
                inv_sqrt(merged),
            );
            add_const(&mut w, "mm.0.bias", &[merged], 0.0);
            let mm2_std = 1.0 / (0.425 * merged as f32).sqrt();
            add_random(&mut w, r, "mm.2.weight", &[merged, n_out], mm2_std);
            add_const(&mut w, "mm.2.bias", &[n_out], 0.0);
        }
        TinyArch::Llava => unreachable!("the llava mmproj is written by tiny.rs"),
    }
    w
}

#[cfg(test)]
#[path = "tiny_families_tests.rs"]
mod tests;
