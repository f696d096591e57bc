//! Bring-your-own VQA data for `llama-dms eval --data FILE.jsonl`: one question per line
//! (`{"image": "cat.jpg", "question": "...", "answers": ["black", "dark grey"]}`), asked clean
//! and under each `--corrupt` entry, corruptions seeded, answers scored by normalised phrase match.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dms::SplitMix64;
use crate::engine::{DmsSettings, EngineError, EngineHandle};

use super::corrupt::{add_noise, blur, occlude};
use super::{complete, request_with_parts, Outcome};

/// Most lines a data file may have.
pub const MAX_LINES: usize = 100_000;
/// Largest data file, in bytes.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Largest image file, in bytes.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;

/// What `--corrupt` accepts, for error messages.
const KINDS: &str = "noise:S, blur:R, occlude:F, missing, mismatch";

/// What is done to an item's image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Corruption {
    /// Gaussian noise of this deviation, in units of the full 0..255 range.
    Noise(f32),
    /// Gaussian blur of this radius in pixels.
    Blur(f32),
    /// This fraction of an 8x8 grid of patches blacked out.
    Occlude(f32),
    /// The image dropped.
    Missing,
    /// The image of another item that shares none of the accepted answers.
    Mismatch,
}

/// A condition of a data run: `clean` or one `--corrupt` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct DataCondition {
    /// Reported name: `clean`, `noise-0.4`, `blur-2`, `occlude-0.3`, `missing`, `mismatch`.
    pub label: String,
    /// The corruption (`None`: clean).
    pub corruption: Option<Corruption>,
}

impl DataCondition {
    /// The report group: `clean`, `corrupted` (noise, blur, occlude, missing) or `conflict`.
    pub fn group(&self) -> &'static str {
        match self.corruption {
            None => "clean",
            Some(Corruption::Mismatch) => "conflict",
            Some(_) => "corrupted",
        }
    }
}

/// The conditions of `spec` (comma-separated `noise:SIGMA`, `blur:RADIUS`, `occlude:FRACTION`,
/// `missing`, `mismatch`), after `clean`, which every run has.
pub fn parse_spec(spec: &str) -> Result<Vec<DataCondition>, String> {
    let mut out = vec![DataCondition {
        label: "clean".into(),
        corruption: None,
    }];
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (kind, value) = match entry.split_once(':') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (entry, None),
        };
        let number = |what: &str, max: f32| -> Result<f32, String> {
            let Some(v) = value else {
                return Err(format!("{kind} needs a value: {kind}:{what}"));
            };
            match v.parse::<f32>() {
                Ok(x) if x > 0.0 && x <= max => Ok(x),
                _ => Err(format!(
                    "{kind}: the {what} must be a number above 0 and at most {max}, not {v:?}"
                )),
            }
        };
        let corruption = match kind {
            "noise" => Corruption::Noise(number("SIGMA", 10.0)?),
            "blur" => Corruption::Blur(number("RADIUS", 100.0)?),
            "occlude" => Corruption::Occlude(number("FRACTION", 1.0)?),
            "missing" | "mismatch" if value.is_some() => {
                return Err(format!("{kind} takes no value (got {entry:?})"))
            }
            "missing" => Corruption::Missing,
            "mismatch" => Corruption::Mismatch,
            _ => return Err(format!("unknown corruption {kind:?} ({KINDS})")),
        };
        let label = match value {
            Some(v) => format!("{kind}-{v}"),
            None => kind.to_string(),
        };
        if out.iter().any(|c| c.label == label) {
            return Err(format!("{entry:?} is listed twice in --corrupt"));
        }
        out.push(DataCondition {
            label,
            corruption: Some(corruption),
        });
    }
    Ok(out)
}

/// The lowercased words of `text`, punctuation counting as space.
fn words(text: &str) -> Vec<String> {
    let spaced: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    spaced.split_whitespace().map(String::from).collect()
}

fn is_article(word: &str) -> bool {
    matches!(word, "a" | "an" | "the")
}

/// Lowercase, punctuation turned into spaces, the articles a/an/the dropped (unless that
/// leaves nothing: the answer "A" stays "a"), words joined by single spaces.
pub fn normalise(text: &str) -> String {
    let all = words(text);
    let kept: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|w| !is_article(w))
        .collect();
    if kept.is_empty() {
        all.join(" ")
    } else {
        kept.join(" ")
    }
}

/// Whether `answer`, normalised, equals an accepted answer or contains one as a whole-word
/// phrase ("It is dark grey." accepts "dark grey", not "grey" inside "greyish").
pub fn is_correct(answer: &str, accepted: &[String]) -> bool {
    accepted.iter().any(|a| {
        let a = normalise(a);
        let phrase: Vec<&str> = a.split(' ').collect();
        // An answer of articles only ("A") is looked for among all the words.
        let said = if phrase.iter().all(|w| is_article(w)) {
            words(answer).join(" ")
        } else {
            normalise(answer)
        };
        let said: Vec<&str> = said.split(' ').collect();
        !a.is_empty() && said.windows(phrase.len()).any(|w| w == phrase.as_slice())
    })
}

/// One question of a data file.
#[derive(Debug, Clone, PartialEq)]
pub struct DataItem {
    /// Position among the file's items, from 0.
    pub id: usize,
    /// Line number in the file, from 1.
    pub line: usize,
    /// The image, resolved against the file's directory (`None`: a text-only question).
    pub image: Option<PathBuf>,
    /// The question.
    pub question: String,
    /// Evidence sent before the question (a claim, a caption, context): what DMS weighs
    /// against the image. `None`: the question alone, nothing to weigh.
    pub context: Option<String>,
    /// Accepted answers (at least one).
    pub answers: Vec<String>,
}

impl DataItem {
    /// The user's text parts: the context (evidence), if any, then the question.
    pub fn text_parts(&self) -> Vec<crate::engine::ContentPart> {
        use crate::engine::ContentPart;
        let mut parts: Vec<ContentPart> = self
            .context
            .iter()
            .cloned()
            .map(ContentPart::Evidence)
            .collect();
        parts.push(ContentPart::Question(self.question.clone()));
        parts
    }
}

#[derive(Deserialize)]
struct Line {
    image: Option<String>,
    question: Option<String>,
    #[serde(default)]
    context: Option<String>,
    answers: Option<Vec<String>>,
}

/// The items of a data file, with the seed of its corruptions.
#[derive(Debug, Clone)]
pub struct DataSet {
    /// The file name, as reported (`summary.suite` is `data:<name>`).
    pub name: String,
    /// The items in file order.
    pub items: Vec<DataItem>,
    /// Seed of the corruptions and of the mismatch pairing.
    pub seed: u64,
}

/// Why a data item could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Its image could not be read or corrupted.
    #[error("{0}")]
    Image(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl DataSet {
    /// Reads `path`, checking every line and image (images at most `max_pixels` pixels).
    pub fn load(path: &Path, max_pixels: u64, seed: u64) -> Result<Self, String> {
        let shown = path.display();
        let len = std::fs::metadata(path)
            .map_err(|e| format!("cannot read {shown}: {e}"))?
            .len();
        if len > MAX_FILE_BYTES {
            return Err(format!("{shown} is larger than {MAX_FILE_BYTES} bytes"));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let items = parse(&text, dir, max_pixels).map_err(|e| format!("{shown} {e}"))?;
        let name = path
            .file_name()
            .map_or_else(|| shown.to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self { name, items, seed })
    }

    /// The (item, condition index) pairs to run: every item clean; the image corruptions only
    /// for items with an image, and `mismatch` only where another item's image qualifies.
    pub fn jobs(&self, conditions: &[DataCondition]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for item in &self.items {
            for (c, condition) in conditions.iter().enumerate() {
                let runs = match condition.corruption {
                    None => true,
                    Some(_) if item.image.is_none() => false,
                    Some(Corruption::Mismatch) => self.partner(item.id).is_some(),
                    Some(_) => true,
                };
                if runs {
                    out.push((item.id, c));
                }
            }
        }
        out
    }

    /// The item whose image `mismatch` shows with item `id`'s question: one with another image
    /// file and no accepted answer in common, picked from the seed (`None` if there is none).
    pub fn partner(&self, id: usize) -> Option<usize> {
        let item = self.items.get(id)?;
        let mine: Vec<String> = item.answers.iter().map(|a| normalise(a)).collect();
        let fits = |o: &DataItem| {
            o.image.is_some()
                && o.image != item.image
                && o.answers.iter().all(|a| !mine.contains(&normalise(a)))
        };
        let n = self.items.len() as u64;
        let mut rng = SplitMix64::new(self.seed ^ (id as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        // A few random draws, then a scan from a random start, so large files stay fast.
        for _ in 0..64 {
            let o = &self.items[(rng.next_u64() % n) as usize];
            if fits(o) {
                return Some(o.id);
            }
        }
        let start = (rng.next_u64() % n) as usize;
        (0..self.items.len())
            .map(|k| &self.items[(start + k) % self.items.len()])
            .find(|o| fits(o))
            .map(|o| o.id)
    }

    /// The image item `id` is asked with under `condition`, encoded (`None`: no image).
    pub fn image(&self, id: usize, condition: &DataCondition) -> Result<Option<Vec<u8>>, String> {
        let item = self.items.get(id).ok_or("no such item")?;
        let source = match condition.corruption {
            Some(Corruption::Missing) => return Ok(None),
            Some(Corruption::Mismatch) => {
                self.partner(id).and_then(|p| self.items[p].image.as_ref())
            }
            _ => item.image.as_ref(),
        };
        let Some(path) = source else {
            return Ok(None);
        };
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let corruption = match condition.corruption {
            Some(c @ (Corruption::Noise(_) | Corruption::Blur(_) | Corruption::Occlude(_))) => c,
            _ => return Ok(Some(bytes)),
        };
        let mut img = image::load_from_memory(&bytes)
            .map_err(|e| format!("cannot decode {}: {e}", path.display()))?
            .into_rgb8();
        // Seeded per (seed, item, condition): the same in every run and in any order.
        let mut rng = SplitMix64::new(condition.label.bytes().fold(
            self.seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            |h, b| h.rotate_left(7) ^ u64::from(b),
        ));
        match corruption {
            Corruption::Noise(sigma) => add_noise(&mut img, sigma, &mut rng),
            Corruption::Blur(radius) => img = blur(&img, radius),
            Corruption::Occlude(fraction) => occlude(&mut img, fraction, &mut rng),
            Corruption::Missing | Corruption::Mismatch => {}
        }
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| format!("cannot encode the corrupted image: {e}"))?;
        Ok(Some(out.into_inner()))
    }

    /// Asks item `id` under `condition` and `dms` (greedy, at most `max_tokens`) and scores it.
    pub fn answer(
        &self,
        engine: &EngineHandle,
        id: usize,
        condition: &DataCondition,
        mode: &str,
        dms: &DmsSettings,
        max_tokens: usize,
    ) -> Result<Outcome, DataError> {
        let item = self
            .items
            .get(id)
            .ok_or(DataError::Image("no such item".into()))?;
        let image = self.image(id, condition).map_err(DataError::Image)?;
        let mut r = request_with_parts(image, item.text_parts(), dms, max_tokens);
        r.measure_mwc = true;
        let (answer, done) = complete(engine, r)?;
        Ok(Outcome {
            task: "vqa".into(),
            item: id,
            condition: condition.label.clone(),
            group: condition.group().into(),
            mode: mode.into(),
            truth: item.answers.first().cloned().unwrap_or_default(),
            correct: is_correct(&answer, &item.answers),
            answer,
            weights: done.dms.weights.clone(),
            signals: done.dms.signals.clone(),
            consistency_hidden: done.dms.consistency_hidden.clone(),
            consistency_input: done.dms.consistency_input.clone(),
            dms_ms: done.dms.timings_ms.total_ms,
            mwc: done.dms.mwc,
        })
    }
}

/// The items of a data file's `text`; `"line N: ..."` errors. Images resolve against `dir`.
pub fn parse(text: &str, dir: &Path, max_pixels: u64) -> Result<Vec<DataItem>, String> {
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = n + 1;
        if at > MAX_LINES {
            return Err(format!("has more than {MAX_LINES} lines"));
        }
        if line.trim().is_empty() {
            continue;
        }
        let item = parse_line(line, dir, max_pixels, items.len(), at)
            .map_err(|e| format!("line {at}: {e}"))?;
        items.push(item);
    }
    if items.is_empty() {
        return Err("has no items".into());
    }
    Ok(items)
}

fn parse_line(
    line: &str,
    dir: &Path,
    max_pixels: u64,
    id: usize,
    at: usize,
) -> Result<DataItem, String> {
    let raw: Line = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let question = raw.question.unwrap_or_default().trim().to_string();
    if question.is_empty() {
        return Err("\"question\" is missing or empty".into());
    }
    let answers = raw.answers.ok_or("\"answers\" is missing")?;
    if answers.is_empty() {
        return Err("\"answers\" is empty".into());
    }
    if let Some(a) = answers.iter().find(|a| normalise(a).is_empty()) {
        return Err(format!("answer {a:?} has no letters or digits"));
    }
    let image = match raw.image {
        None => None,
        Some(p) if p.trim().is_empty() => return Err("\"image\" is an empty path".into()),
        Some(p) => {
            let path = dir.join(p);
            check_image(&path, max_pixels)?;
            Some(path)
        }
    };
    let context = raw
        .context
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    Ok(DataItem {
        id,
        line: at,
        image,
        question,
        context,
        answers,
    })
}

/// Checks from the file's header that `path` is a supported image within the limits.
fn check_image(path: &Path, max_pixels: u64) -> Result<(), String> {
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| format!("image {shown} cannot be read: {e}"))?
        .len();
    if len > MAX_IMAGE_BYTES {
        return Err(format!(
            "image {shown} is larger than {MAX_IMAGE_BYTES} bytes"
        ));
    }
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| format!("image {shown} cannot be read: {e}"))?;
    use image::ImageFormat as F;
    if !matches!(
        reader.format(),
        Some(F::Png | F::Jpeg | F::WebP | F::Gif | F::Bmp)
    ) {
        return Err(format!(
            "{shown} is not an image (PNG, JPEG, WebP, GIF or BMP)"
        ));
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format!("image {shown} cannot be decoded: {e}"))?;
    if w == 0 || h == 0 || u64::from(w) * u64::from(h) > max_pixels {
        return Err(format!(
            "image {shown} is {w}x{h} pixels (at most {max_pixels} pixels)"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "custom_tests.rs"]
mod tests;
