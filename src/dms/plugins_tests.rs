use super::*;
use crate::dms::Signals;

fn parse(name: &str, text: &str) -> Result<Arc<dyn Scheduler>, DmsError> {
    parse_plugin(Path::new(name), text)
}

/// Asserts the error is a plugin error for `file` and `field`, and that its message says so.
fn expect_field(res: Result<Arc<dyn Scheduler>, DmsError>, file: &str, field: &str) -> String {
    let e = res.expect_err("should fail");
    let msg = e.to_string();
    match &e {
        DmsError::Plugin {
            file: f, field: fl, ..
        } => {
            assert_eq!(f, Path::new(file), "{msg}");
            assert_eq!(fl, field, "{msg}");
        }
        other => panic!("not a plugin error: {other:?}"),
    }
    if !field.is_empty() {
        assert!(
            msg.starts_with(&format!("{file}: field \"{field}\": ")),
            "{msg}"
        );
    }
    msg
}

#[test]
fn rule_plugin_with_defaults() {
    let s = parse("plugins/r.toml", "kind = \"rule\"\nname = \"r\"\ntau = 2\n").unwrap();
    assert_eq!(s.name(), "r");
    assert_eq!(s.kind(), "rule");
    assert!(s.needs_signals());
    let w = s.weights(&Signals::neutral(2)).unwrap();
    assert_eq!(w.m(), 3);
}

#[test]
fn bad_rule_plugins_name_file_and_field() {
    let msg = expect_field(
        parse(
            "plugins/rule-x.toml",
            "kind = \"rule\"\nname = \"x\"\ntau = 0\n",
        ),
        "plugins/rule-x.toml",
        "tau",
    );
    assert_eq!(
        msg,
        "plugins/rule-x.toml: field \"tau\": must be > 0 (got 0)"
    );
    expect_field(
        parse("a.toml", "kind = \"rule\"\nname = \"x\"\ntau = \"hot\"\n"),
        "a.toml",
        "tau",
    );
    let msg = expect_field(
        parse(
            "a.toml",
            "kind = \"rule\"\nname = \"x\"\ntemperature = 1.0\n",
        ),
        "a.toml",
        "temperature",
    );
    assert!(msg.contains("unknown field"), "{msg}");
    expect_field(
        parse(
            "a.toml",
            "kind = \"rule\"\nname = \"x\"\nw_min = 1.5\nw_max = 1.0\n",
        ),
        "a.toml",
        "w_min",
    );
    expect_field(
        parse("a.toml", "kind = \"rule\"\nalpha = 1.0\n"),
        "a.toml",
        "name",
    );
    expect_field(parse("a.toml", "name = \"x\"\n"), "a.toml", "kind");
    expect_field(
        parse("a.toml", "kind = \"magic\"\nname = \"x\"\n"),
        "a.toml",
        "kind",
    );
    expect_field(
        parse("a.toml", "kind = 3\nname = \"x\"\n"),
        "a.toml",
        "kind",
    );
    expect_field(
        parse("a.toml", "kind = \"rule\"\nname = \"off\"\n"),
        "a.toml",
        "name",
    );
    expect_field(
        parse("a.toml", "kind = \"rule\"\nname = \"a b\"\n"),
        "a.toml",
        "name",
    );
    expect_field(
        parse("a.toml", "kind = \"rule\"\nname = \"x\"\ngamma = -1\n"),
        "a.toml",
        "gamma",
    );
    let msg = expect_field(parse("a.toml", "kind = \"rule\"\nname = \n"), "a.toml", "");
    assert!(msg.contains("invalid TOML at line 2"), "{msg}");
    let msg = expect_field(parse("a.json", "{\"kind\": "), "a.json", "");
    assert!(msg.contains("invalid JSON"), "{msg}");
    expect_field(parse("a.json", "[1, 2]"), "a.json", "");
}

#[test]
fn rule_plugin_in_json() {
    let s = parse("r.json", r#"{"kind": "rule", "name": "rj", "alpha": 2}"#).unwrap();
    assert_eq!(s.name(), "rj");
}

#[test]
fn learned_plugin_parses_and_validates() {
    let features = vec![
        "image.confidence".to_string(),
        "text.confidence".to_string(),
    ];
    let mut l = LearnedScheduler::uniform("learned-a", &features, &[0.5, 1.0, 1.5]);
    l.coef[0][0] = 1.0;
    let s = parse("learned-a.json", &l.to_json()).unwrap();
    assert_eq!(s.kind(), "learned");
    assert_eq!(s.name(), "learned-a");
    // Wrong shape: field named.
    let mut bad = l.clone();
    bad.bias.pop();
    expect_field(parse("l.json", &bad.to_json()), "l.json", "bias");
    // Wrong type inside a nested array: the path is given.
    let mut value: serde_json::Value = serde_json::from_str(&l.to_json()).unwrap();
    value["coef"][0][0] = "one".into();
    let text = value.to_string();
    let msg = expect_field(parse("l.json", &text), "l.json", "coef[0][0]");
    assert!(msg.contains("invalid type"), "{msg}");
    let text = l
        .to_json()
        .replacen("\"bias\"", "\"extra\": 1, \"bias\"", 1);
    expect_field(parse("l.json", &text), "l.json", "extra");
}

#[cfg(feature = "script")]
#[test]
fn script_plugins() {
    let s = parse(
        "s.toml",
        "kind = \"script\"\nname = \"s\"\nsource = \"3.0 * confidence\"\ntau = 0.5\n",
    )
    .unwrap();
    assert_eq!(s.kind(), "script");
    let msg = expect_field(
        parse(
            "s.toml",
            "kind = \"script\"\nname = \"s\"\nsource = \"1 +\"\n",
        ),
        "s.toml",
        "source",
    );
    assert!(msg.contains("syntax"), "{msg}");
    expect_field(
        parse(
            "s.toml",
            "kind = \"script\"\nname = \"s\"\nsource = \"loop {}\"\n",
        ),
        "s.toml",
        "source",
    );
    expect_field(
        parse(
            "s.toml",
            "kind = \"script\"\nname = \"s\"\nsource = \"1.0\"\ntau = -1\n",
        ),
        "s.toml",
        "tau",
    );
    expect_field(
        parse("s.toml", "kind = \"script\"\nname = \"s\"\n"),
        "s.toml",
        "source",
    );
}

#[test]
fn load_dir_and_registry_api() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("rule-a.toml"),
        "kind = \"rule\"\nname = \"rule-a\"\n",
    )
    .unwrap();
    std::fs::write(d.join("notes.md"), "not a plugin").unwrap();
    let features = vec!["consistency".to_string()];
    let mut l = LearnedScheduler::uniform("learned-b", &features, &[0.5, 1.0]);
    std::fs::write(d.join("learned-b.json"), l.to_json()).unwrap();
    l.name = "learned-a".into();
    std::fs::write(d.join("z-learned.json"), l.to_json()).unwrap();
    let r = Registry::load_dir(d).unwrap();
    assert_eq!(
        r.names(),
        vec!["learned-a", "learned-b", "off", "rule-a", "rule-default"]
    );
    assert_eq!(r.default_rule().name(), "rule-default");
    assert_eq!(r.default_learned().unwrap().name(), "learned-a");
    assert_eq!(r.get("off").unwrap().kind(), "off");
    assert!(r.get("nope").is_none());
    assert!(matches!(
        r.require("nope"),
        Err(DmsError::UnknownScheduler(_))
    ));
    assert_eq!(r.file_of("rule-a"), Some(d.join("rule-a.toml").as_path()));
    assert_eq!(r.file_of("off"), None);

    // A file may redefine rule-default.
    std::fs::write(
        d.join("rule-default.toml"),
        "kind = \"rule\"\nname = \"rule-default\"\nalpha = 1\n",
    )
    .unwrap();
    let r = Registry::load_dir(d).unwrap();
    assert!(r.file_of("rule-default").is_some());

    // Duplicate names are errors naming the second file.
    std::fs::write(
        d.join("rule-b.toml"),
        "kind = \"rule\"\nname = \"rule-a\"\n",
    )
    .unwrap();
    let e = Registry::load_dir(d).unwrap_err();
    match &e {
        DmsError::Plugin {
            file,
            field,
            reason,
        } => {
            assert_eq!(file, &d.join("rule-b.toml"));
            assert_eq!(field, "name");
            assert!(reason.contains("duplicate"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Registry::load_dir(&d.join("missing")),
        Err(DmsError::Io { .. })
    ));
}

#[test]
fn builtin_and_insert() {
    let mut r = Registry::builtin();
    assert_eq!(r.names(), vec!["off", "rule-default"]);
    assert!(r.default_learned().is_none());
    r.insert(Arc::new(LearnedScheduler::uniform(
        "mine",
        &["consistency".to_string()],
        &[0.5, 1.0],
    )))
    .unwrap();
    assert_eq!(r.default_learned().unwrap().name(), "mine");
    assert!(r.insert(Arc::new(OffScheduler)).is_err());
}

#[test]
fn shipped_plugins_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    let r = Registry::load_dir(&dir).unwrap();
    let names = r.names();
    assert!(names.contains(&"rule-default".to_string()), "{names:?}");
    assert!(r.file_of("rule-default").is_some());
    let rule = r.default_rule();
    assert_eq!(
        rule.weights(&Signals::neutral(1)).unwrap(),
        RuleScheduler::default()
            .weights(&Signals::neutral(1))
            .unwrap()
    );
    #[cfg(feature = "script")]
    assert!(names.contains(&"script-example".to_string()), "{names:?}");
}

#[test]
fn backticked_field() {
    assert_eq!(
        backticked("unknown field `tau2`, expected one of `tau`"),
        Some("tau2".into())
    );
    assert_eq!(backticked("no ticks"), None);
}
