//! Robustness evaluation: generated suites answered by the engine under each DMS mode, scored,
//! and summarised per condition and mode (see `llama-dms eval`).

pub mod corrupt;
pub mod custom;
pub mod dataset;
pub mod grid;
pub mod plots;
pub mod report;
pub mod tasks;
pub mod trust;
pub mod trust_run;

use serde::{Deserialize, Serialize};

use crate::dms::{ModalityWeights, Signals};
use crate::engine::{
    ContentPart, DmsMode, DmsSettings, Done, EngineError, EngineHandle, Event, GenerateRequest,
    Message, Role, TokenLogprob,
};
use crate::llama::SamplerParams;
use crate::models::colour::COLOURS;

use dataset::{Group, Item};

/// One item answered under one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Task (`vqa`, `caption` or `retrieval`).
    pub task: String,
    /// Item id in the suite.
    pub item: usize,
    /// Condition name (for captioning and retrieval: the image condition alone).
    pub condition: String,
    /// Condition group (`clean`, `corrupted`, `conflict`).
    pub group: String,
    /// DMS mode name.
    pub mode: String,
    /// The expected colour.
    pub truth: String,
    /// The model's answer (for retrieval: the best-ranked caption).
    pub answer: String,
    /// Whether the first colour named in the answer is the truth.
    pub correct: bool,
    /// Weights applied.
    pub weights: ModalityWeights,
    /// Signals measured (none for `off` and for requests without an image).
    pub signals: Option<Signals>,
    /// Image/text consistency of the hidden-state variant, per image (when measured).
    pub consistency_hidden: Option<Vec<f32>>,
    /// Image/text consistency of the input-space variant, per image (when measured).
    pub consistency_input: Option<Vec<f32>>,
    /// Time of the DMS stage in milliseconds.
    pub dms_ms: f64,
    /// Modality Weight Consistency loss of the applied weights (vqa items with an image).
    #[serde(default)]
    pub mwc: Option<f32>,
}

/// The DMS settings of a mode name: `off`, `rule`, `learned`, or `rule:PLUGIN` /
/// `learned:PLUGIN` for a scheduler plugin by name.
pub fn mode_settings(mode: &str) -> Result<DmsSettings, String> {
    let (kind, plugin) = match mode.split_once(':') {
        Some((k, p)) if !p.is_empty() => (k, Some(p.to_string())),
        _ => (mode, None),
    };
    let mode = match kind {
        "off" if plugin.is_none() => DmsMode::Off,
        "rule" => DmsMode::Rule,
        "learned" => DmsMode::Learned,
        _ => {
            return Err(format!(
                "unknown mode {mode:?} (off, rule, learned, rule:PLUGIN or learned:PLUGIN)"
            ))
        }
    };
    Ok(DmsSettings {
        scheduler: plugin,
        ..DmsSettings::mode(mode)
    })
}

/// The settings of each mode name in `names`, in order.
pub fn parse_modes(names: &[String]) -> Result<Vec<(String, DmsSettings)>, String> {
    names
        .iter()
        .map(|m| mode_settings(m).map(|s| (m.clone(), s)))
        .collect()
}

/// The first colour word in `answer` (aliases mapped to the demo's words), if any.
pub fn first_colour(answer: &str) -> Option<&'static str> {
    const ALIASES: [(&str, &str); 3] = [
        ("cyan", "turquoise"),
        ("magenta", "purple"),
        ("violet", "purple"),
    ];
    let lower = answer.to_lowercase();
    let words = COLOURS
        .iter()
        .map(|c| (c.word.trim(), c.word.trim()))
        .chain(ALIASES);
    words
        .filter_map(|(w, canonical)| lower.find(w).map(|at| (at, canonical)))
        .min()
        .map(|(_, w)| w)
}

/// A greedy request with the image (if any) and then `text`, under `dms`.
pub fn request(
    image: Option<Vec<u8>>,
    text: &str,
    dms: &DmsSettings,
    max_tokens: usize,
) -> GenerateRequest {
    request_with_parts(image, vec![ContentPart::Text(text.into())], dms, max_tokens)
}

/// A greedy request with the image (if any) and then the text `parts`, under `dms`.
pub fn request_with_parts(
    image: Option<Vec<u8>>,
    parts: Vec<ContentPart>,
    dms: &DmsSettings,
    max_tokens: usize,
) -> GenerateRequest {
    let mut content: Vec<ContentPart> = image.map(ContentPart::Image).into_iter().collect();
    content.extend(parts);
    let mut request = GenerateRequest::new(vec![Message {
        role: Role::User,
        content,
    }]);
    request.sampling = SamplerParams::greedy();
    request.max_tokens = max_tokens;
    request.dms = dms.clone();
    request
}

/// Runs `request` to the end: the generated text and the final report.
pub fn complete(
    engine: &EngineHandle,
    request: GenerateRequest,
) -> Result<(String, Box<Done>), EngineError> {
    complete_with_logprobs(engine, request).map(|(text, _, done)| (text, done))
}

/// Runs `request` to the end: the text, the per-token log-probabilities (when the request
/// asks for them) and the final report.
pub fn complete_with_logprobs(
    engine: &EngineHandle,
    request: GenerateRequest,
) -> Result<(String, Vec<TokenLogprob>, Box<Done>), EngineError> {
    let mut events = engine.submit(request)?;
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    loop {
        match events.blocking_recv() {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Logprob(lp)) => logprobs.push(*lp),
            Some(Event::Error(e)) => return Err(e),
            Some(Event::Done(done)) => return Ok((text, logprobs, done)),
            None => return Err(EngineError::Internal("the engine stopped".into())),
        }
    }
}

/// What is known of one answered item besides the engine's report.
pub struct Answered<'a> {
    /// Task name.
    pub task: &'a str,
    /// The item.
    pub item: &'a Item,
    /// Condition name to report.
    pub condition: &'a str,
    /// Mode name.
    pub mode: &'a str,
    /// The answer (or best caption).
    pub answer: String,
}

impl Answered<'_> {
    /// The outcome, with weights, signals and time from the final report `done`.
    pub fn outcome(self, done: &Done) -> Outcome {
        Outcome {
            task: self.task.into(),
            item: self.item.id,
            condition: self.condition.into(),
            group: group_name(self.item.condition.group).to_string(),
            mode: self.mode.to_string(),
            truth: self.item.truth.to_string(),
            correct: first_colour(&self.answer) == Some(self.item.truth),
            answer: self.answer,
            weights: done.dms.weights.clone(),
            signals: done.dms.signals.clone(),
            consistency_hidden: done.dms.consistency_hidden.clone(),
            consistency_input: done.dms.consistency_input.clone(),
            dms_ms: done.dms.timings_ms.total_ms,
            mwc: done.dms.mwc,
        }
    }
}

/// Asks `item`'s question under `dms` (greedy, at most `max_tokens`) and scores the answer.
pub fn answer_item(
    engine: &EngineHandle,
    item: &Item,
    mode: &str,
    dms: &DmsSettings,
    max_tokens: usize,
) -> Result<Outcome, EngineError> {
    let mut r = request(item.image_png(), &item.text(), dms, max_tokens);
    r.measure_mwc = true;
    let (answer, done) = complete(engine, r)?;
    let answered = Answered {
        task: "vqa",
        item,
        condition: item.condition.name,
        mode,
        answer,
    };
    Ok(answered.outcome(&done))
}

/// The stable name of a group.
pub fn group_name(group: Group) -> &'static str {
    match group {
        Group::Clean => "clean",
        Group::Corrupted => "corrupted",
        Group::Conflict => "conflict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_colour_named_counts() {
        assert_eq!(first_colour("The main color is Red."), Some("red"));
        assert_eq!(first_colour("blue, not red"), Some("blue"));
        assert_eq!(first_colour("It is cyan."), Some("turquoise"));
        assert_eq!(first_colour("I cannot tell."), None);
        assert!(mode_settings("sometimes").is_err());
    }
}
