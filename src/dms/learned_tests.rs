use super::*;

/// A policy over image weights 0.5, 1 and 1.5 reading the image's and the text's confidence:
/// a confident image and unsure text pick 1.5, the reverse 0.5, alike 1.
fn example() -> LearnedScheduler {
    let features = vec![
        "image.confidence".to_string(),
        "text.confidence".to_string(),
    ];
    let mut l = LearnedScheduler::uniform("learned-test", &features, &[0.5, 1.0, 1.5]);
    l.mean = vec![0.5, 0.5];
    l.scale = vec![0.25, 0.25];
    l.coef = vec![vec![-1.0, 1.0], vec![0.0, 0.0], vec![1.0, -1.0]];
    l.trained = Some(TrainedInfo {
        command: "llama-dms train-scheduler --data x.jsonl".into(),
        examples: 10,
        train_reward: 0.5,
        valid_reward: 0.4,
        valid_reward_uniform: 0.3,
        seed: 3,
        model: None,
    });
    l
}

fn pair(c_image: f32, c_text: f32) -> Signals {
    let mut s = Signals::neutral(1);
    s.images[0].confidence = c_image;
    s.text.confidence = c_text;
    s
}

#[test]
fn json_round_trip() {
    let l = example();
    let text = l.to_json();
    assert!(text.trim_start().starts_with("{\n  \"kind\": \"learned\""));
    assert_eq!(LearnedScheduler::from_json(&text).unwrap(), l);
    let mut plain = l.clone();
    plain.trained = None;
    let text = serde_json::to_string(&plain).unwrap();
    assert_eq!(LearnedScheduler::from_json(&text).unwrap(), plain);
}

#[test]
fn the_earlier_mlp_form_is_refused_with_a_hint() {
    let old = r#"{"kind": "learned", "name": "old", "features": ["confidence"], "hidden": 1,
        "w1": [[0.0]], "b1": [0.0], "w2": [0.0], "b2": 0.0}"#;
    match LearnedScheduler::from_json(old) {
        Err(DmsError::InvalidParameter { field, reason }) => {
            assert_eq!(field, "w1");
            assert!(reason.contains("retrain"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn uniform_policy_gives_plain_fusion() {
    let l = LearnedScheduler::uniform("u", &["consistency".to_string()], &[0.0, 1.0, 2.0]);
    assert!(l.validate().is_ok());
    for n in 0..4 {
        let w = l.weights(&Signals::neutral(n)).unwrap();
        assert_eq!(w, ModalityWeights::uniform(n));
    }
}

#[test]
fn the_policy_trusts_the_more_confident_modality() {
    let l = example();
    assert_eq!(l.weights(&pair(0.9, 0.2)).unwrap().images, vec![1.5]);
    let w = l.weights(&pair(0.2, 0.9)).unwrap();
    assert_eq!((w.images[0], w.text), (0.5, 1.5));
    assert_eq!(
        l.weights(&pair(0.6, 0.6)).unwrap(),
        ModalityWeights::uniform(1)
    );
}

#[test]
fn measured_variants_take_precedence_and_missing_features_count_as_the_mean() {
    let mut l = example();
    l.features = vec!["image.confidence.topk".into(), "text.confidence".into()];
    let mut s = pair(0.2, 0.2);
    // No variant measured: the first feature sits at its mean, the text's 0.2 is unsure.
    let close = |a: Vec<f32>, b: [f32; 2]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    assert!(close(l.features_of(&s, 0), [0.0, -1.2]));
    s.variants = vec![[("image.confidence.topk".to_string(), 0.9)].into()];
    assert!(close(l.features_of(&s, 0), [1.6, -1.2]));
    assert_eq!(l.weights(&s).unwrap().images, vec![1.5]);
    assert_eq!(pair_feature(&s, 0, "consistency"), Some(0.5));
    assert_eq!(pair_feature(&s, 1, "image.confidence"), None);
    let names = available_features(&s, 0);
    assert!(names.contains(&"image.confidence.topk".to_string()));
    assert!(names.contains(&"text.uncertainty".to_string()));
}

#[test]
fn several_images_keep_their_trust_relative_to_the_text() {
    let l = example();
    let mut s = Signals::neutral(2);
    s.images[0].confidence = 0.9;
    s.images[1].confidence = 0.2;
    s.text.confidence = 0.5;
    s.consistency = vec![0.5, 0.5];
    let w = l.weights(&s).unwrap();
    assert!(w.images[0] > w.text && w.text > w.images[1], "{w:?}");
    assert!((w.as_vec().iter().sum::<f32>() - 3.0).abs() < 1e-5);
}

#[test]
fn non_finite_signals_are_safe() {
    let l = example();
    let w = l.weights(&pair(f32::NAN, f32::INFINITY)).unwrap();
    assert!(w.as_vec().iter().all(|x| x.is_finite()));
    assert_eq!(w, ModalityWeights::uniform(1));
}

#[test]
fn validate_catches_shapes_and_values() {
    let field = |l: LearnedScheduler| match l.validate() {
        Err(DmsError::InvalidParameter { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    let mut l = example();
    l.coef.pop();
    assert_eq!(field(l), "coef");
    let mut l = example();
    l.coef[1].push(0.0);
    assert_eq!(field(l), "coef");
    let mut l = example();
    l.bias.push(0.0);
    assert_eq!(field(l), "bias");
    let mut l = example();
    l.scale[0] = 0.0;
    assert_eq!(field(l), "scale");
    let mut l = example();
    l.mean.pop();
    assert_eq!(field(l), "mean");
    let mut l = example();
    l.candidates[2] = 2.5;
    assert_eq!(field(l), "candidates");
    let mut l = example();
    l.coef[0][0] = f32::NAN;
    assert_eq!(field(l), "coef");
    let mut l = example();
    l.features.clear();
    assert_eq!(field(l), "features");
    let mut l = example();
    l.w_min = 3.0;
    assert_eq!(field(l), "w_min");
}

#[test]
fn reliability_models_are_features_and_the_sound_gate_gives_plain_fusion() {
    // The policy reads the fitted reliabilities instead of the confidences.
    let mut l = example();
    l.features = RELIABILITY_FEATURES.iter().map(|f| f.to_string()).collect();
    l.reliability = Some(Reliability::reading("image.shift", "text.shift"));
    l.validate().unwrap();
    let mut s = pair(0.5, 0.5);
    s.variants = vec![[
        ("image.shift".to_string(), 0.7),
        ("text.shift".to_string(), 0.3),
    ]
    .into()];
    let rel = l.reliabilities(&s).unwrap();
    assert!(rel[0] > 0.95 && rel[1] < 0.05, "{rel:?}");
    assert_eq!(feature(&s, 0, "image.reliability", None), None);
    assert_eq!(l.weights(&s).unwrap().images, vec![1.5]);
    // Both at least as reliable as the gate: plain fusion whatever the policy says.
    let gated = LearnedScheduler {
        sound_gate: Some(0.01),
        ..l.clone()
    };
    assert!(gated.is_sound(&s));
    assert_eq!(gated.weights(&s).unwrap(), ModalityWeights::uniform(1));
    let strict = LearnedScheduler {
        sound_gate: Some(0.5),
        ..l.clone()
    };
    assert!(!strict.is_sound(&s));
    assert_eq!(strict.weights(&s).unwrap().images, vec![1.5]);
    // A variant the models read is missing: the gate cannot hold, the feature is its mean.
    s.variants[0].remove("text.shift");
    assert!(!gated.is_sound(&s) && gated.reliabilities(&s).is_none());
    // The plugin round-trips with its models; a gate without models is refused.
    assert_eq!(
        LearnedScheduler::from_json(&gated.to_json()).unwrap(),
        gated
    );
    let orphan = LearnedScheduler {
        reliability: None,
        ..gated
    };
    match orphan.validate() {
        Err(DmsError::InvalidParameter { field, .. }) => assert_eq!(field, "sound_gate"),
        other => panic!("{other:?}"),
    }
}
