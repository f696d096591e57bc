//! The `colour-grid` suite: generated, seeded items on which the demo model's ability is well
//! defined (name the colour of the thing in the image), under corrupted image and text
//! conditions. In every corrupted condition at least one modality still carries the answer;
//! conflicting conditions (the two modalities disagree) are reported as their own group.

use std::io::Cursor;

use serde::Serialize;

use crate::dms::SplitMix64;
use crate::models::colour::COLOURS;

use super::corrupt::{add_noise, blur, occlude};

/// What is done to the image of an item.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "strength")]
pub enum ImageCondition {
    /// The image as generated.
    Clean,
    /// Gaussian noise of this deviation (in units of the full 0..255 range) on every channel.
    Noise(f32),
    /// Gaussian blur of this radius in pixels.
    Blur(f32),
    /// This fraction of an 8x8 grid of patches blacked out.
    Occlude(f32),
    /// No image at all.
    Missing,
    /// A clean image of another colour.
    Wrong,
}

impl ImageCondition {
    /// A short label: `clean`, `noise-1.0`, `blur-8`, `occlude-0.6`, `missing`, `wrong-image`.
    pub fn label(&self) -> String {
        match self {
            ImageCondition::Clean => "clean".into(),
            ImageCondition::Noise(s) => format!("noise-{s:.1}"),
            ImageCondition::Blur(r) => format!("blur-{r}"),
            ImageCondition::Occlude(f) => format!("occlude-{f}"),
            ImageCondition::Missing => "missing".into(),
            ImageCondition::Wrong => "wrong-image".into(),
        }
    }
}

/// What is done to the text of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextCondition {
    /// The plain question.
    Plain,
    /// The question after a correct hint ("a photo of something red").
    Hint,
    /// The question with typos and dropped letters.
    Garbled,
    /// The question after a hint naming another colour.
    WrongHint,
}

/// How a condition is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Nothing corrupted.
    Clean,
    /// One modality degraded, the other carries the answer.
    Corrupted,
    /// The modalities disagree; the truth is the one that is not contradicted by construction.
    Conflict,
}

/// A named pair of image and text conditions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Condition {
    /// Short stable name, e.g. `noise-1.0+hint`.
    pub name: &'static str,
    /// What happens to the image.
    pub image: ImageCondition,
    /// What happens to the text.
    pub text: TextCondition,
    /// How it is reported.
    pub group: Group,
}

const fn cond(
    name: &'static str,
    image: ImageCondition,
    text: TextCondition,
    group: Group,
) -> Condition {
    Condition {
        name,
        image,
        text,
        group,
    }
}

/// The conditions of the `colour-grid` suite, in report order.
pub const CONDITIONS: [Condition; 12] = {
    use Group::*;
    use ImageCondition as I;
    use TextCondition as T;
    [
        cond("clean", I::Clean, T::Plain, Clean),
        cond("clean+hint", I::Clean, T::Hint, Clean),
        cond("noise-0.5+hint", I::Noise(0.5), T::Hint, Corrupted),
        cond("noise-1.0+hint", I::Noise(1.0), T::Hint, Corrupted),
        cond("noise-1.5+hint", I::Noise(1.5), T::Hint, Corrupted),
        cond("noise-2.5+hint", I::Noise(2.5), T::Hint, Corrupted),
        cond("blur-8+hint", I::Blur(8.0), T::Hint, Corrupted),
        cond("occlude-0.6+hint", I::Occlude(0.6), T::Hint, Corrupted),
        cond("missing+hint", I::Missing, T::Hint, Corrupted),
        cond("clean+garbled", I::Clean, T::Garbled, Corrupted),
        cond("clean+wrong-hint", I::Clean, T::WrongHint, Conflict),
        cond("wrong-image+hint", I::Wrong, T::Hint, Conflict),
    ]
};

/// The question every item asks.
pub const QUESTION: &str = "What is the main color of this image?";

/// One generated item.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// Position in the suite.
    pub id: usize,
    /// The condition applied.
    pub condition: Condition,
    /// The true colour's word (e.g. `red`).
    pub truth: &'static str,
    /// The colour of a wrong image or a wrong hint.
    pub other: &'static str,
    /// Seed of this item's image and text.
    pub seed: u64,
    #[serde(skip)]
    truth_index: usize,
    #[serde(skip)]
    other_index: usize,
}

/// The `colour-grid` items for `seed`: `per_condition` items for every condition, colours drawn
/// from the seed. The same seed gives the same items, byte for byte.
pub fn colour_grid(seed: u64, per_condition: usize) -> Vec<Item> {
    let mut rng = SplitMix64::new(seed);
    let mut items = Vec::with_capacity(CONDITIONS.len() * per_condition);
    for condition in CONDITIONS {
        for _ in 0..per_condition {
            let truth_index = (rng.next_u64() % COLOURS.len() as u64) as usize;
            let shift = 1 + (rng.next_u64() % (COLOURS.len() as u64 - 1)) as usize;
            let other_index = (truth_index + shift) % COLOURS.len();
            items.push(Item {
                id: items.len(),
                condition,
                truth: COLOURS[truth_index].word.trim(),
                other: COLOURS[other_index].word.trim(),
                seed: rng.next_u64(),
                truth_index,
                other_index,
            });
        }
    }
    items
}

impl Item {
    /// The item's image as PNG bytes (`None` when the image is missing).
    pub fn image_png(&self) -> Option<Vec<u8>> {
        let mut rng = SplitMix64::new(self.seed);
        let colour = match self.condition.image {
            ImageCondition::Missing => return None,
            ImageCondition::Wrong => self.other_index,
            _ => self.truth_index,
        };
        let mut img = shaded_square(COLOURS[colour].rgb, 96, &mut rng);
        match self.condition.image {
            ImageCondition::Noise(sigma) => add_noise(&mut img, sigma, &mut rng),
            ImageCondition::Blur(radius) => img = blur(&img, radius),
            ImageCondition::Occlude(fraction) => occlude(&mut img, fraction, &mut rng),
            _ => {}
        }
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).ok()?;
        Some(out.into_inner())
    }

    /// The item's user text.
    pub fn text(&self) -> String {
        let mut rng = SplitMix64::new(self.seed ^ 0x7e47);
        match self.condition.text {
            TextCondition::Plain => QUESTION.to_string(),
            TextCondition::Hint => {
                format!("This is a photo of something {}. {QUESTION}", self.truth)
            }
            TextCondition::WrongHint => {
                format!("This is a photo of something {}. {QUESTION}", self.other)
            }
            TextCondition::Garbled => garble(QUESTION, &mut rng),
        }
    }
}

/// A square near an RGB-cube corner: the shade varies per item, the pixels a little.
pub(crate) fn shaded_square(corner: [f32; 3], size: u32, rng: &mut SplitMix64) -> image::RgbImage {
    let base: Vec<f32> = corner
        .iter()
        .map(|&c| {
            let shade = rng.next_f32() * 45.0;
            if c > 0.5 {
                255.0 - shade
            } else {
                shade
            }
        })
        .collect();
    image::RgbImage::from_fn(size, size, |_, _| {
        let mut px = |c: usize| (base[c] + rng.next_f32() * 40.0 - 20.0).clamp(0.0, 255.0) as u8;
        image::Rgb([px(0), px(1), px(2)])
    })
}

/// Typos: in about a third of the words longer than two letters, one letter is dropped or two
/// neighbours are swapped; the word "color" itself is always damaged.
fn garble(text: &str, rng: &mut SplitMix64) -> String {
    text.split(' ')
        .map(|word| {
            let mut chars: Vec<char> = word.chars().collect();
            let letters = chars.iter().filter(|c| c.is_alphabetic()).count();
            if letters > 2 && (word.starts_with("color") || rng.next_f32() < 0.35) {
                let at = 1 + (rng.next_u64() % (letters as u64 - 2)) as usize;
                if rng.next_f32() < 0.5 {
                    chars.remove(at);
                } else {
                    chars.swap(at, at + 1);
                }
            }
            chars.into_iter().collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_items_and_another_seed_other_items() {
        let a = colour_grid(7, 2);
        let b = colour_grid(7, 2);
        let c = colour_grid(8, 2);
        assert_eq!(a.len(), CONDITIONS.len() * 2);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.truth, x.other, x.text()), (y.truth, y.other, y.text()));
            assert_eq!(x.image_png(), y.image_png());
        }
        let differs = a
            .iter()
            .zip(&c)
            .any(|(x, z)| x.truth != z.truth || x.image_png() != z.image_png());
        assert!(differs);
    }

    #[test]
    fn every_corrupted_item_keeps_the_answer_in_one_modality() {
        for item in colour_grid(3, 4) {
            assert_ne!(item.truth, item.other);
            let image_carries = matches!(item.condition.image, ImageCondition::Clean);
            let text_carries = item.condition.text == TextCondition::Hint;
            match item.condition.group {
                Group::Clean => assert!(image_carries),
                Group::Corrupted | Group::Conflict => assert!(
                    image_carries || text_carries,
                    "{}: no modality carries the answer",
                    item.condition.name
                ),
            }
            assert_eq!(
                item.image_png().is_none(),
                item.condition.image == ImageCondition::Missing
            );
            if item.condition.text == TextCondition::Hint {
                assert!(item.text().contains(item.truth));
            }
        }
    }

    #[test]
    fn garbled_questions_differ_but_stay_readable() {
        let mut rng = SplitMix64::new(1);
        let g = garble(QUESTION, &mut rng);
        assert_ne!(g, QUESTION);
        assert!(!g.contains("color"));
        assert_eq!(g.split(' ').count(), QUESTION.split(' ').count());
    }
}
