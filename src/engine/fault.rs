//! Fault injection for the reliability tests (`tests/faults.rs`); a test hook that does nothing
//! unless `LLAMA_DMS_FAULT_PANIC_ON` is set (and non-empty) when the engine starts.
//!
//! With `LLAMA_DMS_FAULT_PANIC_ON=MARK`, a request whose text contains `MARK` makes the worker
//! panic while it builds that request's prompt; `MARK@dms`, `MARK@signal-pass`, `MARK@prefill`
//! and `MARK@decode` move the panic to the DMS stage, just after the first decode of parallel
//! signal passes (the MC-dropout passes, which fill several sequences), the prefill, or the
//! request's second decode step. The worker must answer that request with an internal error,
//! free its slot (and the signal passes' sequences) and go on serving.

use std::any::Any;

use super::{ContentPart, GenerateRequest};

/// Where an injected panic fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Before the prompt is built.
    Prompt,
    /// Before the DMS stage.
    Dms,
    /// Just after the first decode of parallel DMS signal passes.
    SignalPass,
    /// Before the prefill.
    Prefill,
    /// At the request's second batched decode step.
    Decode,
}

/// The marker read from the environment when the engine started.
#[derive(Debug, Clone, Default)]
pub(super) struct FaultHook {
    marker: Option<String>,
}

impl FaultHook {
    /// Reads `LLAMA_DMS_FAULT_PANIC_ON` (unset or empty: inert).
    pub(super) fn from_env() -> Self {
        let marker = std::env::var("LLAMA_DMS_FAULT_PANIC_ON")
            .ok()
            .filter(|m| !m.is_empty());
        if let Some(m) = &marker {
            tracing::warn!("fault injection armed: requests containing {m:?} panic");
        }
        Self { marker }
    }

    /// The stage at which `request` should panic, if it carries the marker.
    pub(super) fn stage(&self, request: &GenerateRequest) -> Option<Stage> {
        let marker = self.marker.as_deref()?;
        let texts = request
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .filter_map(ContentPart::text)
            .chain(request.raw_prompt.as_deref());
        let mut found = None;
        for text in texts {
            for (suffix, stage) in [
                ("@dms", Stage::Dms),
                ("@signal-pass", Stage::SignalPass),
                ("@prefill", Stage::Prefill),
                ("@decode", Stage::Decode),
            ] {
                if text.contains(&format!("{marker}{suffix}")) {
                    return Some(stage);
                }
            }
            if text.contains(marker) {
                found = Some(Stage::Prompt);
            }
        }
        found
    }
}

/// Panics when `armed` is `here`.
pub(super) fn trip(armed: Option<Stage>, here: Stage) {
    if armed == Some(here) {
        panic!("injected fault at the {here:?} stage");
    }
}

/// The message of a caught panic.
pub(super) fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
