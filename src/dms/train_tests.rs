use super::*;
use crate::dms::{ModalitySignals, Scheduler};
use std::io::Write;

/// Examples where the grid rewards down-weighting an image the model is not confident about:
/// the best image weight is 0.4 for confidence < 0.5 and 1.4 otherwise.
fn synthetic(n: usize, seed: u64) -> Vec<TrainExample> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let c_img = rng.next_f32();
            let c_txt = 0.3 + 0.4 * rng.next_f32();
            let ideal = if c_img < 0.5 { 0.4 } else { 1.4 };
            let grid = (1..8)
                .map(|k| {
                    let w = 0.25 * k as f32;
                    GridPoint {
                        weights: vec![w, 2.0 - w],
                        loglik: -8.0 * (w - ideal).powi(2),
                        mwc: 0.1 * (w - 1.0).abs(),
                    }
                })
                .collect();
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
                },
                grid,
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
    s
}

#[test]
fn target_is_expected_weights_over_grid() {
    let ex = TrainExample {
        signals: Signals::neutral(1),
        grid: vec![
            GridPoint {
                weights: vec![0.5, 1.5],
                loglik: 0.0,
                mwc: 0.0,
            },
            GridPoint {
                weights: vec![1.5, 0.5],
                loglik: 0.0,
                mwc: 0.0,
            },
        ],
    };
    let cfg = TrainConfig::default();
    assert_eq!(ex.target(&cfg), vec![0.5, 0.5]);
    // A higher loglik (and lower temperature) moves the target towards that point.
    let mut ex2 = ex.clone();
    ex2.grid[0].loglik = 1.0;
    let t = ex2.target(&cfg);
    assert!(t[0] < 0.5 && (t[0] + t[1] - 1.0).abs() < 1e-6);
    let cold = TrainConfig {
        temperature: 0.01,
        ..cfg.clone()
    };
    assert!((ex2.target(&cold)[0] - 0.25).abs() < 1e-4);
    // The MWC penalty counts against a point.
    let mut ex3 = ex;
    ex3.grid[0].mwc = 10.0;
    assert!(ex3.target(&cfg)[0] > 0.5);
}

#[test]
fn training_reduces_loss_and_learns_the_rule() {
    let data = synthetic(200, 1);
    let cfg = TrainConfig {
        seed: 7,
        ..TrainConfig::default()
    };
    let pb = indicatif::ProgressBar::hidden();
    let (model, report) = train(&data, &cfg, Some(&pb)).unwrap();
    assert_eq!(pb.position(), cfg.epochs as u64);
    assert_eq!((report.n_train, report.n_valid), (160, 40));
    assert!(
        report.train_loss < report.initial_train_loss - 0.05,
        "{report:?}"
    );
    assert!(report.valid_loss < report.initial_train_loss, "{report:?}");
    let low = model.weights(&one_image(0.1)).unwrap();
    let high = model.weights(&one_image(0.9)).unwrap();
    assert!(
        low.images[0] < 1.0 && low.images[0] < high.images[0],
        "{low:?} {high:?}"
    );
    assert!(high.images[0] > 1.0, "{high:?}");
    assert!(model.validate().is_ok());
    let info = model.trained.as_ref().unwrap();
    assert_eq!((info.examples, info.seed), (200, 7));
    let eval = evaluate_loss(&model, &data, &cfg);
    assert!(eval.is_finite() && eval < report.initial_train_loss);
    // The trained file loads back as a plugin.
    let back = LearnedScheduler::from_json(&model.to_json()).unwrap();
    assert_eq!(back, model);
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
    let other = TrainConfig { seed: 12, ..cfg };
    let (c, _) = train(&data, &other, None).unwrap();
    assert_ne!(a.w1, c.w1);
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
    // Single example: nothing held out, valid loss = train loss.
    let (_, r) = train(&data[..1], &TrainConfig::default(), None).unwrap();
    assert_eq!((r.n_train, r.n_valid), (1, 0));
    assert_eq!(r.valid_loss, r.train_loss);
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

    // mwc may be omitted.
    let line = r#"{"signals": {"images": [], "text": {"confidence": 0.5, "uncertainty": 0.1},
        "consistency": [], "image_missing": true}, "grid": [{"weights": [1.0], "loglik": -1.0}]}"#;
    let p = dir.path().join("min.jsonl");
    std::fs::write(&p, line.replace('\n', " ")).unwrap();
    assert_eq!(read_examples(&p).unwrap()[0].grid[0].mwc, 0.0);
    assert!(read_examples(&dir.path().join("missing.jsonl")).is_err());
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n").unwrap();
    assert!(read_examples(&empty).is_err());
}
