//! The tiny models of each VLM family (`models tiny --arch ARCH`) load and run through
//! llama.cpp: its own evaluation of the multimodal prompt gives finite logits, the image
//! becomes the number of rows the family should give, and the engine generates greedily. DMS
//! on each: the weighted path at weights 1 equals llama.cpp's own evaluation exactly (the image
//! rows go through mtmd's decoding helper, M-RoPE positions and non-causal attention included),
//! fixed weights move the logits, `rule` measures signals and returns weights, and `off` answers
//! the same after a DMS request as before it.

mod common;

use std::fs;

use common::{gradient_png, last_logits, max_abs_diff, test_config};
use llama_dms::engine::{
    decode_image, ContentPart, DmsMode, DmsSettings, EngineConfig, EngineHandle, Event,
    GenerateRequest, Message, ModalityWeights, Prompt, Role, Runtime,
};
use llama_dms::llama::{ChunkKind, Model, ModelParams, SamplerParams};
use llama_dms::models::tiny::{TinyModelPaths, TINY_N_EMBD};
use llama_dms::models::tiny_families::{
    family_vocab, write_tiny_family, TinyArch, IDEFICS3_LONGEST_EDGE,
};

/// The test image's size: not square, so the families' resizing rules matter.
const IMAGE_W: u32 = 48;
const IMAGE_H: u32 = 40;

/// A system prompt and a user message with one image and a question.
fn conversation() -> Vec<Message> {
    vec![
        Message::text(Role::System, "You are a helpful assistant."),
        Message {
            role: Role::User,
            content: vec![
                ContentPart::Image(gradient_png(IMAGE_W, IMAGE_H, 1)),
                ContentPart::Text(
                    "It looks reddish to me. What is the main colour of the image?".into(),
                ),
            ],
        },
    ]
}

/// What the image should become: (image chunks, image rows in all, KV positions in all).
fn expected_image(arch: TinyArch) -> (usize, usize, usize) {
    let t = arch.tower();
    match arch {
        // One square input of image_size, (64 / 8)^2 patches pooled 2x2.
        TinyArch::Llava | TinyArch::Gemma3 => (1, t.rows_per_image(), t.rows_per_image()),
        TinyArch::Idefics3 => {
            // 48x40 -> longest side 64 -> 64x54 -> a 2x2 grid of 32 px tiles, plus the
            // overview: five tiles of (32 / 8)^2 / 2^2 rows each.
            let tile = IDEFICS3_LONGEST_EDGE / t.image_size;
            let n = tile * tile + 1;
            (n, n * t.rows_per_image(), n * t.rows_per_image())
        }
        TinyArch::Qwen2vl => {
            // Sides rounded to the nearest 16 px (patch 8 times merge 2): 48x40 -> 48x48, above
            // the 8-row minimum, so a 3x3 grid of rows; M-RoPE gives it max(3, 3) positions.
            (1, 9, 3)
        }
    }
}

fn write(arch: TinyArch, dir: &std::path::Path, seed: u64) -> TinyModelPaths {
    write_tiny_family(dir, arch, seed).expect("write the tiny family")
}

fn check_family(arch: TinyArch) {
    let dir = tempfile::tempdir().unwrap();
    let paths = write(arch, &dir.path().join("a"), 7);
    let again = write(arch, &dir.path().join("b"), 7);
    for (x, y) in [(&paths.model, &again.model), (&paths.mmproj, &again.mmproj)] {
        let bytes = fs::read(x).unwrap();
        assert_eq!(bytes, fs::read(y).unwrap(), "{arch:?}: not deterministic");
        assert!(
            bytes.len() < 1 << 20,
            "{}: {} bytes",
            x.display(),
            bytes.len()
        );
    }

    let model = Model::load(&paths.model, &ModelParams::default()).expect("model loads");
    assert_eq!(model.n_embd(), TINY_N_EMBD);
    let mut rt = Runtime::new(&model, Some(&paths.mmproj), &test_config(2048, 6))
        .unwrap_or_else(|e| panic!("{arch:?}: runtime: {e}"));
    let messages = conversation();
    let images: Vec<_> = messages[1]
        .content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Image(b) => Some(decode_image(b, 1 << 24).unwrap()),
            _ => None,
        })
        .collect();
    let prompt = Prompt::build(rt.model(), rt.mtmd(), &messages, &images).expect("prompt");

    let reference = prompt.reference_chunks(rt.mtmd().unwrap()).unwrap();
    let image_chunks: Vec<_> = reference
        .iter()
        .filter(|c| c.kind() == ChunkKind::Image)
        .collect();
    let rows: usize = image_chunks.iter().map(|c| c.n_tokens()).sum();
    let positions: usize = image_chunks.iter().map(|c| c.n_pos()).sum();
    eprintln!(
        "{arch:?}: {} chunks, {} image chunk(s), {rows} image rows, {positions} image positions, \
         {} prompt tokens, {} positions",
        reference.len(),
        image_chunks.len(),
        prompt.n_tokens(),
        prompt.n_positions()
    );
    assert_eq!(
        (image_chunks.len(), rows, positions),
        expected_image(arch),
        "{arch:?}: image chunks, rows, positions"
    );
    // The family's image delimiters are single tokens of the vocabulary, and mtmd used them.
    let text_tokens = prompt.text_tokens();
    assert!(
        text_tokens.iter().all(|&t| t >= 0),
        "{arch:?}: a null token"
    );
    let vocab = family_vocab(arch);
    for special in arch.extra_special_tokens() {
        let id = vocab.tokens.iter().position(|t| t == special).unwrap() as i32;
        assert!(
            text_tokens.contains(&id),
            "{arch:?}: {special} (id {id}) is not in the prompt"
        );
    }

    // llama.cpp's own evaluation (mtmd_helper_eval_chunks over the reference chunks).
    let expected = last_logits(&mut rt, &prompt, None);
    assert_eq!(expected.len(), model.n_vocab());
    assert!(
        expected.iter().all(|x| x.is_finite()),
        "{arch:?}: non-finite logits"
    );
    let spread = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(spread > 1e-3, "{arch:?}: logits are all zero");
    // The engine's weighted path at weight 1 is llama.cpp's own evaluation, exactly.
    let weighted = last_logits(&mut rt, &prompt, Some(&ModalityWeights::uniform(1)));
    let diff = max_abs_diff(&expected, &weighted);
    eprintln!("{arch:?}: max |logit| {spread:.3}, weighted-vs-reference max diff {diff:e}");
    assert_eq!(diff, 0.0, "{arch:?}: parity at weights 1");
    // The signal passes decode the prompt as llama.cpp does: its positions (M-RoPE sets for
    // Qwen2-VL) and its attention (non-causal over Gemma 3's image). Exact for one image chunk
    // (measured 0 for llava, gemma3, qwen2vl). Idefics3's five tiles of 4 rows, with text
    // between, llama.cpp decodes in 11 small batches and the pass in one, and the CPU kernels
    // accumulate in another order by batch shape: 2.4e-3 measured, on logits up to 6.7. A wrong
    // position set or mask moves them by 0.25 (measured with either left out).
    let passed = rt.signal_pass_logits(&prompt).expect("a signal pass");
    let diff = max_abs_diff(&expected, &passed);
    eprintln!("{arch:?}: signal-pass-vs-reference max diff {diff:e}");
    let tolerance = if arch == TinyArch::Idefics3 {
        1e-2
    } else {
        0.0
    };
    assert!(
        diff <= tolerance,
        "{arch:?}: the signal pass differs by {diff}"
    );
    // Other weights move the logits: the image's rows and the hint's (text rows fed as
    // embeddings, at M-RoPE position sets where the model has them).
    for weights in [
        ModalityWeights {
            images: vec![0.5],
            text: 1.0,
        },
        ModalityWeights {
            images: vec![1.0],
            text: 0.5,
        },
    ] {
        let moved = last_logits(&mut rt, &prompt, Some(&weights));
        assert!(moved.iter().all(|x| x.is_finite()), "{arch:?}: {weights:?}");
        let d = max_abs_diff(&expected, &moved);
        assert!(d > 1e-4, "{arch:?}: {weights:?} moved the logits by {d}");
    }
    drop(rt);
    drop(model);

    // A short greedy generation through the engine with DMS off.
    let mut config = EngineConfig::new(&paths.model, Some(paths.mmproj.clone()));
    // The default sequences: one answer, the signal passes' after it.
    config.runtime.context.n_ctx = 1024;
    config.runtime.context.n_threads = 2;
    // The shipped plugins (fitted for the demo model: on these they only have to run).
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    config.schedulers = std::sync::Arc::new(llama_dms::dms::Registry::load_dir(&plugins).unwrap());
    let engine = EngineHandle::start(config).expect("engine starts");
    let mut request = GenerateRequest::new(conversation());
    request.sampling = SamplerParams::greedy();
    request.max_tokens = 6;
    let run = |request: GenerateRequest| {
        let mut events = engine.submit(request).expect("submit");
        let mut text = String::new();
        loop {
            match events.blocking_recv().expect("a final event") {
                Event::Text(t) => text.push_str(&t),
                Event::Done(done) => return (text, done),
                Event::Error(e) => panic!("{arch:?}: generation failed: {e}"),
                Event::Logprob(_) => {}
            }
        }
    };
    let (text, done) = run(request.clone());
    eprintln!("{arch:?}: generated {text:?} ({:?})", done.finish_reason);
    assert!(done.usage.completion_tokens >= 1);
    assert_eq!(done.usage.prompt_tokens, prompt.n_tokens());
    let (text2, _) = run(request.clone());
    assert_eq!(text, text2, "{arch:?}: greedy generation is not repeatable");

    // `rule` and `learned` measure both modalities' signals with their passes (and the MWC
    // loss with more) and return weights for them.
    let mut with_rule = request.clone();
    with_rule.dms = DmsSettings::mode(DmsMode::Rule);
    with_rule.measure_mwc = true;
    let (_, ruled) = run(with_rule);
    let signals = ruled.dms.signals.as_ref().expect("rule measured signals");
    assert_eq!(signals.images.len(), 1, "{arch:?}");
    for s in signals.images.iter().chain([&signals.text]) {
        assert!(
            s.confidence.is_finite() && s.uncertainty.is_finite(),
            "{arch:?}: {s:?}"
        );
    }
    let w = &ruled.dms.weights;
    assert!(
        w.images.len() == 1 && w.images[0].is_finite() && w.text.is_finite(),
        "{arch:?}: {w:?}"
    );
    assert!(
        ruled.dms.mwc.is_some_and(|m| m.is_finite() && m >= 0.0),
        "{arch:?}"
    );
    // With a row budget below the image's the passes pool its rows (an M-RoPE image over its
    // own grid, placed the same way).
    let mut pooled = request.clone();
    pooled.dms = DmsSettings::mode(DmsMode::Rule);
    pooled.dms.max_image_rows = 4;
    let (_, small) = run(pooled);
    let s = small
        .dms
        .signals
        .as_ref()
        .expect("pooled passes measured signals");
    assert!(s.images[0].confidence.is_finite(), "{arch:?}: {s:?}");
    let mut with_learned = request.clone();
    with_learned.dms = DmsSettings::mode(DmsMode::Learned);
    let (_, learned) = run(with_learned);
    assert!(
        learned.dms.signals.is_some(),
        "{arch:?}: learned measured signals"
    );
    let w = &learned.dms.weights;
    assert!(
        w.images[0].is_finite() && w.text.is_finite(),
        "{arch:?}: {w:?}"
    );
    // `off` after the DMS request answers exactly as before it (the passes' KV is not reused
    // as the prompt's).
    let (text3, _) = run(request);
    assert_eq!(text, text3, "{arch:?}: off changed after a rule request");
}

#[test]
fn llava_family_loads_and_runs() {
    check_family(TinyArch::Llava);
}

#[test]
fn gemma3_family_loads_and_runs() {
    check_family(TinyArch::Gemma3);
}

#[test]
fn idefics3_family_loads_and_runs() {
    check_family(TinyArch::Idefics3);
}

#[test]
fn qwen2vl_family_loads_and_runs() {
    check_family(TinyArch::Qwen2vl);
}
