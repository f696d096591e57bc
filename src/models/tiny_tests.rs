//! Tests of the tiny model synthesis (vocabulary, layouts, determinism).
use super::super::gguf_test_reader::{parse, Val};
use super::*;
use std::collections::{HashMap, HashSet};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tiny-models-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

#[test]
fn vocab_is_consistent() {
    let v = tiny_vocab();
    assert_eq!(v.tokens.len(), TINY_N_VOCAB);
    assert_eq!(v.token_types.len(), TINY_N_VOCAB);
    assert_eq!(v.tokens[TOKEN_ENDOFTEXT as usize], "<|endoftext|>");
    assert_eq!(v.tokens[TOKEN_IM_START as usize], "<|im_start|>");
    assert_eq!(v.tokens[TOKEN_IM_END as usize], "<|im_end|>");
    assert_eq!(v.tokens[(TOKEN_FIRST_BYTE + b' ' as i32) as usize], "Ġ");
    assert_eq!(v.tokens[(TOKEN_FIRST_BYTE + b'\n' as i32) as usize], "Ċ");
    assert_eq!(v.tokens[(TOKEN_FIRST_BYTE + b'a' as i32) as usize], "a");
    assert_eq!(v.token_types[..4], [3, 3, 3, 1]);

    let ids: HashMap<&str, usize> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    assert_eq!(ids.len(), v.tokens.len(), "token texts are unique");
    assert!(v.merges.len() >= 50);
    // Merges come in priority order: both parts of each merge exist before it (as byte
    // tokens or earlier results), and every result is a token.
    let mut available: HashSet<String> = v.tokens[3..259].iter().cloned().collect();
    for m in &v.merges {
        let (a, b) = m.split_once(' ').expect("merge has a space");
        assert!(available.contains(a) && available.contains(b), "{m:?}");
        let result = format!("{a}{b}");
        assert!(ids.contains_key(result.as_str()), "{result:?} is a token");
        available.insert(result);
    }
    let normal: HashSet<String> = v.tokens[3..].iter().cloned().collect();
    assert_eq!(available, normal, "every token is a byte or a merge result");
    for piece in ["Ġthe", "Ġimage", "Ġis", "Ġa", "Ġof"] {
        assert!(ids.contains_key(piece), "{piece} is a token");
    }
}

#[test]
fn text_model_has_the_llama_layout() {
    let dir = temp_dir("layout");
    let paths = write_tiny_models(&dir, 7).unwrap();
    let p = parse(&fs::read(&paths.model).unwrap());
    assert_eq!(p.str("general.architecture"), "llama");
    assert_eq!(p.u32("llama.embedding_length") as usize, TINY_N_EMBD);
    assert_eq!(p.u32("llama.rope.dimension_count"), 16);
    assert_eq!(p.u32("llama.vocab_size") as usize, TINY_N_VOCAB);
    assert_eq!(p.str("tokenizer.ggml.model"), "gpt2");
    assert_eq!(p.str("tokenizer.chat_template"), CHATML_TEMPLATE);
    assert_eq!(p.kvs["tokenizer.ggml.add_bos_token"], Val::Bool(false));
    assert_eq!(p.strings("tokenizer.ggml.tokens"), tiny_vocab().tokens);
    let (e, v) = (TINY_N_EMBD as u64, TINY_N_VOCAB as u64);
    assert_eq!(p.tensors["token_embd.weight"].shape, vec![e, v]);
    assert_eq!(p.tensors["output.weight"].shape, vec![e, v]);
    assert_eq!(p.tensors["blk.1.attn_k.weight"].shape, vec![e, 32]);
    assert_eq!(p.tensors["blk.1.ffn_down.weight"].shape, vec![128, e]);
    assert_eq!(p.tensors.len(), 3 + 9 * TINY_N_LAYER);
    assert!(p.tensors.values().all(|t| t.ggml_type == 0));

    let embd = p.f32s("token_embd.weight");
    let std = (embd.iter().map(|x| x * x).sum::<f32>() / embd.len() as f32).sqrt();
    assert!((std - TINY_EMBD_STD).abs() < 0.05, "std {std}");
    assert!(fs::metadata(&paths.model).unwrap().len() < 1 << 20);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mmproj_has_the_llava_layout() {
    let dir = temp_dir("mmproj");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wide.gguf");
    write_random_mmproj(&path, 576, 3).unwrap();
    let p = parse(&fs::read(&path).unwrap());
    assert_eq!(p.str("general.architecture"), "clip");
    assert_eq!(p.str("clip.projector_type"), "mlp");
    assert_eq!(p.u32("clip.vision.projection_dim"), 576);
    let patch = &p.tensors["v.patch_embd.weight"];
    assert_eq!(patch.shape, vec![8, 8, 3, MMPROJ_V_EMBD as u64]);
    assert_eq!(patch.ggml_type, 1);
    assert_eq!(
        p.tensors["v.position_embd.weight"].shape,
        vec![MMPROJ_V_EMBD as u64, MMPROJ_N_PATCHES as u64]
    );
    assert_eq!(p.tensors["mm.2.weight"].shape, vec![32, 576]);
    assert_eq!(p.tensors["mm.2.bias"].shape, vec![576]);
    assert_eq!(p.tensors["v.blk.0.ffn_down.weight"].shape, vec![32, 16]);
    assert_eq!(MMPROJ_N_PATCHES, 16);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn same_seed_same_bytes() {
    let (a, b, c) = (temp_dir("seed-a"), temp_dir("seed-b"), temp_dir("seed-c"));
    let pa = write_tiny_models(&a, 42).unwrap();
    let pb = write_tiny_models(&b, 42).unwrap();
    let pc = write_tiny_models(&c, 43).unwrap();
    let read = |p: &Path| fs::read(p).unwrap();
    assert_eq!(read(&pa.model), read(&pb.model));
    assert_eq!(read(&pa.mmproj), read(&pb.mmproj));
    assert_ne!(read(&pa.model), read(&pc.model));
    assert_ne!(read(&pa.mmproj), read(&pc.mmproj));
    for d in [a, b, c] {
        fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn rng_is_stable_and_roughly_normal() {
    let mut r = Rng::new(1);
    let first = r.next_u64();
    assert_eq!(first, 0x910a_2dec_8902_5cc1); // SplitMix64 reference output for seed 1
    let xs = Rng::new(9).normals(20_000, 1.0);
    let mean = xs.iter().sum::<f32>() / xs.len() as f32;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / xs.len() as f32;
    assert!(
        mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
        "{mean} {var}"
    );
}
