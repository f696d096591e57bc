use super::*;
use crate::eval::trust::analysis::{summarise, REPORT_SETS};
use crate::eval::trust::testutil::{sample_meta, sample_records};

fn summary() -> TrustSummary {
    summarise(&sample_records(), &sample_meta())
}

#[test]
fn markdown_has_every_section() {
    let md = markdown(&summary());
    if std::env::var_os("TRUST_PRINT_MD").is_some() {
        println!("{md}");
    }
    for section in [
        "## Aims",
        "## Signal AUCs",
        "## Control curve",
        "## Accuracy per group",
        "## Accuracy per condition",
        "## Paired comparisons",
        "## Weights",
        "Weights on clean inputs",
    ] {
        assert!(md.contains(section), "missing {section}");
    }
    // Signal rows sorted by key, pseudo-modes present, the global best weight named.
    let signals = &md[md.find("## Signal AUCs").unwrap()..];
    let at = |s: &str| signals.find(s).unwrap_or_else(|| panic!("missing {s}"));
    assert!(at("`consistency.js`") < at("`image.confidence.top1`"));
    assert!(at("`image.uncertainty`") < at("`text.confidence.top1`"));
    assert!(md.contains("| global-best (w_image 0.5) |"));
    assert!(md.contains("| oracle |"));
    assert!(md.contains("| one-unreliable | rule | off | 20 | 90.0% | 0.0% | +90.0 points"));
    assert!(md.contains("| 18/0 |"));
    // Every table row has as many cells as its header.
    let (mut columns, mut prev) = (0, "");
    for line in md.lines() {
        if line.starts_with('|') {
            let n = line.matches('|').count();
            if !prev.starts_with('|') {
                columns = n;
            }
            assert_eq!(n, columns, "{line}");
        }
        prev = line;
    }
}

#[test]
fn aims_are_judged() {
    let s = summary();
    let all = aims(&s);
    let find = |name: &str| all.iter().find(|a| a.name.starts_with(name)).unwrap();
    // image AUC 1.0 >= 0.9; text AUC 0.5 < 0.85.
    assert!(find("reliability AUC of `image.confidence.top1`").met);
    assert!(!find("reliability AUC of `text.confidence.top1`").met);
    assert!(find("rule: gain over off").met);
    assert_eq!(find("rule: gain over off").value, "+90.0 points");
    assert!(find("rule: oracle gap recovered").met);
    assert!(find("rule: clean accuracy").met);
    // rule gets 0 of 4 conflict items: outside 50% +/- 10%.
    assert!(!find("rule: conflict accuracy").met);
    assert!(find("rule: clean items with weights").met);
    assert!(!all.iter().any(|a| a.name.starts_with("off:")));
    let md = markdown(&s);
    assert!(md.contains("| rule: conflict accuracy (control) | 50% +/- 10% | 0.0% | not met |"));
    // Without a signal the aim is not met and shows no value.
    let mut s = s;
    s.meta.default_image_key = "image.confidence".into();
    let a = aims(&s).remove(0);
    assert_eq!((a.value.as_str(), a.met), ("-", false));
}

#[test]
fn the_three_plots_are_written_and_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_plots(&summary(), dir.path()).unwrap();
    let names = [
        "control_curve.png",
        "control_curve_modes.png",
        "signal_auc.png",
        "image_weight_by_condition.png",
    ];
    assert_eq!(written, names.map(|n| dir.path().join(n)).to_vec());
    for path in &written {
        assert!(std::fs::metadata(path).unwrap().len() > 1000, "{path:?}");
        image::open(path).unwrap();
    }
    let names: Vec<String> = mode_series(&summary())
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        names,
        [
            "grid: one-unreliable",
            "off",
            "rule",
            "global-best (w_image 0.5)",
            "oracle"
        ]
    );
    assert_eq!(control_series(&summary()).len(), REPORT_SETS.len());
    assert_eq!(short_key("image.confidence.top1"), "image.c.top1");
}

#[test]
fn plots_without_data_are_skipped() {
    let empty = summarise(&[], &Default::default());
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        write_plots(&empty, dir.path()).unwrap(),
        Vec::<PathBuf>::new()
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(markdown(&empty).contains("## Aims"));
}
