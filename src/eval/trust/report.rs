//! The `colour-trust` summary as Markdown (tables and the aims, met or not) and as PNG plots.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::analysis::{
    TrustSummary, MODE_GLOBAL_BEST, MODE_OFF, MODE_ORACLE, POOL_ONE_UNRELIABLE, REPORT_SETS,
};
use super::suite::{GROUP_CLEAN, GROUP_CONFLICT};
use crate::plot::{bar_chart, line_chart, Bar, LineChart, PlotError, Series};

/// One aim of the design and whether the run meets it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Aim {
    /// What is measured.
    pub name: String,
    /// The target, in words.
    pub target: String,
    /// The measured value, formatted (`-` when not measured).
    pub value: String,
    /// Whether the target is met (never when not measured).
    pub met: bool,
}

fn aim(name: String, target: &str, value: Option<f64>, fmt: fn(f64) -> String, ok: bool) -> Aim {
    Aim {
        name,
        target: target.into(),
        value: value.map_or("-".into(), fmt),
        met: value.is_some() && ok,
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn points(v: f64) -> String {
    format!("{:+.1} points", v * 100.0)
}

fn three(v: f64) -> String {
    format!("{v:.3}")
}

/// The modes that schedule (every mode but `off`).
fn schedulers(summary: &TrustSummary) -> impl Iterator<Item = &String> {
    summary.meta.modes.iter().filter(|m| *m != MODE_OFF)
}

/// The aims: signal AUCs of the default variants (by outcome), and for every scheduling mode
/// its gain over `off` on one-unreliable inputs, the oracle gap it recovers, its loss on
/// clean inputs, its conflict accuracy and its weights on clean inputs.
pub fn aims(summary: &TrustSummary) -> Vec<Aim> {
    let mut out = Vec::new();
    for (key, target) in [
        (&summary.meta.default_image_key, 0.9),
        (&summary.meta.default_text_key, 0.85),
    ] {
        // The aim is clean vs degraded input (by condition); by outcome (right vs wrong
        // unimodal answer) is shown beside it.
        let signal = summary.signal(key);
        for (label, v) in [
            ("clean vs degraded", signal.and_then(|s| s.by_condition)),
            ("by outcome", signal.and_then(|s| s.by_outcome)),
        ] {
            out.push(aim(
                format!("reliability AUC of `{key}` ({label})"),
                &format!(">= {target}"),
                v,
                three,
                v.is_some_and(|v| v >= target),
            ));
        }
    }
    for mode in schedulers(summary) {
        let pool = summary.comparison(POOL_ONE_UNRELIABLE, mode, MODE_OFF);
        out.push(aim(
            format!("{mode}: gain over off, one-unreliable"),
            ">= +15 points, 95% CI above 0",
            pool.map(|c| c.difference),
            points,
            pool.is_some_and(|c| c.difference >= 0.15 && c.ci_low > 0.0),
        ));
        let gap = pool.and_then(|c| c.oracle_gap_recovered);
        out.push(aim(
            format!("{mode}: oracle gap recovered, one-unreliable"),
            ">= 50%",
            gap,
            pct,
            gap.is_some_and(|g| g >= 0.5),
        ));
        let clean = summary.comparison(GROUP_CLEAN, mode, MODE_OFF);
        out.push(aim(
            format!("{mode}: clean accuracy vs off"),
            "loss <= 1 point",
            clean.map(|c| c.difference),
            points,
            clean.is_some_and(|c| c.difference >= -0.01 - 1e-12),
        ));
        let conflict = summary.group_accuracy(mode, GROUP_CONFLICT);
        out.push(aim(
            format!("{mode}: conflict accuracy (control)"),
            "50% +/- 10%",
            conflict.map(|r| r.accuracy),
            pct,
            conflict.is_some_and(|r| (r.accuracy - 0.5).abs() <= 0.1 + 1e-12),
        ));
        let w = summary.clean_weights.iter().find(|c| c.mode == *mode);
        out.push(aim(
            format!("{mode}: clean items with weights within 1 +/- 0.05"),
            ">= 95%",
            w.map(|c| c.fraction),
            pct,
            w.is_some_and(|c| c.fraction >= 0.95),
        ));
    }
    out
}

fn opt(v: Option<f64>, fmt: fn(f64) -> String) -> String {
    v.map_or("-".into(), fmt)
}

fn header(md: &mut String, columns: &[String]) {
    let _ = writeln!(md, "| {} |", columns.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(columns.len()));
}

fn strings<'a>(v: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    v.into_iter().map(String::from).collect()
}

/// The modes of the accuracy tables: the run's modes, then `global-best` and `oracle`.
fn table_modes(summary: &TrustSummary) -> Vec<String> {
    let mut modes = summary.meta.modes.clone();
    modes.extend([MODE_GLOBAL_BEST.to_string(), MODE_ORACLE.to_string()]);
    modes
}

fn mode_label(summary: &TrustSummary, mode: &str) -> String {
    match (mode, summary.global_best.image_weight) {
        (MODE_GLOBAL_BEST, Some(w)) => format!("{mode} (w_image {w})"),
        _ => mode.to_string(),
    }
}

/// The summary as Markdown: the aims, signal AUCs, the control curve, accuracy per group and
/// per condition, the paired comparisons, and the weights.
pub fn markdown(summary: &TrustSummary) -> String {
    let mut md = String::new();
    let seeds: Vec<String> = summary.meta.seeds.iter().map(u64::to_string).collect();
    let _ = writeln!(
        md,
        "# colour-trust\n\nModel `{}`, seeds {}, {} items per condition and seed, {} records, \
         modes {}.\n",
        summary.meta.model,
        seeds.join(", "),
        summary.meta.per_condition,
        summary.n_records,
        summary.meta.modes.join(", ")
    );

    md.push_str("## Aims\n\n");
    header(&mut md, &strings(["aim", "target", "measured", "met"]));
    for a in aims(summary) {
        let met = if a.met { "met" } else { "not met" };
        let _ = writeln!(md, "| {} | {} | {} | {met} |", a.name, a.target, a.value);
    }

    md.push_str(
        "\n## Signal AUCs\n\nBy condition: reliable vs unreliable by construction (conflict left \
         out; consistency: both reliable vs one). By outcome: right vs wrong unimodal answer \
         (consistency: the unimodal answers agree vs differ). `lower`: lower values mean more \
         reliable, the AUC is that of the negated value.\n\n",
    );
    header(
        &mut md,
        &strings([
            "variant",
            "orientation",
            "AUC by condition",
            "n+/n-",
            "AUC by outcome",
            "n+/n-",
        ]),
    );
    for s in &summary.signal_auc {
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {}/{} | {} | {}/{} |",
            s.key,
            s.orientation,
            opt(s.by_condition, three),
            s.n_pos_condition,
            s.n_neg_condition,
            opt(s.by_outcome, three),
            s.n_pos_outcome,
            s.n_neg_outcome
        );
    }

    md.push_str("\n## Control curve\n\nAccuracy (mean log-odds of the truth) at each fixed image weight; the text weight is 2 - w.\n\n");
    let sets: Vec<&str> = summary
        .control_curve
        .iter()
        .map(|c| c.set.as_str())
        .collect();
    let mut cols = vec!["w_image".to_string()];
    cols.extend(strings(sets.iter().copied()));
    header(&mut md, &cols);
    for w in super::record::GRID_WEIGHTS {
        let cells: Vec<String> = summary
            .control_curve
            .iter()
            .map(|c| {
                c.points
                    .iter()
                    .find(|p| p.image_weight == w)
                    .map_or("-".into(), |p| {
                        let lo = p
                            .mean_log_odds
                            .map_or(String::new(), |v| format!(" ({v:+.2})"));
                        format!("{}{lo}", pct(p.accuracy))
                    })
            })
            .collect();
        let _ = writeln!(md, "| {w} | {} |", cells.join(" | "));
    }

    md.push_str("\n## Accuracy per group\n\n");
    let mut cols = vec!["mode".to_string()];
    cols.extend(strings(REPORT_SETS));
    header(&mut md, &cols);
    for mode in table_modes(summary) {
        let cells: Vec<String> = REPORT_SETS
            .iter()
            .map(|set| {
                summary
                    .group_accuracy(&mode, set)
                    .map_or("-".into(), |r| format!("{} (n={})", pct(r.accuracy), r.n))
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} |",
            mode_label(summary, &mode),
            cells.join(" | ")
        );
    }

    md.push_str("\n## Accuracy per condition\n\n");
    let modes = table_modes(summary);
    let mut cols = vec!["condition".to_string()];
    cols.extend(modes.iter().cloned());
    header(&mut md, &cols);
    for condition in &summary.conditions {
        let cells: Vec<String> = modes
            .iter()
            .map(|m| {
                summary
                    .by_condition
                    .iter()
                    .find(|r| r.mode == *m && r.set == *condition)
                    .map_or("-".into(), |r| format!("{}/{}", r.correct, r.n))
            })
            .collect();
        let _ = writeln!(md, "| {condition} | {} |", cells.join(" | "));
    }

    md.push_str(
        "\n## Paired comparisons\n\nDifference with a paired bootstrap 95% CI (2000 \
         resamples), exact McNemar test on the discordant pairs (b: mode right, baseline wrong; \
         c: the reverse), share of the oracle gap over the baseline recovered.\n\n",
    );
    header(
        &mut md,
        &strings([
            "set",
            "mode",
            "baseline",
            "n",
            "mode acc",
            "baseline acc",
            "difference [95% CI]",
            "b/c",
            "p",
            "oracle gap recovered",
        ]),
    );
    for c in &summary.comparisons {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} [{:+.1}, {:+.1}] | {}/{} | {:.3e} | {} |",
            c.set,
            c.mode,
            c.baseline,
            c.n,
            pct(c.accuracy),
            pct(c.baseline_accuracy),
            points(c.difference),
            c.ci_low * 100.0,
            c.ci_high * 100.0,
            c.b,
            c.c,
            c.p_value,
            opt(c.oracle_gap_recovered, pct)
        );
    }

    md.push_str("\n## Weights\n\nImage weight per condition: mean [min, max].\n\n");
    let mut cols = vec!["condition".to_string()];
    cols.extend(summary.meta.modes.iter().cloned());
    header(&mut md, &cols);
    for condition in &summary.conditions {
        let cells: Vec<String> = summary
            .meta
            .modes
            .iter()
            .map(|m| {
                summary
                    .weights
                    .iter()
                    .find(|w| w.mode == *m && w.condition == *condition)
                    .map_or("-".into(), |w| {
                        format!(
                            "{:.2} [{:.2}, {:.2}]",
                            w.mean_image_weight, w.min_image_weight, w.max_image_weight
                        )
                    })
            })
            .collect();
        let _ = writeln!(md, "| {condition} | {} |", cells.join(" | "));
    }
    md.push_str("\nWeights on clean inputs: items whose weights are all within 1 +/- 0.05.\n\n");
    header(&mut md, &strings(["mode", "within", "n", "fraction"]));
    for c in &summary.clean_weights {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.mode,
            c.within,
            c.n,
            pct(c.fraction)
        );
    }
    md
}

/// A short label of a variant key for chart axes (`confidence` → `c`, `uncertainty` → `u`,
/// `consistency` → `s`).
fn short_key(key: &str) -> String {
    key.replace("confidence", "c")
        .replace("uncertainty", "u")
        .replace("consistency", "s")
}

fn grid_series(summary: &TrustSummary, set: &str) -> Option<Series> {
    let c = summary.control_curve.iter().find(|c| c.set == set)?;
    Some(Series {
        name: format!("grid: {set}"),
        points: c
            .points
            .iter()
            .map(|p| (f64::from(p.image_weight), p.accuracy))
            .collect(),
    })
}

/// The accuracy along the grid of every set.
fn control_series(summary: &TrustSummary) -> Vec<Series> {
    REPORT_SETS
        .iter()
        .filter_map(|set| grid_series(summary, set))
        .collect()
}

/// The one-unreliable grid curve and every mode's accuracy on that pool as a flat line.
fn mode_series(summary: &TrustSummary) -> Vec<Series> {
    let Some(grid) = grid_series(summary, POOL_ONE_UNRELIABLE) else {
        return Vec::new();
    };
    let mut series = vec![grid];
    for mode in table_modes(summary) {
        if let Some(r) = summary.group_accuracy(&mode, POOL_ONE_UNRELIABLE) {
            series.push(Series {
                name: mode_label(summary, &mode),
                points: vec![(0.0, r.accuracy), (2.0, r.accuracy)],
            });
        }
    }
    series
}

fn auc_bars(summary: &TrustSummary) -> Vec<Bar> {
    let bar = |key: &str, variant: &str, v: f64| Bar {
        group: short_key(key),
        variant: variant.into(),
        median: v,
        min: v,
        max: v,
    };
    summary
        .signal_auc
        .iter()
        .flat_map(|s| {
            let outcome = s.by_outcome.map(|v| bar(&s.key, "by outcome", v));
            let condition = s.by_condition.map(|v| bar(&s.key, "by condition", v));
            outcome.into_iter().chain(condition)
        })
        .collect()
}

/// A condition's name without the part every condition of its kind shares (`clean+`,
/// `+hint`, `-wrong`), short enough for a bar chart's axis: `hint`, `hedged`, `patched`, ...
fn short_condition(name: &str) -> String {
    name.trim_start_matches("clean+")
        .trim_end_matches("+hint")
        .trim_end_matches("-wrong")
        .to_string()
}

fn weight_bars(summary: &TrustSummary) -> Vec<Bar> {
    summary
        .weights
        .iter()
        .map(|w| Bar {
            group: short_condition(&w.condition),
            variant: w.mode.clone(),
            median: w.mean_image_weight,
            min: w.min_image_weight,
            max: w.max_image_weight,
        })
        .collect()
}

/// Writes `control_curve.png` (accuracy along the grid per group), `control_curve_modes.png`
/// (the one-unreliable grid curve with each mode's accuracy as a flat line), `signal_auc.png`
/// and `image_weight_by_condition.png` into `dir`, each only when the summary holds data for it, and returns the paths written.
pub fn write_plots(summary: &TrustSummary, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let mut written = Vec::new();
    let x_label = "image weight (text weight = 2 - w)";
    let curves = [
        (
            "control_curve.png",
            "Accuracy vs fixed image weight, per group",
            control_series(summary),
        ),
        (
            "control_curve_modes.png",
            "One-unreliable pool: fixed weights vs the modes (flat lines)",
            mode_series(summary),
        ),
    ];
    for (name, title, series) in &curves {
        if series.is_empty() {
            continue;
        }
        let path = dir.join(name);
        let chart = LineChart {
            title,
            x_label,
            y_label: "accuracy",
            y_range: Some((-0.02, 1.05)),
            diagonal: false,
            series,
        };
        line_chart(&path, &chart)?;
        written.push(path);
    }
    let bars = [
        (
            "signal_auc.png",
            "Signal AUCs (c = confidence, u = uncertainty, s = consistency)",
            "AUC",
            auc_bars(summary),
        ),
        (
            "image_weight_by_condition.png",
            "Image weight per condition and mode (mean, min-max)",
            "image weight",
            weight_bars(summary),
        ),
    ];
    for (name, title, y_label, bars) in bars {
        if bars.is_empty() {
            continue;
        }
        let path = dir.join(name);
        bar_chart(&path, title, y_label, &bars)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
