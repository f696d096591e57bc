//! Fitting the rule scheduler offline from `colour-trust` records: the references from clean
//! items, then a grid search over the rule's parameters, each candidate replayed on the
//! recorded signals and scored by the recorded control grid.

use serde::Serialize;

use super::analysis::{in_set, CLEAN_TOLERANCE};
use super::record::TrustRecord;
use super::stats::median;
use super::suite::GROUP_CLEAN;
use crate::dms::reliability::LN_PREFIX;
use crate::dms::{feature_value, Reliability, ReliabilityModel, RuleScheduler, Scheduler, Signals};

/// Confidence weights tried.
pub const ALPHAS: [f32; 7] = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0];
/// Uncertainty weights tried, smallest magnitude first. MC-dropout mutual information is small
/// (hundredths of `ln |V|`), hence the large values; negative ones are tried too, because the
/// measured sign can go either way (on the demo an informative input is the *more* sensitive
/// one to dropout).
pub const BETAS: [f32; 7] = [0.0, 25.0, -25.0, 100.0, -100.0, 400.0, -400.0];
/// Consistency pulls tried.
pub const GAMMAS: [f32; 5] = [0.0, 0.5, 1.0, 2.0, 4.0];
/// Lower weight bounds tried (the upper bound is `2 - w_min`, for one image and the text).
pub const W_MINS: [f32; 3] = [0.0, 0.25, 0.5];
/// Agreement gates tried (see [`RuleScheduler::agree_gate`]).
pub const GATES: [bool; 2] = [false, true];
/// Sound gates tried (see [`RuleScheduler::sound_gate`]), with reliability models only: a
/// reliability is a probability, a confidence has no common scale. Gates below 0.5 let the
/// clean constraint hold where some clean inputs' reliabilities fall short of even odds.
pub const SOUND_GATES: [Option<f32>; 10] = [
    None,
    Some(0.2),
    Some(0.3),
    Some(0.4),
    Some(0.5),
    Some(0.6),
    Some(0.7),
    Some(0.8),
    Some(0.9),
    Some(0.95),
];
/// Share of clean items that must keep every weight within `1 ± 0.05`.
pub const CLEAN_WITHIN_TARGET: f64 = 0.95;
/// Fewest sound and fewest degraded inputs per modality for a reliability model.
pub const MIN_RELIABILITY_CLASS: usize = 10;
/// L2 strength of the reliability models.
pub const RELIABILITY_L2: f64 = 1e-2;

/// The result of [`fit_rule`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fit {
    /// The fitted scheduler (the base's name and model, the fitted parameters and references).
    pub rule: RuleScheduler,
    /// Accuracy of the fitted rule on the non-control items (clean and one-unreliable).
    pub train_accuracy: f64,
    /// Accuracy of plain fusion (the grid at image weight 1) on the same items.
    pub off_accuracy: f64,
    /// Share of the clean items whose weights stay within `1 ± 0.05` under the fitted rule.
    pub clean_within: f64,
    /// Candidates evaluated.
    pub candidates_tried: usize,
    /// Whether the fitted rule meets the clean constraint ([`CLEAN_WITHIN_TARGET`]); when no
    /// candidate does, the one closest to it is returned and this is false.
    pub constraint_met: bool,
}

/// A record usable for fitting: non-control, with signals of one image and a grid.
struct Usable<'a> {
    record: &'a TrustRecord,
    signals: Signals,
    clean: bool,
}

/// The median image confidence and uncertainty of `records` (`None` without signals).
fn image_refs(records: &[&Usable]) -> Option<(f32, f32)> {
    let first = |u: &&Usable| u.signals.images.first().copied();
    let c = median(records.iter().filter_map(first).map(|s| s.confidence))?;
    let u = median(records.iter().filter_map(first).map(|s| s.uncertainty))?;
    Some((c, u))
}

/// The median text confidence and uncertainty of `records` (`None` if empty).
fn text_refs(records: &[&Usable]) -> Option<(f32, f32)> {
    let c = median(records.iter().map(|u| u.signals.text.confidence))?;
    let u = median(records.iter().map(|u| u.signals.text.uncertainty))?;
    Some((c, u))
}

/// Fits one reliability model per modality kind to `records`: the label is whether the
/// input of that modality is sound by construction (`image_reliable`, `text_reliable`), the
/// features every `image.*` (or `text.*`) variant all labelled records have, and the
/// logarithm of each mutual-information uncertainty among them (`ln:`; not of the flip rate).
/// Labelling by condition, not by whether the unimodal answer was right, told degraded inputs
/// from clean ones better in an offline probe. `None` when a kind lacks
/// [`MIN_RELIABILITY_CLASS`] sound or degraded inputs.
pub fn fit_reliability(records: &[&TrustRecord]) -> Option<Reliability> {
    let model = |kind: &str| {
        let labelled: Vec<(&TrustRecord, bool)> = records
            .iter()
            .filter(|r| !r.variants.is_empty())
            .filter_map(|r| {
                let sound = if kind == "image" {
                    Some(r.image_reliable)
                } else {
                    r.text_reliable
                };
                Some((*r, sound?))
            })
            .collect();
        let sound = labelled.iter().filter(|(_, y)| *y).count();
        if sound < MIN_RELIABILITY_CLASS || labelled.len() - sound < MIN_RELIABILITY_CLASS {
            return None;
        }
        let prefix = format!("{kind}.");
        let variants: Vec<&String> = labelled[0]
            .0
            .variants
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .filter(|k| labelled.iter().all(|(r, _)| r.variants.contains_key(*k)))
            .collect();
        let logs = variants
            .iter()
            .filter(|k| k.contains("uncertainty") && !k.ends_with(".flip"))
            .map(|k| format!("{LN_PREFIX}{k}"));
        let features: Vec<String> = variants.iter().map(|k| k.to_string()).chain(logs).collect();
        if features.is_empty() {
            return None;
        }
        let rows: Vec<Vec<f32>> = labelled
            .iter()
            .map(|(r, _)| {
                features
                    .iter()
                    .map(|f| feature_value(f, |k| r.variants.get(k).copied()).unwrap_or(0.0))
                    .collect()
            })
            .collect();
        let labels: Vec<bool> = labelled.iter().map(|(_, y)| *y).collect();
        Some(ReliabilityModel::fit(
            &features,
            &rows,
            &labels,
            RELIABILITY_L2,
        ))
    };
    Some(Reliability {
        image: model("image")?,
        text: model("text")?,
    })
}

/// `rule` replayed on `usable`: (items right, items scored, clean items within the tolerance,
/// clean items).
fn evaluate(rule: &RuleScheduler, usable: &[Usable]) -> (usize, usize, usize, usize) {
    let (mut right, mut n, mut within, mut clean) = (0, 0, 0, 0);
    for u in usable {
        let Ok(w) = rule.weights(&u.signals) else {
            continue;
        };
        let Some(&image) = w.images.first() else {
            continue;
        };
        if let Some(g) = u.record.grid_nearest(image) {
            n += 1;
            right += usize::from(g.scored.correct);
        }
        if u.clean {
            clean += 1;
            let ok = w
                .as_vec()
                .iter()
                .all(|x| (x - 1.0).abs() <= CLEAN_TOLERANCE + 1e-6);
            within += usize::from(ok);
        }
    }
    (right, n, within, clean)
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Fits the rule scheduler to `records`, starting from `base` (its name, model and tau are
/// kept; tau is set to 1):
///
/// 1. the references are the medians over clean items of `record.signals`: the image's over
///    both clean conditions, the text's over `clean+hint` (the clean items with evidence);
/// 2. every combination of [`ALPHAS`], [`BETAS`], [`GAMMAS`], [`W_MINS`] (w_max = 2 - w_min),
///    [`GATES`] and, with reliability models, [`SOUND_GATES`] is replayed on the recorded
///    signals; an item counts as right if the grid point nearest to the rule's image weight is;
/// 3. the candidate with the highest accuracy over the non-control items wins among those that
///    keep at least 95% of clean items within `1 ± 0.05`; ties go to the smaller alpha, then
///    the beta of smaller magnitude (then gamma, then w_min). If no candidate keeps the clean items, the one
///    with the largest share within wins (then by accuracy) and `constraint_met` is false.
///
/// Records without signals of one image or without a grid are left out.
pub fn fit_rule(records: &[TrustRecord], base: &RuleScheduler) -> Fit {
    fit_rule_with(records, base, CLEAN_WITHIN_TARGET, true)
}

/// [`fit_rule`] with another required share of clean items within `1 ± 0.05` (0: none, the
/// most accurate candidate wins), and with or without reliability models (see
/// [`fit_reliability`]; without, the rule reads the confidence).
pub fn fit_rule_with(
    records: &[TrustRecord],
    base: &RuleScheduler,
    clean_share: f64,
    with_reliability: bool,
) -> Fit {
    let usable: Vec<Usable> = records
        .iter()
        .filter(|r| in_set(r, "non-control") && !r.grid.is_empty())
        .filter_map(|r| {
            let signals = r.scheduler_signals().filter(|s| s.images.len() == 1)?;
            Some(Usable {
                record: r,
                signals,
                clean: r.group == GROUP_CLEAN,
            })
        })
        .collect();
    let clean: Vec<&Usable> = usable.iter().filter(|u| u.clean).collect();
    let clean_hint: Vec<&Usable> = clean
        .iter()
        .copied()
        .filter(|u| u.record.condition == "clean+hint")
        .collect();
    let labelled: Vec<&TrustRecord> = usable.iter().map(|u| u.record).collect();
    let reliability = if with_reliability {
        fit_reliability(&labelled)
    } else {
        None
    };
    let mut start = RuleScheduler {
        tau: 1.0,
        reliability,
        ..base.clone()
    };
    if let Some((c, u)) = image_refs(&clean) {
        (start.c_ref_image, start.u_ref_image) = (c, u);
    }
    if let Some((c, u)) = text_refs(&clean_hint) {
        (start.c_ref_text, start.u_ref_text) = (c, u);
    }
    // With reliability models the confidence references are clean inputs' reliabilities
    // (image first, then the text), as the rule itself reads them.
    if start.reliability.is_some() {
        let of = |items: &[&Usable], m: usize| {
            median(
                items
                    .iter()
                    .filter_map(|u| start.reliabilities(&u.signals)?.get(m).copied()),
            )
        };
        let (image, text) = (of(&clean, 0), of(&clean_hint, 1));
        start.c_ref_image = image.unwrap_or(start.c_ref_image);
        start.c_ref_text = text.unwrap_or(start.c_ref_text);
    }

    let off: Vec<bool> = usable
        .iter()
        .filter_map(|u| u.record.grid_at(1.0).map(|g| g.scored.correct))
        .collect();
    let off_right = off.iter().filter(|&&c| c).count();

    let off_accuracy = ratio(off_right, off.len());
    // Candidates are ordered by (constraint met, then accuracy if met, else (share, accuracy));
    // the larger key wins.
    let sound_gates: &[Option<f32>] = if start.reliability.is_some() {
        &SOUND_GATES
    } else {
        &[None]
    };
    let mut best: Option<((bool, f64, f64), Fit)> = None;
    let mut tried = 0;
    for alpha in ALPHAS {
        for beta in BETAS {
            for gamma in GAMMAS {
                let gates = W_MINS
                    .into_iter()
                    .flat_map(|w| GATES.map(|g| (w, g)))
                    .flat_map(|(w, g)| sound_gates.iter().map(move |&s| (w, g, s)));
                for (w_min, agree_gate, sound_gate) in gates {
                    let rule = RuleScheduler {
                        alpha,
                        beta,
                        gamma,
                        w_min,
                        w_max: 2.0 - w_min,
                        agree_gate,
                        sound_gate,
                        ..start.clone()
                    };
                    tried += 1;
                    let (right, n, within, n_clean) = evaluate(&rule, &usable);
                    let accuracy = ratio(right, n);
                    let share = if n_clean == 0 {
                        1.0
                    } else {
                        ratio(within, n_clean)
                    };
                    let met = share >= clean_share - 1e-12;
                    let key = if met {
                        (true, accuracy, 0.0)
                    } else {
                        (false, share, accuracy)
                    };
                    // Strictly better only: the first candidate in grid order wins ties.
                    if best.as_ref().is_none_or(|(k, _)| key > *k) {
                        let fit = Fit {
                            rule,
                            train_accuracy: accuracy,
                            off_accuracy,
                            clean_within: share,
                            candidates_tried: 0,
                            constraint_met: met,
                        };
                        best = Some((key, fit));
                    }
                }
            }
        }
    }
    let (_, fit) = best.expect("the grid has candidates");
    Fit {
        candidates_tried: tried,
        ..fit
    }
}

#[cfg(test)]
#[path = "calibrate_tests.rs"]
mod tests;
