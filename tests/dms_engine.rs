//! The DMS stage on a real model (the demo: SmolLM2-135M + the colour projector): `off` is plain
//! llama.cpp, only the evidence is weighted, MC dropout is reproducible, image signals are
//! cached, fixed weights apply, the MWC loss and scores are measured, the answer adopts the
//! signal passes' prefix, and evidence near weight 0 is left out. The signals themselves are
//! tested in `tests/dms_signals.rs`.

mod common;

use common::dms::{engine, hint, noisy_png, request, run, QUESTION};
use llama_dms::engine::{
    ContentPart, DmsMode, DmsSettings, Done, Emitted, EngineHandle, Event, GenerateOptions,
    GenerateRequest, Message, Prompt, Role, Runtime,
};
use llama_dms::llama::{Model, ModelParams, Sampler, SamplerParams};

#[test]
fn off_is_plain_llama_cpp_evaluation() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let image = noisy_png([200, 30, 30], 20.0, 1);
    let (answer, report) = run(
        &engine(&paths, 0),
        request(image.clone(), QUESTION, DmsSettings::default()),
    );
    assert_eq!(report.mode, DmsMode::Off);
    assert!(report.signals.is_none());
    assert_eq!(report.weights.images, vec![1.0]);

    // The same answer straight from llama.cpp's own evaluation, outside the engine.
    let model = Model::load(&paths.model, &ModelParams::default()).unwrap();
    let mut rt = Runtime::new(&model, Some(&paths.mmproj), &common::test_config(2048, 1)).unwrap();
    let decoded = llama_dms::engine::decode_image(&image, 1 << 24).unwrap();
    let messages = request(image, QUESTION, DmsSettings::default()).messages;
    let prompt = Prompt::build(&model, rt.mtmd(), &messages, &[decoded]).unwrap();
    let n_past = rt.prefill_reference(&prompt, 0).unwrap().n_past;
    let sampler = Sampler::new(&model, &SamplerParams::greedy()).unwrap();
    let mut plain = String::new();
    let options = GenerateOptions {
        max_tokens: 10,
        stops: &[],
        top_logprobs: None,
    };
    rt.generate(n_past, 0, sampler, &options, &mut |e| {
        if let Emitted::Text(p) = e {
            plain.push_str(p);
        }
        true
    })
    .unwrap();
    assert_eq!(answer, plain);
}

#[test]
fn only_the_evidence_is_weighted_never_the_question() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let engine = engine(&paths, 0);
    let image = noisy_png([220, 20, 20], 8.0, 3);
    let text_only = |text: &str, w: f32| {
        let weights = llama_dms::engine::ModalityWeights {
            images: vec![1.0],
            text: w,
        };
        let mut r = request(image.clone(), text, DmsSettings::fixed(weights));
        r.top_logprobs = Some(1);
        run_with_logprobs(&engine, r)
    };
    // The question alone: the text weight scales nothing, the answer is the unweighted one.
    let (plain, plain_lp, plain_done) = text_only(QUESTION, 1.0);
    let (scaled, scaled_lp, scaled_done) = text_only(QUESTION, 0.3);
    assert_eq!(plain_done.dms.evidence_tokens, 0);
    assert_eq!(scaled_done.dms.evidence_tokens, 0);
    assert_eq!((plain, plain_lp), (scaled, scaled_lp));
    // With a hint before the question the hint is evidence and its weight changes the logits.
    let (_, hinted_lp, hinted) = text_only(&hint("red"), 1.0);
    let (_, down_lp, _) = text_only(&hint("red"), 0.3);
    assert!(
        hinted.dms.evidence_tokens >= 6,
        "{}",
        hinted.dms.evidence_tokens
    );
    assert_ne!(hinted_lp, down_lp);
    // A part marked as the question is never evidence, even when it holds a claim.
    let mut marked = request(
        image.clone(),
        "Name the colour. This is red.",
        DmsSettings::default(),
    );
    marked.messages[0].content[1] = ContentPart::Question("Name the colour. This is red.".into());
    let (_, _, done) = run_with_logprobs(&engine, marked);
    assert_eq!(done.dms.evidence_tokens, 0);
}

#[test]
fn mc_dropout_is_reproducible_and_image_signals_are_cached() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let image = noisy_png([20, 200, 20], 60.0, 11);
    let rule = DmsSettings {
        mc_samples: 3,
        dropout: 0.2,
        ..DmsSettings::mode(DmsMode::Rule)
    };

    let text = hint("green");
    let uncached = engine(&paths, 0);
    let (_, a) = run(&uncached, request(image.clone(), &text, rule.clone()));
    let (_, b) = run(
        &engine(&paths, 0),
        request(image.clone(), &text, rule.clone()),
    );
    assert_eq!(
        a.signals, b.signals,
        "same seed, same engine state: same signals"
    );
    assert!(a.signals.as_ref().unwrap().images[0].uncertainty > 0.0);
    // Again on the first engine, whose answer slot now keeps the last request's KV: the passes
    // land on other KV cells, which changes the float summation order, not the measurement.
    let (_, c) = run(&uncached, request(image.clone(), &text, rule.clone()));
    assert_eq!(c.image_cache_hits, 0);
    let (sa, sc) = (a.signals.clone().unwrap(), c.signals.clone().unwrap());
    for (x, y) in sa
        .images
        .iter()
        .chain([&sa.text])
        .zip(sc.images.iter().chain([&sc.text]))
    {
        assert!((x.confidence - y.confidence).abs() < 1e-2, "{x:?} vs {y:?}");
        assert!(
            (x.uncertainty - y.uncertainty).abs() < 1e-3,
            "{x:?} vs {y:?}"
        );
    }

    let cached = engine(&paths, 8);
    let (_, first) = run(&cached, request(image.clone(), &text, rule.clone()));
    // Other evidence, the same question: the image's passes (image + question) are cached.
    let (_, again) = run(
        &cached,
        request(
            image.clone(),
            &format!("I was told it is blue. {QUESTION}"),
            rule.clone(),
        ),
    );
    assert_eq!((first.image_cache_hits, again.image_cache_hits), (0, 1));
    assert_eq!(
        first.signals.unwrap().images,
        again.signals.as_ref().unwrap().images
    );
    assert!(first.timings_ms.image_passes_ms > 0.0);
    assert_eq!(
        again.timings_ms.image_passes_ms, 0.0,
        "a cached image runs no passes"
    );
    assert_eq!(
        again.timings_ms.encode_ms, 0.0,
        "a cached image is not re-encoded"
    );

    // Another seed changes the dropout masks.
    let (_, other) = run(
        &uncached,
        request(image, &text, DmsSettings { seed: 99, ..rule }),
    );
    assert_ne!(
        other.signals.unwrap().images[0].uncertainty,
        a.signals.unwrap().images[0].uncertainty
    );
}

#[test]
fn fixed_weights_are_applied_and_bad_ones_refused() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let engine = engine(&paths, 0);
    let w = llama_dms::engine::ModalityWeights {
        images: vec![0.3],
        text: 1.7,
    };
    let (_, report) = run(
        &engine,
        request(
            noisy_png([0, 0, 0], 5.0, 1),
            QUESTION,
            DmsSettings::fixed(w.clone()),
        ),
    );
    assert_eq!(report.weights, w);
    assert_eq!(report.scheduler, "fixed");

    let bad = llama_dms::engine::ModalityWeights {
        images: vec![f32::NAN],
        text: 1.0,
    };
    let mut events = engine
        .submit(request(
            noisy_png([0, 0, 0], 5.0, 1),
            QUESTION,
            DmsSettings::fixed(bad),
        ))
        .unwrap();
    assert!(matches!(events.blocking_recv(), Some(Event::Error(e)) if e.is_client_error()));
    let unknown = DmsSettings {
        scheduler: Some("nope".into()),
        ..DmsSettings::mode(DmsMode::Rule)
    };
    let mut events = engine
        .submit(request(noisy_png([0, 0, 0], 5.0, 1), QUESTION, unknown))
        .unwrap();
    match events.blocking_recv() {
        Some(Event::Error(e)) => {
            assert!(e.to_string().contains("nope") && e.to_string().contains("rule-default"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_scored_answer_has_the_log_likelihood_that_generation_reported() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let engine = engine(&paths, 8);
    let weights = llama_dms::engine::ModalityWeights {
        images: vec![0.8],
        text: 1.2,
    };
    let mut greedy = request(
        noisy_png([200, 30, 30], 5.0, 3),
        QUESTION,
        DmsSettings::fixed(weights),
    );
    greedy.top_logprobs = Some(0);
    let mut events = engine.submit(greedy.clone()).unwrap();
    let (mut text, mut sum) = (String::new(), 0.0f64);
    loop {
        match events.blocking_recv().unwrap() {
            Event::Text(t) => text.push_str(&t),
            Event::Logprob(lp) => sum += f64::from(lp.logprob),
            Event::Done(_) => break,
            Event::Error(e) => panic!("{e}"),
        }
    }
    let score = |text: &str| {
        let mut scored = greedy.clone();
        scored.score = Some(text.into());
        // A scoring request sends nothing but its final event.
        match engine.submit(scored).unwrap().blocking_recv().unwrap() {
            Event::Done(d) => {
                assert_eq!(d.usage.completion_tokens, 0, "nothing is generated");
                d.score.expect("a score")
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    let loglik = score(&text);
    assert!(
        (loglik - sum).abs() < 1e-3 * sum.abs().max(1.0),
        "scored {loglik} vs generated {sum} for {text:?}"
    );
    let wrong = text.replace("red", "blue");
    assert_ne!(wrong, text, "the demo names red: {text:?}");
    assert!(score(&wrong) < loglik, "another colour is less likely");
}

#[test]
fn the_mwc_loss_is_measured_on_request_without_changing_the_answer() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let engine = engine(&paths, 0);
    let with_weights = |image: f32, text: f32, measure: bool| {
        let w = llama_dms::engine::ModalityWeights {
            images: vec![image],
            text,
        };
        let mut r = request(
            noisy_png([200, 30, 30], 10.0, 3),
            &hint("red"),
            DmsSettings::fixed(w),
        );
        r.measure_mwc = measure;
        run(&engine, r)
    };
    let (plain_answer, plain) = with_weights(1.0, 1.0, false);
    assert_eq!(plain.mwc, None, "measured only when asked for");
    let (answer, measured) = with_weights(1.0, 1.0, true);
    assert_eq!(
        answer, plain_answer,
        "the extra passes leave the answer alone"
    );
    let loss = measured.mwc.unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    let (_, again) = with_weights(1.0, 1.0, true);
    assert!((again.mwc.unwrap() - loss).abs() < 1e-4, "reproducible");
    // The joint pass really is weighted: other weights give another loss.
    let (_, skewed) = with_weights(0.2, 1.8, true);
    assert!(
        (skewed.mwc.unwrap() - loss).abs() > 1e-3,
        "{skewed:?} vs {loss}"
    );
    // Under rule the loss is measured for the weights the scheduler chose.
    let mut r = request(
        noisy_png([200, 30, 30], 10.0, 3),
        &hint("red"),
        DmsSettings::mode(DmsMode::Rule),
    );
    r.measure_mwc = true;
    let (_, rule) = run(&engine, r);
    assert!(rule.mwc.is_some_and(|l| l.is_finite() && l >= 0.0));
}

/// Text, per-token log-probabilities and the DMS report of `r`.
fn run_with_logprobs(
    engine: &EngineHandle,
    mut r: GenerateRequest,
) -> (String, Vec<f32>, Box<Done>) {
    r.top_logprobs = Some(1);
    let mut events = engine.submit(r).unwrap();
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    loop {
        match events.blocking_recv().unwrap() {
            Event::Text(t) => text.push_str(&t),
            Event::Logprob(l) => logprobs.push(l.logprob),
            Event::Done(d) => return (text, logprobs, d),
            Event::Error(e) => panic!("{e}"),
        }
    }
}

#[test]
fn the_answer_adopts_the_signal_passes_prefix_without_changing_a_thing() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let with_system = |dms: DmsSettings| {
        let mut r = request(noisy_png([30, 30, 200], 8.0, 5), &hint("blue"), dms);
        r.messages.insert(
            0,
            Message {
                role: Role::System,
                content: vec![ContentPart::Text(
                    "You are a careful assistant. Name colours with common words and answer in \
                     one short sentence."
                        .into(),
                )],
            },
        );
        r
    };
    // Under rule the system prompt's KV is copied from the signal passes' sequence (decoded
    // there as embedding rows); under fixed with the same weights no passes run and the answer
    // decodes it by token id. The two must agree.
    let (rule_text, rule_logprobs, rule) = run_with_logprobs(
        &engine(&paths, 0),
        with_system(DmsSettings::mode(DmsMode::Rule)),
    );
    let fixed = DmsSettings::fixed(rule.dms.weights.clone());
    let (fixed_text, fixed_logprobs, fixed) =
        run_with_logprobs(&engine(&paths, 0), with_system(fixed));
    // The system prompt and the template before the image: BOS + about 30 tokens.
    assert!(
        rule.timings.pass_prefix_positions > 20,
        "{:?}",
        rule.timings
    );
    assert_eq!(fixed.timings.pass_prefix_positions, 0);
    assert_eq!(rule_text, fixed_text);
    assert_eq!(rule_logprobs.len(), fixed_logprobs.len());
    let worst = common::max_abs_diff(&rule_logprobs, &fixed_logprobs);
    assert!(worst < 1e-3, "log-probabilities differ by {worst}");
}

#[test]
fn evidence_weighted_near_zero_is_left_out_of_the_prompt() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let engine = engine(&paths, 0);
    let image = noisy_png([20, 20, 220], 8.0, 5);
    // The image, the evidence (if any) and the question as separate parts.
    let weighted = |image: Option<&[u8]>, evidence: Option<&str>, weights: (Option<f32>, f32)| {
        let weights = llama_dms::engine::ModalityWeights {
            images: weights.0.into_iter().collect(),
            text: weights.1,
        };
        let mut r = request(Vec::new(), QUESTION, DmsSettings::fixed(weights));
        r.messages[0].content = image
            .map(|b| ContentPart::Image(b.to_vec()))
            .into_iter()
            .chain(evidence.map(|e| ContentPart::Evidence(e.into())))
            .chain([ContentPart::Question(QUESTION.into())])
            .collect();
        let (answer, logprobs, _) = run_with_logprobs(&engine, r);
        (answer, logprobs)
    };
    let claim = Some("This is a photo of something red.");
    // Evidence at weight 0: as if the request had none.
    let left_out = weighted(Some(&image), claim, (Some(2.0), 0.0));
    let without = weighted(Some(&image), None, (Some(2.0), 0.0));
    assert_eq!(left_out, without);
    let faint = weighted(Some(&image), claim, (Some(1.95), 0.05));
    assert_ne!(faint.1, left_out.1);
    // An image at weight 0 keeps its positions, with zeroed rows: not the same as no image.
    let zeroed = weighted(Some(&image), claim, (Some(0.0), 2.0));
    let text_only = weighted(None, claim, (None, 2.0));
    assert_ne!(zeroed.1, text_only.1);
}
