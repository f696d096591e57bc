//! The `llama-dms` binary as a user runs it: answers, exit codes, one-line errors.

mod common;

use std::process::{Command, Output};

fn llama_dms(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llama-dms"))
        .args(args)
        .output()
        .expect("run llama-dms")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_answers_about_an_image_on_the_tiny_model() {
    let tiny = common::tiny_models();
    let image = common::scratch().join("red.png");
    std::fs::write(&image, common::png(32, 32, [255, 0, 0])).unwrap();
    let (m, p, i) = (
        tiny.model.to_str().unwrap(),
        tiny.mmproj.to_str().unwrap(),
        image.to_str().unwrap(),
    );
    let out = llama_dms(&[
        "run",
        "-m",
        m,
        "--mmproj",
        p,
        "-i",
        i,
        "-p",
        "What colour?",
        "-n",
        "8",
        "--image-weight",
        "0.5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    let err = stderr(&out);
    assert!(
        err.contains("prompt tokens") && err.contains("image encode"),
        "{err}"
    );
}

#[test]
fn a_chat_template_is_a_file_or_a_builtin_name() {
    let tiny = common::tiny_models();
    let (m, p) = (tiny.model.to_str().unwrap(), tiny.mmproj.to_str().unwrap());
    let run = |template: &str| {
        llama_dms(&[
            "run",
            "-m",
            m,
            "--mmproj",
            p,
            "-p",
            "Hi",
            "-n",
            "2",
            "--chat-template",
            template,
        ])
    };
    let file = common::scratch().join("template.jinja");
    std::fs::write(
        &file,
        "{% for m in messages %}{{ m.content }}\n{% endfor %}",
    )
    .unwrap();
    for ok in ["llama3", file.to_str().unwrap()] {
        let out = run(ok);
        assert!(out.status.success(), "{ok}: {}", stderr(&out));
    }
    let out = run("no-such-template");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("neither a file nor one of llama.cpp's built-in templates")
            && err.contains("chatml"),
        "{err}"
    );
}

#[test]
fn missing_files_and_bad_images_exit_2_with_one_line() {
    let tiny = common::tiny_models();
    let m = tiny.model.to_str().unwrap();
    let p = tiny.mmproj.to_str().unwrap();
    let not_image = common::scratch().join("not-an-image.png");
    std::fs::write(&not_image, b"hello").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "-m", "/nope/model.gguf", "-p", "hi"],
            "model file not found",
        ),
        (
            vec!["run", "-m", m, "--mmproj", "/nope/mmproj.gguf", "-p", "hi"],
            "mmproj file not found",
        ),
        (
            vec!["run", "-m", m, "--mmproj", p, "-i", "/nope.png", "-p", "hi"],
            "cannot read image",
        ),
        (
            vec![
                "run",
                "-m",
                m,
                "--mmproj",
                p,
                "-i",
                not_image.to_str().unwrap(),
                "-p",
                "hi",
            ],
            "not a supported image",
        ),
        (
            vec![
                "run",
                "-m",
                m,
                "-i",
                not_image.to_str().unwrap(),
                "-p",
                "hi",
            ],
            "not a supported image",
        ),
    ];
    for (args, expected) in cases {
        let out = llama_dms(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected one line, got {err}");
        assert!(
            lines[0].starts_with("error:") && lines[0].contains(expected),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn wrong_width_mmproj_exits_2_naming_both_widths() {
    let tiny = common::tiny_models();
    let wrong = common::scratch().join("cli-mmproj-48.gguf");
    let made = llama_dms(&[
        "models",
        "random-mmproj",
        "--out",
        wrong.to_str().unwrap(),
        "--n-embd",
        "48",
    ]);
    assert!(made.status.success(), "{}", stderr(&made));
    let out = llama_dms(&[
        "run",
        "-m",
        tiny.model.to_str().unwrap(),
        "--mmproj",
        wrong.to_str().unwrap(),
        "-p",
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error:") && err.contains("48") && err.contains("64"),
        "{err}"
    );
}

#[test]
fn tiny_models_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        let out = llama_dms(&[
            "models",
            "tiny",
            "--out",
            d.to_str().unwrap(),
            "--seed",
            "5",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for f in ["tiny-llama.gguf", "tiny-mmproj.gguf"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
}
