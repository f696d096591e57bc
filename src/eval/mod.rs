//! Robustness evaluation: generated suites answered by the engine under each DMS mode, scored,
//! and summarised per condition and mode (see `llama-dms eval`).

pub mod corrupt;
pub mod dataset;
pub mod report;

use serde::{Deserialize, Serialize};

use crate::dms::{ModalityWeights, Signals};
use crate::engine::{
    ContentPart, DmsMode, DmsSettings, EngineError, EngineHandle, Event, GenerateRequest, Message,
    Role,
};
use crate::llama::SamplerParams;
use crate::models::colour::COLOURS;

use dataset::{Group, Item};

/// One item answered under one mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Item id in the suite.
    pub item: usize,
    /// Condition name.
    pub condition: String,
    /// Condition group (`clean`, `corrupted`, `conflict`).
    pub group: String,
    /// DMS mode name.
    pub mode: String,
    /// The expected colour.
    pub truth: String,
    /// The model's answer.
    pub answer: String,
    /// Whether the first colour named in the answer is the truth.
    pub correct: bool,
    /// Weights applied.
    pub weights: ModalityWeights,
    /// Signals measured (none for `off` and for requests without an image).
    pub signals: Option<Signals>,
    /// Time of the DMS stage in milliseconds.
    pub dms_ms: f64,
}

/// The DMS settings of a mode name (`off`, `rule`, `learned`).
pub fn mode_settings(mode: &str) -> Result<DmsSettings, String> {
    let mode = match mode {
        "off" => DmsMode::Off,
        "rule" => DmsMode::Rule,
        "learned" => DmsMode::Learned,
        other => return Err(format!("unknown mode {other:?} (off, rule or learned)")),
    };
    Ok(DmsSettings::mode(mode))
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

/// Asks `item`'s question under `dms` (greedy, at most `max_tokens`) and scores the answer.
pub fn answer_item(
    engine: &EngineHandle,
    item: &Item,
    mode: &str,
    dms: &DmsSettings,
    max_tokens: usize,
) -> Result<Outcome, EngineError> {
    let mut content: Vec<ContentPart> = item
        .image_png()
        .map(ContentPart::Image)
        .into_iter()
        .collect();
    content.push(ContentPart::Text(item.text()));
    let mut request = GenerateRequest::new(vec![Message {
        role: Role::User,
        content,
    }]);
    request.sampling = SamplerParams::greedy();
    request.max_tokens = max_tokens;
    request.dms = dms.clone();
    let mut events = engine.submit(request)?;
    let mut answer = String::new();
    loop {
        match events.blocking_recv() {
            Some(Event::Text(t)) => answer.push_str(&t),
            Some(Event::Logprob(_)) => {}
            Some(Event::Error(e)) => return Err(e),
            Some(Event::Done(done)) => {
                return Ok(Outcome {
                    item: item.id,
                    condition: item.condition.name.to_string(),
                    group: group_name(item.condition.group).to_string(),
                    mode: mode.to_string(),
                    truth: item.truth.to_string(),
                    correct: first_colour(&answer) == Some(item.truth),
                    answer,
                    weights: done.dms.weights,
                    signals: done.dms.signals,
                    dms_ms: done.dms.timings_ms.total_ms,
                });
            }
            None => return Err(EngineError::Internal("the engine stopped".into())),
        }
    }
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
