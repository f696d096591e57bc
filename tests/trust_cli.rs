//! `llama-dms eval --suite colour-trust` and `llama-dms calibrate` on the demo model: a small
//! run writes records and a summary with every diagnostic (signal AUCs, control curve, oracle,
//! best global weight, paired tests with CIs, the calibrated rule's reliabilities), `--resume`
//! replays the modes a record lacks (`--replay` also those it has), `--regrid` and `--remeasure`
//! answer grid points and measure signals again, and `calibrate --records` writes a rule plugin for this model that the
//! engine loads.

mod common;

use std::process::Command;

use llama_dms::dms::Registry;
use llama_dms::eval::trust::suite::TRUST_CONDITIONS;
use llama_dms::models::demo::DemoPaths;
use serde_json::Value;

fn llama_dms(paths: &DemoPaths, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args(args)
        .args(["--threads", "2"])
        .args(["--model", paths.model.to_str().unwrap()])
        .args(["--mmproj", paths.mmproj.to_str().unwrap()])
        .output()
        .unwrap()
}

/// The string `field` of every object in the JSON array `array`.
fn field_of_each<'a>(array: &'a Value, field: &str) -> Vec<&'a str> {
    let items = array.as_array().unwrap();
    items.iter().map(|m| m[field].as_str().unwrap()).collect()
}

#[test]
fn a_small_trust_run_reports_every_diagnostic_and_calibrates_a_plugin() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let out = common::scratch().join("trust-small");
    let _ = std::fs::remove_dir_all(&out);
    let out_s = out.to_str().unwrap();
    let run = |modes: &str, extra: &[&str]| {
        let mut args = vec!["eval", "--suite", "colour-trust", "--seeds", "3"];
        args.extend(["--per-condition", "1", "--max-tokens", "10", "--out", out_s]);
        args.extend(["--modes", modes]);
        args.extend(extra);
        llama_dms(&paths, &args)
    };
    common::succeeded(&run("off", &[]));
    let path = out.join("records.jsonl");
    let first = common::json_lines(&path);
    assert_eq!(first.len(), TRUST_CONDITIONS.len());
    for r in &first {
        assert_eq!(r["grid"].as_array().unwrap().len(), 9, "{r}");
        assert_eq!(field_of_each(&r["modes"], "mode"), ["off"]);
        if r["condition"] == "clean" {
            // No evidence, nothing to weigh: no signals.
            assert!(r["signals"].is_null());
        } else {
            assert!(r["signals"].is_object(), "{r}");
            for key in [
                "image.confidence.topk",
                "image.confidence.shift",
                "image.uncertainty",
                "image.uncertainty.token",
                "image.uncertainty.flip",
                "text.confidence.topk",
                "text.uncertainty.token",
                "consistency.input",
                "consistency.js",
            ] {
                assert!(r["variants"][key].is_number(), "{key} in {r}");
            }
            assert!(r["image_alone"]["answer"].is_string());
            assert!(r["text_alone"]["answer"].is_string());
        }
    }

    // Resume with more modes: nothing is answered anew, the modes are replayed.
    common::succeeded(&run("off,rule", &["--resume"]));
    let again = common::json_lines(&path);
    assert_eq!(again.len(), first.len());
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a["grid"], b["grid"], "the grid is kept");
        assert_eq!(b["modes"].as_array().unwrap().len(), 2);
    }

    // --regrid answers grid points again (the rest is kept) and --grid-out writes training
    // examples with every variant, the answers' agreement and the suite seed as the group.
    let grid_out = out.join("grid.jsonl");
    let grid_s = grid_out.to_str().unwrap();
    common::succeeded(&run(
        "off,rule",
        &["--resume", "--regrid", "2", "--grid-out", grid_s],
    ));
    let regridded = common::json_lines(&path);
    for (a, b) in again.iter().zip(&regridded) {
        assert_eq!(a["grid"][0], b["grid"][0], "weight 0 is kept");
        assert_eq!(b["grid"][8]["image_weight"], 2.0);
        assert_eq!(b["modes"].as_array().unwrap().len(), 2, "{b}");
    }
    // --remeasure measures the signals again, keeps the grid and replays the modes. The same
    // signals up to float noise between runs (the passes' shared prefix is decoded afresh or
    // kept from the previous request): the README quotes what the held-out records moved.
    common::succeeded(&run("off,rule", &["--resume", "--remeasure"]));
    let remeasured = common::json_lines(&path);
    for (a, b) in regridded.iter().zip(&remeasured) {
        assert_eq!(a["grid"], b["grid"], "the grid is kept");
        let (va, vb) = (a["variants"].as_object(), b["variants"].as_object());
        assert_eq!(va.map(|v| v.len()), vb.map(|v| v.len()));
        // (A flip rate counts passes whose top token changed: a near tie may flip one.)
        for (k, x) in va
            .into_iter()
            .flatten()
            .filter(|(k, _)| !k.ends_with(".flip"))
        {
            let y = &vb.unwrap()[k];
            let d = (x.as_f64().unwrap() - y.as_f64().unwrap()).abs();
            assert!(d <= 0.06, "{k}: {x} then {y}");
        }
        assert_eq!(b["modes"].as_array().unwrap().len(), 2, "{b}");
    }
    // --replay replays the scheduler modes a record already has (after a plugin was fitted
    // again): rule weights tampered with in the file come back as the rule's own.
    let tampered: String = remeasured
        .iter()
        .map(|r| {
            let mut r = r.clone();
            for m in r["modes"].as_array_mut().unwrap() {
                if m["mode"] == "rule" {
                    m["weights"] = serde_json::json!({"images": [0.0], "text": 2.0});
                    m["answer"] = "tampered".into();
                }
            }
            format!("{r}\n")
        })
        .collect();
    std::fs::write(&path, tampered).unwrap();
    common::succeeded(&run("off,rule", &["--resume", "--replay"]));
    for (a, b) in remeasured.iter().zip(&common::json_lines(&path)) {
        let rule = |r: &Value| r["modes"][1].clone();
        assert_eq!(rule(b)["mode"], "rule");
        assert_eq!(rule(a)["weights"], rule(b)["weights"], "{b}");
        assert_eq!(rule(a)["answer"], rule(b)["answer"], "{b}");
    }
    let examples = common::json_lines(&grid_out);
    assert_eq!(
        examples.len(),
        TRUST_CONDITIONS.len() - 1,
        "all but `clean`"
    );
    for e in &examples {
        assert_eq!(e["group"], 3, "{e}");
        let v = &e["signals"]["variants"][0];
        assert!(v["consistency.answer"].is_number() && v["image.confidence.topk"].is_number());
    }

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for field in [
        "signal_auc",
        "control_curve",
        "global_best",
        "by_group",
        "comparisons",
        "clean_weights",
    ] {
        assert!(
            !summary[field].is_null(),
            "summary.{field} missing: {summary}"
        );
    }
    // The shipped rule-default's reliabilities are reported beside the variants, and are the
    // aims' signals.
    let keys = field_of_each(&summary["signal_auc"], "key");
    assert!(keys.contains(&"image.reliability") && keys.contains(&"text.reliability"));
    assert_eq!(summary["default_image_key"], "image.reliability");
    let comparisons = summary["comparisons"].as_array().unwrap();
    assert!(comparisons.iter().any(|c| c["baseline"] == "off"));
    assert!(comparisons.iter().any(|c| c["baseline"] == "global-best"));
    for c in comparisons {
        for k in ["ci_low", "ci_high", "p_value", "difference"] {
            assert!(c[k].is_number(), "{k} in {c}");
        }
    }
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for section in ["Signal AUCs", "Control curve", "oracle", "global-best"] {
        assert!(md.contains(section), "{section} missing from summary.md");
    }
    for png in ["control_curve.png", "signal_auc.png"] {
        assert!(
            std::fs::metadata(out.join(png)).unwrap().len() > 1000,
            "{png}"
        );
    }

    // A rule plugin fitted to these records, for this model, that the engine loads.
    let plugins = out.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let plugin = plugins.join("rule-fitted.toml");
    let o = llama_dms(
        &paths,
        &[
            "calibrate",
            "--records",
            path.to_str().unwrap(),
            "--name",
            "rule-fitted",
            "--out",
            plugin.to_str().unwrap(),
        ],
    );
    common::succeeded(&o);
    let text = std::fs::read_to_string(&plugin).unwrap();
    let model_name = paths.model.file_name().unwrap().to_str().unwrap();
    assert!(
        text.contains(&format!("model = \"{model_name}\"")),
        "{text}"
    );
    let registry = Registry::load_dir(&plugins).unwrap();
    let rule = registry.get("rule-fitted").expect("the plugin loads");
    assert_eq!(rule.fitted_for(), Some(model_name));
}
