//! The chat-template input: arbitrary conversations through `Prompt::build` with a real model
//! never panic, fail only with client errors, and user text never becomes control tokens,
//! whatever template-looking text it holds.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use llama_dms::engine::prompt::Piece;
use llama_dms::engine::{ContentPart, Message, Prompt, RgbImage, Role};
use llama_dms::llama::{Model, ModelParams, Mtmd, MtmdParams, Token};
use proptest::prelude::*;

use crate::{common, property, skipped};

/// Pieces of text that look like markup of one template family or another.
const TRICKY: [&str; 24] = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_start|>system\n",
    "<s>",
    "</s>",
    "[INST]",
    "<|eot_id|>",
    "<start_of_turn>",
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "{{ raise_exception('x') }}",
    "\u{E000}",
    "\u{E001}",
    "\u{E002}",
    "\u{E000}0\u{E002}",
    "\u{E001}0\u{E002}",
    "\0",
    "\r\n",
    "\u{202e}",
    "assistant",
];

fn text() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        3 => prop::sample::select(TRICKY.to_vec()).prop_map(String::from),
        3 => "[a-zA-Z0-9 .,?\n]{0,12}",
        2 => any::<String>().prop_map(|s| s.chars().take(16).collect()),
        1 => prop::collection::vec(0u32..0x20, 0..6)
            .prop_map(|cs| cs.into_iter().filter_map(char::from_u32).collect()),
    ];
    prop_oneof![
        12 => prop::collection::vec(fragment, 0..8).prop_map(|v| v.concat()),
        1 => (1usize..3000).prop_map(|n| "<|im_start|>".repeat(n / 12 + 1)),
    ]
}

#[derive(Debug, Clone)]
enum PartSpec {
    Text(String),
    Image(u32, u32),
}

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(vec![Role::User, Role::User, Role::System, Role::Assistant])
}

/// Messages as (role, parts); images only when `images` is set.
fn conversation(images: bool) -> impl Strategy<Value = Vec<(Role, Vec<PartSpec>)>> {
    let part = prop_oneof![
        8 => text().prop_map(PartSpec::Text),
        (if images { 1 } else { 0 }) => (1u32..12, 1u32..12).prop_map(|(w, h)| PartSpec::Image(w, h)),
    ];
    let message = (role(), prop::collection::vec(part, 0..4)).boxed();
    prop_oneof![
        8 => prop::collection::vec(message.clone(), 0..6),
        1 => prop::collection::vec(message, 20..40),
    ]
}

/// Builds the engine messages and the decoded images (at most two images).
fn materialise(
    spec: &[(Role, Vec<PartSpec>)],
    user_text: Option<&str>,
) -> (Vec<Message>, Vec<RgbImage>) {
    let mut images = Vec::new();
    let messages = spec
        .iter()
        .map(|(role, parts)| Message {
            role: *role,
            content: parts
                .iter()
                .filter_map(|p| match p {
                    PartSpec::Text(t) => Some(ContentPart::Text(match (role, user_text) {
                        (Role::User, Some(u)) => u.to_string(),
                        _ => t.clone(),
                    })),
                    PartSpec::Image(w, h) if images.len() < 2 => {
                        let pixels = (0..w * h * 3).map(|i| (i * 37) as u8).collect();
                        images.push(RgbImage {
                            width: *w,
                            height: *h,
                            pixels,
                        });
                        Some(ContentPart::Image(Vec::new()))
                    }
                    PartSpec::Image(..) => None,
                })
                .collect(),
        })
        .collect();
    (messages, images)
}

/// Token ids that render only as special text: the control tokens.
fn control_tokens(model: &Model) -> HashSet<Token> {
    (0..model.n_vocab() as Token)
        .filter(|&t| {
            model.token_bytes(t, false).is_empty() && !model.token_bytes(t, true).is_empty()
        })
        .collect()
}

fn count_control(prompt: &Prompt, control: &HashSet<Token>) -> usize {
    prompt
        .text_tokens()
        .iter()
        .filter(|t| control.contains(t))
        .count()
}

fn run(name: &str, cases: u32, model_path: &Path, mmproj: Option<&Path>) {
    let model = Model::load(model_path, &ModelParams::default()).expect("model");
    let params = MtmdParams {
        use_gpu: false,
        n_threads: 1,
    };
    let mtmd = mmproj.map(|p| Mtmd::new(&model, p, &params).expect("mmproj"));
    let control = control_tokens(&model);
    assert!(!control.is_empty(), "{name}: the model has control tokens");
    let built = AtomicUsize::new(0);
    property(name, cases, conversation(mtmd.is_some()), |spec| {
        let (messages, images) = materialise(&spec, None);
        let prompt = match Prompt::build(&model, mtmd.as_ref(), &messages, &images) {
            Ok(p) => {
                built.fetch_add(1, Ordering::Relaxed);
                p
            }
            Err(e) => {
                prop_assert!(
                    e.is_client_error(),
                    "server error for a client's conversation: {e}"
                );
                return Ok(());
            }
        };
        for piece in &prompt.pieces {
            if let Piece::Text {
                tokens,
                evidence: true,
            } = piece
            {
                let bad: Vec<_> = tokens.iter().filter(|t| control.contains(t)).collect();
                prop_assert!(bad.is_empty(), "control tokens {:?} from user text", bad);
            }
        }
        // The user texts contribute no control token at all: the same conversation with
        // plain user text has exactly as many.
        let (plain, images) = materialise(&spec, Some("plain words"));
        let reference = Prompt::build(&model, mtmd.as_ref(), &plain, &images)
            .map_err(|e| TestCaseError::fail(format!("plain conversation fails: {e}")))?;
        prop_assert_eq!(
            count_control(&prompt, &control),
            count_control(&reference, &control)
        );
        Ok(())
    });
    // Not vacuous: most conversations build.
    let built = built.load(Ordering::Relaxed);
    eprintln!("{name}: {built} of {cases} conversations built");
    assert!(
        built * 2 > cases as usize,
        "{name}: only {built} of {cases} built"
    );
}

#[test]
fn chat_template_tiny_model() {
    let tiny = common::tiny_models();
    run(
        "chat_template_tiny_model",
        1500,
        &tiny.model,
        Some(&tiny.mmproj),
    );
}

#[test]
fn chat_template_demo_model() {
    match common::demo_paths() {
        Some(demo) => run("chat_template_demo_model", 600, &demo.model, None),
        None => skipped(
            "chat_template_demo_model",
            "the demo model could not be prepared",
        ),
    }
}

/// Pinned: a NUL in system or assistant text failed the template as a server error (500); it
/// is a client error now. In user text (never passed to the template) it is plain text.
#[test]
fn chat_template_nul_is_a_client_error() {
    let tiny = common::tiny_models();
    let model = Model::load(&tiny.model, &ModelParams::default()).expect("model");
    for role in [Role::System, Role::Assistant] {
        let messages = [Message::text(role, "a\0b"), Message::text(Role::User, "hi")];
        match Prompt::build(&model, None, &messages, &[]) {
            Err(e) => assert!(e.is_client_error(), "{role:?}: {e}"),
            Ok(_) => panic!("{role:?}: accepted a NUL"),
        }
    }
    let user = [Message::text(Role::User, "a\0b")];
    assert!(Prompt::build(&model, None, &user, &[]).is_ok());
}
