//! The `colour-trust` suite (suite v2): generated, seeded items on which one modality at a time
//! is made unreliable, so that a scheduler's trust weights can be judged against the modality
//! that really carries the answer.
//!
//! Every item has an image (96x96 px, a 4x4 grid of 24 px blocks, one projector patch each)
//! and a question; most have an evidence text (a hint) sent as a separate text part, so that
//! the engine weights the evidence and never the question.

use std::io::Cursor;

use serde::Serialize;

use crate::dms::SplitMix64;
use crate::eval::corrupt::add_noise;
use crate::eval::dataset::shaded_square;
use crate::models::colour::COLOURS;

/// Group of the conditions where both modalities are clean.
pub const GROUP_CLEAN: &str = "clean";
/// Group of the conditions whose evidence is unreliable (the image carries the answer).
pub const GROUP_TEXT_UNRELIABLE: &str = "text-unreliable";
/// Group of the conditions whose image is unreliable (the evidence carries the answer).
pub const GROUP_IMAGE_UNRELIABLE: &str = "image-unreliable";
/// Group of the control: the modalities disagree and the truth is either one (~50% at best).
pub const GROUP_CONFLICT: &str = "conflict";
/// The groups in report order.
pub const GROUPS: [&str; 4] = [
    GROUP_CLEAN,
    GROUP_TEXT_UNRELIABLE,
    GROUP_IMAGE_UNRELIABLE,
    GROUP_CONFLICT,
];

/// Side of the generated images in pixels.
pub const IMAGE_SIZE: u32 = 96;
/// Blocks per side (each block is one 8x8 patch of the demo's 32x32 input).
pub const BLOCKS: u32 = 4;
/// Side of one block in pixels.
pub const BLOCK: u32 = IMAGE_SIZE / BLOCKS;
/// The mid-grey that fits no RGB-cube corner ("no colour" for the demo).
pub const GREY: [u8; 3] = [128, 128, 128];

/// The question wordings; each item draws one from its seed.
pub const QUESTIONS: [&str; 3] = [
    "What is the main color of this image?",
    "Which color is shown in this picture?",
    "Name the main color of this image.",
];

/// Confident hints naming a colour (`{}` is the colour).
const HINTS: [&str; 3] = [
    "This is a photo of something {}.",
    "The object in the picture is {}.",
    "I photographed a {} thing.",
];
/// Hedged hints.
const HEDGED: [&str; 3] = [
    "Maybe it is {}, I am not sure.",
    "It could be {}, but I can't really tell.",
    "Possibly {}? I only guessed.",
];
/// Hints from an unreliable source.
const RUMOURS: [&str; 3] = [
    "Someone told me it might be {}, but they often mix up colours.",
    "A friend guessed {}, though he is colour-blind.",
    "I heard {}, not sure who said it.",
];

/// What the image of a condition shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustImage {
    /// A clean shaded image of the image colour.
    Clean,
    /// An image of the *other* colour with 25-75% of its blocks replaced by random solid
    /// colours or mid-grey.
    Patched,
    /// Mid-grey plus Gaussian noise of deviation 1.5 (in units of the 0..255 range).
    HeavyNoise,
    /// A blank mid-grey placeholder (pixel jitter of at most 3).
    Missing,
}

/// What the evidence of a condition says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustEvidence {
    /// No evidence text.
    None,
    /// A confident hint naming the truth.
    Hint,
    /// A hedged hint naming the other colour.
    HedgedWrong,
    /// A hint from an unreliable source naming the other colour.
    RumourWrong,
    /// A confident hint naming the other colour, misspelt (the colour word always damaged).
    MisspeltWrong,
    /// A confident hint naming the colour the image does not show (the `conflict` control).
    Conflict,
}

/// A named condition of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TrustCondition {
    /// Stable name, e.g. `clean+hedged-wrong`.
    pub name: &'static str,
    /// Report group (one of [`GROUPS`]).
    pub group: &'static str,
    /// What the image shows.
    pub image: TrustImage,
    /// What the evidence says.
    pub evidence: TrustEvidence,
}

const fn cond(
    name: &'static str,
    group: &'static str,
    image: TrustImage,
    evidence: TrustEvidence,
) -> TrustCondition {
    TrustCondition {
        name,
        group,
        image,
        evidence,
    }
}

/// The conditions of the `colour-trust` suite, in report order.
pub const TRUST_CONDITIONS: [TrustCondition; 9] = {
    use TrustEvidence as E;
    use TrustImage as I;
    [
        cond("clean", GROUP_CLEAN, I::Clean, E::None),
        cond("clean+hint", GROUP_CLEAN, I::Clean, E::Hint),
        cond(
            "clean+hedged-wrong",
            GROUP_TEXT_UNRELIABLE,
            I::Clean,
            E::HedgedWrong,
        ),
        cond(
            "clean+rumour-wrong",
            GROUP_TEXT_UNRELIABLE,
            I::Clean,
            E::RumourWrong,
        ),
        cond(
            "clean+misspelt-wrong",
            GROUP_TEXT_UNRELIABLE,
            I::Clean,
            E::MisspeltWrong,
        ),
        cond("patched+hint", GROUP_IMAGE_UNRELIABLE, I::Patched, E::Hint),
        cond(
            "heavy-noise+hint",
            GROUP_IMAGE_UNRELIABLE,
            I::HeavyNoise,
            E::Hint,
        ),
        cond("missing+hint", GROUP_IMAGE_UNRELIABLE, I::Missing, E::Hint),
        cond("conflict", GROUP_CONFLICT, I::Clean, E::Conflict),
    ]
};

/// One generated item.
#[derive(Debug, Clone, Serialize)]
pub struct TrustItem {
    /// Position in the suite.
    pub id: usize,
    /// Seed of this item's image and texts.
    pub seed: u64,
    /// The suite seed the item was drawn from (see [`colour_trust`]).
    pub suite_seed: u64,
    /// The condition applied.
    pub condition: TrustCondition,
    /// The expected colour word (e.g. `red`).
    pub truth: &'static str,
    /// A different colour word: the wrong hint's, the patched image's base, or in `conflict`
    /// the modality that is not the truth.
    pub other: &'static str,
    /// The evidence text (`None`: no evidence), sent as its own text part.
    pub evidence: Option<String>,
    /// The question, sent as its own text part.
    pub question: String,
    /// Whether the image shows the truth.
    pub image_reliable: bool,
    /// Whether the evidence names the truth (`None`: no evidence).
    pub text_reliable: Option<bool>,
    /// Index in [`COLOURS`] of the colour the image is drawn from.
    #[serde(skip)]
    image_colour: usize,
}

/// A colour word without its leading space.
fn word(index: usize) -> &'static str {
    COLOURS[index].word.trim()
}

/// `template` with its `{}` replaced by `colour`.
fn fill(template: &str, colour: &str) -> String {
    template.replacen("{}", colour, 1)
}

/// One of `options`, drawn from `rng`.
fn pick<'a>(options: &[&'a str], rng: &mut SplitMix64) -> &'a str {
    options[(rng.next_u64() % options.len() as u64) as usize]
}

/// The `colour-trust` items for `seed`: `per_condition` items for every condition of
/// [`TRUST_CONDITIONS`], colours and wordings drawn from the seed. The same seed gives the same
/// items, byte for byte.
pub fn colour_trust(seed: u64, per_condition: usize) -> Vec<TrustItem> {
    let mut rng = SplitMix64::new(seed ^ 0x7457_2d74_7275_7374);
    let mut items = Vec::with_capacity(TRUST_CONDITIONS.len() * per_condition);
    for condition in TRUST_CONDITIONS {
        for k in 0..per_condition {
            let n = COLOURS.len() as u64;
            let a = (rng.next_u64() % n) as usize;
            let b = (a + 1 + (rng.next_u64() % (n - 1)) as usize) % COLOURS.len();
            let item_seed = rng.next_u64();
            let mut it = item(
                items.len(),
                item_seed,
                condition,
                a,
                b,
                !k.is_multiple_of(2),
            );
            it.suite_seed = seed;
            items.push(it);
        }
    }
    items
}

/// The item of `condition` with colours `a` (the truth, shown by a clean image) and `b` (the
/// other colour); in `conflict`, `swap` makes the hint's colour the truth.
fn item(
    id: usize,
    seed: u64,
    condition: TrustCondition,
    a: usize,
    b: usize,
    swap: bool,
) -> TrustItem {
    let mut rng = SplitMix64::new(seed ^ 0x7e47);
    let question = pick(&QUESTIONS, &mut rng).to_string();
    let (truth, other) = (word(a), word(b));
    let evidence = match condition.evidence {
        TrustEvidence::None => None,
        TrustEvidence::Hint | TrustEvidence::Conflict => {
            // In `conflict` the hint names `b`, the colour the image does not show.
            let colour = if condition.evidence == TrustEvidence::Hint {
                truth
            } else {
                other
            };
            Some(fill(pick(&HINTS, &mut rng), colour))
        }
        TrustEvidence::HedgedWrong => Some(fill(pick(&HEDGED, &mut rng), other)),
        TrustEvidence::RumourWrong => Some(fill(pick(&RUMOURS, &mut rng), other)),
        TrustEvidence::MisspeltWrong => {
            let hint = fill(pick(&HINTS, &mut rng), other);
            Some(misspell(&hint, other, &mut rng))
        }
    };
    let image_colour = if condition.image == TrustImage::Patched {
        b
    } else {
        a
    };
    let (image_reliable, text_reliable) = match (condition.image, condition.evidence) {
        (_, TrustEvidence::Conflict) => (!swap, Some(swap)),
        (image, evidence) => (
            image == TrustImage::Clean,
            match evidence {
                TrustEvidence::None => None,
                TrustEvidence::Hint => Some(true),
                _ => Some(false),
            },
        ),
    };
    let conflict_swap = swap && condition.evidence == TrustEvidence::Conflict;
    TrustItem {
        id,
        seed,
        suite_seed: 0,
        condition,
        truth: if conflict_swap { other } else { truth },
        other: if conflict_swap { truth } else { other },
        evidence,
        question,
        image_reliable,
        text_reliable,
        image_colour,
    }
}

/// Typos: in about 40% of the words longer than two letters one letter is dropped or two
/// neighbours are swapped; a word starting with `colour` is always damaged (and never left
/// intact by a swap of equal letters).
fn misspell(text: &str, colour: &str, rng: &mut SplitMix64) -> String {
    text.split(' ')
        .map(|w| {
            let letters = w.chars().take_while(|c| c.is_alphabetic()).count();
            let always = w.starts_with(colour);
            if letters > 2 && (always || rng.next_f32() < 0.4) {
                damage(w, letters, rng)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` with one of its first `letters` letters dropped, or two neighbours swapped; never
/// the word itself (a swap of equal letters becomes a drop).
fn damage(word: &str, letters: usize, rng: &mut SplitMix64) -> String {
    let mut chars: Vec<char> = word.chars().collect();
    let at = 1 + (rng.next_u64() % (letters as u64 - 2)) as usize;
    if rng.next_f32() < 0.5 || chars[at] == chars[at + 1] {
        chars.remove(at);
    } else {
        chars.swap(at, at + 1);
    }
    chars.into_iter().collect()
}

/// A corner of the RGB cube as 0..255 pixel values.
fn corner_rgb(index: usize) -> [u8; 3] {
    COLOURS[index].rgb.map(|c| if c > 0.5 { 255 } else { 0 })
}

/// Fills block `(bx, by)` of `img` with `rgb`.
fn fill_block(img: &mut image::RgbImage, bx: u32, by: u32, rgb: [u8; 3]) {
    for y in by * BLOCK..(by + 1) * BLOCK {
        for x in bx * BLOCK..(bx + 1) * BLOCK {
            img.put_pixel(x, y, image::Rgb(rgb));
        }
    }
}

/// Replaces a fraction drawn uniformly in `[0.25, 0.75]` of the 16 blocks, chosen at random,
/// each by mid-grey or by a random solid corner colour other than `base` (50/50).
fn patch(img: &mut image::RgbImage, base: usize, rng: &mut SplitMix64) {
    let n_blocks = (BLOCKS * BLOCKS) as usize;
    let fraction = 0.25 + 0.5 * rng.next_f32();
    let n = ((fraction * n_blocks as f32).round() as usize).clamp(4, 12);
    let mut cells: Vec<usize> = (0..n_blocks).collect();
    for i in (1..cells.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        cells.swap(i, j);
    }
    for &cell in &cells[..n] {
        let rgb = if rng.next_f32() < 0.5 {
            GREY
        } else {
            let shift = 1 + (rng.next_u64() % (COLOURS.len() as u64 - 1)) as usize;
            corner_rgb((base + shift) % COLOURS.len())
        };
        fill_block(img, cell as u32 % BLOCKS, cell as u32 / BLOCKS, rgb);
    }
}

impl TrustItem {
    /// The item's image (always present; a missing image is a grey placeholder).
    pub fn image(&self) -> image::RgbImage {
        let mut rng = SplitMix64::new(self.seed);
        let size = IMAGE_SIZE;
        match self.condition.image {
            TrustImage::Clean => shaded_square(COLOURS[self.image_colour].rgb, size, &mut rng),
            TrustImage::Patched => {
                let mut img = shaded_square(COLOURS[self.image_colour].rgb, size, &mut rng);
                patch(&mut img, self.image_colour, &mut rng);
                img
            }
            TrustImage::HeavyNoise => {
                let mut img = image::RgbImage::from_pixel(size, size, image::Rgb(GREY));
                add_noise(&mut img, 1.5, &mut rng);
                img
            }
            TrustImage::Missing => image::RgbImage::from_fn(size, size, |_, _| {
                let mut px = || 125 + (rng.next_u64() % 7) as u8;
                image::Rgb([px(), px(), px()])
            }),
        }
    }

    /// The item's image as PNG bytes.
    pub fn image_png(&self) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        self.image()
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("encoding a PNG into memory cannot fail");
        out.into_inner()
    }

    /// The colour word the image is drawn from (for `patched`, the base under the patches).
    pub fn image_colour(&self) -> &'static str {
        word(self.image_colour)
    }
}

#[cfg(test)]
#[path = "suite_tests.rs"]
mod tests;
