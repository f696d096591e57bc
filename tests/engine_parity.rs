//! The weighted embedding-row path against llama.cpp's own evaluation, on real GGUF files:
//! the synthesised tiny model + mmproj, and SmolLM2-135M-Instruct + a synthesised 576-wide mmproj.

mod common;

use std::path::Path;

use common::{gradient_png, last_logits, max_abs_diff, test_config};
use llama_dms::engine::{
    decode_image, ContentPart, Message, ModalityWeights, Prompt, Role, Runtime,
};
use llama_dms::llama::{ChunkKind, Model, ModelParams};

/// A user message with `n` images followed by a question, after a system prompt.
fn conversation(n_images: usize) -> (Vec<Message>, Vec<Vec<u8>>) {
    let images: Vec<Vec<u8>> = (0..n_images)
        .map(|i| gradient_png(48, 40, 30 * i as u8 + 1))
        .collect();
    let mut content: Vec<ContentPart> = images.iter().cloned().map(ContentPart::Image).collect();
    content.push(ContentPart::Text(
        "It looks reddish to me. What is the main colour of the image?".into(),
    ));
    let messages = vec![
        Message::text(Role::System, "You are a helpful assistant."),
        Message {
            role: Role::User,
            content,
        },
    ];
    (messages, images)
}

fn build(rt: &Runtime<'_>, messages: &[Message], images: &[Vec<u8>]) -> Prompt {
    let decoded: Vec<_> = images
        .iter()
        .map(|b| decode_image(b, 1 << 24).unwrap())
        .collect();
    Prompt::build(rt.model(), rt.mtmd(), messages, &decoded).expect("prompt")
}

/// Checks our pieces hold exactly the tokens llama.cpp's one-call tokenisation produces, then
/// compares the last-position logits of both evaluation paths.
fn assert_parity(model_path: &Path, mmproj: &Path, n_images: usize) -> f32 {
    let model = Model::load(model_path, &ModelParams::default()).expect("model");
    let mut rt = Runtime::new(&model, Some(mmproj), &test_config(2048, 1)).expect("runtime");
    let (messages, images) = conversation(n_images);
    let prompt = build(&rt, &messages, &images);

    let reference = prompt.reference_chunks(rt.mtmd().unwrap()).unwrap();
    let reference_text: Vec<i32> = reference.iter().flat_map(|c| c.tokens().to_vec()).collect();
    let ours = prompt.text_tokens();
    assert_eq!(
        &ours[usize::from(prompt.bos.is_some())..],
        &reference_text[..],
        "token sequences differ"
    );
    let reference_images = reference
        .iter()
        .filter(|c| c.kind() == ChunkKind::Image)
        .count();
    assert_eq!(reference_images, n_images);

    let expected = last_logits(&mut rt, &prompt, None);
    let got = last_logits(&mut rt, &prompt, Some(&ModalityWeights::uniform(n_images)));
    let diff = max_abs_diff(&expected, &got);
    eprintln!(
        "{}: {n_images} image(s), max |logit diff| = {diff:e}",
        model_path.display()
    );
    assert!(
        diff <= 1e-4,
        "weighted path differs from llama.cpp by {diff}"
    );
    diff
}

#[test]
fn parity_on_tiny_model_with_one_and_two_images() {
    let tiny = common::tiny_models();
    assert_parity(&tiny.model, &tiny.mmproj, 1);
    assert_parity(&tiny.model, &tiny.mmproj, 2);
}

#[test]
fn parity_on_smollm2_with_synthesised_mmproj() {
    let Some(smol) = common::smollm2() else {
        return;
    };
    let mmproj = common::scratch().join("smol-mmproj-576.gguf");
    llama_dms::models::tiny::write_random_mmproj_scaled(&mmproj, 576, 0.1, 3).unwrap();
    assert_parity(&smol, &mmproj, 1);
    assert_parity(&smol, &mmproj, 2);
}

#[test]
fn parity_on_the_demo_pair() {
    let Some(demo) = common::demo_paths() else {
        return;
    };
    assert_parity(&demo.model, &demo.mmproj, 1);
    assert_parity(&demo.model, &demo.mmproj, 2);
}

#[test]
fn weights_change_the_logits_and_zero_is_not_absence() {
    let tiny = common::tiny_models();
    let model = Model::load(&tiny.model, &ModelParams::default()).unwrap();
    let mut rt = Runtime::new(&model, Some(&tiny.mmproj), &test_config(2048, 1)).unwrap();
    let (messages, images) = conversation(1);
    let prompt = build(&rt, &messages, &images);

    let plain = last_logits(&mut rt, &prompt, Some(&ModalityWeights::uniform(1)));
    let weighted = |images: Vec<f32>, text: f32| ModalityWeights { images, text };
    for w in [
        weighted(vec![0.5], 1.0),
        weighted(vec![2.0], 1.0),
        weighted(vec![1.0], 0.5),
        weighted(vec![0.0], 1.0),
    ] {
        let l = last_logits(&mut rt, &prompt, Some(&w));
        assert!(
            max_abs_diff(&plain, &l) > 1e-3,
            "weights {w:?} did not change the logits"
        );
    }

    // Weight 0 zeroes the image rows, but the rows still take positions and sit between the
    // template tokens, so it is not the same as sending no image at all.
    let zero = last_logits(&mut rt, &prompt, Some(&weighted(vec![0.0], 1.0)));
    let (mut without, _) = conversation(0);
    without.truncate(2);
    let no_image = build(&rt, &without, &[]);
    assert!(no_image.n_positions() < prompt.n_positions());
    let absent = last_logits(&mut rt, &no_image, Some(&ModalityWeights::uniform(0)));
    assert!(
        max_abs_diff(&zero, &absent) > 1e-3,
        "weight 0 behaved exactly like a missing image"
    );
}
