//! `llama-dms eval` on the demo model: a small colour-grid run writes every output with every
//! field, `--resume` answers nothing twice, and `--grid-out` writes training data that
//! `train-scheduler` turns into a plugin the engine loads.

mod common;

use std::process::Command;

use llama_dms::eval::dataset::{colour_grid, CONDITIONS};
use llama_dms::eval::grid::IMAGE_WEIGHTS;
use llama_dms::models::demo::DemoPaths;
use serde_json::Value;

fn eval(out: &std::path::Path, paths: &DemoPaths, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args(["eval", "--per-condition", "1", "--modes", "off,rule"])
        .args(["--threads", "2", "--max-tokens", "8", "--seed", "5"])
        .args(["--model", paths.model.to_str().unwrap()])
        .args(["--mmproj", paths.mmproj.to_str().unwrap()])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// The fields every outcome line of `items.jsonl` has.
const OUTCOME_FIELDS: [&str; 11] = [
    "task",
    "item",
    "condition",
    "group",
    "mode",
    "truth",
    "answer",
    "correct",
    "weights",
    "dms_ms",
    "mwc",
];

#[test]
fn a_small_colour_grid_writes_outcomes_and_summaries_and_resumes() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let out = common::scratch().join("eval-small");
    let _ = std::fs::remove_dir_all(&out);
    common::succeeded(&eval(&out, &paths, &[]));

    let outcomes = common::json_lines(&out.join("items.jsonl"));
    let count = |task: &str| outcomes.iter().filter(|o| o["task"] == task).count();
    assert_eq!(
        count("vqa"),
        CONDITIONS.len() * 2,
        "an item per condition and mode"
    );
    // Captioning and retrieval use the items with an image of the true colour and a plain or
    // hinted question: clean twice, four noise levels, blur, occlusion.
    assert_eq!((count("caption"), count("retrieval")), (8 * 2, 8 * 2));
    for o in &outcomes {
        for field in OUTCOME_FIELDS {
            assert!(o.get(field).is_some(), "{field} missing in {o}");
        }
    }
    let find = |task: &str, condition: &str, mode: &str| {
        outcomes
            .iter()
            .find(|o| o["task"] == task && o["condition"] == condition && o["mode"] == mode)
            .unwrap()
    };
    let clean = find("vqa", "clean", "off");
    assert_eq!(
        clean["correct"], true,
        "the demo names a clean colour: {clean}"
    );
    let clean = find("retrieval", "clean", "off");
    assert_eq!(
        clean["correct"], true,
        "the right caption ranks first: {clean}"
    );
    let noisy = find("vqa", "noise-2.5+hint", "rule");
    assert!(
        noisy["signals"].is_object(),
        "rule measures signals: {noisy}"
    );
    // The MWC loss is measured for every vqa item with an image, under every mode; it is
    // positive where there is evidence (a hint) to weigh against the image.
    for o in outcomes.iter().filter(|o| o["task"] == "vqa") {
        let has_image = o["weights"]["images"].as_array().unwrap().len() == 1;
        let mwc = o["mwc"].as_f64();
        assert_eq!(mwc.is_some(), has_image, "{o}");
        if has_image && o["condition"].as_str().unwrap().contains("hint") {
            assert!(mwc.is_some_and(|m| m > 0.0), "{o}");
        }
    }

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let cells = summary["cells"].as_array().unwrap();
    // A cell per task, condition and mode; the image tasks count clean once.
    assert_eq!(cells.len(), CONDITIONS.len() * 2 + 7 * 2 * 2);
    for cell in cells {
        assert!((0.0..=1.0).contains(&cell["accuracy"].as_f64().unwrap()));
        assert!(cell["mean_text_weight"].as_f64().unwrap() > 0.0);
    }
    let groups: Vec<(&str, &str)> = summary["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["task"].as_str().unwrap(), g["group"].as_str().unwrap()))
        .collect();
    for g in ["clean", "corrupted", "conflict"] {
        assert!(groups.contains(&("vqa", g)), "{g} missing: {groups:?}");
    }
    let vqa_groups = summary["groups"].as_array().unwrap().iter();
    assert!(vqa_groups
        .filter(|g| g["task"] == "vqa")
        .all(|g| g["mean_mwc"].as_f64().is_some()));
    let aucs = summary["consistency_auc"].as_array().unwrap();
    assert_eq!(
        aucs.len(),
        2,
        "hidden and input variants under rule: {aucs:?}"
    );
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("| vqa | noise-1.5+hint | rule |"), "{md}");
    for plot in [
        "accuracy_vs_noise.png",
        "image_weight_vs_noise.png",
        "consistency_roc.png",
    ] {
        let path = out.join(plot);
        assert!(
            std::fs::metadata(&path).map_or(0, |m| m.len()) > 0,
            "{plot}"
        );
        let png = image::open(&path).unwrap_or_else(|e| panic!("{plot}: {e}"));
        assert!(png.width() > 0 && png.height() > 0, "{plot}");
    }

    // Resuming a finished run answers nothing again and keeps every outcome.
    let before = std::fs::read_to_string(out.join("items.jsonl")).unwrap();
    common::succeeded(&eval(&out, &paths, &["--resume"]));
    let after = std::fs::read_to_string(out.join("items.jsonl")).unwrap();
    assert_eq!(after, before);
}

#[test]
fn grid_scores_train_a_scheduler_that_the_engine_loads() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let dir = common::scratch().join("eval-grid");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let grid = dir.join("grid.jsonl");
    common::succeeded(&eval(&dir, &paths, &["--grid-out", grid.to_str().unwrap()]));
    let examples = common::json_lines(&grid);
    // Items whose text is one sentence have no evidence: nothing to weigh, no example.
    let weighed = colour_grid(5, 1)
        .iter()
        .filter(|i| i.image_png().is_some() && i.text().contains(". "))
        .count();
    assert_eq!(
        examples.len(),
        weighed,
        "an example per item with an image and evidence"
    );
    for e in &examples {
        let points = e["grid"].as_array().unwrap();
        assert_eq!(points.len(), IMAGE_WEIGHTS.len());
        assert!(points.iter().all(|p| p["loglik"].as_f64().unwrap() < 0.0));
        // The MWC loss is measured per grid point, and it depends on the weights.
        let mwc: Vec<f64> = points.iter().map(|p| p["mwc"].as_f64().unwrap()).collect();
        assert!(mwc.iter().all(|m| m.is_finite() && *m > 0.0), "{mwc:?}");
        assert!(mwc.iter().any(|m| (m - mwc[0]).abs() > 1e-4), "{mwc:?}");
        assert!(e["signals"]["images"][0]["confidence"].is_number());
    }

    let plugin = dir.join("learned-test.json");
    let train = Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args(["train-scheduler", "--epochs", "200", "--data"])
        .arg(&grid)
        .arg("--out")
        .arg(&plugin)
        .output()
        .unwrap();
    common::succeeded(&train);
    let registry = llama_dms::dms::Registry::load_dir(&dir).unwrap();
    assert!(
        registry.get("learned-test").is_some(),
        "{:?}",
        registry.names()
    );
}

/// `llama-dms eval --data examples/vqa.jsonl` with `extra` flags (no model flags: the caller
/// adds them where the run gets that far).
fn eval_data(extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llama-dms"));
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vqa.jsonl");
    cmd.args(["eval", "--data", data]).args(extra);
    cmd
}

#[test]
fn a_data_file_runs_clean_and_corrupted_scores_and_resumes() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let out = common::scratch().join("eval-data");
    let _ = std::fs::remove_dir_all(&out);
    let run = |extra: &[&str]| {
        let mut cmd = eval_data(&["--corrupt", "noise:1.0,missing,mismatch"]);
        cmd.args(["--modes", "off,rule", "--max-tokens", "8", "--threads", "2"])
            .args(["--model", paths.model.to_str().unwrap()])
            .args(["--mmproj", paths.mmproj.to_str().unwrap()])
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    common::succeeded(&run(&[]));

    let outcomes = common::json_lines(&out.join("items.jsonl"));
    // examples/vqa.jsonl: 4 items with an image (clean + 3 corruptions), 1 text-only (clean).
    assert_eq!(
        outcomes.len(),
        (4 * 4 + 1) * 2,
        "every item, condition and mode"
    );
    for o in &outcomes {
        for field in OUTCOME_FIELDS {
            assert!(o.get(field).is_some(), "{field} missing in {o}");
        }
        assert_eq!(o["task"], "vqa");
        let group = match o["condition"].as_str().unwrap() {
            "clean" => "clean",
            "noise-1.0" | "missing" => "corrupted",
            "mismatch" => "conflict",
            other => panic!("unexpected condition {other}"),
        };
        assert_eq!(o["group"], group, "{o}");
    }
    let text_only: Vec<&Value> = outcomes.iter().filter(|o| o["item"] == 4).collect();
    assert_eq!(text_only.len(), 2, "the text-only item is asked clean only");
    assert!(text_only.iter().all(|o| o["condition"] == "clean"));

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["suite"], "data:vqa.jsonl");
    let clean_off = summary["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["condition"] == "clean" && c["mode"] == "off")
        .unwrap();
    assert_eq!(clean_off["n"], 5);
    assert!(
        clean_off["accuracy"].as_f64().unwrap() > 0.0,
        "the demo names clean colours: {clean_off}"
    );
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("| vqa | mismatch | rule |"), "{md}");

    // Resuming a finished data run answers nothing again.
    let before = std::fs::read_to_string(out.join("items.jsonl")).unwrap();
    common::succeeded(&run(&["--resume"]));
    let after = std::fs::read_to_string(out.join("items.jsonl")).unwrap();
    assert_eq!(after, before);
}

#[test]
fn data_flags_that_do_not_fit_fail_with_a_message() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--corrupt", "fog"],
            "unknown corruption \"fog\" (noise:S, blur:R, occlude:F, missing, mismatch)",
        ),
        (&["--corrupt", "noise:-2"], "above 0"),
        (&["--tasks", "vqa,caption"], "--data runs only the vqa task"),
    ];
    for (extra, want) in cases {
        let o = eval_data(extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(want), "{extra:?}: {stderr}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args(["eval", "--corrupt", "missing"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--corrupt needs --data"));
}
