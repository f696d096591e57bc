use super::*;
use crate::eval::trust::testutil::{
    record, sample_meta as meta, sample_records as records, with_grid,
};

#[test]
fn signal_aucs_are_oriented_and_counted() {
    let s = summarise(&records(), &meta());
    let keys: Vec<&str> = s.signal_auc.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "consistency.js",
            "image.confidence.top1",
            "image.uncertainty",
            "text.confidence.top1"
        ]
    );
    let image = s.signal("image.confidence.top1").unwrap();
    assert_eq!(image.orientation, "higher");
    assert_eq!(
        (image.by_condition, image.by_outcome),
        (Some(1.0), Some(1.0))
    );
    // The conflict control is left out by condition, not by outcome.
    assert_eq!((image.n_pos_condition, image.n_neg_condition), (20, 10));
    assert_eq!((image.n_pos_outcome, image.n_neg_outcome), (22, 12));
    let unc = s.signal("image.uncertainty").unwrap();
    assert_eq!(unc.orientation, "lower");
    assert_eq!((unc.by_condition, unc.by_outcome), (Some(1.0), Some(1.0)));
    let text = s.signal("text.confidence.top1").unwrap();
    assert_eq!((text.by_condition, text.by_outcome), (Some(0.5), Some(0.5)));
    assert_eq!((text.n_pos_condition, text.n_neg_condition), (20, 10));
    let c = s.signal("consistency.js").unwrap();
    assert_eq!((c.by_condition, c.by_outcome), (Some(1.0), Some(1.0)));
    assert_eq!((c.n_pos_condition, c.n_neg_condition), (10, 24));
    assert_eq!((c.n_pos_outcome, c.n_neg_outcome), (10, 24));
}

#[test]
fn control_curve_oracle_and_global_best() {
    let s = summarise(&records(), &meta());
    let curve = |set: &str| s.control_curve.iter().find(|c| c.set == set).unwrap();
    let pool = curve(POOL_ONE_UNRELIABLE);
    assert_eq!(pool.points.len(), GRID_WEIGHTS.len());
    assert_eq!(pool.points[0].accuracy, 0.5);
    assert_eq!(pool.points[4].accuracy, 0.0);
    assert_eq!(pool.points[4].mean_log_odds, Some(-1.0));
    assert!(curve(GROUP_CLEAN).points.iter().all(|p| p.accuracy == 1.0));
    for set in REPORT_SETS {
        let oracle = s.group_accuracy(MODE_ORACLE, set).unwrap().accuracy;
        assert!(curve(set).points.iter().all(|p| p.accuracy <= oracle));
        assert_eq!(oracle, 1.0, "{set}");
    }
    // 0.5 and 1.5 tie at 20/30; equally close to 1, the lower wins.
    assert_eq!(s.global_best.image_weight, Some(0.5));
    assert!((s.global_best.accuracy - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(s.global_best.n, 30);
    let gb = |set| s.group_accuracy(MODE_GLOBAL_BEST, set).unwrap().accuracy;
    assert_eq!(
        (
            gb(GROUP_CLEAN),
            gb(GROUP_TEXT_UNRELIABLE),
            gb(GROUP_IMAGE_UNRELIABLE)
        ),
        (1.0, 0.0, 1.0)
    );
}

#[test]
fn global_best_prefers_the_weight_closest_to_one() {
    let mut rs: Vec<TrustRecord> = (0..4)
        .map(|i| with_grid(record(i, "clean+rumour-wrong"), |w| w >= 1.5))
        .collect();
    rs.push(with_grid(record(9, "clean"), |w| w != 2.0));
    rs.push(with_grid(record(10, "conflict"), |w| w == 1.0));
    let best = global_best(&rs);
    assert_eq!(best.image_weight, Some(1.5));
    assert_eq!(best.accuracy, 1.0);
    assert_eq!(global_best(&[]).image_weight, None);
}

#[test]
fn modes_and_paired_comparisons() {
    let s = summarise(&records(), &meta());
    assert_eq!(s.meta.modes, ["off", "rule"]);
    assert_eq!(s.n_records, 34);
    let acc = |mode, set| s.group_accuracy(mode, set).unwrap().accuracy;
    assert_eq!(acc("off", POOL_ONE_UNRELIABLE), 0.0);
    assert_eq!(acc("rule", POOL_ONE_UNRELIABLE), 0.9);
    assert_eq!(acc("rule", GROUP_CONFLICT), 0.0);
    let hedged = s
        .by_condition
        .iter()
        .find(|r| r.mode == "rule" && r.set == "clean+hedged-wrong")
        .unwrap();
    assert_eq!((hedged.n, hedged.correct), (10, 8));
    let c = s.comparison(POOL_ONE_UNRELIABLE, "rule", MODE_OFF).unwrap();
    assert_eq!((c.n, c.b, c.c), (20, 18, 0));
    assert!((c.difference - 0.9).abs() < 1e-12);
    assert!(c.ci_low > 0.0 && c.ci_low <= 0.9 && 0.9 <= c.ci_high);
    assert!((c.p_value - 2.0 * 0.5f64.powi(18)).abs() < 1e-12);
    assert_eq!(c.oracle_accuracy, Some(1.0));
    assert!((c.oracle_gap_recovered.unwrap() - 0.9).abs() < 1e-12);
    let clean = s.comparison(GROUP_CLEAN, "rule", MODE_OFF).unwrap();
    assert_eq!((clean.difference, clean.p_value), (0.0, 1.0));
    // On clean items the oracle does no better than off: no gap to recover.
    assert_eq!(clean.oracle_gap_recovered, None);
    let vs_best = s
        .comparison(POOL_ONE_UNRELIABLE, "rule", MODE_GLOBAL_BEST)
        .unwrap();
    assert!((vs_best.difference - 0.4).abs() < 1e-12);
    assert_eq!((vs_best.b, vs_best.c), (8, 0));
    assert!(s
        .comparison(POOL_ONE_UNRELIABLE, MODE_GLOBAL_BEST, MODE_OFF)
        .is_some());
    assert!(s
        .comparison(POOL_ONE_UNRELIABLE, MODE_ORACLE, MODE_OFF)
        .is_none());
}

#[test]
fn weights_per_condition_and_on_clean_inputs() {
    let s = summarise(&records(), &meta());
    let w = s
        .weights
        .iter()
        .find(|w| w.mode == "rule" && w.condition == "clean+hedged-wrong")
        .unwrap();
    assert_eq!(w.n, 10);
    assert!((w.mean_image_weight - 1.6).abs() < 1e-9);
    assert_eq!((w.min_image_weight, w.max_image_weight), (1.0, 1.75));
    for c in &s.clean_weights {
        assert_eq!((c.n, c.within, c.fraction), (10, 10, 1.0), "{}", c.mode);
    }
    let mut rs = records();
    rs[0].modes[1].weights.images[0] = 1.2;
    rs[0].modes[1].weights.text = 0.8;
    let s = summarise(&rs, &meta());
    let rule = s.clean_weights.iter().find(|c| c.mode == "rule").unwrap();
    assert_eq!((rule.within, rule.fraction), (9, 0.9));
    assert_eq!(
        s.conditions,
        [
            "clean+hint",
            "clean+hedged-wrong",
            "missing+hint",
            "conflict"
        ]
    );
}

#[test]
fn the_summary_serialises_with_snake_case_fields() {
    let s = summarise(&records(), &meta());
    let json = serde_json::to_value(&s).unwrap();
    for field in [
        "model",
        "seeds",
        "per_condition",
        "modes",
        "signal_auc",
        "control_curve",
        "global_best",
        "by_group",
        "by_condition",
        "comparisons",
        "weights",
        "clean_weights",
    ] {
        assert!(json.get(field).is_some(), "{field}");
    }
    let back: TrustSummary = serde_json::from_value(json).unwrap();
    assert_eq!(back, s);
    let empty = summarise(&[], &TrustMeta::default());
    assert!(empty.by_group.is_empty() && empty.comparisons.is_empty());
}
