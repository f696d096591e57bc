use super::*;

fn mentions(text: &str, colour: &str) -> bool {
    text.to_lowercase().contains(colour)
}

/// Mean colour of block `(bx, by)`.
fn block_mean(img: &image::RgbImage, bx: u32, by: u32) -> [f32; 3] {
    let mut sum = [0.0f32; 3];
    for y in by * BLOCK..(by + 1) * BLOCK {
        for x in bx * BLOCK..(bx + 1) * BLOCK {
            for (s, v) in sum.iter_mut().zip(img.get_pixel(x, y).0) {
                *s += f32::from(v);
            }
        }
    }
    sum.map(|s| s / (BLOCK * BLOCK) as f32)
}

fn colour_index(word: &str) -> usize {
    COLOURS.iter().position(|c| c.word.trim() == word).unwrap()
}

/// Blocks whose mean is more than 64 away (in some channel) from the corner of `colour`.
fn blocks_differing(img: &image::RgbImage, colour: &str) -> usize {
    let corner = corner_rgb(colour_index(colour));
    (0..BLOCKS * BLOCKS)
        .filter(|b| {
            let mean = block_mean(img, b % BLOCKS, b / BLOCKS);
            mean.iter()
                .zip(corner)
                .any(|(m, c)| (m - f32::from(c)).abs() > 64.0)
        })
        .count()
}

#[test]
fn the_same_seed_gives_the_same_items_and_another_seed_other_items() {
    let a = colour_trust(7, 3);
    let b = colour_trust(7, 3);
    let c = colour_trust(8, 3);
    assert_eq!(a.len(), TRUST_CONDITIONS.len() * 3);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.id, x.seed, x.truth, x.other, &x.evidence, &x.question),
            (y.id, y.seed, y.truth, y.other, &y.evidence, &y.question)
        );
        assert_eq!(x.image_png(), y.image_png());
    }
    let differs = a
        .iter()
        .zip(&c)
        .any(|(x, z)| x.truth != z.truth || x.evidence != z.evidence || x.seed != z.seed);
    assert!(differs);
    assert_ne!(a[0].image_png(), c[0].image_png());
}

#[test]
fn every_condition_has_its_properties() {
    let items = colour_trust(11, 40);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item.id, i);
        assert_ne!(item.truth, item.other);
        assert!(QUESTIONS.contains(&item.question.as_str()));
        let png = item.image_png();
        assert!(png.starts_with(b"\x89PNG"));
        let img = item.image();
        assert_eq!(img.dimensions(), (IMAGE_SIZE, IMAGE_SIZE));
        let evidence = item.evidence.as_deref();
        let name = item.condition.name;
        match name {
            "clean" => {
                assert_eq!(evidence, None);
                assert_eq!((item.image_reliable, item.text_reliable), (true, None));
            }
            "clean+hint" | "patched+hint" | "heavy-noise+hint" | "missing+hint" => {
                let hint = evidence.unwrap();
                assert!(mentions(hint, item.truth), "{name}: {hint}");
                assert_eq!(
                    crate::eval::first_colour(hint),
                    Some(item.truth),
                    "{name}: {hint}"
                );
                assert_eq!(item.text_reliable, Some(true));
                assert_eq!(item.image_reliable, name == "clean+hint");
            }
            "clean+hedged-wrong" | "clean+rumour-wrong" | "clean+misspelt-wrong" => {
                let hint = evidence.unwrap();
                assert!(!mentions(hint, item.truth), "{name}: {hint}");
                assert_eq!(name == "clean+misspelt-wrong", !mentions(hint, item.other));
                assert_eq!(
                    (item.image_reliable, item.text_reliable),
                    (true, Some(false))
                );
            }
            "conflict" => {}
            other => panic!("unexpected condition {other}"),
        }
        match item.condition.image {
            TrustImage::Clean => {
                assert_eq!(
                    item.image_colour(),
                    if item.image_reliable {
                        item.truth
                    } else {
                        item.other
                    }
                );
                assert_eq!(blocks_differing(&img, item.image_colour()), 0, "{name}");
            }
            TrustImage::Patched => {
                assert_eq!(item.image_colour(), item.other);
                let n = blocks_differing(&img, item.other);
                assert!((4..=12).contains(&n), "{n} of 16 blocks patched");
            }
            TrustImage::HeavyNoise | TrustImage::Missing => {
                let spread = img.iter().filter(|&&v| v.abs_diff(128) > 3).count();
                let noisy = item.condition.image == TrustImage::HeavyNoise;
                assert_eq!(spread > img.len() / 2, noisy, "{name}");
            }
        }
    }
    // The patched fraction varies over items.
    let patched: Vec<usize> = items
        .iter()
        .filter(|i| i.condition.image == TrustImage::Patched)
        .map(|i| blocks_differing(&i.image(), i.other))
        .collect();
    assert!(patched.iter().min() < patched.iter().max());
}

#[test]
fn the_conflict_truth_alternates_between_image_and_hint() {
    let items = colour_trust(5, 6);
    let conflict: Vec<&TrustItem> = items
        .iter()
        .filter(|i| i.condition.name == "conflict")
        .collect();
    assert_eq!(conflict.len(), 6);
    for (k, item) in conflict.iter().enumerate() {
        let hint = item.evidence.as_deref().unwrap();
        let hinted = crate::eval::first_colour(hint).unwrap();
        assert_ne!(hinted, item.image_colour());
        if k.is_multiple_of(2) {
            assert_eq!((item.truth, item.other), (item.image_colour(), hinted));
            assert_eq!(
                (item.image_reliable, item.text_reliable),
                (true, Some(false))
            );
        } else {
            assert_eq!((item.truth, item.other), (hinted, item.image_colour()));
            assert_eq!(
                (item.image_reliable, item.text_reliable),
                (false, Some(true))
            );
        }
    }
}

#[test]
fn questions_are_separate_from_the_evidence_and_vary() {
    let items = colour_trust(3, 20);
    for item in &items {
        assert!(!item.question.contains('{'));
        if let Some(e) = &item.evidence {
            assert!(!e.contains('?') || e.starts_with("Possibly"), "{e}");
            assert!(!QUESTIONS.iter().any(|q| e.contains(q)));
            assert!(!e.contains('{'));
        }
    }
    for q in QUESTIONS {
        assert!(items.iter().any(|i| i.question == q), "{q} never drawn");
    }
}

#[test]
fn misspelling_always_damages_the_colour_word() {
    for seed in 0..200 {
        let mut rng = SplitMix64::new(seed);
        for c in &COLOURS {
            let colour = c.word.trim();
            let hint = fill(HINTS[seed as usize % 3], colour);
            let bad = misspell(&hint, colour, &mut rng);
            assert!(!bad.contains(colour), "{bad}");
            assert_eq!(bad.split(' ').count(), hint.split(' ').count());
        }
    }
}
