use super::*;
use crate::dms::{ModalitySignals, Scheduler};
use std::collections::BTreeMap;
use std::io::Write;

/// Examples where the grid rewards down-weighting an image the model is not confident about:
/// the best image weight is 0.5 for image confidence < 0.5 and 1.5 otherwise. Each carries a
/// measured variant (`image.confidence.topk`, equal to the confidence) and a group of ten.
fn synthetic(n: usize, seed: u64) -> Vec<TrainExample> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|i| {
            let c_img = rng.next_f32();
            let c_txt = 0.3 + 0.4 * rng.next_f32();
            let ideal = if c_img < 0.5 { 0.5 } else { 1.5 };
            let grid = (1..8)
                .map(|k| {
                    let w = 0.25 * k as f32;
                    GridPoint {
                        weights: vec![w, 2.0 - w],
                        loglik: -8.0 * (w - ideal).powi(2),
                        mwc: Some(0.1 * (w - 1.0).abs()),
                    }
                })
                .collect();
            let variants: BTreeMap<String, f32> =
                [("image.confidence.topk".to_string(), c_img)].into();
            TrainExample {
                signals: Signals {
                    images: vec![ModalitySignals {
                        confidence: c_img,
                        uncertainty: 0.2 * rng.next_f32(),
                    }],
                    text: ModalitySignals {
                        confidence: c_txt,
                        uncertainty: 0.1,
                    },
                    consistency: vec![0.5 + 0.2 * rng.next_f32()],
                    image_missing: false,
                    variants: vec![variants],
                },
                grid,
                group: Some(i as u64 / 10),
            }
        })
        .collect()
}

fn one_image(c: f32) -> Signals {
    let mut s = Signals::neutral(1);
    s.images[0].confidence = c;
    s.images[0].uncertainty = 0.1;
    s.text.confidence = 0.5;
    s.text.uncertainty = 0.1;
    s.consistency = vec![0.6];
    s.variants = vec![[("image.confidence.topk".to_string(), c)].into()];
    s
}

fn point(w: f32, loglik: f32) -> GridPoint {
    GridPoint {
        weights: vec![w, 2.0 - w],
        loglik,
        mwc: None,
    }
}

#[test]
fn rewards_are_a_softmax_of_the_scores() {
    let ex = TrainExample {
        signals: Signals::neutral(1),
        grid: vec![point(0.5, 0.0), point(1.5, 0.0)],
        group: None,
    };
    let cfg = TrainConfig::default();
    assert_eq!(ex.rewards(&cfg), vec![0.5, 0.5]);
    // A higher score (and a lower temperature) moves the reward towards that point.
    let mut ex2 = ex.clone();
    ex2.grid[0].loglik = 1.0;
    let r = ex2.rewards(&cfg);
    assert!(r[0] > 0.5 && (r[0] + r[1] - 1.0).abs() < 1e-9);
    let cold = TrainConfig {
        temperature: 0.01,
        ..cfg.clone()
    };
    assert!(ex2.rewards(&cold)[0] > 0.999);
    // The MWC penalty counts against a point.
    let mut ex3 = ex.clone();
    ex3.grid[0].mwc = Some(10.0);
    assert!(ex3.rewards(&cfg)[0] < 0.5);
    // An unmeasured loss scores as a measured 0.
    let mut ex4 = ex;
    ex4.grid[0].mwc = Some(0.0);
    assert_eq!(ex4.rewards(&cfg), vec![0.5, 0.5]);
}

#[test]
fn the_report_counts_the_examples_with_the_mwc_loss_everywhere() {
    let mut data = synthetic(60, 3);
    for ex in &mut data[..20] {
        ex.grid.iter_mut().for_each(|g| g.mwc = None);
    }
    data[20].grid[0].mwc = None;
    let (_, report) = train(&data, &TrainConfig::default(), None).unwrap();
    assert_eq!(report.n_with_mwc, 39);
}

#[test]
fn training_learns_the_rule_and_beats_plain_fusion() {
    let data = synthetic(200, 1);
    let cfg = TrainConfig {
        seed: 7,
        epochs: 500,
        ..TrainConfig::default()
    };
    let pb = indicatif::ProgressBar::hidden();
    let (model, report) = train(&data, &cfg, Some(&pb)).unwrap();
    assert_eq!(pb.position(), (L2S.len() * 5) as u64 + 1);
    // 20 groups of ten, 5 folds.
    assert_eq!(
        (report.n_used, report.n_folds, report.n_skipped),
        (200, 5, 0)
    );
    assert!(
        report.valid_reward > report.valid_reward_uniform + 0.2,
        "{report:?}"
    );
    assert_eq!(
        model.candidates,
        vec![0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    );
    // Every feature all examples have, sorted (the defaults and the measured variant).
    assert!(model
        .features
        .contains(&"image.confidence.topk".to_string()));
    assert!(model.features.contains(&"image.confidence".to_string()));
    let low = model.weights(&one_image(0.1)).unwrap();
    let high = model.weights(&one_image(0.9)).unwrap();
    assert_eq!(low.images[0], 0.5, "{low:?}");
    assert_eq!(high.images[0], 1.5, "{high:?}");
    assert!((low.images[0] + low.text - 2.0).abs() < 1e-5);
    assert!(model.validate().is_ok());
    // The trained file loads back as a plugin.
    let back = LearnedScheduler::from_json(&model.to_json()).unwrap();
    assert_eq!(back, model);
}

#[test]
fn training_can_be_limited_to_named_features() {
    let data = synthetic(60, 5);
    let cfg = TrainConfig {
        epochs: 200,
        features: Some(vec!["image.confidence".into()]),
        ..TrainConfig::default()
    };
    let (model, _) = train(&data, &cfg, None).unwrap();
    assert_eq!(model.features, vec!["image.confidence".to_string()]);
    let missing = TrainConfig {
        features: Some(vec!["image.nothing".into()]),
        ..cfg
    };
    let e = train(&data, &missing, None).unwrap_err().to_string();
    assert!(e.contains("image.nothing"), "{e}");
}

#[test]
fn training_is_deterministic_given_the_seed() {
    let data = synthetic(40, 2);
    let cfg = TrainConfig {
        epochs: 50,
        seed: 11,
        ..TrainConfig::default()
    };
    let (a, ra) = train(&data, &cfg, None).unwrap();
    let (b, rb) = train(&data, &cfg, None).unwrap();
    assert_eq!(a, b);
    assert_eq!(ra, rb);
}

#[test]
fn bad_inputs_are_rejected() {
    let data = synthetic(3, 3);
    assert!(matches!(
        train(&[], &TrainConfig::default(), None),
        Err(DmsError::Train(_))
    ));
    let bad_cfg = TrainConfig {
        temperature: 0.0,
        ..TrainConfig::default()
    };
    assert!(train(&data, &bad_cfg, None).is_err());
    let mut bad = data.clone();
    bad[1].grid[0].weights.push(1.0);
    let e = train(&bad, &TrainConfig::default(), None).unwrap_err();
    assert!(e.to_string().contains("example 1"), "{e}");
    // One group: no folds, the validation reward is the train reward.
    let cfg = TrainConfig {
        epochs: 20,
        ..TrainConfig::default()
    };
    let (_, r) = train(&data, &cfg, None).unwrap();
    assert_eq!((r.n_used, r.n_folds), (3, 0));
    assert_eq!(r.valid_reward, r.train_reward);
    // Examples without exactly one image are left out; none left is an error.
    let text_only = TrainExample {
        signals: Signals::neutral(0),
        grid: vec![GridPoint {
            weights: vec![1.0],
            loglik: 0.0,
            mwc: None,
        }],
        group: None,
    };
    let mut mixed = data.clone();
    mixed.push(text_only.clone());
    assert_eq!(train(&mixed, &cfg, None).unwrap().1.n_skipped, 1);
    assert!(train(&[text_only], &cfg, None).is_err());
}

#[test]
fn read_examples_reports_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    let data = synthetic(2, 4);
    let mut f = std::fs::File::create(&path).unwrap();
    for ex in &data {
        writeln!(f, "{}", serde_json::to_string(ex).unwrap()).unwrap();
    }
    writeln!(f).unwrap();
    drop(f);
    assert_eq!(read_examples(&path).unwrap(), data);

    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(f, "{{\"signals\": 3}}").unwrap();
    drop(f);
    let e = read_examples(&path).unwrap_err().to_string();
    assert!(e.contains("train.jsonl: line 4"), "{e}");

    let short = dir.path().join("short.jsonl");
    let mut ex = data[0].clone();
    ex.grid[0].weights = vec![1.0];
    std::fs::write(&short, serde_json::to_string(&ex).unwrap()).unwrap();
    let e = read_examples(&short).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("grid[0].weights"), "{e}");

    // mwc, variants and group may be omitted.
    let line = r#"{"signals": {"images": [], "text": {"confidence": 0.5, "uncertainty": 0.1},
        "consistency": [], "image_missing": true}, "grid": [{"weights": [1.0], "loglik": -1.0}]}"#;
    let p = dir.path().join("min.jsonl");
    std::fs::write(&p, line.replace('\n', " ")).unwrap();
    let read = read_examples(&p).unwrap();
    assert_eq!(read[0].grid[0].mwc, None);
    assert!(read[0].group.is_none() && read[0].signals.variants.is_empty());
    assert!(read_examples(&dir.path().join("missing.jsonl")).is_err());
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n").unwrap();
    assert!(read_examples(&empty).is_err());
}

#[test]
fn reliability_models_add_features_and_the_sound_gate_leaves_examples_to_plain_fusion() {
    let data = synthetic(100, 3);
    let reliability = Reliability::reading("image.confidence.topk", "image.confidence.topk");
    let cfg = TrainConfig {
        epochs: 300,
        reliability: Some(reliability.clone()),
        sound_gate: Some(0.5),
        ..TrainConfig::default()
    };
    let (model, report) = train(&data, &cfg, None).unwrap();
    let sound = data
        .iter()
        .filter(|e| e.signals.variants[0]["image.confidence.topk"] >= 0.5)
        .count();
    assert_eq!((report.n_sound, report.n_agreeing), (sound, 0));
    assert!(model.features.contains(&"image.reliability".to_string()));
    assert_eq!(
        (model.reliability.as_ref(), model.sound_gate),
        (Some(&reliability), Some(0.5))
    );
    // Sound inputs get plain fusion; an unsure image is still down-weighted.
    let w = model.weights(&one_image(0.9)).unwrap();
    assert_eq!(w, crate::dms::ModalityWeights::uniform(1));
    assert_eq!(model.weights(&one_image(0.1)).unwrap().images[0], 0.5);
    // A gate needs models.
    let orphan = TrainConfig {
        reliability: None,
        ..cfg
    };
    assert!(train(&data, &orphan, None).is_err());
}
