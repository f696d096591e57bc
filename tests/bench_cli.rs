//! `llama-dms bench` on the demo model with one repetition, against a second llama-dms server
//! as the peer: every figure of `bench.json` is present, the repeated image is served from a
//! cache, and the bar charts are written. (Timings themselves are not asserted: they belong to
//! the benchmark's report, not to tests.)

mod common;

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .arg("bench")
        .args(["--threads", "2"])
        .args(args)
        .output()
        .unwrap()
}

fn is_stat(v: &Value) -> bool {
    ["median", "min", "max"]
        .iter()
        .all(|k| v[k].as_f64().is_some_and(|x| x.is_finite() && x >= 0.0))
        && v["n"].as_u64() == Some(1)
}

fn nonempty_png(path: &std::path::Path) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(img.width() >= 400 && img.height() >= 300);
}

#[test]
fn one_repetition_reports_every_figure_and_compares_with_a_peer() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let (_peer, peer_url) =
        common::start_server_with(&paths.model, &paths.mmproj, &["--api-key", "peer-secret"]);
    let out = common::scratch().join("bench-small");
    let _ = std::fs::remove_dir_all(&out);
    let o = bench(&[
        "--reps",
        "1",
        "--max-tokens",
        "8",
        "--modes",
        "off,rule,learned",
        "--model",
        paths.model.to_str().unwrap(),
        "--mmproj",
        paths.mmproj.to_str().unwrap(),
        "--peer",
        &peer_url,
        "--peer-api-key",
        "peer-secret",
        "--concurrent",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap();

    assert!(report["load_ms"].as_f64().unwrap() > 0.0);
    assert!(report["peak_rss_mib"].as_f64().unwrap() > 50.0);
    let modes = report["modes"].as_array().unwrap();
    let names: Vec<&str> = modes.iter().map(|m| m["mode"].as_str().unwrap()).collect();
    assert_eq!(names, ["off", "rule", "learned"]);
    for m in modes {
        for field in [
            "ttft_text_ms",
            "ttft_image_ms",
            "ttft_repeat_image_ms",
            "image_encode_ms",
            "dms_ms",
            "dms_encode_ms",
            "dms_image_passes_ms",
            "dms_text_passes_ms",
            "prefill_tok_s",
            "decode_tok_s",
        ] {
            assert!(is_stat(&m[field]), "{}: {field} = {}", m["mode"], m[field]);
        }
        assert_eq!(m["repeat_image_from_cache"], true, "{}", m["mode"]);
    }
    // DMS off runs no signal passes; rule and learned do, on the image prompt.
    assert_eq!(modes[0]["dms_ms"]["median"], 0.0);
    assert!(modes[1]["dms_ms"]["median"].as_f64().unwrap() > 0.0);
    // The families add up to no more than the stage: encode, image passes, text passes.
    let median = |m: &Value, f: &str| m[f]["median"].as_f64().unwrap();
    let families = ["dms_encode_ms", "dms_image_passes_ms", "dms_text_passes_ms"];
    let parts: f64 = families.iter().map(|f| median(&modes[1], f)).sum();
    assert!(median(&modes[1], "dms_image_passes_ms") > 0.0);
    assert!(median(&modes[1], "dms_text_passes_ms") > 0.0);
    assert!(parts <= median(&modes[1], "dms_ms") + 1e-6, "{parts}");
    for table in [
        "ttft_text_vs_off",
        "ttft_image_vs_off",
        "repeat_vs_first_image",
    ] {
        for mode in names.iter() {
            assert!(
                report["ratios"][table][mode].as_f64().is_some(),
                "{table}/{mode}"
            );
        }
        if table != "repeat_vs_first_image" {
            assert_eq!(report["ratios"][table]["off"], 1.0);
        }
    }

    let peer = &report["peer"];
    assert_eq!(peer["url"], peer_url.as_str());
    assert!(peer["image_error"].is_null(), "{}", peer["image_error"]);
    for side in ["ours", "peer"] {
        for field in [
            "ttft_text_ms",
            "ttft_image_ms",
            "decode_tok_s",
            "aggregate_tok_s",
        ] {
            assert!(is_stat(&peer[side][field]), "{side}/{field}");
        }
    }
    assert_eq!(peer["concurrent"], 2);
    for key in ["ttft_text", "ttft_image", "decode_tok_s", "aggregate_tok_s"] {
        assert!(peer["ours_over_peer"][key].as_f64().unwrap() > 0.0);
    }
    let aims = report["aims"].as_array().unwrap();
    assert_eq!(aims.len(), 6);
    assert!(aims
        .iter()
        .all(|a| a["value"].is_number() && a["met"].is_boolean()));

    let md = std::fs::read_to_string(out.join("bench.md")).unwrap();
    assert!(md.contains("| rule |") && md.contains("ours / peer"));
    assert!(md.contains("per pass family") && md.contains("aggregate tok/s"));
    nonempty_png(&out.join("bench_ttft.png"));
    nonempty_png(&out.join("bench_peer.png"));
}

#[test]
fn bad_arguments_exit_with_code_2_before_loading_anything() {
    for (args, message) in [
        (&["--modes", "off,sometimes"][..], "unknown mode"),
        (&["--reps", "0"][..], "--reps"),
        (&["--model", "/nonexistent/model.gguf"][..], "not found"),
    ] {
        let o = bench(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

#[test]
fn a_peer_that_is_not_there_is_a_clear_error() {
    let Some(paths) = common::demo_paths() else {
        return;
    };
    let port = common::free_port();
    let out = common::scratch().join("bench-no-peer");
    let o = bench(&[
        "--reps",
        "1",
        "--max-tokens",
        "4",
        "--modes",
        "off",
        "--model",
        paths.model.to_str().unwrap(),
        "--mmproj",
        paths.mmproj.to_str().unwrap(),
        "--peer",
        &format!("http://127.0.0.1:{port}/v1"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--peer") && err.contains(&port.to_string()),
        "{err}"
    );
}
