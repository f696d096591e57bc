//! `llama-dms eval` on the demo model: a small colour-grid run writes every output with every
//! field, and `--resume` answers nothing twice.

mod common;

use std::process::Command;

use serde_json::Value;

fn eval(
    out: &std::path::Path,
    paths: &llama_dms::models::demo::DemoPaths,
    extra: &[&str],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args([
            "eval",
            "--per-condition",
            "1",
            "--modes",
            "off,rule",
            "--threads",
            "2",
        ])
        .args(["--max-tokens", "8", "--seed", "5"])
        .args(["--model", paths.model.to_str().unwrap()])
        .args(["--mmproj", paths.mmproj.to_str().unwrap()])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_small_colour_grid_writes_outcomes_and_summaries_and_resumes() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let out = common::scratch().join("eval-small");
    let _ = std::fs::remove_dir_all(&out);
    let run = eval(&out, &paths, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let items = std::fs::read_to_string(out.join("items.jsonl")).unwrap();
    let outcomes: Vec<Value> = items
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let n_conditions = llama_dms::eval::dataset::CONDITIONS.len();
    assert_eq!(
        outcomes.len(),
        n_conditions * 2,
        "one item per condition and mode"
    );
    for o in &outcomes {
        for field in [
            "item",
            "condition",
            "group",
            "mode",
            "truth",
            "answer",
            "correct",
            "weights",
            "dms_ms",
        ] {
            assert!(o.get(field).is_some(), "{field} missing in {o}");
        }
    }
    let clean_off = outcomes
        .iter()
        .find(|o| o["condition"] == "clean" && o["mode"] == "off")
        .unwrap();
    assert_eq!(
        clean_off["correct"], true,
        "the demo names a clean colour: {clean_off}"
    );
    let noisy_rule = outcomes
        .iter()
        .find(|o| o["condition"] == "noise-2.5+hint" && o["mode"] == "rule")
        .unwrap();
    assert!(
        noisy_rule["signals"].is_object(),
        "rule measures signals: {noisy_rule}"
    );

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["cells"].as_array().unwrap().len(), n_conditions * 2);
    for cell in summary["cells"].as_array().unwrap() {
        let acc = cell["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert!(cell["mean_text_weight"].as_f64().unwrap() > 0.0);
    }
    let groups: Vec<&str> = summary["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    for g in ["clean", "corrupted", "conflict"] {
        assert!(groups.contains(&g), "{g} missing: {groups:?}");
    }
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("| noise-1.5+hint | rule |"), "{md}");

    // Resuming a finished run answers nothing again and keeps every outcome.
    let again = eval(&out, &paths, &["--resume"]);
    assert!(again.status.success());
    let items_again = std::fs::read_to_string(out.join("items.jsonl")).unwrap();
    assert_eq!(items_again, items);
}
