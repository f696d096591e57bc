//! The paper's other two tasks mapped onto the colour grid: captioning ("Describe the image."
//! must name the right colour) and retrieval (rank one caption per colour by the model's
//! log-likelihood of it as the answer; recall@1).

use crate::dms::ModalityWeights;
use crate::engine::{DmsSettings, Done, EngineError, EngineHandle};
use crate::models::colour::COLOURS;

use super::dataset::{ImageCondition, Item, TextCondition};
use super::{complete, request, Answered, Outcome};

/// The instruction of both tasks.
pub const DESCRIBE: &str = "Describe the image.";

/// The candidate caption of a colour.
pub fn caption_of(colour: &str) -> String {
    format!("This is a photo of something {colour}.")
}

/// The items the image-only tasks use, with their image condition's label: those with an image
/// of their true colour (the text condition is replaced by the instruction).
pub fn image_items(items: &[Item]) -> Vec<(&Item, String)> {
    items
        .iter()
        .filter(|i| matches!(i.condition.text, TextCondition::Plain | TextCondition::Hint))
        .filter(|i| {
            !matches!(
                i.condition.image,
                ImageCondition::Missing | ImageCondition::Wrong
            )
        })
        .map(|i| (i, i.condition.image.label()))
        .collect()
}

/// Captioning: the description must name the item's colour first.
pub fn caption(
    engine: &EngineHandle,
    item: &Item,
    label: &str,
    mode: &str,
    dms: &DmsSettings,
    max_tokens: usize,
) -> Result<Outcome, EngineError> {
    let (answer, done) = complete(engine, request(item.image_png(), DESCRIBE, dms, max_tokens))?;
    let answered = Answered {
        task: "caption",
        item,
        condition: label,
        mode,
        answer,
    };
    Ok(answered.outcome(&done))
}

/// Log-likelihood of `answer` to `DESCRIBE` about `item`'s image under `dms`, with the report.
fn score(
    engine: &EngineHandle,
    item: &Item,
    dms: &DmsSettings,
    answer: &str,
) -> Result<(f64, Box<Done>), EngineError> {
    let mut r = request(item.image_png(), DESCRIBE, dms, 1);
    r.score = Some(answer.into());
    let (_, done) = complete(engine, r)?;
    let loglik = done
        .score
        .ok_or_else(|| EngineError::Internal("a scoring request returned no score".into()))?;
    Ok((loglik, done))
}

/// Retrieval: every colour's caption is scored as the answer; the best must be the item's.
/// The mode's weights come from the first candidate; the others are scored with those same
/// weights (fixed), so the DMS stage runs once and the prompt's KV is reused.
pub fn retrieve(
    engine: &EngineHandle,
    item: &Item,
    label: &str,
    mode: &str,
    dms: &DmsSettings,
) -> Result<Outcome, EngineError> {
    let captions: Vec<String> = COLOURS.iter().map(|c| caption_of(c.word.trim())).collect();
    let (first, done) = score(engine, item, dms, &captions[0])?;
    let same_weights = DmsSettings::fixed(ModalityWeights {
        images: done.dms.weights.images.clone(),
        text: done.dms.weights.text,
    });
    let mut best = (first, 0);
    for (k, caption) in captions.iter().enumerate().skip(1) {
        let (loglik, _) = score(engine, item, &same_weights, caption)?;
        if loglik > best.0 {
            best = (loglik, k);
        }
    }
    let answered = Answered {
        task: "retrieval",
        item,
        condition: label,
        mode,
        answer: captions[best.1].clone(),
    };
    Ok(answered.outcome(&done))
}
