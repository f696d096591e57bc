//! The DMS signals on a real model (the demo: SmolLM2-135M + the colour projector): they see
//! destroyed and partly patched images, hedged and misspelt hints and mismatched pairs (the
//! calibrated reliabilities too), and clean agreeing pairs get weights near 1.

mod common;

use std::io::Cursor;

use common::dms::{engine, hint, noisy_png, request, run, QUESTION};
use llama_dms::engine::{DmsMode, DmsReport, DmsSettings, EngineConfig, EngineHandle};
use llama_dms::models::demo::DemoPaths;

/// An engine that loads the shipped scheduler plugins (the calibrated `rule-default`).
fn engine_with_plugins(paths: &DemoPaths) -> EngineHandle {
    let mut config = EngineConfig::new(&paths.model, Some(paths.mmproj.clone()));
    config.runtime.context.n_ctx = 2048;
    config.runtime.context.n_threads = 2;
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    config.schedulers = std::sync::Arc::new(llama_dms::dms::Registry::load_dir(&plugins).unwrap());
    EngineHandle::start(config).unwrap()
}

/// The shipped, calibrated `rule-default` (with its reliability models).
fn calibrated_rule() -> std::sync::Arc<dyn llama_dms::dms::Scheduler> {
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    let registry = llama_dms::dms::Registry::load_dir(&plugins).unwrap();
    registry.get("rule-default").unwrap()
}

/// The calibrated rule's reliabilities (images, then the text) of a measured request.
fn reliabilities(report: &DmsReport) -> Vec<f32> {
    let signals = report.scheduler_signals().expect("signals measured");
    calibrated_rule()
        .reliabilities(&signals)
        .expect("rule-default has reliability models and every variant they read")
}

/// A 64x64 image of `rgb` whose 8x8 grid of blocks has `share` of its blocks painted in
/// other solid colours (a partly corrupted image).
fn patched_png(rgb: [u8; 3], share: f32, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let palette = [
        [20, 200, 20],
        [20, 20, 220],
        [230, 230, 30],
        [128, 128, 128],
        [250, 250, 250],
    ];
    let blocks: Vec<Option<[u8; 3]>> = (0..64)
        .map(|_| {
            let patched = (next() % 1000) as f32 / 1000.0 < share;
            patched.then(|| palette[(next() % palette.len() as u64) as usize])
        })
        .collect();
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb(blocks[(y / 8 * 8 + x / 8) as usize].unwrap_or(rgb))
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn a_destroyed_image_gets_lower_reliability_than_a_clean_one() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let engine = engine(&paths, 0);
    let rule = DmsSettings::mode(DmsMode::Rule);
    let (mut clean_sum, mut patched_sum) = (0.0, 0.0);
    for (colour, rgb, seed) in [("red", [220, 20, 20], 3), ("blue", [20, 20, 220], 4)] {
        let (_, clean) = run(
            &engine,
            request(noisy_png(rgb, 8.0, seed), &hint(colour), rule.clone()),
        );
        // Mid-grey under heavy noise: no colour left for the projector.
        let (_, destroyed) = run(
            &engine,
            request(
                noisy_png([128, 128, 128], 400.0, seed),
                &hint(colour),
                rule.clone(),
            ),
        );
        let (c, d) = (
            clean.signals.clone().unwrap(),
            destroyed.signals.clone().unwrap(),
        );
        eprintln!(
            "{colour}: clean {:?}\n   destroyed {:?}",
            c.images[0], d.images[0]
        );
        assert!(
            d.images[0].confidence < c.images[0].confidence,
            "{colour}: destroyed {:?} vs clean {:?}",
            d.images[0],
            c.images[0]
        );
        let sum = destroyed.weights.images[0] + destroyed.weights.text;
        assert!((sum - 2.0).abs() < 1e-4);
        // The calibrated reliability sees it too, and on average a half-patched image, which
        // the confidence alone does not reliably tell from a clean one (the reliability's AUC
        // there is below 1: one item may come out either way, the mean may not).
        let (_, patched) = run(
            &engine,
            request(patched_png(rgb, 0.5, seed), &hint(colour), rule.clone()),
        );
        let (rc, rd, rp) = (
            reliabilities(&clean)[0],
            reliabilities(&destroyed)[0],
            reliabilities(&patched)[0],
        );
        eprintln!("{colour}: image reliability clean {rc} destroyed {rd} patched {rp}");
        assert!(rd < rc, "{colour}: {rc} {rd}");
        clean_sum += rc;
        patched_sum += rp;
    }
    assert!(patched_sum < clean_sum, "{patched_sum} vs {clean_sum}");
}

#[test]
fn a_hedged_or_misspelt_hint_gets_lower_reliability_than_a_clean_one() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let engine = engine(&paths, 0);
    let rule = DmsSettings::mode(DmsMode::Rule);
    // (confidence, calibrated reliability) of the text.
    let text_signals = |text: &str| {
        let (_, r) = run(
            &engine,
            request(noisy_png([220, 20, 20], 8.0, 3), text, rule.clone()),
        );
        (
            r.signals.as_ref().unwrap().text.confidence,
            reliabilities(&r)[1],
        )
    };
    let clean = text_signals(&hint("blue"));
    let hedged = text_signals(&format!("Maybe it is blue, I am not sure. {QUESTION}"));
    let misspelt = text_signals(&format!("Thsi is a phtoo of somthing bleu. {QUESTION}"));
    eprintln!(
        "text (confidence, reliability): clean {clean:?} hedged {hedged:?} misspelt {misspelt:?}"
    );
    assert!(hedged.0 < clean.0, "hedged {hedged:?} vs clean {clean:?}");
    assert!(
        misspelt.0 < clean.0,
        "misspelt {misspelt:?} vs clean {clean:?}"
    );
    assert!(hedged.1 < clean.1, "hedged {hedged:?} vs clean {clean:?}");
    assert!(
        misspelt.1 < clean.1,
        "misspelt {misspelt:?} vs clean {clean:?}"
    );
}

#[test]
fn a_clean_agreeing_pair_gets_weights_near_one() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let engine = engine_with_plugins(&paths);
    for (colour, rgb) in [("red", [220, 20, 20]), ("green", [20, 200, 20])] {
        let (_, report) = run(
            &engine,
            request(
                noisy_png(rgb, 8.0, 7),
                &hint(colour),
                DmsSettings::mode(DmsMode::Rule),
            ),
        );
        eprintln!("{colour}: {:?} {:?}", report.weights, report.signals);
        for w in report.weights.as_vec() {
            assert!((w - 1.0).abs() <= 0.05, "{colour}: {:?}", report.weights);
        }
    }
}

#[test]
fn a_mismatched_image_scores_lower_consistency() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let engine = engine(&paths, 0);
    let rule = DmsSettings::mode(DmsMode::Rule);
    for (colour, rgb, other) in [
        ("red", [230, 20, 20], [20, 20, 230]),
        ("blue", [20, 20, 230], [230, 230, 20]),
    ] {
        let text = format!("This is a photo of something {colour}. {QUESTION}");
        let (_, matched) = run(
            &engine,
            request(noisy_png(rgb, 5.0, 9), &text, rule.clone()),
        );
        let (_, mismatched) = run(
            &engine,
            request(noisy_png(other, 5.0, 9), &text, rule.clone()),
        );
        // The consistency the scheduler sees (the default, input-space variant).
        let (m, x) = (
            matched.signals.unwrap().consistency[0],
            mismatched.signals.unwrap().consistency[0],
        );
        eprintln!(
            "{colour}: matched {m:.4} mismatched {x:.4} (hidden variant {:?} vs {:?})",
            matched.consistency_hidden, mismatched.consistency_hidden
        );
        assert!(m > x, "{colour}: matched {m} <= mismatched {x}");
    }
}
