//! Diagnostics of a `colour-trust` run, computed from its [`TrustRecord`]s alone: how well each
//! signal variant predicts reliability, the accuracy along the control grid, the per-item
//! oracle, the best single global weight, each mode's accuracy with paired comparisons, and the
//! weights the modes chose.

use super::record::{TrustRecord, GRID_WEIGHTS};
use super::stats::{auc, fraction, mcnemar_exact, mean, paired_bootstrap_ci, BOOTSTRAP_SEED};
use super::suite::{
    GROUP_CLEAN, GROUP_CONFLICT, GROUP_IMAGE_UNRELIABLE, GROUP_TEXT_UNRELIABLE, TRUST_CONDITIONS,
};
pub use super::summary::{
    AccuracyRow, CleanWeights, Comparison, ControlCurve, CurvePoint, GlobalBest, SignalAuc,
    TrustMeta, TrustSummary, WeightStats,
};

/// The pool of the two groups where exactly one modality is unreliable.
pub const POOL_ONE_UNRELIABLE: &str = "one-unreliable";
/// Pseudo-mode: the best single grid weight for every item (see [`GlobalBest`]).
pub const MODE_GLOBAL_BEST: &str = "global-best";
/// Pseudo-mode: an item is right if any grid weight answers it right.
pub const MODE_ORACLE: &str = "oracle";
/// The mode every comparison starts from (all weights 1).
pub const MODE_OFF: &str = "off";
/// The groups whose items a scheduler can get right (all but the `conflict` control).
pub const NON_CONTROL: [&str; 3] = [GROUP_CLEAN, GROUP_TEXT_UNRELIABLE, GROUP_IMAGE_UNRELIABLE];
/// The sets accuracy is reported on, in report order: each group and the one-unreliable pool.
pub const REPORT_SETS: [&str; 5] = [
    GROUP_CLEAN,
    GROUP_TEXT_UNRELIABLE,
    GROUP_IMAGE_UNRELIABLE,
    POOL_ONE_UNRELIABLE,
    GROUP_CONFLICT,
];
/// A weight within this distance of 1 counts as "plain fusion".
pub const CLEAN_TOLERANCE: f32 = 0.05;

/// Whether `record` belongs to `set` (a group name, [`POOL_ONE_UNRELIABLE`], or `non-control`).
pub fn in_set(record: &TrustRecord, set: &str) -> bool {
    match set {
        POOL_ONE_UNRELIABLE => {
            record.group == GROUP_TEXT_UNRELIABLE || record.group == GROUP_IMAGE_UNRELIABLE
        }
        "non-control" => NON_CONTROL.contains(&record.group.as_str()),
        group => record.group == group,
    }
}

/// Whether `record` was answered right under `mode` (a mode name or a pseudo-mode), with `best`
/// the global-best weight; `None` when there is no such answer.
pub fn outcome(record: &TrustRecord, mode: &str, best: Option<f32>) -> Option<bool> {
    match mode {
        MODE_ORACLE => record.oracle(),
        MODE_GLOBAL_BEST => best
            .and_then(|w| record.grid_at(w))
            .map(|g| g.scored.correct),
        _ => record.mode(mode).map(|m| m.scored.correct),
    }
}

/// The signal AUCs of every variant key in `records`, sorted by key.
pub fn signal_aucs(records: &[TrustRecord]) -> Vec<SignalAuc> {
    let mut keys: Vec<&String> = records.iter().flat_map(|r| r.variants.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().map(|k| signal_auc(records, k)).collect()
}

/// A positive/negative label of `record` for a variant of `kind` (`None`: not used).
type Label = fn(&TrustRecord) -> Option<bool>;

fn control(r: &TrustRecord) -> bool {
    r.group == GROUP_CONFLICT
}

fn condition_label(kind: &str) -> Option<Label> {
    match kind {
        "image" => Some(|r| (!control(r)).then_some(r.image_reliable)),
        "text" => Some(|r| r.text_reliable.filter(|_| !control(r))),
        "consistency" => Some(|r| {
            let text = r.text_reliable?;
            match (r.image_reliable, text) {
                (true, true) => Some(true),
                (a, b) if a != b => Some(false),
                _ => None,
            }
        }),
        _ => None,
    }
}

fn outcome_label(kind: &str) -> Option<Label> {
    match kind {
        "image" => Some(|r| r.image_alone.as_ref().map(|s| s.correct)),
        "text" => Some(|r| r.text_alone.as_ref().map(|s| s.correct)),
        "consistency" => Some(|r| {
            let image = r.image_alone.as_ref()?.colour()?;
            let text = r.text_alone.as_ref()?.colour()?;
            Some(image == text)
        }),
        _ => None,
    }
}

fn split(records: &[TrustRecord], key: &str, sign: f32, label: Label) -> (Vec<f32>, Vec<f32>) {
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for r in records {
        let (Some(&v), Some(l)) = (r.variants.get(key), label(r)) else {
            continue;
        };
        if v.is_finite() {
            if l { &mut pos } else { &mut neg }.push(sign * v);
        }
    }
    (pos, neg)
}

fn signal_auc(records: &[TrustRecord], key: &str) -> SignalAuc {
    let lower = key.contains("uncertainty");
    let sign = if lower { -1.0 } else { 1.0 };
    let kind = key.split('.').next().unwrap_or("");
    let by = |label: Option<Label>| {
        label.map_or((Vec::new(), Vec::new()), |l| split(records, key, sign, l))
    };
    let (cp, cn) = by(condition_label(kind));
    let (op, on) = by(outcome_label(kind));
    SignalAuc {
        key: key.to_string(),
        orientation: if lower { "lower" } else { "higher" }.into(),
        by_condition: auc(&cp, &cn),
        by_outcome: auc(&op, &on),
        n_pos_condition: cp.len(),
        n_neg_condition: cn.len(),
        n_pos_outcome: op.len(),
        n_neg_outcome: on.len(),
    }
}

/// Accuracy and mean log-odds at grid weight `w` over the records in `set`.
fn curve_point(records: &[TrustRecord], set: &str, w: f32) -> Option<CurvePoint> {
    let answers: Vec<_> = records
        .iter()
        .filter(|r| in_set(r, set))
        .filter_map(|r| r.grid_at(w))
        .collect();
    Some(CurvePoint {
        image_weight: w,
        n: answers.len(),
        accuracy: fraction(answers.iter().map(|g| g.scored.correct))?,
        mean_log_odds: mean(
            answers
                .iter()
                .filter_map(|g| g.scored.log_odds.map(f64::from)),
        ),
    })
}

/// The control curve of every set of [`REPORT_SETS`] that has grid answers.
pub fn control_curves(records: &[TrustRecord]) -> Vec<ControlCurve> {
    REPORT_SETS
        .iter()
        .map(|&set| ControlCurve {
            set: set.to_string(),
            points: GRID_WEIGHTS
                .iter()
                .filter_map(|&w| curve_point(records, set, w))
                .collect(),
        })
        .filter(|c| !c.points.is_empty())
        .collect()
}

/// The grid weight with the highest accuracy pooled over the non-control items; ties go to
/// the weight closest to 1 (then the lower one).
pub fn global_best(records: &[TrustRecord]) -> GlobalBest {
    let mut best = GlobalBest {
        image_weight: None,
        accuracy: 0.0,
        n: 0,
    };
    for w in GRID_WEIGHTS {
        let Some(p) = curve_point(records, "non-control", w) else {
            continue;
        };
        let better = match best.image_weight {
            None => true,
            Some(b) => {
                p.accuracy > best.accuracy + 1e-12
                    || ((p.accuracy - best.accuracy).abs() <= 1e-12
                        && (w - 1.0).abs() < (b - 1.0).abs())
            }
        };
        if better {
            best = GlobalBest {
                image_weight: Some(w),
                accuracy: p.accuracy,
                n: p.n,
            };
        }
    }
    best
}

fn accuracy_row(
    records: &[TrustRecord],
    mode: &str,
    set: &str,
    keep: impl Fn(&TrustRecord) -> bool,
    best: Option<f32>,
) -> Option<AccuracyRow> {
    let outcomes: Vec<bool> = records
        .iter()
        .filter(|r| keep(r))
        .filter_map(|r| outcome(r, mode, best))
        .collect();
    let correct = outcomes.iter().filter(|&&c| c).count();
    Some(AccuracyRow {
        mode: mode.to_string(),
        set: set.to_string(),
        n: outcomes.len(),
        correct,
        accuracy: fraction(outcomes)?,
    })
}

/// `mode` against `baseline` on the records of `set` answered under both.
fn compare(
    records: &[TrustRecord],
    set: &str,
    mode: &str,
    baseline: &str,
    best: Option<f32>,
) -> Option<Comparison> {
    let rows: Vec<(&TrustRecord, bool, bool)> = records
        .iter()
        .filter(|r| in_set(r, set))
        .filter_map(|r| Some((r, outcome(r, mode, best)?, outcome(r, baseline, best)?)))
        .collect();
    let a: Vec<bool> = rows.iter().map(|x| x.1).collect();
    let z: Vec<bool> = rows.iter().map(|x| x.2).collect();
    let (ci_low, ci_high) = paired_bootstrap_ci(&a, &z, BOOTSTRAP_SEED)?;
    let accuracy = fraction(a.iter().copied())?;
    let baseline_accuracy = fraction(z.iter().copied())?;
    let b = rows.iter().filter(|x| x.1 && !x.2).count();
    let c = rows.iter().filter(|x| !x.1 && x.2).count();
    let oracle_accuracy = fraction(rows.iter().filter_map(|x| x.0.oracle()));
    let oracle_gap_recovered = oracle_accuracy.and_then(|o| {
        let gap = o - baseline_accuracy;
        (gap.abs() > 1e-12).then(|| (accuracy - baseline_accuracy) / gap)
    });
    Some(Comparison {
        set: set.to_string(),
        mode: mode.to_string(),
        baseline: baseline.to_string(),
        n: rows.len(),
        accuracy,
        baseline_accuracy,
        difference: accuracy - baseline_accuracy,
        ci_low,
        ci_high,
        b,
        c,
        p_value: mcnemar_exact(b, c),
        oracle_accuracy,
        oracle_gap_recovered,
    })
}

fn weight_stats(records: &[TrustRecord], mode: &str, condition: &str) -> Option<WeightStats> {
    let w: Vec<f64> = records
        .iter()
        .filter(|r| r.condition == condition)
        .filter_map(|r| r.mode(mode)?.weights.images.first().map(|&w| f64::from(w)))
        .collect();
    Some(WeightStats {
        mode: mode.to_string(),
        condition: condition.to_string(),
        n: w.len(),
        mean_image_weight: mean(w.iter().copied())?,
        min_image_weight: w.iter().copied().fold(f64::INFINITY, f64::min),
        max_image_weight: w.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

fn clean_weights(records: &[TrustRecord], mode: &str) -> Option<CleanWeights> {
    let flags: Vec<bool> = records
        .iter()
        .filter(|r| r.group == GROUP_CLEAN)
        .filter_map(|r| r.mode(mode))
        .map(|m| {
            m.weights
                .as_vec()
                .iter()
                .all(|w| (w - 1.0).abs() <= CLEAN_TOLERANCE + 1e-6)
        })
        .collect();
    Some(CleanWeights {
        mode: mode.to_string(),
        n: flags.len(),
        within: flags.iter().filter(|&&f| f).count(),
        fraction: fraction(flags)?,
    })
}

/// Names in `preferred` order, then the others in order of first appearance.
fn ordered<'a>(preferred: impl IntoIterator<Item = &'a str>, seen: Vec<&'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in preferred.into_iter().chain(seen) {
        if !out.iter().any(|o| o == name) {
            out.push(name.to_string());
        }
    }
    out
}

/// The full summary of `records` (conditions and groups as in the suite).
pub fn summarise(records: &[TrustRecord], meta: &TrustMeta) -> TrustSummary {
    let modes = ordered(
        meta.modes.iter().map(String::as_str),
        records
            .iter()
            .flat_map(|r| r.modes.iter().map(|m| m.mode.as_str()))
            .collect(),
    );
    let present: Vec<&str> = records.iter().map(|r| r.condition.as_str()).collect();
    let conditions: Vec<String> = ordered(
        TRUST_CONDITIONS
            .iter()
            .map(|c| c.name)
            .filter(|c| present.contains(c)),
        present.clone(),
    );
    let best = global_best(records);
    let w = best.image_weight;
    let all_modes: Vec<&str> = modes
        .iter()
        .map(String::as_str)
        .chain([MODE_GLOBAL_BEST, MODE_ORACLE])
        .collect();
    let mut by_group = Vec::new();
    let mut by_condition = Vec::new();
    for &mode in &all_modes {
        for set in REPORT_SETS {
            by_group.extend(accuracy_row(records, mode, set, |r| in_set(r, set), w));
        }
        for c in &conditions {
            by_condition.extend(accuracy_row(records, mode, c, |r| r.condition == *c, w));
        }
    }
    let mut comparisons = Vec::new();
    for set in [POOL_ONE_UNRELIABLE, GROUP_CLEAN] {
        for baseline in [MODE_OFF, MODE_GLOBAL_BEST] {
            for &mode in all_modes
                .iter()
                .filter(|&&m| m != baseline && m != MODE_ORACLE)
            {
                comparisons.extend(compare(records, set, mode, baseline, w));
            }
        }
    }
    let weights = modes
        .iter()
        .flat_map(|m| {
            conditions
                .iter()
                .filter_map(|c| weight_stats(records, m, c))
        })
        .collect();
    TrustSummary {
        n_records: records.len(),
        signal_auc: signal_aucs(records),
        control_curve: control_curves(records),
        global_best: best,
        by_group,
        by_condition,
        comparisons,
        weights,
        clean_weights: modes
            .iter()
            .filter_map(|m| clean_weights(records, m))
            .collect(),
        conditions,
        meta: TrustMeta {
            modes,
            ..meta.clone()
        },
    }
}

#[cfg(test)]
#[path = "analysis_tests.rs"]
mod tests;
