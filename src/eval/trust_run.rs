//! Answering the `colour-trust` suite on the engine: one [`TrustRecord`] per item, with the
//! signals a rule request measured, the unimodal answers, the fixed-weight grid (the control
//! curve and the oracle) and the answers of each scheduler mode.

use std::collections::BTreeMap;

use crate::dms::{ModalityWeights, Registry};
use crate::engine::{
    pick_scheduler, ContentPart, DmsMode, DmsSettings, Done, EngineError, EngineHandle,
    GenerateRequest, Message, Role, TokenLogprob, MEASURED_WEIGHT_STEP,
};
use crate::llama::SamplerParams;

use super::trust::record::{GridAnswer, ModeAnswer, Scored, TrustRecord, GRID_WEIGHTS};
use super::trust::suite::TrustItem;
use super::{complete_with_logprobs, first_colour};

/// How the records are made.
#[derive(Debug, Clone)]
pub struct TrustRun {
    /// Longest answer in tokens.
    pub max_tokens: usize,
    /// Scheduler modes to answer with besides the grid: `(mode name, settings)`; a mode named
    /// `off` is taken from the grid point (1, 1), which is the same evaluation.
    pub modes: Vec<(String, DmsSettings)>,
    /// The settings whose signals are recorded (a rule mode).
    pub measure: DmsSettings,
    /// Measure the MWC loss at every grid point (one extra pass each, and the unimodal passes
    /// once per record).
    pub mwc: bool,
    /// Image weights of the grid (the text gets `2 - w`); [`GRID_WEIGHTS`] by default.
    pub grid: Vec<f32>,
    /// Grid weights to answer again in records kept from an earlier run (see [`regrid`]).
    pub regrid: Vec<f32>,
    /// Measure the signals of records kept from an earlier run again (see [`remeasure`]).
    pub remeasure: bool,
    /// Replay the scheduler modes of records kept from an earlier run (after a plugin was
    /// fitted again); see [`add_replayed_modes`].
    pub replay: bool,
}

impl Default for TrustRun {
    fn default() -> Self {
        Self {
            max_tokens: 12,
            modes: Vec::new(),
            measure: DmsSettings::mode(DmsMode::Rule),
            mwc: false,
            grid: GRID_WEIGHTS.to_vec(),
            regrid: Vec::new(),
            remeasure: false,
            replay: false,
        }
    }
}

/// Top log-probabilities asked for, to read the colour tokens' log-odds.
const TOP_LOGPROBS: usize = 20;

/// The request of `item` under `dms`: the image, the evidence and the question as three parts
/// (so the default rule makes the last one the question).
pub fn trust_request(item: &TrustItem, dms: &DmsSettings, max_tokens: usize) -> GenerateRequest {
    let mut content = vec![ContentPart::Image(item.image_png())];
    content.extend(item.evidence.clone().map(ContentPart::Text));
    content.push(ContentPart::Text(item.question.clone()));
    let mut request = GenerateRequest::new(vec![Message {
        role: Role::User,
        content,
    }]);
    request.sampling = SamplerParams::greedy();
    request.max_tokens = max_tokens;
    request.top_logprobs = Some(TOP_LOGPROBS);
    request.dms = dms.clone();
    request
}

/// `log p(truth) - max log p(other colour)` at the first generated token that names a colour,
/// from its top log-probabilities. A colour missing from the top list counts at the list's
/// lowest log-probability (a bound). `None` when no token names a colour.
pub fn colour_log_odds(logprobs: &[TokenLogprob], truth: &str) -> Option<f32> {
    let at = logprobs
        .iter()
        .find(|lp| first_colour(&lp.token).is_some())?;
    let floor = at
        .top
        .iter()
        .map(|t| t.2)
        .fold(f32::INFINITY, f32::min)
        .min(at.logprob);
    let mut truth_lp = None;
    let mut other_lp: Option<f32> = None;
    for (text, _, lp) in &at.top {
        let trimmed = text.trim();
        if trimmed.is_empty() || first_colour(trimmed).is_none() {
            continue;
        }
        if first_colour(trimmed) == Some(truth) {
            truth_lp = Some(truth_lp.map_or(*lp, |t: f32| t.max(*lp)));
        } else {
            other_lp = Some(other_lp.map_or(*lp, |o| o.max(*lp)));
        }
    }
    Some(truth_lp.unwrap_or(floor) - other_lp.unwrap_or(floor))
}

/// The record of `item`: signals (measured by a rule request), unimodal answers, the grid and
/// the modes.
pub fn trust_record(
    engine: &EngineHandle,
    item: &TrustItem,
    run: &TrustRun,
) -> Result<TrustRecord, EngineError> {
    let answer = |dms: &DmsSettings, mwc: bool| {
        let mut r = trust_request(item, dms, run.max_tokens);
        r.measure_mwc = mwc;
        let (text, logprobs, done) = complete_with_logprobs(engine, r)?;
        let scored = Scored::new(text, item.truth, colour_log_odds(&logprobs, item.truth));
        Ok::<_, EngineError>((scored, done))
    };
    let (measured, done) = answer(&run.measure, false)?;
    let mut record = TrustRecord {
        item: item.id,
        seed: item.seed,
        suite_seed: Some(item.suite_seed),
        condition: item.condition.name.to_string(),
        group: item.condition.group.to_string(),
        truth: item.truth.to_string(),
        other: item.other.to_string(),
        image_reliable: item.image_reliable,
        text_reliable: item.text_reliable,
        signals: None,
        variants: BTreeMap::new(),
        image_alone: None,
        text_alone: None,
        grid: Vec::new(),
        modes: Vec::new(),
    };
    keep_signals(&mut record, item, &done);
    for &w in &run.grid {
        let weights = ModalityWeights {
            images: vec![w],
            text: 2.0 - w,
        };
        let (scored, done) = answer(&DmsSettings::fixed(weights), run.mwc)?;
        record.grid.push(GridAnswer {
            image_weight: w,
            scored,
            mwc: done.dms.mwc,
        });
    }
    for (name, dms) in &run.modes {
        let mode = if name == "off" {
            let at_one = record.grid_at(1.0).cloned();
            let scored = match at_one {
                Some(g) => g.scored,
                None => answer(dms, false)?.0,
            };
            ModeAnswer {
                mode: name.clone(),
                weights: ModalityWeights::uniform(1),
                scored,
                dms_ms: 0.0,
            }
        } else if *dms == run.measure {
            mode_answer(name, measured.clone(), &done)
        } else {
            let (scored, done) = answer(dms, false)?;
            mode_answer(name, scored, &done)
        };
        record.modes.push(mode);
    }
    Ok(record)
}

/// Stores the signals a measuring request reported in `record`, with the unimodal answers.
fn keep_signals(record: &mut TrustRecord, item: &TrustItem, done: &Done) {
    // The report's signals carry no variants; the record keeps them once, in `variants`
    // (see `TrustRecord::scheduler_signals`).
    record.signals = done.dms.signals.clone();
    record.variants = BTreeMap::new();
    record.image_alone = None;
    record.text_alone = None;
    if let Some(v) = &done.dms.variants {
        record.variants = v.pair(0);
        let score = |a: &str| Scored::new(a, item.truth, None);
        record.image_alone = v.image_answers.first().map(|a| score(a));
        record.text_alone = Some(score(&v.text_answer));
    }
}

/// Measures the signals of a kept `record` again (after a change in what the signal passes
/// measure), keeping its grid, and drops its scheduler modes so that `--resume` replays them
/// from the new signals. Does nothing unless `run.remeasure`; returns whether it measured.
pub fn remeasure(
    engine: &EngineHandle,
    item: &TrustItem,
    record: &mut TrustRecord,
    run: &TrustRun,
) -> Result<bool, EngineError> {
    if !run.remeasure {
        return Ok(false);
    }
    let r = trust_request(item, &run.measure, run.max_tokens);
    let (_, _, done) = complete_with_logprobs(engine, r)?;
    keep_signals(record, item, &done);
    forget_scheduler_modes(record);
    Ok(true)
}

/// Drops the scheduler modes of `record` (keeps `off`), so that they are replayed.
fn forget_scheduler_modes(record: &mut TrustRecord) {
    record.modes.retain(|m| m.mode == "off");
}

/// Adds the answers of the modes of `run` that `record` lacks, replayed: each scheduler's
/// weights computed from the recorded signals exactly as the engine computes them (the same
/// scheduler, rounded to [`MEASURED_WEIGHT_STEP`]), then answered with those weights fixed.
/// The signal passes are deterministic, so this is the mode's answer without measuring the
/// signals again. With `run.replay` every scheduler mode is replayed, also those the record
/// has. Returns whether anything was added.
pub fn add_replayed_modes(
    engine: &EngineHandle,
    registry: &Registry,
    item: &TrustItem,
    record: &mut TrustRecord,
    run: &TrustRun,
) -> Result<bool, EngineError> {
    if run.replay {
        forget_scheduler_modes(record);
    }
    let mut added = false;
    for (name, dms) in &run.modes {
        if record.mode(name).is_some() {
            continue;
        }
        let weights = match (pick_scheduler(registry, dms)?, &record.scheduler_signals()) {
            (None, _) => ModalityWeights::uniform(1),
            (Some(s), Some(signals)) if s.needs_signals() => s
                .weights(signals)
                .map_err(|e| EngineError::InvalidRequest(e.to_string()))?
                .quantized(MEASURED_WEIGHT_STEP),
            (Some(s), None) if s.needs_signals() => ModalityWeights::uniform(1),
            (Some(s), _) => s
                .weights(&crate::dms::Signals::neutral(1))
                .map_err(|e| EngineError::InvalidRequest(e.to_string()))?,
        };
        let scored = match record.grid.iter().find(|g| {
            (g.image_weight - weights.images[0]).abs() < 1e-6
                && (2.0 - g.image_weight - weights.text).abs() < 1e-6
        }) {
            Some(g) => g.scored.clone(),
            None => {
                let r = trust_request(item, &DmsSettings::fixed(weights.clone()), run.max_tokens);
                let (text, logprobs, _) = complete_with_logprobs(engine, r)?;
                Scored::new(text, item.truth, colour_log_odds(&logprobs, item.truth))
            }
        };
        record.modes.push(ModeAnswer {
            mode: name.clone(),
            weights,
            scored,
            dms_ms: 0.0,
        });
        added = true;
    }
    Ok(added)
}

/// Answers the grid points at the image weights `run.regrid` of `record` again (after a change in how
/// the engine applies weights, such as leaving a modality out near 0), replacing or adding
/// them, and drops every mode answer given at one of those weights so that `--resume` replays
/// it. Returns whether anything changed.
pub fn regrid(
    engine: &EngineHandle,
    item: &TrustItem,
    record: &mut TrustRecord,
    run: &TrustRun,
) -> Result<bool, EngineError> {
    for &w in &run.regrid {
        let fixed = ModalityWeights {
            images: vec![w],
            text: 2.0 - w,
        };
        let mut r = trust_request(item, &DmsSettings::fixed(fixed), run.max_tokens);
        r.measure_mwc = run.mwc;
        let (text, logprobs, done) = complete_with_logprobs(engine, r)?;
        let answer = GridAnswer {
            image_weight: w,
            scored: Scored::new(text, item.truth, colour_log_odds(&logprobs, item.truth)),
            mwc: done.dms.mwc,
        };
        match record.grid.iter_mut().find(|g| g.image_weight == w) {
            Some(g) => *g = answer,
            None => record.grid.push(answer),
        }
        record
            .modes
            .retain(|m| m.mode == "off" || (m.weights.images.first() != Some(&w)));
    }
    record
        .grid
        .sort_by(|a, b| a.image_weight.total_cmp(&b.image_weight));
    Ok(!run.regrid.is_empty())
}

fn mode_answer(name: &str, scored: Scored, done: &Done) -> ModeAnswer {
    ModeAnswer {
        mode: name.to_string(),
        weights: done.dms.weights.clone(),
        scored,
        dms_ms: done.dms.timings_ms.total_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(token: &str, top: &[(&str, f32)]) -> TokenLogprob {
        TokenLogprob {
            token: token.into(),
            bytes: token.as_bytes().to_vec(),
            logprob: top.first().map_or(-1.0, |t| t.1),
            top: top
                .iter()
                .map(|(t, l)| (t.to_string(), t.as_bytes().to_vec(), *l))
                .collect(),
        }
    }

    #[test]
    fn log_odds_are_read_at_the_first_colour_token() {
        let steps = [
            lp(" The", &[(" The", -0.1), (" This", -2.0)]),
            lp(" red", &[(" red", -0.5), (" blue", -1.5), (" is", -3.0)]),
        ];
        assert_eq!(colour_log_odds(&steps, "red"), Some(1.0));
        assert_eq!(colour_log_odds(&steps, "blue"), Some(-1.0));
        // A colour outside the top list counts at its floor.
        assert_eq!(colour_log_odds(&steps, "green"), Some(-3.0 + 0.5));
        assert_eq!(colour_log_odds(&steps[..1], "red"), None);
    }
}
