//! Summaries of an evaluation: accuracy, mean weights and mean signals per (condition, mode),
//! accuracy per (group, mode), as JSON and as a Markdown table.

use std::fmt::Write;

use serde::Serialize;

use super::Outcome;

/// Results of one condition under one mode.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
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
    /// DMS mode.
    pub mode: String,
    /// Condition group.
    pub group: String,
    /// Items.
    pub n: usize,
    /// Fraction answered correctly.
    pub accuracy: f64,
}

/// Everything an evaluation reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Suite name.
    pub suite: String,
    /// Dataset seed.
    pub seed: u64,
    /// Items per condition.
    pub per_condition: usize,
    /// Model file stem.
    pub model: String,
    /// Modes compared.
    pub modes: Vec<String>,
    /// Per (condition, mode), conditions in suite order.
    pub cells: Vec<Cell>,
    /// Per (group, mode).
    pub groups: Vec<GroupAccuracy>,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// One cell per (condition, mode) present in `outcomes`, in the order of `conditions`.
pub fn cells(outcomes: &[Outcome], conditions: &[&str], modes: &[String]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for condition in conditions {
        for mode in modes {
            let rows: Vec<&Outcome> = outcomes
                .iter()
                .filter(|o| o.condition == *condition && o.mode == *mode)
                .collect();
            if rows.is_empty() {
                continue;
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
            cells.push(Cell {
                condition: condition.to_string(),
                group: rows[0].group.clone(),
                mode: mode.clone(),
                n: rows.len(),
                correct,
                accuracy: correct as f64 / rows.len() as f64,
                mean_image_weight: mean(
                    rows.iter()
                        .filter_map(|o| o.weights.images.first())
                        .map(|&w| f64::from(w)),
                ),
                mean_text_weight: mean(rows.iter().map(|o| f64::from(o.weights.text)))
                    .unwrap_or(1.0),
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
            });
        }
    }
    cells
}

/// Accuracy per (group, mode), over items.
pub fn groups(outcomes: &[Outcome], modes: &[String]) -> Vec<GroupAccuracy> {
    let mut out = Vec::new();
    for group in ["clean", "corrupted", "conflict"] {
        for mode in modes {
            let rows: Vec<&Outcome> = outcomes
                .iter()
                .filter(|o| o.group == group && o.mode == *mode)
                .collect();
            if rows.is_empty() {
                continue;
            }
            out.push(GroupAccuracy {
                mode: mode.clone(),
                group: group.to_string(),
                n: rows.len(),
                accuracy: rows.iter().filter(|o| o.correct).count() as f64 / rows.len() as f64,
            });
        }
    }
    out
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// The summary as Markdown: accuracy per group and mode, then one row per condition and mode.
pub fn markdown(summary: &Summary) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Suite `{}`, model `{}`, seed {}, {} items per condition.\n",
        summary.suite, summary.model, summary.seed, summary.per_condition
    );
    let _ = writeln!(md, "| group | {} |", summary.modes.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(summary.modes.len()));
    for group in ["clean", "corrupted", "conflict"] {
        let row: Vec<String> = summary
            .modes
            .iter()
            .map(|m| {
                summary
                    .groups
                    .iter()
                    .find(|g| g.group == group && g.mode == *m)
                    .map_or("-".into(), |g| {
                        format!("{:.1}% (n={})", g.accuracy * 100.0, g.n)
                    })
            })
            .collect();
        let _ = writeln!(md, "| {group} | {} |", row.join(" | "));
    }
    let _ = writeln!(
        md,
        "\n| condition | mode | accuracy | image w | text w | image conf | image unc | text conf | consistency | DMS ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for c in &summary.cells {
        let _ = writeln!(
            md,
            "| {} | {} | {}/{} | {} | {:.2} | {} | {} | {} | {} | {:.0} |",
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
