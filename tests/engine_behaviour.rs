//! Engine behaviour on real (synthesised) GGUF files: batching of sequences, typed errors,
//! generation, cancellation and recovery.

mod common;

use std::time::{Duration, Instant};

use common::{max_abs_diff, png, test_config};
use llama_dms::engine::{
    ContentPart, DmsSettings, EngineConfig, EngineError, EngineHandle, Event, GenerateRequest,
    ImageError, Message, ModalityWeights, Role, Runtime,
};
use llama_dms::llama::{Batch, LlamaError, Model, ModelParams, SamplerParams, TokenEmbeddings};

fn tiny_engine(n_ctx: u32) -> EngineHandle {
    let tiny = common::tiny_models();
    let mut config = EngineConfig::new(&tiny.model, Some(tiny.mmproj.clone()));
    config.runtime = test_config(n_ctx, 1);
    EngineHandle::start(config).expect("engine starts")
}

/// Collects a request's events: (text, final event).
fn collect(engine: &EngineHandle, request: GenerateRequest) -> (String, Event) {
    let mut events = engine.submit(request).expect("submit");
    let mut text = String::new();
    loop {
        match events
            .blocking_recv()
            .expect("stream ended without a final event")
        {
            Event::Text(t) => text.push_str(&t),
            last => return (text, last),
        }
    }
}

fn ask(text: &str, image: Option<Vec<u8>>, max_tokens: usize) -> GenerateRequest {
    let mut content: Vec<ContentPart> = image.into_iter().map(ContentPart::Image).collect();
    content.push(ContentPart::Text(text.into()));
    let mut r = GenerateRequest::new(vec![Message {
        role: Role::User,
        content,
    }]);
    r.max_tokens = max_tokens;
    r.sampling = SamplerParams {
        seed: 1,
        ..SamplerParams::default()
    };
    r
}

#[test]
fn two_sequences_in_one_decode_equal_two_single_runs() {
    let tiny = common::tiny_models();
    let model = Model::load(&tiny.model, &ModelParams::default()).unwrap();
    let mut rt = Runtime::new(&model, None, &test_config(512, 2)).unwrap();
    let rows = TokenEmbeddings::open(&tiny.model, model.n_embd(), model.token_row_scale()).unwrap();
    let tokens = model
        .tokenize("The colour of the image is", false, false)
        .unwrap();
    let width = model.n_embd_inp();
    let scaled = |w: f32| {
        let mut out = Vec::new();
        rows.append_rows(&tokens, w, width, &mut out).unwrap();
        out
    };
    let weights = [1.0f32, 0.5];
    let n = tokens.len();

    let mut single = Vec::new();
    for w in weights {
        rt.context().clear_memory();
        let mut b = Batch::embeddings(n, width);
        for (i, row) in scaled(w).chunks_exact(width).enumerate() {
            b.push_row(row, i as i32, 0, i + 1 == n).unwrap();
        }
        rt.context().decode(&b).unwrap();
        single.push(rt.context().logits(-1).unwrap().to_vec());
    }

    rt.context().clear_memory();
    let mut b = Batch::embeddings(2 * n, width);
    for (seq, w) in weights.iter().enumerate() {
        for (i, row) in scaled(*w).chunks_exact(width).enumerate() {
            b.push_row(row, i as i32, seq as i32, i + 1 == n).unwrap();
        }
    }
    rt.context().decode(&b).unwrap();
    for (seq, alone) in single.iter().enumerate() {
        let joint = rt.context().logits((seq * n + n - 1) as i32).unwrap();
        let diff = max_abs_diff(joint, alone);
        assert!(
            diff <= 1e-5,
            "sequence {seq} differs from its single run by {diff}"
        );
    }
    assert!(
        max_abs_diff(&single[0], &single[1]) > 1e-3,
        "the two weights should give different logits"
    );
    // Removing one sequence leaves the other intact.
    assert!(rt.context().remove_seq(1, -1, -1));
    assert_eq!(rt.context().seq_pos_max(1), -1);
    assert_eq!(rt.context().seq_pos_max(0), n as i32 - 1);
}

#[test]
fn missing_and_truncated_files_are_typed_errors() {
    let missing = Model::load(
        std::path::Path::new("/nonexistent/model.gguf"),
        &ModelParams::default(),
    );
    assert!(matches!(missing, Err(LlamaError::FileNotFound(_))));

    let tiny = common::tiny_models();
    let bytes = std::fs::read(&tiny.model).unwrap();
    let truncated = common::scratch().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    match Model::load(&truncated, &ModelParams::default()) {
        Err(LlamaError::ModelLoad { reason, .. }) => assert!(!reason.is_empty()),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a truncated GGUF loaded"),
    }
    // Cut inside the token table (the header is ~10 kB, the table follows it).
    let cut_table = common::scratch().join("cut-table.gguf");
    std::fs::write(&cut_table, &bytes[..30_000]).unwrap();
    match TokenEmbeddings::open(&cut_table, 64, 1.0) {
        Err(LlamaError::Gguf { .. }) => {}
        other => panic!("expected a GGUF error, got {:?}", other.err()),
    }
    let config = EngineConfig::new(&truncated, None);
    assert!(matches!(
        EngineHandle::start(config),
        Err(EngineError::Llama(LlamaError::ModelLoad { .. }))
    ));
}

#[test]
fn mmproj_of_the_wrong_width_names_both_widths() {
    let tiny = common::tiny_models();
    let wrong = common::scratch().join("mmproj-32.gguf");
    llama_dms::models::tiny::write_random_mmproj(&wrong, 32, 1).unwrap();
    let config = EngineConfig::new(&tiny.model, Some(wrong));
    match EngineHandle::start(config) {
        Err(
            e @ EngineError::Llama(LlamaError::WidthMismatch {
                mmproj: 32,
                model: 64,
                ..
            }),
        ) => {
            let msg = e.to_string();
            assert!(msg.contains("32") && msg.contains("64"), "{msg}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("mismatched mmproj was accepted"),
    }
}

#[test]
fn bad_images_and_overlong_prompts_fail_the_request_not_the_engine() {
    let engine = tiny_engine(256);
    let (_, last) = collect(
        &engine,
        ask(
            "what is this?",
            Some(b"definitely not an image".to_vec()),
            4,
        ),
    );
    assert!(matches!(
        last,
        Event::Error(EngineError::Image {
            index: 0,
            source: ImageError::UnknownFormat
        })
    ));

    let long = "the image ".repeat(400);
    let (_, last) = collect(&engine, ask(&long, None, 4));
    match last {
        Event::Error(e @ EngineError::Llama(LlamaError::ContextFull { n_ctx: 256, .. })) => {
            assert!(e.is_client_error())
        }
        other => panic!("expected a context-full error, got {other:?}"),
    }

    let mut weights = ask("hi", Some(png(8, 8, [1, 2, 3])), 4);
    weights.dms = llama_dms::engine::DmsSettings::fixed(llama_dms::engine::ModalityWeights {
        images: vec![],
        text: 1.0,
    });
    let (_, last) = collect(&engine, weights);
    assert!(matches!(last, Event::Error(EngineError::InvalidRequest(_))));

    // The engine still answers.
    let (text, last) = collect(&engine, ask("hello", Some(png(32, 32, [200, 0, 0])), 5));
    assert!(matches!(last, Event::Done(_)), "{last:?}");
    assert!(!text.is_empty());
}

#[test]
fn generation_streams_tokens_and_reports_usage() {
    let engine = tiny_engine(1024);
    let mut request = ask("Describe the image.", Some(png(32, 32, [0, 0, 255])), 12);
    request.dms = llama_dms::engine::DmsSettings::fixed(llama_dms::engine::ModalityWeights {
        images: vec![0.7],
        text: 1.2,
    });
    let (text, last) = collect(&engine, request);
    let Event::Done(done) = last else {
        panic!("expected done, got {last:?}")
    };
    assert!(!text.is_empty());
    assert!(done.usage.completion_tokens > 0 && done.usage.completion_tokens <= 12);
    assert!(done.usage.prompt_tokens >= 16, "16 image tokens plus text");
    assert!(done.timings.image_encode_ms > 0.0 && done.timings.decode_ms > 0.0);
    assert_eq!(done.dms.weights.images, vec![0.7]);

    // Same seed, same request: same answer.
    let again = collect(
        &engine,
        ask("Describe the image.", Some(png(32, 32, [0, 0, 255])), 12),
    );
    let again2 = collect(
        &engine,
        ask("Describe the image.", Some(png(32, 32, [0, 0, 255])), 12),
    );
    assert_eq!(again.0, again2.0);
}

#[test]
fn dropping_the_stream_cancels_and_the_next_request_works() {
    let engine = tiny_engine(2048);
    let mut request = ask("Tell me a long story.", None, 1800);
    request.sampling.temperature = 1.0;
    let mut events = engine.submit(request).unwrap();
    match events.blocking_recv() {
        Some(Event::Text(_)) => {}
        other => panic!("expected text first, got {other:?}"),
    }
    drop(events);

    let started = Instant::now();
    let (text, last) = collect(&engine, ask("hello", None, 4));
    assert!(matches!(last, Event::Done(_)), "{last:?}");
    assert!(!text.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the cancelled request kept the worker busy"
    );
    let stats = engine.stats();
    assert_eq!((stats.cancelled, stats.completed), (1, 1), "{stats:?}");
    assert!(
        stats.generated_tokens < 1800,
        "the cancelled request ran to the end: {stats:?}"
    );
}

#[test]
fn a_full_queue_is_refused_immediately() {
    let tiny = common::tiny_models();
    let mut config = EngineConfig::new(&tiny.model, None);
    config.runtime = test_config(2048, 1);
    config.queue_capacity = 1;
    let engine = EngineHandle::start(config).unwrap();
    let long = || ask("Tell me a long story.", None, 1500);
    let mut streams = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        match engine.submit(long()) {
            Ok(s) => streams.push(s),
            Err(EngineError::QueueFull) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(refused > 0, "a queue of one accepted six long requests");
    drop(streams);
}

#[test]
fn parallel_requests_are_batched_and_answer_as_if_alone() {
    let tiny = common::tiny_models();
    let prompts: Vec<String> = (0..8)
        .map(|i| format!("Question number {i}: what is in the image?"))
        .collect();
    let request = |p: &str| {
        let mut r = ask(p, None, 12);
        r.sampling = SamplerParams::greedy();
        r
    };
    // Answers one at a time.
    let alone: Vec<String> = {
        let engine = tiny_engine(1024);
        prompts
            .iter()
            .map(|p| collect(&engine, request(p)).0)
            .collect()
    };
    // The same eight at once on two slots.
    let mut config = EngineConfig::new(&tiny.model, Some(tiny.mmproj.clone()));
    config.runtime = test_config(1024, 6);
    config.parallel = 2;
    let engine = EngineHandle::start(config).unwrap();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let engine = engine.clone();
            let r = request(p);
            std::thread::spawn(move || collect(&engine, r))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (text, last) = h.join().unwrap();
        assert!(matches!(last, Event::Done(_)), "{last:?}");
        assert_eq!(
            text, alone[i],
            "request {i} answered differently when batched"
        );
    }
    let stats = engine.stats();
    assert_eq!(stats.completed, 8);
    assert_eq!(
        stats.max_batched, 2,
        "two requests were decoded in the same steps"
    );
}

#[test]
fn a_follow_up_turn_reuses_the_slot_and_answers_as_a_cold_start() {
    let image = png(32, 32, [200, 30, 30]);
    let turn = |history: &[(String, String)], question: &str| {
        let mut messages = Vec::new();
        for (i, (q, a)) in history.iter().enumerate() {
            let mut content: Vec<ContentPart> = if i == 0 {
                vec![ContentPart::Image(image.clone())]
            } else {
                Vec::new()
            };
            content.push(ContentPart::Text(q.clone()));
            messages.push(Message {
                role: Role::User,
                content,
            });
            messages.push(Message::text(Role::Assistant, a.clone()));
        }
        let mut content: Vec<ContentPart> = if history.is_empty() {
            vec![ContentPart::Image(image.clone())]
        } else {
            Vec::new()
        };
        content.push(ContentPart::Text(question.into()));
        messages.push(Message {
            role: Role::User,
            content,
        });
        let mut r = GenerateRequest::new(messages);
        r.sampling = SamplerParams::greedy();
        r.max_tokens = 8;
        r
    };
    let warm = tiny_engine(1024);
    let (first, done) = collect(&warm, turn(&[], "What is in the image?"));
    let Event::Done(done) = done else {
        panic!("{done:?}")
    };
    assert_eq!(done.usage.cached_tokens, 0);
    let history = vec![("What is in the image?".to_string(), first)];
    let (second, done) = collect(&warm, turn(&history, "And the colour?"));
    let Event::Done(done) = done else {
        panic!("{done:?}")
    };
    assert!(
        done.usage.cached_tokens > 16,
        "the image and the first turn are reused: {:?}",
        done.usage
    );
    assert!(done.usage.cached_tokens < done.usage.prompt_tokens);

    // The same follow-up on a fresh engine: the same answer.
    let cold = tiny_engine(1024);
    let (cold_second, _) = collect(&cold, turn(&history, "And the colour?"));
    assert_eq!(second, cold_second);

    // Weights of 1 lay the prompt out as the unweighted path does: its KV is reused.
    let mut weighted = turn(&history, "And the colour?");
    weighted.dms = fixed(1.0, 1.0);
    let (weighted_answer, done) = collect(&warm, weighted);
    let Event::Done(done) = done else {
        panic!("{done:?}")
    };
    assert_eq!(done.usage.cached_tokens, done.usage.prompt_tokens - 1);
    assert_eq!(
        weighted_answer, cold_second,
        "weights of 1 give llama.cpp's answer"
    );
}

fn fixed(image: f32, text: f32) -> DmsSettings {
    DmsSettings::fixed(ModalityWeights {
        images: vec![image],
        text,
    })
}

/// A two-turn conversation about one image, under `dms`; the second turn's request.
fn second_turn(image: &[u8], first_answer: &str, dms: &DmsSettings) -> GenerateRequest {
    let mut r = GenerateRequest::new(vec![
        Message {
            role: Role::User,
            content: vec![
                ContentPart::Image(image.to_vec()),
                ContentPart::Text("What is in the image?".into()),
            ],
        },
        Message::text(Role::Assistant, first_answer),
        Message::text(Role::User, "And the colour?"),
    ]);
    r.sampling = SamplerParams::greedy();
    r.max_tokens = 8;
    r.dms = dms.clone();
    r
}

fn done_of(event: Event) -> Box<llama_dms::engine::Done> {
    match event {
        Event::Done(d) => d,
        other => panic!("{other:?}"),
    }
}

#[test]
fn weighted_follow_ups_reuse_the_kv_written_under_the_same_weights() {
    let image = png(32, 32, [30, 200, 30]);
    let scaled = fixed(0.5, 1.5);
    let mut first = ask("What is in the image?", Some(image.clone()), 8);
    first.sampling = SamplerParams::greedy();
    first.dms = scaled.clone();
    let warm = tiny_engine(1024);
    let (answer, done) = collect(&warm, first);
    assert_eq!(done_of(done).usage.cached_tokens, 0);

    let (warm_second, done) = collect(&warm, second_turn(&image, &answer, &scaled));
    let usage = done_of(done).usage;
    assert!(
        usage.cached_tokens > 16,
        "the scaled image and first turn are reused: {usage:?}"
    );
    let cold = tiny_engine(1024);
    let (cold_second, done) = collect(&cold, second_turn(&image, &answer, &scaled));
    assert_eq!(done_of(done).usage.cached_tokens, 0);
    assert_eq!(warm_second, cold_second, "reuse does not change the answer");

    // Other weights: the image rows differ, so only the template before the image is reused.
    let other = fixed(0.7, 1.5);
    let (_, done) = collect(&warm, second_turn(&image, &answer, &other));
    let reused = done_of(done).usage.cached_tokens;
    assert!(
        reused < 16,
        "KV of other weights is not reused: {reused} positions"
    );
}

#[test]
fn an_image_seen_again_is_not_encoded_again() {
    let image = png(32, 32, [30, 30, 200]);
    let with_system = |system: &str| {
        let mut r = ask("What is in the image?", Some(image.clone()), 6);
        r.messages.insert(0, Message::text(Role::System, system));
        r.sampling = SamplerParams::greedy();
        r
    };
    let engine = tiny_engine(1024);
    let (_, done) = collect(&engine, with_system("Be terse."));
    let timings = done_of(done).timings;
    assert_eq!(timings.image_cache_hits, 0);
    assert!(timings.image_encode_ms > 0.0);
    // Another conversation: no shared KV past the template's start, but the same image.
    let (warm, done) = collect(&engine, with_system("You describe pictures."));
    let done = done_of(done);
    assert!(done.usage.cached_tokens < 8, "{:?}", done.usage);
    assert_eq!(done.timings.image_cache_hits, 1);
    assert_eq!(done.timings.image_encode_ms, 0.0);

    let cold = tiny_engine(1024);
    let (cold_answer, done) = collect(&cold, with_system("You describe pictures."));
    assert_eq!(done_of(done).timings.image_cache_hits, 0);
    assert_eq!(warm, cold_answer, "cached rows give the same answer");

    // With the cache turned off every request encodes its image.
    let tiny = common::tiny_models();
    let mut config = EngineConfig::new(&tiny.model, Some(tiny.mmproj.clone()));
    config.runtime = test_config(1024, 1);
    config.runtime.image_cache_bytes = 0;
    let uncached = EngineHandle::start(config).unwrap();
    for system in ["Be terse.", "You describe pictures."] {
        let (_, done) = collect(&uncached, with_system(system));
        assert_eq!(done_of(done).timings.image_cache_hits, 0);
    }
}

#[test]
fn with_two_slots_each_conversation_returns_to_its_own_memory() {
    let tiny = common::tiny_models();
    let mut config = EngineConfig::new(&tiny.model, None);
    config.runtime = test_config(1024, 6);
    config.parallel = 2;
    let engine = EngineHandle::start(config).unwrap();
    let say = |history: &[&str]| {
        let messages: Vec<Message> = history
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Message::text(
                    if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    *t,
                )
            })
            .collect();
        let mut r = GenerateRequest::new(messages);
        r.sampling = SamplerParams::greedy();
        r.max_tokens = 4;
        match collect(&engine, r).1 {
            Event::Done(d) => d.usage.cached_tokens,
            other => panic!("{other:?}"),
        }
    };
    let a = "Conversation A is about the colour of the sky and the sea, at some length.";
    let b = "Conversation B is about a different image entirely, and it is long too.";
    assert_eq!(say(&[a]), 0);
    assert_eq!(
        say(&[b]),
        0,
        "B takes the empty slot instead of overwriting A's"
    );
    assert!(
        say(&[a, "ok", "more?"]) > 10,
        "A continues from its own slot"
    );
    assert!(
        say(&[b, "ok", "more?"]) > 10,
        "B continues from its own slot"
    );
}
