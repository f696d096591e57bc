//! `llama-dms train-scheduler` end to end: grid scores in, a learned plugin out that the server
//! side loads and uses.

mod common;

use std::fmt::Write as _;
use std::process::Command;

fn llama_dms(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args(args)
        .output()
        .expect("run llama-dms")
}

/// Examples where low image confidence makes the image-down-weighted grid point score best.
fn synthetic_jsonl(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let c = (i as f32 + 0.5) / n as f32;
        let (good, bad) = if c < 0.5 {
            ([0.4, 1.6], [1.6, 0.4])
        } else {
            ([1.6, 0.4], [0.4, 1.6])
        };
        writeln!(
            out,
            r#"{{"signals":{{"images":[{{"confidence":{c},"uncertainty":0.1}}],"text":{{"confidence":0.8,"uncertainty":0.05}},"consistency":[0.6],"image_missing":false}},"grid":[{{"weights":{good:?},"loglik":-1.0,"mwc":0.1}},{{"weights":[1.0,1.0],"loglik":-2.0,"mwc":0.1}},{{"weights":{bad:?},"loglik":-4.0,"mwc":0.1}}]}}"#
        )
        .unwrap();
    }
    out
}

#[test]
fn trains_a_plugin_that_the_engine_uses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("grid.jsonl");
    std::fs::write(&data, synthetic_jsonl(40)).unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let out_file = plugins.join("learned-test.json");
    let out = llama_dms(&[
        "train-scheduler",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
        "--epochs",
        "300",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("validation"), "{stdout}");

    let registry = llama_dms::dms::Registry::load_dir(&plugins).unwrap();
    assert!(registry.names().contains(&"learned-test".to_string()));

    let tiny = common::tiny_models();
    let image = dir.path().join("img.png");
    std::fs::write(&image, common::png(32, 32, [10, 200, 10])).unwrap();
    let (m, p) = (tiny.model.to_str().unwrap(), tiny.mmproj.to_str().unwrap());
    let run = llama_dms(&[
        "run",
        "-m",
        m,
        "--mmproj",
        p,
        "-i",
        image.to_str().unwrap(),
        "-p",
        "It looks green to me. What colour is it?",
        "-n",
        "4",
        "--dms",
        "learned",
        "--plugins",
        plugins.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains("dms: learned-test") && err.contains("confidence"),
        "{err}"
    );
}

#[test]
fn bad_training_data_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(&data, format!("{}not json\n", synthetic_jsonl(1))).unwrap();
    let out_file = dir.path().join("x.json");
    let out = llama_dms(&[
        "train-scheduler",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(!out_file.exists());
}

#[test]
fn a_bad_plugin_file_stops_start_up_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rule-bad.toml"),
        "kind = \"rule\"\nname = \"rule-bad\"\ntau = -1.0\n",
    )
    .unwrap();
    let tiny = common::tiny_models();
    let out = llama_dms(&[
        "run",
        "-m",
        tiny.model.to_str().unwrap(),
        "-p",
        "hi",
        "--plugins",
        dir.path().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("rule-bad.toml") && err.contains("tau"),
        "{err}"
    );
}

#[test]
fn reliability_from_a_calibrated_rule_gates_sound_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let data = format!("{root}/results/train/grid.jsonl");
    let rule = format!("{root}/plugins/rule-default.toml");
    let out_file = dir.path().join("learned-gated.json");
    let train = |from: &str| {
        llama_dms(&[
            "train-scheduler",
            "--data",
            &data,
            "--out",
            out_file.to_str().unwrap(),
            "--epochs",
            "200",
            "--reliability-from",
            from,
        ])
    };
    let out = train(&rule);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sound: usize = stdout
        .split(" by the sound gate")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(sound > 0, "{stdout}");
    let plugin =
        llama_dms::dms::LearnedScheduler::from_json(&std::fs::read_to_string(&out_file).unwrap())
            .unwrap();
    assert_eq!(plugin.sound_gate, Some(0.5));
    assert!(plugin.reliability.is_some());
    assert!(plugin.features.iter().any(|f| f == "image.reliability"));

    // A rule plugin without reliability models is refused, naming the file.
    let bare = dir.path().join("bare.toml");
    std::fs::write(&bare, "kind = \"rule\"\nname = \"bare\"\n").unwrap();
    let out = train(bare.to_str().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bare.toml") && err.contains("reliability"),
        "{err}"
    );
}
