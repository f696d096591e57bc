//! Tests of the tiny family synthesis (layouts, vocabularies, determinism).
use super::super::gguf_test_reader::parse;
use super::super::tiny::TINY_N_VOCAB;
use super::*;
use std::path::PathBuf;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tiny-families-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

#[test]
fn llava_is_the_plain_tiny_pair() {
    let (a, b) = (temp_dir("llava-a"), temp_dir("llava-b"));
    let pa = write_tiny_family(&a, TinyArch::Llava, 42).unwrap();
    let pb = tiny::write_tiny_models(&b, 42).unwrap();
    assert_eq!(pa.model.file_name(), pb.model.file_name());
    assert_eq!(fs::read(&pa.model).unwrap(), fs::read(&pb.model).unwrap());
    assert_eq!(fs::read(&pa.mmproj).unwrap(), fs::read(&pb.mmproj).unwrap());
    assert_eq!(TinyArch::default(), TinyArch::Llava);
    for d in [a, b] {
        fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn vocabularies_extend_the_tiny_one() {
    let base = tiny_vocab();
    for arch in TinyArch::ALL {
        let v = family_vocab(arch);
        assert_eq!(v.tokens[..TINY_N_VOCAB], base.tokens[..], "{arch:?}");
        assert_eq!(v.merges[..base.merges.len()], base.merges[..]);
        assert_eq!(v.tokens.len(), v.token_types.len());
        for t in arch.extra_special_tokens() {
            let i = v.tokens.iter().position(|x| x == t).expect("special token");
            assert!(i >= TINY_N_VOCAB && v.token_types[i] == 3, "{t}");
        }
    }
    assert!(family_vocab(TinyArch::Idefics3)
        .tokens
        .contains(&"ĊĊ".to_string()));
}

#[test]
fn families_have_their_layouts_and_are_deterministic() {
    for arch in [TinyArch::Gemma3, TinyArch::Idefics3, TinyArch::Qwen2vl] {
        let (a, b, c) = (
            temp_dir(&format!("{}-a", arch.name())),
            temp_dir(&format!("{}-b", arch.name())),
            temp_dir(&format!("{}-c", arch.name())),
        );
        let pa = write_tiny_family(&a, arch, 5).unwrap();
        let pb = write_tiny_family(&b, arch, 5).unwrap();
        let pc = write_tiny_family(&c, arch, 6).unwrap();
        let read = |p: &Path| fs::read(p).unwrap();
        assert_eq!(read(&pa.model), read(&pb.model), "{arch:?}");
        assert_eq!(read(&pa.mmproj), read(&pb.mmproj), "{arch:?}");
        assert_ne!(read(&pa.model), read(&pc.model), "{arch:?}");
        assert_ne!(read(&pa.mmproj), read(&pc.mmproj), "{arch:?}");
        for p in [&pa.model, &pa.mmproj] {
            assert!(fs::metadata(p).unwrap().len() < 1 << 20, "{}", p.display());
        }

        let m = parse(&read(&pa.model));
        assert_eq!(m.str("general.architecture"), arch.text_arch());
        let key = |k: &str| format!("{}.{k}", arch.text_arch());
        assert_eq!(m.u32(&key("embedding_length")) as usize, TINY_N_EMBD);
        assert_eq!(
            m.strings("tokenizer.ggml.tokens"),
            family_vocab(arch).tokens
        );
        let e = TINY_N_EMBD as u64;
        assert_eq!(m.tensors["blk.1.ffn_down.weight"].shape, vec![128, e]);

        let p = parse(&read(&pa.mmproj));
        assert_eq!(p.str("general.architecture"), "clip");
        assert_eq!(p.str("clip.projector_type"), arch.projector_type());
        let t = arch.tower();
        let patch = &p.tensors["v.patch_embd.weight"];
        assert_eq!(patch.shape, vec![8, 8, 3, t.v_embd as u64]);
        assert_eq!(patch.ggml_type, 1);
        let out_width = match arch {
            TinyArch::Gemma3 => p.tensors["mm.input_projection.weight"].shape[0],
            TinyArch::Idefics3 => p.tensors["mm.model.fc.weight"].shape[1],
            _ => p.tensors["mm.2.bias"].shape[0],
        };
        assert_eq!(out_width, e, "{arch:?}");
        for d in [a, b, c] {
            fs::remove_dir_all(d).unwrap();
        }
    }
}

#[test]
fn family_specific_keys() {
    let dir = temp_dir("keys");
    let g = parse(&fs::read(write_tiny_family(&dir, TinyArch::Gemma3, 1).unwrap().model).unwrap());
    assert_eq!(g.u32("gemma3.attention.key_length"), 16);
    assert!(g.tensors.contains_key("blk.0.post_ffw_norm.weight"));
    assert!(!g.tensors.contains_key("output.weight"), "tied output");
    let q = parse(
        &fs::read(
            write_tiny_family(&dir, TinyArch::Qwen2vl, 1)
                .unwrap()
                .mmproj,
        )
        .unwrap(),
    );
    assert!(q.tensors.contains_key("v.patch_embd.weight.1"));
    assert!(!q.tensors.contains_key("v.position_embd.weight"));
    let half_head = (TINY_N_EMBD / TINY_N_HEAD / 2) as i32;
    assert_eq!(QWEN2VL_ROPE_SECTIONS.iter().sum::<i32>(), half_head);
    fs::remove_dir_all(&dir).unwrap();
}
