//! PNG plots of an evaluation: VQA accuracy and mean image weight per mode against the image
//! noise strength, and the ROC curves of the two consistency variants.

use std::path::{Path, PathBuf};

use super::dataset::{ImageCondition, TextCondition, CONDITIONS};
use super::report::{auc, Cell, Summary};
use super::Outcome;
use crate::plot::{line_chart, LineChart, PlotError, Series};

/// The conditions on the noise axis with their noise deviation: `clean+hint` at 0, then every
/// noise condition with a correct hint.
fn noise_axis() -> Vec<(&'static str, f64)> {
    CONDITIONS
        .iter()
        .filter(|c| c.text == TextCondition::Hint)
        .filter_map(|c| match c.image {
            ImageCondition::Clean => Some((c.name, 0.0)),
            ImageCondition::Noise(sigma) => Some((c.name, f64::from(sigma))),
            _ => None,
        })
        .collect()
}

/// One series per mode of `value` over the VQA cells on the noise axis; modes without a
/// value are left out.
fn noise_series(summary: &Summary, value: impl Fn(&Cell) -> Option<f64>) -> Vec<Series> {
    let axis = noise_axis();
    summary
        .modes
        .iter()
        .map(|mode| Series {
            name: mode.clone(),
            points: axis
                .iter()
                .filter_map(|(condition, sigma)| {
                    let cell = summary.cells.iter().find(|c| {
                        c.task == "vqa" && c.condition == *condition && c.mode == *mode
                    })?;
                    Some((*sigma, value(cell)?))
                })
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// The consistency scores of matched (`clean+hint`) and mismatched (conflict) VQA pairs under
/// `mode`, exactly as `report::consistency_aucs` selects them.
fn scores(outcomes: &[Outcome], mode: &str, variant: &str) -> (Vec<f32>, Vec<f32>) {
    let values = |keep: &dyn Fn(&Outcome) -> bool| -> Vec<f32> {
        outcomes
            .iter()
            .filter(|o| o.task == "vqa" && o.mode == mode && keep(o))
            .filter_map(|o| match variant {
                "hidden" => o.consistency_hidden.as_ref(),
                _ => o.consistency_input.as_ref(),
            })
            .filter_map(|v| v.first().copied())
            .collect()
    };
    (
        values(&|o| o.condition == "clean+hint"),
        values(&|o| o.group == "conflict"),
    )
}

/// The ROC curve of `positive` against `negative` scores: from (0, 0) through one point per
/// distinct threshold, high to low, to (1, 1). Tied scores make a diagonal step, so the area
/// under it is [`auc`] with ties counting half.
pub fn roc(positive: &[f32], negative: &[f32]) -> Vec<(f64, f64)> {
    let mut thresholds: Vec<f32> = positive
        .iter()
        .chain(negative)
        .copied()
        .filter(|v| !v.is_nan())
        .collect();
    thresholds.sort_by(|a, b| b.total_cmp(a));
    thresholds.dedup();
    let rate = |scores: &[f32], t: f32| {
        let above = scores.iter().filter(|&&s| s >= t).count();
        above as f64 / scores.len().max(1) as f64
    };
    let mut points = vec![(0.0, 0.0)];
    points.extend(
        thresholds
            .iter()
            .map(|&t| (rate(negative, t), rate(positive, t))),
    );
    if points.last() != Some(&(1.0, 1.0)) {
        points.push((1.0, 1.0));
    }
    points
}

/// One ROC series per consistency variant, from the first mode (in `modes` order) that measured
/// both matched and mismatched pairs; the name carries the AUC and the mode.
fn roc_series(outcomes: &[Outcome], modes: &[String]) -> Vec<Series> {
    ["hidden", "input"]
        .into_iter()
        .filter_map(|variant| {
            modes.iter().find_map(|mode| {
                let (matched, mismatched) = scores(outcomes, mode, variant);
                let area = auc(&matched, &mismatched)?;
                Some(Series {
                    name: format!("{variant} (AUC {area:.2}, {mode})"),
                    points: roc(&matched, &mismatched),
                })
            })
        })
        .collect()
}

/// Writes `accuracy_vs_noise.png`, `image_weight_vs_noise.png` and `consistency_roc.png` into
/// `dir`, each only when the outcomes hold data for it, and returns the paths written.
pub fn write_eval_plots(
    summary: &Summary,
    outcomes: &[Outcome],
    dir: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    let noise_label = "image noise deviation (0 = clean; question with a correct hint)";
    let accuracy = noise_series(summary, |c| Some(c.accuracy));
    let weight = noise_series(summary, |c| c.mean_image_weight);
    let roc = roc_series(outcomes, &summary.modes);
    let charts = [
        (
            "accuracy_vs_noise.png",
            LineChart {
                title: "VQA accuracy vs image noise",
                x_label: noise_label,
                y_label: "accuracy",
                y_range: Some((-0.02, 1.05)),
                diagonal: false,
                series: &accuracy,
            },
        ),
        (
            "image_weight_vs_noise.png",
            LineChart {
                title: "Mean image weight vs image noise",
                x_label: noise_label,
                y_label: "mean image weight",
                y_range: None,
                diagonal: false,
                series: &weight,
            },
        ),
        (
            "consistency_roc.png",
            LineChart {
                title: "Consistency: matched (clean+hint) vs mismatched (conflict) pairs",
                x_label: "false positive rate (mismatched pairs)",
                y_label: "true positive rate (matched pairs)",
                y_range: Some((-0.02, 1.02)),
                diagonal: true,
                series: &roc,
            },
        ),
    ];
    let mut written = Vec::new();
    for (name, chart) in charts {
        if chart.series.is_empty() {
            continue;
        }
        let path = dir.join(name);
        line_chart(&path, &chart)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dms::ModalityWeights;
    use crate::eval::report::{cells, consistency_aucs, groups};

    fn outcome(condition: &str, group: &str, mode: &str, correct: bool, c: f32) -> Outcome {
        let measured = mode != "off";
        Outcome {
            task: "vqa".into(),
            item: 0,
            condition: condition.into(),
            group: group.into(),
            mode: mode.into(),
            truth: "red".into(),
            answer: if correct { "red" } else { "blue" }.into(),
            correct,
            weights: ModalityWeights {
                images: vec![if measured { 1.0 - c / 2.0 } else { 1.0 }],
                text: if measured { 1.0 + c / 2.0 } else { 1.0 },
            },
            signals: None,
            consistency_hidden: measured.then(|| vec![c]),
            consistency_input: measured.then(|| vec![c * 0.5 + 0.2]),
            dms_ms: 0.0,
            mwc: None,
        }
    }

    fn summary(outcomes: &[Outcome], modes: &[String]) -> Summary {
        Summary {
            suite: "colour-grid".into(),
            seed: 1,
            per_condition: 2,
            model: "test".into(),
            modes: modes.to_vec(),
            cells: cells(outcomes, modes),
            groups: groups(outcomes, modes),
            consistency_auc: consistency_aucs(outcomes, modes),
        }
    }

    #[test]
    fn the_three_plots_are_written_and_not_empty() {
        let mut outcomes = Vec::new();
        for mode in ["off", "rule"] {
            outcomes.push(outcome("clean+hint", "clean", mode, true, 0.9));
            outcomes.push(outcome("clean+hint", "clean", mode, true, 0.7));
            outcomes.push(outcome(
                "noise-1.0+hint",
                "corrupted",
                mode,
                mode == "rule",
                0.5,
            ));
            outcomes.push(outcome("wrong-image+hint", "conflict", mode, false, 0.3));
            outcomes.push(outcome("wrong-image+hint", "conflict", mode, false, 0.8));
        }
        let modes = vec!["off".to_string(), "rule".to_string()];
        let summary = summary(&outcomes, &modes);
        let dir = tempfile::tempdir().unwrap();
        let written = write_eval_plots(&summary, &outcomes, dir.path()).unwrap();
        let names = [
            "accuracy_vs_noise.png",
            "image_weight_vs_noise.png",
            "consistency_roc.png",
        ];
        assert_eq!(written, names.map(|n| dir.path().join(n)).to_vec());
        for path in &written {
            assert!(std::fs::metadata(path).unwrap().len() > 1000, "{path:?}");
            image::open(path).unwrap();
        }
        let roc = roc_series(&outcomes, &modes);
        assert_eq!(roc[0].name, "hidden (AUC 0.75, rule)");
        assert_eq!(summary.consistency_auc[0].auc, 0.75);
    }

    #[test]
    fn plots_without_data_are_skipped() {
        let outcomes = vec![outcome("clean", "clean", "off", true, 0.0)];
        let modes = vec!["off".to_string()];
        let dir = tempfile::tempdir().unwrap();
        let written = write_eval_plots(&summary(&outcomes, &modes), &outcomes, dir.path());
        assert_eq!(written.unwrap(), Vec::<PathBuf>::new());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_area_under_the_roc_curve_is_the_auc() {
        let cases: [(&[f32], &[f32]); 3] = [
            (&[0.9, 0.8, 0.4], &[0.5, 0.1]),
            (&[0.5, 0.5, 0.2], &[0.5, 0.3, 0.9]),
            (&[0.1], &[0.9]),
        ];
        for (positive, negative) in cases {
            let area: f64 = roc(positive, negative)
                .windows(2)
                .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
                .sum();
            let expected = auc(positive, negative).unwrap();
            assert!((area - expected).abs() < 1e-9, "{area} vs {expected}");
        }
    }
}
