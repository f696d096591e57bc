//! Training data for the learned scheduler: for each item, the signals the rule mode measures
//! and a grid of weight vectors, each scored by the log-likelihood of the reference answer
//! (the format `train-scheduler` reads) and by the Modality Weight Consistency loss of the
//! weights (`mwc`, measured by the engine: weighted joint pass against the unimodal passes).

use crate::dms::{GridPoint, ModalityWeights, TrainExample};
use crate::engine::{ContentPart, DmsSettings, EngineError, EngineHandle};

use super::custom::DataItem;
use super::dataset::Item;
use super::{complete, request_with_parts};

/// Image weights of the grid; the text gets `2 - w`, so that the weights of one image and the
/// text sum to the number of modalities, as every scheduler's do.
pub const IMAGE_WEIGHTS: [f32; 7] = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75];

/// The answer whose likelihood is scored.
pub fn reference_answer(truth: &str) -> String {
    format!("The main color of this image is {truth}.")
}

/// The training example of `item` (`None` for items without an image: one modality, nothing
/// to weigh). `measure` are the DMS settings whose signals are recorded (a rule mode).
pub fn grid_example(
    engine: &EngineHandle,
    item: &Item,
    measure: &DmsSettings,
) -> Result<Option<TrainExample>, EngineError> {
    let Some(image) = item.image_png() else {
        return Ok(None);
    };
    let parts = vec![ContentPart::Text(item.text())];
    scored_grid(engine, image, parts, &reference_answer(item.truth), measure)
}

/// The training example of a `--data` item whose image is `image` (`None` without an image or
/// without context: with the question alone there is nothing to weigh). The reference answer
/// is the item's first accepted answer.
pub fn data_grid_example(
    engine: &EngineHandle,
    item: &DataItem,
    image: Option<Vec<u8>>,
    measure: &DmsSettings,
) -> Result<Option<TrainExample>, EngineError> {
    let (Some(image), Some(_), Some(answer)) = (image, &item.context, item.answers.first()) else {
        return Ok(None);
    };
    scored_grid(engine, image, item.text_parts(), answer, measure)
}

/// The signals `measure` records for the request of `image` and `parts`, and every grid point
/// scored by the log-likelihood of `answer` and the MWC loss.
fn scored_grid(
    engine: &EngineHandle,
    image: Vec<u8>,
    parts: Vec<ContentPart>,
    answer: &str,
    measure: &DmsSettings,
) -> Result<Option<TrainExample>, EngineError> {
    let score = |dms: &DmsSettings, measure_mwc: bool| {
        let mut r = request_with_parts(Some(image.clone()), parts.clone(), dms, 1);
        r.score = Some(answer.to_string());
        r.measure_mwc = measure_mwc;
        complete(engine, r)
    };
    let (_, measured) = score(measure, false)?;
    let Some(signals) = measured.dms.scheduler_signals() else {
        // No evidence: nothing was measured, nothing to learn from.
        return Ok(None);
    };
    let mut grid = Vec::with_capacity(IMAGE_WEIGHTS.len());
    for w in IMAGE_WEIGHTS {
        let weights = ModalityWeights {
            images: vec![w],
            text: 2.0 - w,
        };
        let (_, done) = score(&DmsSettings::fixed(weights), true)?;
        grid.push(GridPoint {
            weights: vec![w, 2.0 - w],
            loglik: done.score.unwrap_or(f64::NEG_INFINITY) as f32,
            mwc: done.dms.mwc,
        });
    }
    Ok(Some(TrainExample {
        signals,
        grid,
        group: None,
    }))
}
