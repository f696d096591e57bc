//! Hand-made records for the tests of the trust analysis, report and calibration.

use std::collections::BTreeMap;

use crate::dms::{ModalitySignals, ModalityWeights, Signals};

use super::record::{GridAnswer, ModeAnswer, Scored, TrustRecord, GRID_WEIGHTS};
use super::suite::TRUST_CONDITIONS;

/// The group of a suite condition name.
pub fn group_of(condition: &str) -> &'static str {
    TRUST_CONDITIONS
        .iter()
        .find(|c| c.name == condition)
        .map_or("clean", |c| c.group)
}

/// A scored answer naming `truth` (right) or `blue`/`green` (wrong).
pub fn scored(truth: &str, correct: bool) -> Scored {
    let wrong = if truth == "blue" { "green" } else { "blue" };
    Scored::new(
        format!("It is {}.", if correct { truth } else { wrong }),
        truth,
        Some(if correct { 1.0 } else { -1.0 }),
    )
}

/// A record of `condition` (truth `red`), reliability from the condition's usual labels, no
/// signals, no answers.
pub fn record(item: usize, condition: &str) -> TrustRecord {
    let group = group_of(condition);
    let image_reliable = !matches!(
        condition,
        "patched+hint" | "heavy-noise+hint" | "missing+hint"
    );
    let text_reliable = match condition {
        "clean" => None,
        "clean+hedged-wrong" | "clean+rumour-wrong" | "clean+misspelt-wrong" => Some(false),
        "conflict" => Some(!item.is_multiple_of(2)),
        _ => Some(true),
    };
    TrustRecord {
        item,
        seed: 1,
        suite_seed: Some(1),
        condition: condition.into(),
        group: group.into(),
        truth: "red".into(),
        other: "blue".into(),
        image_reliable: if condition == "conflict" {
            item.is_multiple_of(2)
        } else {
            image_reliable
        },
        text_reliable,
        signals: None,
        variants: BTreeMap::new(),
        image_alone: None,
        text_alone: None,
        grid: Vec::new(),
        modes: Vec::new(),
    }
}

/// Sets the grid: right at image weight `w` iff `right(w)`.
pub fn with_grid(mut r: TrustRecord, right: impl Fn(f32) -> bool) -> TrustRecord {
    r.grid = GRID_WEIGHTS
        .iter()
        .map(|&w| GridAnswer {
            image_weight: w,
            scored: scored(&r.truth, right(w)),
            mwc: None,
        })
        .collect();
    r
}

/// Adds the answer of `mode` at image weight `w`.
pub fn with_mode(mut r: TrustRecord, mode: &str, w: f32, correct: bool) -> TrustRecord {
    r.modes.push(ModeAnswer {
        mode: mode.into(),
        weights: ModalityWeights {
            images: vec![w],
            text: 2.0 - w,
        },
        scored: scored(&r.truth, correct),
        dms_ms: 1.0,
    });
    r
}

/// Signals of one image and the text.
pub fn signals(c_image: f32, c_text: f32, consistency: f32) -> Signals {
    Signals {
        images: vec![ModalitySignals {
            confidence: c_image,
            uncertainty: 0.0,
        }],
        text: ModalitySignals {
            confidence: c_text,
            uncertainty: 0.0,
        },
        consistency: vec![consistency],
        image_missing: false,
        variants: Vec::new(),
    }
}

/// 10 clean+hint, 10 hedged-wrong (image right at w >= 1.5), 10 missing+hint (text right at
/// w <= 0.5), 4 conflict. `off` is right on clean only; `rule` on clean, on 8 of the 10
/// hedged-wrong items and on every missing+hint item.
pub fn sample_records() -> Vec<TrustRecord> {
    let mut out = Vec::new();
    for i in 0..34usize {
        let (condition, right): (&str, fn(f32) -> bool) = match i {
            0..=9 => ("clean+hint", |_| true),
            10..=19 => ("clean+hedged-wrong", |w| w >= 1.5),
            20..=29 => ("missing+hint", |w| w <= 0.5),
            _ if i.is_multiple_of(2) => ("conflict", |w| w >= 1.5),
            _ => ("conflict", |w| w <= 0.5),
        };
        let mut r = with_grid(record(i, condition), right);
        let clean = r.group == crate::eval::trust::suite::GROUP_CLEAN;
        r = with_mode(r, "off", 1.0, clean);
        r = match condition {
            "clean+hint" => with_mode(r, "rule", 1.0, true),
            "clean+hedged-wrong" if i < 18 => with_mode(r, "rule", 1.75, true),
            "clean+hedged-wrong" => with_mode(r, "rule", 1.0, false),
            "missing+hint" => with_mode(r, "rule", 0.25, true),
            _ => with_mode(r, "rule", 1.0, false),
        };
        let reliable = |b: bool| if b { 0.9 } else { 0.1 };
        let image_ok = r.image_reliable;
        let text_ok = r.text_reliable == Some(true);
        r.variants
            .insert("image.confidence.top1".into(), reliable(image_ok));
        r.variants
            .insert("image.uncertainty".into(), reliable(!image_ok));
        r.variants.insert("text.confidence.top1".into(), 0.5);
        r.variants
            .insert("consistency.js".into(), reliable(condition == "clean+hint"));
        r.image_alone = Some(scored(&r.truth, image_ok));
        r.text_alone = Some(scored(&r.truth, text_ok));
        out.push(r);
    }
    out
}

pub fn sample_meta() -> crate::eval::trust::analysis::TrustMeta {
    crate::eval::trust::analysis::TrustMeta {
        model: "test".into(),
        seeds: vec![1],
        per_condition: 10,
        modes: vec!["off".into(), "rule".into()],
        default_image_key: "image.confidence.top1".into(),
        default_text_key: "text.confidence.top1".into(),
    }
}
