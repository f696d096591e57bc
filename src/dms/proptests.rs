//! Property tests of the scheduler invariants: for any signals (including non-finite ones) and
//! any number of modalities, every scheduler returns `M` finite weights within its bounds that
//! sum to `M`.

use proptest::prelude::*;

use super::*;

/// A signal value: mostly in [0, 1], sometimes out of range or non-finite.
fn signal() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => 0.0f32..=1.0,
        1 => prop_oneof![
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            -5.0f32..5.0,
        ],
    ]
}

fn modality() -> impl Strategy<Value = ModalitySignals> {
    (signal(), signal()).prop_map(|(confidence, uncertainty)| ModalitySignals {
        confidence,
        uncertainty,
    })
}

fn signals() -> impl Strategy<Value = Signals> {
    (0usize..7).prop_flat_map(|n| {
        (
            prop::collection::vec(modality(), n),
            modality(),
            prop::collection::vec(signal(), n),
        )
            .prop_map(move |(images, text, consistency)| Signals {
                images,
                text,
                consistency,
                image_missing: n == 0,
                variants: Vec::new(),
            })
    })
}

fn rule() -> impl Strategy<Value = RuleScheduler> {
    (
        -10.0f32..10.0,
        -10.0f32..10.0,
        0.001f32..10.0,
        0.0f32..3.0,
        0.0f32..1.5,
        0.5f32..4.0,
    )
        .prop_map(|(alpha, beta, tau, gamma, lo, hi)| RuleScheduler {
            name: "p".into(),
            alpha,
            beta,
            tau,
            gamma,
            w_min: lo.min(hi),
            w_max: hi.max(lo),
            ..RuleScheduler::default()
        })
}

fn learned() -> impl Strategy<Value = LearnedScheduler> {
    (1usize..5, 2usize..6, any::<u64>(), 0.0f32..1.0, 1.0f32..3.0).prop_map(
        |(d, k, seed, w_min, w_max)| {
            let mut rng = SplitMix64::new(seed);
            let mut r = || (rng.next_f32() - 0.5) * 20.0;
            let features: Vec<String> = crate::dms::DEFAULT_FEATURES[..d]
                .iter()
                .map(|f| f.to_string())
                .collect();
            let candidates: Vec<f32> = (0..k).map(|i| 2.0 * i as f32 / (k - 1) as f32).collect();
            let mut l = LearnedScheduler::uniform("p", &features, &candidates);
            for row in &mut l.coef {
                row.iter_mut().for_each(|x| *x = r());
            }
            l.bias.iter_mut().for_each(|x| *x = r());
            l.mean.iter_mut().for_each(|x| *x = r());
            l.scale.iter_mut().for_each(|x| *x = r().abs() + 0.01);
            l.w_min = w_min;
            l.w_max = w_max;
            l
        },
    )
}

/// Checks the invariants for one scheduler and returns nothing on success.
fn check(s: &dyn Scheduler, sig: &Signals, bounds: Bounds) -> Result<(), TestCaseError> {
    let w = s
        .weights(sig)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let v = w.as_vec();
    let m = sig.m();
    prop_assert_eq!(v.len(), m);
    prop_assert!(v.iter().all(|x| x.is_finite()), "{:?}", v);
    let b = bounds.effective(m);
    for x in &v {
        prop_assert!(
            *x >= b.w_min - 1e-6 && *x <= b.w_max + 1e-6,
            "{:?} {:?}",
            v,
            b
        );
    }
    let sum: f32 = v.iter().sum();
    prop_assert!((sum - m as f32).abs() < 1e-4, "sum {} for M {}", sum, m);
    Ok(())
}

proptest! {
    #[test]
    fn rule_invariants(r in rule(), sig in signals()) {
        let b = r.bounds();
        check(&r, &sig, b)?;
    }

    #[test]
    fn learned_invariants(l in learned(), sig in signals()) {
        let b = Bounds { w_min: l.w_min, w_max: l.w_max };
        check(&l, &sig, b)?;
    }

    #[test]
    fn off_invariants(sig in signals()) {
        let w = OffScheduler.weights(&sig).unwrap();
        prop_assert_eq!(w, ModalityWeights::uniform(sig.images.len()));
    }

    #[test]
    fn default_rule_invariants(sig in signals()) {
        let r = RuleScheduler::default();
        check(&r, &sig, r.bounds())?;
    }

    #[test]
    fn clamp_renormalise_invariants(
        w in prop::collection::vec(
            prop_oneof![8 => 0.0f32..1e6, 1 => Just(f32::NAN), 1 => -10.0f32..0.0],
            1..10,
        ),
        lo in 0.0f32..1.2,
        hi in 0.8f32..5.0,
    ) {
        let mut w = w;
        let b = Bounds { w_min: lo, w_max: hi };
        clamp_renormalise(&mut w, b);
        let e = b.effective(w.len());
        let sum: f32 = w.iter().sum();
        prop_assert!((sum - w.len() as f32).abs() < 1e-4, "{:?}", w);
        prop_assert!(w.iter().all(|x| *x >= e.w_min && *x <= e.w_max), "{:?} {:?}", w, e);
    }

    #[test]
    fn signal_functions_stay_in_range(
        logits in prop::collection::vec(
            prop_oneof![8 => -50.0f32..50.0, 1 => Just(f32::NAN), 1 => Just(f32::INFINITY)],
            0..40,
        ),
        other in prop::collection::vec(-50.0f32..50.0, 0..40),
    ) {
        let c = confidence(&logits);
        prop_assert!(c.is_finite() && (0.0..=1.0).contains(&c));
        let h = entropy(&logits);
        prop_assert!(h.is_finite() && h >= 0.0);
        let mut b = other.clone();
        b.resize(logits.len(), 0.0);
        let mi = mutual_information(&[logits.clone(), b.clone()]);
        prop_assert!(mi.is_finite() && (0.0..=1.0).contains(&mi));
        let s = cosine_consistency(&logits, &other);
        prop_assert!(s.is_finite() && (0.0..=1.0).contains(&s));
    }
}

#[cfg(feature = "script")]
proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn script_invariants(sig in signals(), tau in 0.01f32..5.0) {
        let s = ScriptScheduler::new(
            "p",
            "if is_image { 5.0 * confidence - 3.0 * uncertainty + n_images } else { consistency }",
            tau,
            0.3,
            1.7,
        )
        .unwrap();
        check(&s, &sig, Bounds { w_min: 0.3, w_max: 1.7 })?;
    }
}
