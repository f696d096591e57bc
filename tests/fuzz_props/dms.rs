//! The DMS maths through the public API, beyond the unit proptests in `src/dms/proptests.rs`:
//! the shipped plugins (loaded by the registry), schedulers with extreme but valid parameters,
//! malformed signal vectors (0..8 images, extreme values, mismatched lengths), the fixed
//! scheduler, every signal function's range, and the quantisation of measured weights.

use std::path::Path;

use llama_dms::dms::{
    self, avg_pool_2x2, confidence, cosine_consistency, entropy, l2_normalise, log_softmax,
    mean_pool, mutual_information, mwc_loss, Bounds, DmsError, FixedScheduler, LearnedScheduler,
    ModalitySignals, ModalityWeights, Registry, RuleScheduler, Scheduler, Signals,
};
use proptest::prelude::*;

use crate::property;

/// A float from everywhere: in range, out of range, extreme, non-finite.
fn wild() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => 0.0f32..=1.0,
        2 => -10.0f32..10.0,
        2 => prop::sample::select(vec![
            f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN, f32::MIN_POSITIVE,
            1e-40, -0.0, 0.0, 1.0, 1e30, -1e30, 0.5,
        ]),
        1 => any::<f32>(),
    ]
}

fn signals() -> impl Strategy<Value = Signals> {
    let modality = (wild(), wild())
        .prop_map(|(confidence, uncertainty)| ModalitySignals {
            confidence,
            uncertainty,
        })
        .boxed();
    (0usize..=8).prop_flat_map(move |n| {
        (
            prop::collection::vec(modality.clone(), n),
            modality.clone(),
            prop_oneof![
                4 => prop::collection::vec(wild(), n),
                1 => prop::collection::vec(wild(), 0..10),
            ],
            prop_oneof![4 => Just(n == 0), 1 => any::<bool>()],
        )
            .prop_map(|(images, text, consistency, image_missing)| Signals {
                images,
                text,
                consistency,
                image_missing,
                variants: Vec::new(),
            })
    })
}

/// A finite parameter of any magnitude.
fn param() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -20.0f32..20.0,
        1 => prop::sample::select(vec![f32::MAX, f32::MIN, 1e30, -1e30, 0.0, 1e-30]),
        1 => any::<f32>().prop_filter("finite", |x| x.is_finite()),
    ]
}

/// `tau` and bounds that pass validation, including the edges.
fn tau_bounds() -> impl Strategy<Value = (f32, f32, f32)> {
    let tau = prop_oneof![
        3 => 0.01f32..10.0,
        1 => prop::sample::select(vec![f32::MIN_POSITIVE, 1e-30, 1e-3, 1e30, f32::MAX]),
    ];
    let bound = prop_oneof![
        3 => 0.0f32..4.0,
        1 => prop::sample::select(vec![0.0, 1.0, 1e-30, 8.0, 1e30, f32::MAX]),
    ];
    (tau, bound.clone(), bound).prop_map(|(t, a, b)| {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        (t, lo, if hi > 0.0 { hi } else { 1.0 })
    })
}

/// The scheduler invariants: `M` finite weights within the effective bounds summing to `M`.
fn check_weights(
    s: &dyn Scheduler,
    sig: &Signals,
    bounds: Option<Bounds>,
) -> Result<(), TestCaseError> {
    let w = s
        .weights(sig)
        .map_err(|e| TestCaseError::fail(format!("{}: {e}", s.name())))?;
    let v = w.as_vec();
    let m = sig.m();
    prop_assert_eq!(v.len(), m);
    prop_assert!(
        v.iter().all(|x| x.is_finite() && *x >= 0.0),
        "{}: {:?}",
        s.name(),
        v
    );
    let b = bounds.map_or(
        Bounds {
            w_min: 0.0,
            w_max: m as f32,
        },
        |b| b.effective(m),
    );
    for x in &v {
        prop_assert!(
            *x >= b.w_min - 1e-5 && *x <= b.w_max + 1e-5,
            "{}: {:?} outside {:?}",
            s.name(),
            v,
            b
        );
    }
    let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
    prop_assert!(
        (sum - m as f64).abs() < 1e-4,
        "{}: sum {} for M {}",
        s.name(),
        sum,
        m
    );
    // Measured weights are quantised to 0.01 before use; the sum must survive it.
    let q = w.quantized(0.01).as_vec();
    let qsum: f64 = q.iter().map(|&x| f64::from(x)).sum();
    prop_assert!(
        (qsum - m as f64).abs() < 1e-4,
        "{}: quantised {:?} sums to {}",
        s.name(),
        q,
        qsum
    );
    for (a, b) in v.iter().zip(&q) {
        prop_assert!((a - b).abs() <= 0.01 + 1e-5, "quantised {} to {}", a, b);
    }
    Ok(())
}

/// The bounds a plugin file states (`None` when it does not state both).
fn plugin_bounds(dir: &Path, name: &str, registry: &Registry) -> Option<Bounds> {
    let file = registry.file_of(name)?;
    debug_assert!(file.starts_with(dir));
    let text = std::fs::read_to_string(file).ok()?;
    let value: serde_json::Value = if file.extension()? == "json" {
        serde_json::from_str(&text).ok()?
    } else {
        serde_json::to_value(toml::from_str::<toml::Value>(&text).ok()?).ok()?
    };
    Some(Bounds {
        w_min: value.get("w_min")?.as_f64()? as f32,
        w_max: value.get("w_max")?.as_f64()? as f32,
    })
}

#[test]
fn dms_shipped_plugins() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    let registry = Registry::load_dir(&dir).expect("shipped plugins load");
    let names = registry.names();
    assert!(names.iter().any(|n| n == "learned-colours"), "{names:?}");
    let schedulers: Vec<(std::sync::Arc<dyn Scheduler>, Option<Bounds>)> = names
        .iter()
        .map(|n| {
            (
                registry.require(n).unwrap(),
                plugin_bounds(&dir, n, &registry),
            )
        })
        .collect();
    property("dms_shipped_plugins", 1000, signals(), |sig| {
        for (s, bounds) in &schedulers {
            if s.kind() == "off" {
                prop_assert_eq!(
                    s.weights(&sig).unwrap(),
                    ModalityWeights::uniform(sig.images.len())
                );
            } else {
                check_weights(s.as_ref(), &sig, *bounds)?;
            }
        }
        Ok(())
    });
}

#[test]
fn dms_rule_extreme_parameters() {
    let rule = (
        param(),
        param(),
        prop_oneof![0.0f32..3.0, Just(f32::MAX)],
        tau_bounds(),
    );
    property(
        "dms_rule_extreme_parameters",
        3000,
        (rule, signals()),
        |((alpha, beta, gamma, (tau, w_min, w_max)), sig)| {
            let r = RuleScheduler {
                name: "p".into(),
                alpha,
                beta,
                tau,
                gamma,
                w_min,
                w_max,
                ..RuleScheduler::default()
            };
            prop_assert!(r.validate().is_ok(), "{:?}", r.validate());
            check_weights(&r, &sig, Some(r.bounds()))
        },
    );
}

#[test]
fn dms_learned_extreme_parameters() {
    let policy = (1usize..=dms::DEFAULT_FEATURES.len(), 2usize..10).prop_flat_map(|(d, k)| {
        (
            prop::collection::vec(prop::collection::vec(param(), d), k),
            prop::collection::vec(param(), k),
            prop::collection::vec(param(), d),
            prop::collection::vec(0.01f32..1e6, d),
            prop::collection::vec(0.0f32..=2.0, k),
            tau_bounds(),
        )
    });
    property(
        "dms_learned_extreme_parameters",
        3000,
        (policy, signals()),
        |((coef, bias, mean, scale, candidates, (_, w_min, w_max)), sig)| {
            let features: Vec<String> = dms::DEFAULT_FEATURES[..mean.len()]
                .iter()
                .map(|f| f.to_string())
                .collect();
            let mut l = LearnedScheduler::uniform("p", &features, &candidates);
            (l.coef, l.bias, l.mean, l.scale, l.w_min, l.w_max) =
                (coef, bias, mean, scale, w_min, w_max);
            prop_assert!(l.validate().is_ok(), "{:?}", l.validate());
            // A valid policy survives its own JSON round trip and schedules the same.
            let back = LearnedScheduler::from_json(&l.to_json())
                .map_err(|e| TestCaseError::fail(format!("round trip: {e}")))?;
            prop_assert_eq!(&back, &l);
            let bounds = Bounds { w_min, w_max };
            check_weights(&l, &sig, Some(bounds))
        },
    );
}

#[test]
fn dms_fixed_scheduler() {
    let weights = (prop::collection::vec(wild(), 0..=8), wild());
    property(
        "dms_fixed_scheduler",
        2000,
        (weights, 0usize..=8),
        |((images, text), n)| {
            let w = ModalityWeights { images, text };
            let valid = w.as_vec().iter().all(|x| x.is_finite() && *x >= 0.0);
            match FixedScheduler::new(w.clone()) {
                Err(DmsError::InvalidWeights(m)) => prop_assert!(!valid && !m.is_empty()),
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
                Ok(f) => {
                    prop_assert!(valid);
                    match f.weights(&Signals::neutral(n)) {
                        Ok(out) => prop_assert!(n == w.images.len() && out == w),
                        Err(e) => prop_assert!(
                            n != w.images.len() && matches!(e, DmsError::InvalidWeights(_))
                        ),
                    }
                }
            }
            let back = ModalityWeights::from_vec(&w.as_vec()).as_vec();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&back), bits(&w.as_vec()));
            Ok(())
        },
    );
}

fn logits() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(prop_oneof![6 => -60.0f32..60.0, 1 => wild()], 0..50)
}

#[test]
fn dms_signal_functions() {
    let strategy = (logits(), prop::collection::vec(logits(), 0..6), logits());
    property("dms_signal_functions", 3000, strategy, |(a, samples, b)| {
        let ls = log_softmax(&a);
        prop_assert_eq!(ls.len(), a.len());
        prop_assert!(ls.iter().all(|x| !x.is_nan() && *x <= 1e-6), "{:?}", ls);
        if !a.is_empty() {
            let total: f64 = ls.iter().map(|&x| f64::from(x).exp()).sum();
            prop_assert!((total - 1.0).abs() < 1e-3, "probabilities sum to {}", total);
        }
        let h = entropy(&a);
        prop_assert!(
            h.is_finite() && h >= 0.0 && h <= (a.len().max(1) as f32).ln() + 1e-5,
            "H {}",
            h
        );
        let c = confidence(&a);
        prop_assert!(c.is_finite() && (0.0..=1.0).contains(&c), "c {}", c);
        let mi = mutual_information(&samples);
        prop_assert!(mi.is_finite() && (0.0..=1.0).contains(&mi), "mi {}", mi);
        let s = cosine_consistency(&a, &b);
        prop_assert!(s.is_finite() && (0.0..=1.0).contains(&s), "s {}", s);
        let n = l2_normalise(&a);
        let norm: f64 = n.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        prop_assert!(
            n.iter().all(|x| x.is_finite()) && norm <= 1.0 + 1e-5,
            "norm {}",
            norm
        );
        Ok(())
    });
}

#[test]
fn dms_pooling_and_mwc() {
    let rows = (1usize..6, 0usize..5, 0usize..5).prop_flat_map(|(width, gw, gh)| {
        (
            Just(width),
            Just(gw),
            Just(gh),
            prop::collection::vec(wild(), 0..=(width * gw * gh + width)),
        )
    });
    let mwc = (
        prop::collection::vec(wild(), 0..6),
        logits(),
        prop::collection::vec(logits(), 0..6),
    );
    property(
        "dms_pooling_and_mwc",
        3000,
        (rows, mwc),
        |((width, gw, gh, rows), (w, fused, uni))| {
            let finite = |x: f32| if x.is_finite() { f64::from(x) } else { 0.0 };
            let (lo, hi) = rows.iter().fold((0.0f64, 0.0f64), |(l, h), &x| {
                (l.min(finite(x)), h.max(finite(x)))
            });
            let inside = |v: &[f32]| {
                v.iter().all(|&x| {
                    x.is_finite()
                        && f64::from(x) >= lo * (1.0 + 1e-6) - 1e-30
                        && f64::from(x) <= hi * (1.0 + 1e-6) + 1e-30
                })
            };
            let mean = mean_pool(&rows, width);
            prop_assert_eq!(mean.len(), width);
            prop_assert!(inside(&mean), "mean {:?} of {:?}", mean, rows);
            let (pooled, ow, oh) = avg_pool_2x2(&rows, width, gw, gh);
            prop_assert_eq!((ow, oh), (gw.div_ceil(2), gh.div_ceil(2)));
            prop_assert_eq!(pooled.len(), ow * oh * width);
            prop_assert!(inside(&pooled), "pooled {:?} of {:?}", pooled, rows);
            let loss = mwc_loss(&w, &fused, &uni);
            let positive: f64 = w.iter().map(|&x| finite(x).max(0.0)).sum();
            let cap = 4.0 * positive / w.len().max(1) as f64;
            prop_assert!(loss.is_finite() && loss >= 0.0, "loss {}", loss);
            prop_assert!(
                f64::from(loss) <= cap * (1.0 + 1e-4) + 1e-4,
                "loss {} over {}",
                loss,
                cap
            );
            Ok(())
        },
    );
}

/// Pinned: rounding each weight on its own to 0.01 broke the sum (1.005 + 0.995 -> 2.01).
#[test]
fn dms_quantised_weights_keep_their_sum() {
    for v in [
        vec![1.005f32, 0.995],
        vec![0.335, 0.335, 0.335, 2.995],
        vec![0.125, 0.125, 0.125, 0.125, 3.5],
        vec![1.0; 9],
    ] {
        let w = ModalityWeights::from_vec(&v);
        let q = w.quantized(0.01).as_vec();
        let (s, qs): (f32, f32) = (v.iter().sum(), q.iter().sum());
        assert!((s - qs).abs() < 1e-4, "{v:?} -> {q:?}");
    }
}

/// Pinned: logits near f32::MAX lost `ln(sum)` (two equal logits gave probabilities 1 and 1),
/// and a weight of f32::MAX overflowed the MWC loss to infinity.
#[test]
fn dms_extreme_magnitudes_pinned() {
    let ls = log_softmax(&[f32::MAX, f32::MAX]);
    assert!(
        ls.iter()
            .all(|&x| (x + std::f32::consts::LN_2).abs() < 1e-6),
        "{ls:?}"
    );
    assert!((confidence(&[f32::MAX, f32::MAX])).abs() < 1e-6);
    let loss = mwc_loss(&[f32::MAX], &[1.0, 0.0], &[vec![0.0, 1.0]]);
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
}
