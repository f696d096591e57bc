//! Unit tests of `custom`: data lines, `--corrupt` specs, mismatch pairing, seeded corruption,
//! scoring.

use super::*;

const PIXELS: u64 = 4096 * 4096;

/// A directory with `red.png`, `blue.png` (flat 16x16) and `notes.txt`.
fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, rgb) in [("red.png", [220, 10, 10]), ("blue.png", [10, 10, 220])] {
        // A white left edge, so that blurring changes something.
        image::RgbImage::from_fn(16, 16, |x, _| {
            image::Rgb(if x < 3 { [255; 3] } else { rgb })
        })
        .save(dir.path().join(name))
        .unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    dir
}

fn set(text: &str, dir: &Path, seed: u64) -> DataSet {
    DataSet {
        name: "t.jsonl".into(),
        items: parse(text, dir, PIXELS).unwrap(),
        seed,
    }
}

const GOOD: &str = r#"{"image": "red.png", "question": "What colour?", "answers": ["red", "Dark red"]}

{"image": null, "question": "Sky colour?", "answers": ["blue"], "source": "extra fields are ignored"}
{"image": "blue.png", "question": "And this?", "answers": ["blue"]}
"#;

#[test]
fn good_lines_parse_skipping_blank_ones() {
    let d = dir();
    let items = parse(GOOD, d.path(), PIXELS).unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!((items[0].id, items[0].line), (0, 1));
    assert_eq!(
        items[0].image.as_deref(),
        Some(d.path().join("red.png").as_path())
    );
    assert_eq!(items[0].answers, ["red", "Dark red"]);
    assert_eq!(
        (items[1].id, items[1].line, items[1].image.is_none()),
        (1, 3, true)
    );
    assert_eq!(items[2].line, 4);
}

#[test]
fn bad_lines_name_the_line_and_the_problem() {
    let d = dir();
    let cases = [
        (
            "{\"question\": \"q\", \"answers\": [\"a\"]}\n{oops",
            "line 2: bad JSON",
        ),
        (r#"{"answers": ["a"]}"#, "line 1: \"question\" is missing"),
        (
            r#"{"question": " ", "answers": ["a"]}"#,
            "line 1: \"question\" is missing",
        ),
        (r#"{"question": "q"}"#, "line 1: \"answers\" is missing"),
        (
            r#"{"question": "q", "answers": []}"#,
            "line 1: \"answers\" is empty",
        ),
        (
            r#"{"question": "q", "answers": ["?!"]}"#,
            "line 1: answer \"?!\" has no letters",
        ),
        (r#"{"question": "q", "answers": "a"}"#, "line 1: bad JSON"),
        (
            r#"{"image": "gone.png", "question": "q", "answers": ["a"]}"#,
            "cannot be read",
        ),
        (
            r#"{"image": "notes.txt", "question": "q", "answers": ["a"]}"#,
            "is not an image",
        ),
        ("\n\n", "has no items"),
    ];
    for (text, want) in cases {
        let e = parse(text, d.path(), PIXELS).unwrap_err();
        assert!(e.contains(want), "{text:?}: {e}");
    }
    let big = r#"{"image": "red.png", "question": "q", "answers": ["a"]}"#;
    let e = parse(big, d.path(), 100).unwrap_err();
    assert!(e.contains("16x16 pixels (at most 100"), "{e}");
    let many = "\n".repeat(MAX_LINES + 1);
    assert!(parse(&many, d.path(), PIXELS)
        .unwrap_err()
        .contains("more than"));
}

#[test]
fn specs_parse_into_clean_plus_labelled_conditions() {
    let c = parse_spec("noise:0.4, blur:2,occlude:0.3,missing,mismatch").unwrap();
    let labels: Vec<&str> = c.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "clean",
            "noise-0.4",
            "blur-2",
            "occlude-0.3",
            "missing",
            "mismatch"
        ]
    );
    assert_eq!(c[1].corruption, Some(Corruption::Noise(0.4)));
    assert_eq!(c[2].corruption, Some(Corruption::Blur(2.0)));
    let groups: Vec<&str> = c.iter().map(DataCondition::group).collect();
    assert_eq!(
        groups,
        [
            "clean",
            "corrupted",
            "corrupted",
            "corrupted",
            "corrupted",
            "conflict"
        ]
    );
    assert_eq!(parse_spec("").unwrap().len(), 1);
}

#[test]
fn bad_specs_say_what_is_wrong() {
    let cases = [
        (
            "fog",
            "unknown corruption \"fog\" (noise:S, blur:R, occlude:F, missing, mismatch)",
        ),
        ("noise", "noise needs a value"),
        ("noise:abc", "not \"abc\""),
        ("noise:-1", "above 0"),
        ("occlude:1.5", "at most 1"),
        ("blur:0", "above 0"),
        ("missing:2", "takes no value"),
        ("missing,missing", "listed twice"),
    ];
    for (spec, want) in cases {
        let e = parse_spec(spec).unwrap_err();
        assert!(e.contains(want), "{spec}: {e}");
    }
}

#[test]
fn mismatch_pairs_an_item_with_an_image_of_other_answers() {
    let d = dir();
    let text = r#"{"image": "red.png", "question": "q", "answers": ["red"]}
{"image": "red.png", "question": "q", "answers": ["RED!"]}
{"question": "q", "answers": ["green"]}
{"image": "red.png", "question": "How many?", "answers": ["one"]}
{"image": "blue.png", "question": "q", "answers": ["blue"]}
"#;
    for seed in 0..20 {
        let s = set(text, d.path(), seed);
        // Never the same image file, even under a question with other answers.
        assert_eq!(s.partner(0), Some(4));
        assert_eq!(s.partner(1), Some(4));
        assert_eq!(s.partner(3), Some(4));
        assert!(matches!(s.partner(2), Some(0 | 1 | 3 | 4)));
        assert!(matches!(s.partner(4), Some(0 | 1 | 3)));
    }
    let picks: std::collections::HashSet<_> = (0..20)
        .map(|seed| set(text, d.path(), seed).partner(4))
        .collect();
    assert!(picks.len() > 1, "the seed picks the partner: {picks:?}");
    // Only one answer in the file: nothing qualifies, so no mismatch job.
    let same = r#"{"image": "red.png", "question": "q", "answers": ["red"]}
{"image": "blue.png", "question": "q", "answers": ["red"]}
"#;
    let s = set(same, d.path(), 1);
    assert_eq!(s.partner(0), None);
    let conditions = parse_spec("noise:1,mismatch").unwrap();
    assert_eq!(s.jobs(&conditions), [(0, 0), (0, 1), (1, 0), (1, 1)]);
}

#[test]
fn text_only_items_run_clean_only() {
    let d = dir();
    let s = set(GOOD, d.path(), 3);
    let conditions = parse_spec("noise:1,blur:2,missing,mismatch").unwrap();
    let jobs = s.jobs(&conditions);
    assert_eq!(jobs.iter().filter(|j| j.0 == 1).count(), 1);
    assert_eq!(jobs.len(), 5 + 1 + 5);
    assert_eq!(s.image(1, &conditions[0]).unwrap(), None);
    assert_eq!(s.image(0, &conditions[3]).unwrap(), None);
    let swapped = s.image(0, &conditions[4]).unwrap().unwrap();
    assert_eq!(swapped, std::fs::read(d.path().join("blue.png")).unwrap());
}

#[test]
fn corruption_is_deterministic_per_seed() {
    let d = dir();
    let conditions = parse_spec("noise:0.5,occlude:0.5,blur:2").unwrap();
    let a = set(GOOD, d.path(), 7);
    let b = set(GOOD, d.path(), 7);
    let c = set(GOOD, d.path(), 8);
    for condition in &conditions[1..] {
        let x = a.image(0, condition).unwrap().unwrap();
        assert_eq!(x, b.image(0, condition).unwrap().unwrap());
        let decoded = image::load_from_memory(&x).unwrap().into_rgb8();
        assert_eq!(decoded.dimensions(), (16, 16));
        let clean = image::open(d.path().join("red.png")).unwrap().into_rgb8();
        assert_ne!(decoded, clean, "{}", condition.label);
    }
    let noisy = &conditions[1];
    assert_ne!(a.image(0, noisy).unwrap(), c.image(0, noisy).unwrap());
    assert_ne!(a.image(0, noisy).unwrap(), a.image(2, noisy).unwrap());
}

#[test]
fn scoring_normalises_and_matches_whole_word_phrases() {
    let accepted = vec!["dark grey".to_string(), "The Black".to_string()];
    assert_eq!(
        normalise("  The cat's   colour: Dark-Grey! "),
        "cat s colour dark grey"
    );
    assert!(is_correct("Dark grey.", &accepted));
    assert!(is_correct("It is a dark-grey cat.", &accepted));
    assert!(is_correct("black", &accepted));
    assert!(is_correct("BLACK!", &accepted));
    assert!(!is_correct("grey", &accepted));
    assert!(!is_correct("blackish", &accepted));
    assert!(!is_correct("", &accepted));
    assert!(is_correct("The main color is red.", &["red".to_string()]));
    assert_eq!(normalise("A"), "a");
    assert!(is_correct("The answer is (A).", &["A".to_string()]));
    assert!(!is_correct("The answer is B.", &["A".to_string()]));
    assert!(!is_correct("reddish", &["red".to_string()]));
}
