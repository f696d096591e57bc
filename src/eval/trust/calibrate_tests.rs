use super::*;
use crate::dms::ModalitySignals;
use crate::eval::trust::record::Scored;
use crate::eval::trust::testutil::{record, signals, with_grid};

/// `n` records of `condition` with these signals, right on the grid iff `right(w)`.
fn items(
    n: usize,
    condition: &str,
    s: Signals,
    right: fn(f32) -> bool,
) -> impl Iterator<Item = TrustRecord> + '_ {
    (0..n).map(move |i| {
        let mut r = with_grid(record(i, condition), right);
        r.signals = Some(s.clone());
        r
    })
}

/// Text-unreliable items (text confidence 0.3) the image gets right at w >= 1.5, and
/// image-unreliable ones (image confidence 0.2) the text gets right at w <= 0.5.
fn unreliable(text_c: f32) -> Vec<TrustRecord> {
    items(10, "clean+hedged-wrong", signals(0.8, 0.3, 0.0), |w| {
        w >= 1.5
    })
    .chain(items(10, "missing+hint", signals(0.2, text_c, 0.0), |w| {
        w <= 0.5
    }))
    .collect()
}

fn base() -> RuleScheduler {
    RuleScheduler {
        name: "rule-fitted".into(),
        model: Some("demo".into()),
        tau: 3.0,
        ..RuleScheduler::default()
    }
}

#[test]
fn the_smallest_alpha_that_separates_the_modalities_is_found() {
    // Clean: image 0.8, text 0.9 (the references); right at every weight.
    let mut rs: Vec<TrustRecord> = items(5, "clean", signals(0.8, 0.9, 0.5), |_| true)
        .chain(items(10, "clean+hint", signals(0.8, 0.9, 0.5), |_| true))
        .collect();
    rs.extend(unreliable(0.9));
    // Conflict items are left out, whatever they say.
    rs.extend(items(6, "conflict", signals(0.8, 0.9, 0.0), |_| false));
    let fit = fit_rule(&rs, &base());
    // alpha 1 gives w_image 1.29 on hedged items (nearest grid point 1.25: wrong); alpha 2
    // gives 1.54 and 0.46, both right.
    let r = &fit.rule;
    assert_eq!(
        (r.alpha, r.beta, r.gamma, r.w_min, r.w_max),
        (2.0, 0.0, 0.0, 0.0, 2.0)
    );
    assert_eq!((r.c_ref_image, r.c_ref_text), (0.8, 0.9));
    assert_eq!(
        (r.name.as_str(), r.model.as_deref(), r.tau),
        ("rule-fitted", Some("demo"), 1.0)
    );
    assert_eq!(fit.train_accuracy, 1.0);
    assert!((fit.off_accuracy - 15.0 / 35.0).abs() < 1e-12);
    assert_eq!(fit.clean_within, 1.0);
    assert!(fit.constraint_met);
    assert_eq!(
        fit.candidates_tried,
        ALPHAS.len() * BETAS.len() * GAMMAS.len() * W_MINS.len() * GATES.len()
    );
    assert!(!r.agree_gate, "ties keep the gate off");
    r.validate().unwrap();
}

#[test]
fn the_agreement_gate_is_chosen_when_clean_pairs_answer_alike() {
    // Clean evidence measures 0.9 or 0.3 and no other signal tells it apart from wrong hints,
    // but its unimodal answers agree with the image's ("red" and "red").
    let mut rs: Vec<TrustRecord> = items(5, "clean+hint", signals(0.8, 0.9, 0.0), |_| true)
        .chain(items(5, "clean+hint", signals(0.8, 0.3, 0.0), |_| true))
        .collect();
    for r in &mut rs {
        r.variants.insert("image.confidence.topk".into(), 0.8);
        r.image_alone = Some(Scored::new("It is red.", "red", None));
        r.text_alone = Some(Scored::new("The thing is red.", "red", None));
    }
    rs.extend(unreliable(0.9));
    let fit = fit_rule(&rs, &base());
    assert!(fit.rule.agree_gate, "{:?}", fit.rule);
    assert_eq!(fit.clean_within, 1.0);
    assert!(fit.constraint_met);
}

#[test]
fn consistency_keeps_varied_clean_inputs_at_plain_fusion() {
    // Clean evidence measures 0.9 or 0.3 (median 0.6) but agrees with the image (s = 1).
    let mut rs: Vec<TrustRecord> = items(5, "clean+hint", signals(0.8, 0.9, 1.0), |_| true)
        .chain(items(5, "clean+hint", signals(0.8, 0.3, 1.0), |_| true))
        .collect();
    rs.extend(unreliable(0.9));
    let fit = fit_rule(&rs, &base());
    assert!((fit.rule.c_ref_text - 0.6).abs() < 1e-6);
    // gamma 0.5 would move half the clean items; gamma 1 pins them at 1. alpha 2 gives
    // w_image 1.30 on hedged items (wrong), alpha 4 gives 1.54.
    assert_eq!((fit.rule.alpha, fit.rule.gamma), (4.0, 1.0));
    assert_eq!(fit.train_accuracy, 1.0);
    assert!(fit.constraint_met && fit.clean_within == 1.0);
}

#[test]
fn candidates_that_move_clean_inputs_are_rejected() {
    // As above, but without consistency to pin the clean items: every alpha > 0 moves them.
    let mut rs: Vec<TrustRecord> = items(5, "clean+hint", signals(0.8, 0.9, 0.0), |_| true)
        .chain(items(5, "clean+hint", signals(0.8, 0.3, 0.0), |_| true))
        .collect();
    rs.extend(unreliable(0.9));
    let fit = fit_rule(&rs, &base());
    assert_eq!(fit.rule.alpha, 0.0);
    assert!(fit.constraint_met);
    assert_eq!(fit.train_accuracy, fit.off_accuracy);
    assert!((fit.train_accuracy - 10.0 / 30.0).abs() < 1e-12);
}

#[test]
fn references_come_from_the_clean_items() {
    let with = |c_image, u_image, c_text, u_text| Signals {
        images: vec![ModalitySignals {
            confidence: c_image,
            uncertainty: u_image,
        }],
        text: ModalitySignals {
            confidence: c_text,
            uncertainty: u_text,
        },
        consistency: vec![1.0],
        image_missing: false,
        variants: Vec::new(),
    };
    let mut rs: Vec<TrustRecord> = items(5, "clean", with(0.6, 0.3, 0.1, 0.9), |_| true)
        .chain(items(5, "clean+hint", with(0.8, 0.1, 0.9, 0.2), |_| true))
        .collect();
    // Unreliable items do not move the references.
    rs.extend(items(9, "patched+hint", with(0.0, 1.0, 0.0, 1.0), |_| true));
    let mut no_signals = record(99, "clean");
    no_signals.grid = rs[0].grid.clone();
    rs.push(no_signals);
    let fit = fit_rule(&rs, &base());
    let r = &fit.rule;
    assert!((r.c_ref_image - 0.7).abs() < 1e-6 && (r.u_ref_image - 0.2).abs() < 1e-6);
    assert!((r.c_ref_text - 0.9).abs() < 1e-6 && (r.u_ref_text - 0.2).abs() < 1e-6);
    assert_eq!(fit.train_accuracy, 1.0);
    // Nothing usable: the base's references stay, accuracies are 0.
    let empty = fit_rule(&[], &base());
    assert_eq!(empty.rule.c_ref_image, base().c_ref_image);
    assert_eq!((empty.train_accuracy, empty.off_accuracy), (0.0, 0.0));
    assert!(empty.constraint_met);
}

#[test]
fn reliability_models_are_fitted_to_sound_and_degraded_inputs() {
    // The confidences say nothing (all 0.5); one variant per modality tells sound inputs from
    // degraded ones (the labels come from the conditions).
    let flat = signals(0.5, 0.5, 0.0);
    let mut rs: Vec<TrustRecord> = items(12, "clean+hint", flat.clone(), |_| true)
        .chain(items(12, "clean+hedged-wrong", flat.clone(), |w| w >= 1.5))
        .chain(items(12, "missing+hint", flat, |w| w <= 0.5))
        .collect();
    for r in &mut rs {
        let (image_sound, text_sound) = match r.condition.as_str() {
            "clean+hint" => (true, true),
            "clean+hedged-wrong" => (true, false),
            _ => (false, true),
        };
        let jitter = (r.item % 3) as f32 * 0.01;
        r.variants.insert(
            "image.shift".into(),
            jitter + if image_sound { 0.6 } else { 0.2 },
        );
        r.variants.insert(
            "text.gain".into(),
            jitter + if text_sound { 0.3 } else { -0.1 },
        );
        r.variants.insert("text.uncertainty".into(), 0.01);
    }
    let fit = fit_rule_with(&rs, &base(), 0.0, true);
    let rel = fit.rule.reliability.as_ref().expect("fitted");
    assert_eq!(rel.image.features, vec!["image.shift".to_string()]);
    assert_eq!(
        rel.text.features,
        ["text.gain", "text.uncertainty", "ln:text.uncertainty"].map(String::from)
    );
    assert!(rel.image.weights[0] > 0.0 && rel.text.weights[0] > 0.0);
    // The references are clean reliabilities: near 1.
    assert!(
        fit.rule.c_ref_image > 0.8 && fit.rule.c_ref_text > 0.8,
        "{:?}",
        fit.rule
    );
    assert_eq!(fit.train_accuracy, 1.0);
    fit.rule.validate().unwrap();
    // Reading the flat confidences instead, no candidate tells the modalities apart.
    let plain = fit_rule_with(&rs, &base(), 0.0, false);
    assert!(plain.rule.reliability.is_none());
    assert!(plain.train_accuracy < fit.train_accuracy);
}
