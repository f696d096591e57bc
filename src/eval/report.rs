//! Summaries of an evaluation: accuracy, mean weights and mean signals per (condition, mode),
//! accuracy per (group, mode), as JSON and as a Markdown table.

use std::fmt::Write;

use serde::Serialize;

use super::Outcome;

/// Results of one condition under one mode.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Task.
    pub task: String,
    /// Condition name.
    pub condition: String,
    /// Condition group.
    pub group: String,
    /// DMS mode.
    pub mode: String,
    /// Items.
    pub n: usize,
    /// Items answered correctly.
    pub correct: usize,
    /// `correct / n`.
    pub accuracy: f64,
    /// Mean weight of the image (over items that have one).
    pub mean_image_weight: Option<f64>,
    /// Mean weight of the text.
    pub mean_text_weight: f64,
    /// Mean image confidence (items with measured signals).
    pub mean_image_confidence: Option<f64>,
    /// Mean image uncertainty.
    pub mean_image_uncertainty: Option<f64>,
    /// Mean text confidence.
    pub mean_text_confidence: Option<f64>,
    /// Mean text uncertainty.
    pub mean_text_uncertainty: Option<f64>,
    /// Mean image/text consistency.
    pub mean_consistency: Option<f64>,
    /// Mean DMS stage time in milliseconds.
    pub mean_dms_ms: f64,
}

/// Accuracy of one mode over one group of conditions.
#[derive(Debug, Clone, Serialize)]
pub struct GroupAccuracy {
    /// Task.
    pub task: String,
    /// DMS mode.
    pub mode: String,
    /// Condition group.
    pub group: String,
    /// Items.
    pub n: usize,
    /// Fraction answered correctly.
    pub accuracy: f64,
    /// Mean Modality Weight Consistency loss of the applied weights (items where it was
    /// measured: vqa items with an image).
    pub mean_mwc: Option<f64>,
}

/// Everything an evaluation reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Suite name.
    pub suite: String,
    /// Dataset seed.
    pub seed: u64,
    /// Items per condition (for a `data:` suite: items in the file).
    pub per_condition: usize,
    /// Model file stem.
    pub model: String,
    /// Modes compared.
    pub modes: Vec<String>,
    /// Per (task, condition, mode), conditions in suite order.
    pub cells: Vec<Cell>,
    /// Per (task, group, mode).
    pub groups: Vec<GroupAccuracy>,
    /// How well each consistency variant separates matched from mismatched image/text pairs.
    pub consistency_auc: Vec<ConsistencyAuc>,
}

/// The area under the ROC curve of one consistency variant: the probability that a matched
/// pair (a clean image with a correct hint) scores higher than a mismatched one (the conflict
/// conditions), ties counting half.
#[derive(Debug, Clone, Serialize)]
pub struct ConsistencyAuc {
    /// `hidden` or `input`.
    pub variant: String,
    /// Mode whose measurements are used.
    pub mode: String,
    /// Matched pairs.
    pub matched: usize,
    /// Mismatched pairs.
    pub mismatched: usize,
    /// The AUC.
    pub auc: f64,
}

/// The AUC of scores `positive` against `negative` (`None` if either is empty).
pub fn auc(positive: &[f32], negative: &[f32]) -> Option<f64> {
    if positive.is_empty() || negative.is_empty() {
        return None;
    }
    let wins: f64 = positive
        .iter()
        .flat_map(|p| negative.iter().map(move |n| (p, n)))
        .map(|(p, n)| match p.partial_cmp(n) {
            Some(std::cmp::Ordering::Greater) => 1.0,
            Some(std::cmp::Ordering::Equal) => 0.5,
            _ => 0.0,
        })
        .sum();
    Some(wins / (positive.len() * negative.len()) as f64)
}

/// The AUC of both consistency variants per measuring mode, from the VQA outcomes.
pub fn consistency_aucs(outcomes: &[Outcome], modes: &[String]) -> Vec<ConsistencyAuc> {
    let mut out = Vec::new();
    for mode in modes {
        for variant in ["hidden", "input"] {
            let values = |keep: &dyn Fn(&Outcome) -> bool| -> Vec<f32> {
                outcomes
                    .iter()
                    .filter(|o| o.task == "vqa" && o.mode == *mode && keep(o))
                    .filter_map(|o| match variant {
                        "hidden" => o.consistency_hidden.as_ref(),
                        _ => o.consistency_input.as_ref(),
                    })
                    .filter_map(|v| v.first().copied())
                    .collect()
            };
            let matched = values(&|o| o.condition == "clean+hint");
            let mismatched = values(&|o| o.group == "conflict");
            if let Some(auc) = auc(&matched, &mismatched) {
                out.push(ConsistencyAuc {
                    variant: variant.into(),
                    mode: mode.clone(),
                    matched: matched.len(),
                    mismatched: mismatched.len(),
                    auc,
                });
            }
        }
    }
    out
}

/// The tasks present in `outcomes`, in report order.
pub fn tasks_in(outcomes: &[Outcome]) -> Vec<&'static str> {
    ["vqa", "caption", "retrieval"]
        .into_iter()
        .filter(|t| outcomes.iter().any(|o| o.task == *t))
        .collect()
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// One cell per (task, condition, mode) present in `outcomes`, conditions in the order they
/// first appear.
pub fn cells(outcomes: &[Outcome], modes: &[String]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for task in tasks_in(outcomes) {
        let mut conditions: Vec<&str> = Vec::new();
        for o in outcomes.iter().filter(|o| o.task == task) {
            if !conditions.contains(&o.condition.as_str()) {
                conditions.push(&o.condition);
            }
        }
        for condition in &conditions {
            for mode in modes {
                cells.extend(cell(outcomes, task, condition, mode));
            }
        }
    }
    cells
}

fn cell(outcomes: &[Outcome], task: &str, condition: &str, mode: &str) -> Option<Cell> {
    let rows: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.task == task && o.condition == condition && o.mode == mode)
        .collect();
    if rows.is_empty() {
        return None;
    }
    let correct = rows.iter().filter(|o| o.correct).count();
    let signals: Vec<_> = rows.iter().filter_map(|o| o.signals.as_ref()).collect();
    let image_signal = |f: fn(&crate::dms::ModalitySignals) -> f32| {
        mean(
            signals
                .iter()
                .filter_map(|s| s.images.first())
                .map(|m| f64::from(f(m))),
        )
    };
    Some(Cell {
        task: task.to_string(),
        condition: condition.to_string(),
        group: rows[0].group.clone(),
        mode: mode.to_string(),
        n: rows.len(),
        correct,
        accuracy: correct as f64 / rows.len() as f64,
        mean_image_weight: mean(
            rows.iter()
                .filter_map(|o| o.weights.images.first())
                .map(|&w| f64::from(w)),
        ),
        mean_text_weight: mean(rows.iter().map(|o| f64::from(o.weights.text))).unwrap_or(1.0),
        mean_image_confidence: image_signal(|m| m.confidence),
        mean_image_uncertainty: image_signal(|m| m.uncertainty),
        mean_text_confidence: mean(signals.iter().map(|s| f64::from(s.text.confidence))),
        mean_text_uncertainty: mean(signals.iter().map(|s| f64::from(s.text.uncertainty))),
        mean_consistency: mean(
            signals
                .iter()
                .filter_map(|s| s.consistency.first())
                .map(|&c| f64::from(c)),
        ),
        mean_dms_ms: mean(rows.iter().map(|o| o.dms_ms)).unwrap_or(0.0),
    })
}

/// Accuracy per (task, group, mode), over items.
pub fn groups(outcomes: &[Outcome], modes: &[String]) -> Vec<GroupAccuracy> {
    let mut out = Vec::new();
    for (task, group, mode) in tasks_in(outcomes).into_iter().flat_map(|t| {
        ["clean", "corrupted", "conflict"]
            .into_iter()
            .flat_map(move |g| modes.iter().map(move |m| (t, g, m)))
    }) {
        let rows: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.task == task && o.group == group && o.mode == *mode)
            .collect();
        if rows.is_empty() {
            continue;
        }
        out.push(GroupAccuracy {
            task: task.to_string(),
            mode: mode.clone(),
            group: group.to_string(),
            n: rows.len(),
            accuracy: rows.iter().filter(|o| o.correct).count() as f64 / rows.len() as f64,
            mean_mwc: mean(rows.iter().filter_map(|o| o.mwc.map(f64::from))),
        });
    }
    out
}

/// A Markdown table with one row per (task, group) and one column per mode, each cell given
/// by `cell` (rows where every cell is `None` are left out).
fn group_table(
    summary: &Summary,
    label: &str,
    cell: impl Fn(&GroupAccuracy) -> Option<String>,
) -> String {
    let mut md = format!("| task | {label} | {} |\n", summary.modes.join(" | "));
    md.push_str(&format!(
        "|---|---|{}\n",
        "---|".repeat(summary.modes.len())
    ));
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for g in &summary.groups {
        if !rows.contains(&(g.task.as_str(), g.group.as_str())) {
            rows.push((&g.task, &g.group));
        }
    }
    for (task, group) in rows {
        let row: Vec<Option<String>> = summary
            .modes
            .iter()
            .map(|m| {
                summary
                    .groups
                    .iter()
                    .find(|g| g.task == task && g.group == group && g.mode == *m)
                    .and_then(&cell)
            })
            .collect();
        if row.iter().all(Option::is_none) {
            continue;
        }
        let row: Vec<String> = row.into_iter().map(|c| c.unwrap_or("-".into())).collect();
        md.push_str(&format!("| {task} | {group} | {} |\n", row.join(" | ")));
    }
    md
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// The summary as Markdown: accuracy per task, group and mode, the consistency AUCs, then one
/// row per task, condition and mode.
pub fn markdown(summary: &Summary) -> String {
    let mut md = String::new();
    let items = if summary.suite.starts_with("data:") {
        "items (corruptions apply to those with an image)"
    } else {
        "items per condition"
    };
    let _ = writeln!(
        md,
        "Suite `{}`, model `{}`, seed {}, {} {items}.\n",
        summary.suite, summary.model, summary.seed, summary.per_condition
    );
    md.push_str(&group_table(summary, "group", |g| {
        Some(format!("{:.1}% (n={})", g.accuracy * 100.0, g.n))
    }));
    if summary.groups.iter().any(|g| g.mean_mwc.is_some()) {
        md.push_str("\nModality Weight Consistency loss of the applied weights (mean):\n\n");
        md.push_str(&group_table(summary, "group", |g| {
            g.mean_mwc.map(|v| format!("{v:.4}"))
        }));
    }
    if !summary.consistency_auc.is_empty() {
        let _ = writeln!(
            md,
            "\n| consistency variant | mode | matched | mismatched | AUC |\n|---|---|---|---|---|"
        );
        for a in &summary.consistency_auc {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.3} |",
                a.variant, a.mode, a.matched, a.mismatched, a.auc
            );
        }
    }
    let _ = writeln!(
        md,
        "\n| task | condition | mode | correct | image w | text w | image conf | image unc | text conf | consistency | DMS ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for c in &summary.cells {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}/{} | {} | {:.2} | {} | {} | {} | {} | {:.0} |",
            c.task,
            c.condition,
            c.mode,
            c.correct,
            c.n,
            opt(c.mean_image_weight),
            c.mean_text_weight,
            opt(c.mean_image_confidence),
            opt(c.mean_image_uncertainty),
            opt(c.mean_text_confidence),
            opt(c.mean_consistency),
            c.mean_dms_ms
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ordered_pairs_and_half_ties() {
        assert_eq!(auc(&[0.9, 0.8], &[0.1, 0.2]), Some(1.0));
        assert_eq!(auc(&[0.1], &[0.9]), Some(0.0));
        assert_eq!(auc(&[0.5, 0.9], &[0.5]), Some(0.75));
        assert_eq!(auc(&[], &[0.5]), None);
    }
}
