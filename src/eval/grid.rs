//! Training data for the learned scheduler: for each item, the signals the rule mode measures
//! and a grid of weight vectors, each scored by the log-likelihood of the reference answer
//! (the format `train-scheduler` reads) and by the Modality Weight Consistency loss of the
//! weights (`mwc`, measured by the engine: weighted joint pass against the unimodal passes).

use crate::dms::{GridPoint, ModalityWeights, TrainExample};
use crate::engine::{DmsSettings, EngineError, EngineHandle};

use super::complete;
use super::dataset::Item;

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
    let answer = reference_answer(item.truth);
    let score = |dms: &DmsSettings, measure_mwc: bool| {
        let mut r = super::request(Some(image.clone()), &item.text(), dms, 1);
        r.score = Some(answer.clone());
        r.measure_mwc = measure_mwc;
        complete(engine, r)
    };
    let (_, measured) = score(measure, false)?;
    let signals = measured
        .dms
        .signals
        .clone()
        .ok_or_else(|| EngineError::Internal("the rule mode measured no signals".into()))?;
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
            mwc: done.dms.mwc.unwrap_or(0.0),
        });
    }
    Ok(Some(TrainExample { signals, grid }))
}
