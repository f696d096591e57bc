//! Deterministic synthesis of tiny random models for tests: a llama-architecture text model
//! with a GPT-2 style byte-level BPE tokenizer and a ChatML template, and a LLaVA-style
//! (`clip` arch, `mlp` projector) image projector whose output width can be chosen.
//!
//! The weights are random and mean nothing; the files exist so that the real llama.cpp
//! engine can be exercised end to end in well under a second per model, with no download.
//! The same seed always gives byte-identical files (the generator is pure integer and
//! `f32` arithmetic, so this holds across platforms too).
//!
//! Tokenizer layout (fixed, independent of the seed; it mirrors SmolLM2's):
//! - id 0 `<|endoftext|>`, id 1 `<|im_start|>` (BOS), id 2 `<|im_end|>` (EOS, also padding),
//!   all three control tokens;
//! - ids 3..=258: the 256 byte tokens, byte `b` at id `3 + b`, spelled with GPT-2's
//!   bytes-to-unicode mapping (so a space is `Ġ`), so every input can be tokenized;
//! - ids 259..: the results of the merges, which are learned by a small BPE training run on
//!   a built-in English text and listed in priority order.
//!
//! BOS is not added automatically (`tokenizer.ggml.add_bos_token = false`); generation stops
//! on `<|im_end|>` (llama.cpp also treats `<|endoftext|>` as end of generation).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::clip::ClipSpec;
use super::gguf_writer::GgufWriter;

/// Text model width (`llama.embedding_length`).
pub const TINY_N_EMBD: usize = 64;
/// Text model depth (`llama.block_count`).
pub const TINY_N_LAYER: usize = 2;
/// Text model feed-forward width (`llama.feed_forward_length`).
pub const TINY_N_FF: usize = 128;
/// Attention heads of the text model.
pub const TINY_N_HEAD: usize = 4;
/// Key/value heads of the text model (grouped-query attention).
pub const TINY_N_HEAD_KV: usize = 2;
/// Training context length written to the text model (`llama.context_length`).
pub const TINY_N_CTX_TRAIN: usize = 2048;
/// Vocabulary size of the tiny tokenizer: 3 specials + 256 bytes + 141 merge results.
pub const TINY_N_VOCAB: usize = 400;
/// Standard deviation of the tiny model's token embedding entries; the tiny mmproj's output
/// rows have the same scale, so image tokens weigh about as much as text tokens.
pub const TINY_EMBD_STD: f32 = 1.0;

/// Token id of `<|endoftext|>`.
pub const TOKEN_ENDOFTEXT: i32 = 0;
/// Token id of `<|im_start|>`; also the BOS token.
pub const TOKEN_IM_START: i32 = 1;
/// Token id of `<|im_end|>`; also the EOS and padding token.
pub const TOKEN_IM_END: i32 = 2;
/// Id of the first byte token (byte `b` is token `TOKEN_FIRST_BYTE + b`).
pub const TOKEN_FIRST_BYTE: i32 = 3;

/// Side of the square image the tiny mmproj takes, in pixels.
pub const MMPROJ_IMAGE_SIZE: usize = 32;
/// Side of one patch, in pixels.
pub const MMPROJ_PATCH_SIZE: usize = 8;
/// Image tokens (embedding rows) the tiny mmproj produces per image.
pub const MMPROJ_N_PATCHES: usize = (MMPROJ_IMAGE_SIZE / MMPROJ_PATCH_SIZE).pow(2);
/// Width of the tiny vision tower.
pub const MMPROJ_V_EMBD: usize = 16;
/// Feed-forward width of the tiny vision tower.
const MMPROJ_V_FF: usize = 32;
/// Attention heads of the tiny vision tower.
const MMPROJ_V_HEAD: usize = 2;
/// Blocks in the tiny vision tower (llama.cpp's LLaVA graph runs all but the last one).
const MMPROJ_V_LAYER: usize = 2;
/// Hidden width of the two-layer projector.
const MMPROJ_PROJ_HIDDEN: usize = 32;

/// ChatML chat template (the SmolLM2 / Qwen one without a default system prompt).
pub const CHATML_TEMPLATE: &str = r"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Text the tokenizer's merges are learned from.
const BPE_CORPUS: &str = "\
What is the main color of this image? The image shows a red square on a white background. \
Describe the picture in one short sentence. There is a small blue circle in the middle of the \
picture, and the rest of the image is green. What do you see in the photo? I see a cat sitting \
on the table next to a cup of tea. The cat is black and the table is brown. Can you tell me \
what is in this image? This is a picture of a yellow flower in a garden. The answer is that the \
image is mostly white with some grey lines. Please answer the question about the image. The \
question asks which colour is the largest, and the answer is purple. You are a helpful \
assistant. The user asks a question and the assistant gives an answer. Hello, how are you \
today? I am fine, thank you. What would you like to know about the picture? It looks like a \
photo of the sea at night, with dark water and a bright moon. The model reads the text and the \
image tokens, then it writes the answer one token at a time. These words are here to teach the \
tokenizer some common English pieces, so that real merging happens when it reads a prompt. \
The quick brown fox jumps over the lazy dog. Red, green, blue, yellow, orange, purple, pink, \
black, white and grey are the names of colours.";

/// Paths of the two files written by [`write_tiny_models`] (or by
/// [`super::tiny_families::write_tiny_family`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyModelPaths {
    /// The text model, `tiny-llama.gguf` (`tiny-ARCH.gguf` for the other families).
    pub model: PathBuf,
    /// The image projector, `tiny-mmproj.gguf` (`tiny-ARCH-mmproj.gguf` for the others).
    pub mmproj: PathBuf,
}

/// The tiny model's tokenizer tables, as written to the GGUF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyVocab {
    /// Token texts in id order (byte-level, GPT-2 spelling).
    pub tokens: Vec<String>,
    /// Token types in id order: 1 normal, 3 control.
    pub token_types: Vec<i32>,
    /// Merges in priority order, each `"left right"`.
    pub merges: Vec<String>,
}

/// Writes `tiny-llama.gguf` and `tiny-mmproj.gguf` (projector width [`TINY_N_EMBD`]) into
/// `dir`, creating it if missing. The same `seed` gives byte-identical files.
pub fn write_tiny_models(dir: &Path, seed: u64) -> io::Result<TinyModelPaths> {
    fs::create_dir_all(dir)?;
    let paths = TinyModelPaths {
        model: dir.join("tiny-llama.gguf"),
        mmproj: dir.join("tiny-mmproj.gguf"),
    };
    tiny_llama(seed).write_to(&paths.model)?;
    // A different stream for the projector, so it does not repeat the text model's weights.
    write_random_mmproj(&paths.mmproj, TINY_N_EMBD, seed ^ 0x6d6d_7072_6f6a_0001)?;
    Ok(paths)
}

/// Writes a random LLaVA `mlp` mmproj whose projector outputs `n_embd_out`-wide rows with
/// entries of standard deviation about [`TINY_EMBD_STD`].
pub fn write_random_mmproj(path: &Path, n_embd_out: usize, seed: u64) -> io::Result<()> {
    write_random_mmproj_scaled(path, n_embd_out, TINY_EMBD_STD, seed)
}

/// Like [`write_random_mmproj`], with the standard deviation of the output entries chosen
/// (match it to the text model's token embeddings when pairing with a real model).
pub fn write_random_mmproj_scaled(
    path: &Path,
    n_embd_out: usize,
    out_std: f32,
    seed: u64,
) -> io::Result<()> {
    random_mmproj(n_embd_out, out_std, seed).write_to(path)
}

/// Builds the tiny model's tokenizer tables (independent of any seed).
pub fn tiny_vocab() -> TinyVocab {
    let b2u = bytes_to_unicode();
    let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    tokens.extend(b2u.iter().map(|c| c.to_string()));
    let n_merge_tokens = TINY_N_VOCAB - tokens.len();
    let (merges, merged) = train_bpe(BPE_CORPUS, &b2u, n_merge_tokens);
    tokens.extend(merged);
    let token_types = (0..tokens.len())
        .map(|i| if i < SPECIAL_TOKENS.len() { 3 } else { 1 })
        .collect();
    TinyVocab {
        tokens,
        token_types,
        merges,
    }
}

/// GPT-2's reversible byte-to-character mapping, indexed by byte: printable Latin-1 bytes
/// map to themselves, the rest to code points from U+0100 on, in byte order.
fn bytes_to_unicode() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut next = 0x100;
    (0u32..256)
        .map(|b| {
            let cp = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(cp).unwrap_or('?')
        })
        .collect()
}

/// Learns BPE merges from `corpus` until `n_tokens` new tokens exist (or no pair is left).
/// Words are runs of ASCII letters, each with its preceding space attached, spelled with
/// `b2u`. Each step merges the most frequent adjacent pair, ties broken by the smaller pair.
/// Returns the merges (`"left right"`) and the new token texts, both in order.
fn train_bpe(corpus: &str, b2u: &[char], n_tokens: usize) -> (Vec<String>, Vec<String>) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut word = String::new();
    let mut prev = ' ';
    for c in corpus.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphabetic() {
            if word.is_empty() && prev == ' ' {
                word.push(' ');
            }
            word.push(c);
        } else if !word.is_empty() {
            *counts.entry(std::mem::take(&mut word)).or_default() += 1;
        }
        prev = c;
    }
    let mut words: Vec<(Vec<String>, usize)> = counts
        .into_iter()
        .map(|(w, n)| (w.bytes().map(|b| b2u[b as usize].to_string()).collect(), n))
        .collect();

    let mut merges = Vec::new();
    let mut new_tokens = Vec::new();
    let mut known: BTreeSet<String> = BTreeSet::new();
    while new_tokens.len() < n_tokens {
        let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (syms, n) in &words {
            for w in syms.windows(2) {
                *pairs.entry((&w[0], &w[1])).or_default() += n;
            }
        }
        // Highest count; among equal counts the first (smallest) pair, as `max_by_key` keeps
        // the last maximum and the map iterates in ascending order, so iterate in reverse.
        let Some((&(a, b), _)) = pairs.iter().rev().max_by_key(|(_, &n)| n) else {
            break;
        };
        let (a, b) = (a.to_owned(), b.to_owned());
        let joined = format!("{a}{b}");
        for (syms, _) in &mut words {
            let mut i = 0;
            while i + 1 < syms.len() {
                if syms[i] == a && syms[i + 1] == b {
                    syms[i] = joined.clone();
                    syms.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push(format!("{a} {b}"));
        if known.insert(joined.clone()) {
            new_tokens.push(joined);
        }
    }
    (merges, new_tokens)
}

/// SplitMix64: a tiny, good-enough seeded generator.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), with 24 random bits (exact in `f32`).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    }

    /// Approximately standard normal: the Irwin–Hall sum of four uniforms, rescaled to unit
    /// variance. Pure arithmetic, so bit-identical on every platform.
    fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * 3f32.sqrt()
    }

    /// `n` approximately normal values with standard deviation `std`.
    pub(super) fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }
}

/// Adds an F32 tensor of the given ggml shape filled with random values of deviation `std`.
pub(super) fn add_random(w: &mut GgufWriter, rng: &mut Rng, name: &str, shape: &[usize], std: f32) {
    let n = shape.iter().product();
    w.add_tensor_f32(name, shape, rng.normals(n, std));
}

/// Adds an F32 tensor of the given ggml shape filled with `value`.
pub(super) fn add_const(w: &mut GgufWriter, name: &str, shape: &[usize], value: f32) {
    let n = shape.iter().product();
    w.add_tensor_f32(name, shape, vec![value; n]);
}

/// The tiny llama text model.
fn tiny_llama(seed: u64) -> GgufWriter {
    let vocab = tiny_vocab();
    let n_vocab = vocab.tokens.len();
    let head_dim = TINY_N_EMBD / TINY_N_HEAD;
    let n_embd_kv = head_dim * TINY_N_HEAD_KV;
    let as_u32 = |n: usize| n as u32;

    let mut w = GgufWriter::new();
    w.add_string("general.architecture", "llama");
    w.add_string("general.name", "tiny-llama-dms (random test model)");
    w.add_u32("general.file_type", 0); // all F32
    w.add_u32("llama.context_length", as_u32(TINY_N_CTX_TRAIN));
    w.add_u32("llama.embedding_length", as_u32(TINY_N_EMBD));
    w.add_u32("llama.block_count", as_u32(TINY_N_LAYER));
    w.add_u32("llama.feed_forward_length", as_u32(TINY_N_FF));
    w.add_u32("llama.attention.head_count", as_u32(TINY_N_HEAD));
    w.add_u32("llama.attention.head_count_kv", as_u32(TINY_N_HEAD_KV));
    w.add_u32("llama.rope.dimension_count", as_u32(head_dim));
    w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    w.add_f32("llama.rope.freq_base", 10000.0);
    w.add_u32("llama.vocab_size", as_u32(n_vocab));

    write_tokenizer(&mut w, &vocab);

    // Token rows of deviation 1 make logits and hidden states clearly token dependent; the
    // output projection of 0.3 gives logits of deviation about 0.3 * sqrt(64) = 2.4.
    let mut rng = Rng::new(seed);
    let (e, ff) = (TINY_N_EMBD, TINY_N_FF);
    add_random(
        &mut w,
        &mut rng,
        "token_embd.weight",
        &[e, n_vocab],
        TINY_EMBD_STD,
    );
    add_const(&mut w, "output_norm.weight", &[e], 1.0);
    add_random(&mut w, &mut rng, "output.weight", &[e, n_vocab], 0.3);
    for i in 0..TINY_N_LAYER {
        let std = 0.1;
        add_const(&mut w, &format!("blk.{i}.attn_norm.weight"), &[e], 1.0);
        add_random(
            &mut w,
            &mut rng,
            &format!("blk.{i}.attn_q.weight"),
            &[e, e],
            std,
        );
        add_random(
            &mut w,
            &mut rng,
            &format!("blk.{i}.attn_k.weight"),
            &[e, n_embd_kv],
            std,
        );
        add_random(
            &mut w,
            &mut rng,
            &format!("blk.{i}.attn_v.weight"),
            &[e, n_embd_kv],
            std,
        );
        add_random(
            &mut w,
            &mut rng,
            &format!("blk.{i}.attn_output.weight"),
            &[e, e],
            std,
        );
        add_const(&mut w, &format!("blk.{i}.ffn_norm.weight"), &[e], 1.0);
        add_random(
            &mut w,
            &mut rng,
            &format!("blk.{i}.ffn_gate.weight"),
            &[e, ff],
            std,
        );
        add_random(
            &mut w,
            &mut rng,
            &format!("blk.{i}.ffn_up.weight"),
            &[e, ff],
            std,
        );
        add_random(
            &mut w,
            &mut rng,
            &format!("blk.{i}.ffn_down.weight"),
            &[ff, e],
            std,
        );
    }
    w
}

/// A random LLaVA-1.5 style projector: conv patch embedding, position embeddings, a ViT of
/// [`MMPROJ_V_LAYER`] blocks (the LLaVA graph runs block 0 only), a post layer norm that puts
/// every patch vector at unit scale, then `mm.0` -> GELU -> `mm.2`.
fn random_mmproj(n_embd_out: usize, out_std: f32, seed: u64) -> GgufWriter {
    let (v, vff, h, p) = (
        MMPROJ_V_EMBD,
        MMPROJ_V_FF,
        MMPROJ_PROJ_HIDDEN,
        MMPROJ_PATCH_SIZE,
    );
    let mut w = GgufWriter::new();
    ClipSpec {
        name: "tiny-mmproj (random test projector)",
        description:
            "Random LLaVA-style vision tower and mlp projector for tests; its output means nothing",
        file_type: 1, // F16 conv kernel, the rest F32
        image_size: MMPROJ_IMAGE_SIZE,
        patch_size: p,
        v_embd: v,
        v_ff: vff,
        n_layer: MMPROJ_V_LAYER,
        n_head: MMPROJ_V_HEAD,
        n_embd_out,
        image_mean: [0.5; 3],
        image_std: [0.5; 3],
    }
    .write_keys(&mut w);

    let mut rng = Rng::new(seed);
    let inv_sqrt = |n: usize| 1.0 / (n as f32).sqrt();
    // Pixels are normalised to [-1, 1]; the kernel is F16 as in real mmproj files.
    let kernel = rng.normals(p * p * 3 * v, inv_sqrt(p * p * 3));
    w.add_tensor_f16("v.patch_embd.weight", &[p, p, 3, v], &kernel);
    add_random(&mut w, &mut rng, "v.patch_embd.bias", &[v], 0.1);
    add_random(
        &mut w,
        &mut rng,
        "v.position_embd.weight",
        &[v, MMPROJ_N_PATCHES],
        0.1,
    );
    for i in 0..MMPROJ_V_LAYER {
        for name in ["attn_q", "attn_k", "attn_v", "attn_out"] {
            add_random(
                &mut w,
                &mut rng,
                &format!("v.blk.{i}.{name}.weight"),
                &[v, v],
                inv_sqrt(v),
            );
            add_random(
                &mut w,
                &mut rng,
                &format!("v.blk.{i}.{name}.bias"),
                &[v],
                0.02,
            );
        }
        for ln in ["ln1", "ln2"] {
            add_const(&mut w, &format!("v.blk.{i}.{ln}.weight"), &[v], 1.0);
            add_const(&mut w, &format!("v.blk.{i}.{ln}.bias"), &[v], 0.0);
        }
        // ffn_down's ne[0] is the ff width, not n_embd, so llama.cpp's legacy up/down swap
        // for old LLaVA files does not kick in.
        add_random(
            &mut w,
            &mut rng,
            &format!("v.blk.{i}.ffn_up.weight"),
            &[v, vff],
            inv_sqrt(v),
        );
        add_random(
            &mut w,
            &mut rng,
            &format!("v.blk.{i}.ffn_up.bias"),
            &[vff],
            0.02,
        );
        add_random(
            &mut w,
            &mut rng,
            &format!("v.blk.{i}.ffn_down.weight"),
            &[vff, v],
            inv_sqrt(vff),
        );
        add_random(
            &mut w,
            &mut rng,
            &format!("v.blk.{i}.ffn_down.bias"),
            &[v],
            0.02,
        );
    }
    add_const(&mut w, "v.post_ln.weight", &[v], 1.0);
    add_const(&mut w, "v.post_ln.bias", &[v], 0.0);

    // After the post norm each patch vector has unit variance, so mm.0's pre-activations are
    // about N(0, 1); E[GELU(z)^2] = 0.425 for z ~ N(0, 1), which sets mm.2's scale.
    add_random(&mut w, &mut rng, "mm.0.weight", &[v, h], inv_sqrt(v));
    add_const(&mut w, "mm.0.bias", &[h], 0.0);
    let mm2_std = out_std / (0.425 * h as f32).sqrt();
    add_random(&mut w, &mut rng, "mm.2.weight", &[h, n_embd_out], mm2_std);
    add_const(&mut w, "mm.2.bias", &[n_embd_out], 0.0);
    w
}

#[cfg(test)]
#[path = "tiny_tests.rs"]
mod tests;

/// Writes the tiny tokenizer's keys (`vocab`'s tokens, types and merges; ChatML template).
pub(super) fn write_tokenizer(w: &mut GgufWriter, vocab: &TinyVocab) {
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string("tokenizer.ggml.pre", "smollm");
    w.add_string_array("tokenizer.ggml.tokens", &vocab.tokens);
    w.add_i32_array("tokenizer.ggml.token_type", &vocab.token_types);
    w.add_string_array("tokenizer.ggml.merges", &vocab.merges);
    w.add_u32("tokenizer.ggml.bos_token_id", TOKEN_IM_START as u32);
    w.add_u32("tokenizer.ggml.eos_token_id", TOKEN_IM_END as u32);
    w.add_u32("tokenizer.ggml.padding_token_id", TOKEN_IM_END as u32);
    w.add_bool("tokenizer.ggml.add_bos_token", false);
    w.add_string("tokenizer.chat_template", CHATML_TEMPLATE);
}
