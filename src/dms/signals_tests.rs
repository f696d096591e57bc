use super::*;

const BAD: [f32; 3] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn log_softmax_is_normalised_and_shift_invariant() {
    let l = log_softmax(&[1.0, 2.0, 3.0]);
    let sum: f32 = l.iter().map(|x| x.exp()).sum();
    assert!(close(sum, 1.0, 1e-6));
    let shifted = log_softmax(&[1001.0, 1002.0, 1003.0]);
    for (a, b) in l.iter().zip(&shifted) {
        assert!(close(*a, *b, 1e-5));
    }
    assert!(log_softmax(&[]).is_empty());
}

#[test]
fn log_softmax_non_finite() {
    let l = log_softmax(&[0.0, f32::NAN, 0.0, f32::INFINITY]);
    assert!(close(l[0], -(2f32).ln(), 1e-6));
    assert_eq!(l[1], f32::NEG_INFINITY);
    assert_eq!(l[3], f32::NEG_INFINITY);
    let u = log_softmax(&BAD);
    for x in u {
        assert!(close(x, -(3f32).ln(), 1e-6));
    }
}

#[test]
fn entropy_uniform_and_one_hot() {
    let v = 1000;
    assert!(close(entropy(&vec![0.0; v]), (v as f32).ln(), 1e-4));
    let mut one_hot = vec![-1e4; v];
    one_hot[7] = 0.0;
    assert!(close(entropy(&one_hot), 0.0, 1e-6));
    let mut masked = vec![f32::NEG_INFINITY; v];
    masked[3] = 5.0;
    assert_eq!(entropy(&masked), 0.0);
    assert_eq!(entropy(&[]), 0.0);
}

#[test]
fn confidence_range_and_extremes() {
    assert!(close(confidence(&[0.0; 50]), 0.0, 1e-5));
    let mut peaked = vec![0.0; 50];
    peaked[1] = 100.0;
    assert!(close(confidence(&peaked), 1.0, 1e-5));
    let mid = confidence(&[0.0, 1.0, 2.0, 3.0]);
    assert!(mid > 0.0 && mid < 1.0);
    // All non-finite: the uniform answer.
    assert_eq!(confidence(&BAD), 0.0);
    assert_eq!(confidence(&[f32::NAN; 10]), 0.0);
    assert_eq!(confidence(&[]), 0.0);
    assert_eq!(confidence(&[3.0]), 0.0);
    let c = confidence(&[f32::INFINITY, 1.0, f32::NAN, 2.0]);
    assert!(c.is_finite() && (0.0..=1.0).contains(&c));
}

#[test]
fn mutual_information_cases() {
    let a = vec![0.3, 1.0, -2.0, 0.5];
    assert!(close(
        mutual_information(&[a.clone(), a.clone(), a.clone()]),
        0.0,
        1e-6
    ));
    assert_eq!(mutual_information(std::slice::from_ref(&a)), 0.0);
    assert_eq!(mutual_information(&[]), 0.0);
    // Disagreeing one-hots: mean is uniform over 2 of 4 tokens, each pass certain.
    let x = vec![100.0, -100.0, -100.0, -100.0];
    let y = vec![-100.0, 100.0, -100.0, -100.0];
    let mi = mutual_information(&[x.clone(), y.clone()]);
    assert!(close(mi, 2f32.ln() / 4f32.ln(), 1e-4), "{mi}");
    // Non-finite samples stay finite and in range.
    let mi = mutual_information(&[BAD.to_vec(), vec![1.0, 2.0, 3.0]]);
    assert!(mi.is_finite() && (0.0..=1.0).contains(&mi));
    assert_eq!(mutual_information(&[BAD.to_vec(), BAD.to_vec()]), 0.0);
    // A sample of another length is ignored.
    assert_eq!(mutual_information(&[x, vec![1.0, 2.0]]), 0.0);
}

#[test]
fn pooling_and_consistency() {
    let rows = [1.0, 2.0, 3.0, 4.0, f32::NAN, 0.0];
    assert_eq!(mean_pool(&rows, 2), vec![(1.0 + 3.0) / 3.0, 2.0]);
    assert_eq!(mean_pool(&[], 3), vec![0.0; 3]);
    assert!(mean_pool(&rows, 0).is_empty());
    assert!(close(
        cosine_consistency(&[1.0, 0.0], &[2.0, 0.0]),
        1.0,
        1e-6
    ));
    assert!(close(
        cosine_consistency(&[1.0, 0.0], &[-2.0, 0.0]),
        0.0,
        1e-6
    ));
    assert!(close(
        cosine_consistency(&[1.0, 0.0], &[0.0, 3.0]),
        0.5,
        1e-6
    ));
    assert_eq!(cosine_consistency(&[0.0, 0.0], &[1.0, 0.0]), 0.5);
    assert_eq!(cosine_consistency(&BAD, &[1.0, 1.0, 1.0]), 0.5);
    let c = cosine_consistency(&[f32::MAX, f32::MAX], &[1.0, 1.0]);
    assert!(c.is_finite() && (0.0..=1.0).contains(&c));
}

#[test]
fn l2_normalise_cases() {
    let n = l2_normalise(&[3.0, 4.0]);
    assert!(close(n[0], 0.6, 1e-6) && close(n[1], 0.8, 1e-6));
    assert_eq!(l2_normalise(&[0.0, 0.0]), vec![0.0, 0.0]);
    assert_eq!(l2_normalise(&BAD), vec![0.0; 3]);
}

#[test]
fn dropout_is_inverted_and_seeded() {
    let mut rng = SplitMix64::new(7);
    let mut rows = vec![1.0f32; 20_000];
    apply_dropout(&mut rows, 0.25, &mut rng);
    let zeros = rows.iter().filter(|&&x| x == 0.0).count() as f32 / rows.len() as f32;
    assert!(close(zeros, 0.25, 0.02), "{zeros}");
    assert!(rows.iter().all(|&x| x == 0.0 || close(x, 1.0 / 0.75, 1e-6)));
    let mean: f32 = rows.iter().sum::<f32>() / rows.len() as f32;
    assert!(close(mean, 1.0, 0.03));
    // Same seed, same mask.
    let mut again = vec![1.0f32; 20_000];
    apply_dropout(&mut again, 0.25, &mut SplitMix64::new(7));
    assert_eq!(rows, again);
    // Rate 0 and non-finite rates leave rows untouched; huge rates are clamped.
    let mut same = vec![2.0f32; 8];
    apply_dropout(&mut same, 0.0, &mut rng);
    apply_dropout(&mut same, f32::NAN, &mut rng);
    assert_eq!(same, vec![2.0; 8]);
    let mut most = vec![1.0f32; 1000];
    apply_dropout(&mut most, 5.0, &mut rng);
    assert!(most.iter().any(|&x| x != 0.0));
    assert!(most.iter().all(|x| x.is_finite()));
}

#[test]
fn avg_pool_grid() {
    // 3 x 2 grid of width-1 rows: [[1, 2, 3], [4, 5, 6]].
    let rows = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let (out, w, h) = avg_pool_2x2(&rows, 1, 3, 2);
    assert_eq!((w, h), (2, 1));
    assert_eq!(out, vec![3.0, 4.5]);
    // Width 2, 2 x 2 grid.
    let rows = [1.0, 10.0, 3.0, 30.0, 5.0, 50.0, 7.0, 70.0];
    let (out, w, h) = avg_pool_2x2(&rows, 2, 2, 2);
    assert_eq!((w, h, out), (1, 1, vec![4.0, 40.0]));
    let (out, w, h) = avg_pool_2x2(&[], 0, 5, 5);
    assert_eq!((out.len(), w, h), (0, 3, 3));
}

#[test]
fn pooling_meets_the_row_budget() {
    let grid = |n: usize| (0..n).map(|i| i as f32).collect::<Vec<f32>>();
    let budget = Pooling {
        at_least: 0,
        max_rows: 64,
    };
    // 24 x 24 (LLaVA-1.5) -> 12 x 12 -> 6 x 6; 16 x 16 -> 8 x 8; the demo's 4 x 4 stays.
    assert_eq!(budget.apply(&grid(576), 1).len(), 36);
    assert_eq!(budget.apply(&grid(256), 1).len(), 64);
    assert_eq!(budget.apply(&grid(16), 1), grid(16));
    // Width 2: rows of two floats each; a pooled row is the mean of its four.
    let pooled = budget.apply(&grid(2 * 144), 2);
    assert_eq!(pooled.len(), 2 * 36);
    assert_eq!(&pooled[..2], &[13.0, 14.0]);
    // Forced once; not square or one row: left as it is; NONE never pools.
    let once = Pooling {
        at_least: 1,
        ..budget
    };
    assert_eq!(once.apply(&grid(16), 1).len(), 4);
    assert_eq!(once.apply(&grid(10), 1), grid(10));
    assert_eq!(once.apply(&grid(1), 1), grid(1));
    assert_eq!(Pooling::NONE.apply(&grid(576), 1).len(), 576);
}

#[test]
fn grid_pooling_takes_any_shape() {
    let grid = |n: usize| (0..n).map(|i| i as f32).collect::<Vec<f32>>();
    let budget = Pooling {
        at_least: 0,
        max_rows: 8,
    };
    // 6 x 4 (an M-RoPE image's grid) -> 3 x 2; 3 x 3 -> 2 x 2; within the budget: as it is.
    let (rows, w, h) = budget.apply_grid(&grid(24), 1, 6, 4);
    assert_eq!((rows.len(), w, h), (6, 3, 2));
    assert_eq!(rows[0], (0.0 + 1.0 + 6.0 + 7.0) / 4.0);
    let (rows, w, h) = budget.apply_grid(&grid(9 * 2), 2, 3, 3);
    assert_eq!((rows.len(), w, h), (2 * 4, 2, 2));
    let (rows, w, h) = budget.apply_grid(&grid(8), 1, 4, 2);
    assert_eq!((rows, w, h), (grid(8), 4, 2));
    // One row or one column: nothing to pool.
    let (rows, w, h) = budget.apply_grid(&grid(12), 1, 12, 1);
    assert_eq!((rows.len(), w, h), (12, 12, 1));
}

#[test]
fn mwc_loss_cases() {
    let z = vec![1.0, 0.0];
    assert_eq!(mwc_loss(&[1.0, 1.0], &z, &[z.clone(), vec![2.0, 0.0]]), 0.0);
    // Opposite unit vectors: distance^2 = 4; one of two modalities with weight 1.
    let l = mwc_loss(&[1.0, 0.0], &z, &[vec![-1.0, 0.0], z.clone()]);
    assert!(close(l, 2.0, 1e-6));
    assert_eq!(mwc_loss(&[], &z, &[]), 0.0);
    let l = mwc_loss(&[f32::NAN, 1.0], &BAD, &[z.clone(), z]);
    assert!(l.is_finite() && l >= 0.0);
}

#[test]
fn splitmix_is_deterministic_and_in_range() {
    let mut a = SplitMix64::new(42);
    let mut b = SplitMix64::new(42);
    for _ in 0..1000 {
        assert_eq!(a.next_u64(), b.next_u64());
        let f = a.next_f32();
        b.next_f32();
        assert!((0.0..1.0).contains(&f));
    }
    assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
}

#[test]
fn signals_helpers() {
    let s = Signals::neutral(2);
    assert_eq!(s.m(), 3);
    assert!(!s.image_missing);
    assert_eq!(s.mean_consistency(), 0.5);
    assert_eq!(Signals::neutral(0).mean_consistency(), 1.0);
    let s = Signals {
        images: vec![ModalitySignals {
            confidence: f32::NAN,
            uncertainty: 3.0,
        }],
        text: ModalitySignals {
            confidence: 0.9,
            uncertainty: -1.0,
        },
        consistency: vec![f32::INFINITY],
        image_missing: false,
        variants: Vec::new(),
    };
    assert_eq!(s.mean_consistency(), 0.5);
    let per = s.per_modality();
    assert_eq!(per[0].confidence, 0.5);
    assert_eq!(per[0].uncertainty, 1.0);
    assert_eq!(per[1].uncertainty, 0.0);
    let json = serde_json::to_string(&Signals::neutral(1)).unwrap();
    let back: Signals = serde_json::from_str(&json).unwrap();
    assert_eq!(back, Signals::neutral(1));
}
