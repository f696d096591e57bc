//! Coverage-guided fuzzing of the request wire types (`src/api/types.rs`, compiled as is) with
//! the server's JSON reading (serde_path_to_error, then trailing-data check, as `ApiJson`).
//! The validation on top (`to_engine_request`) is covered by `tests/fuzz_props.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Stand-ins for the engine types `types.rs` names.
#[allow(dead_code)]
mod engine {
    /// Stand-in for the engine's DMS mode (`/props` only).
    #[derive(Debug, Clone, Copy, serde::Serialize)]
    pub enum DmsMode {
        Off,
    }
}

/// The wire shape of the crate's `ModalityWeights` (same fields and serde attributes).
mod dms {
    /// One weight per image and one for the text.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct ModalityWeights {
        pub images: Vec<f32>,
        pub text: f32,
    }
}

#[allow(dead_code)]
#[path = "../../src/api/types.rs"]
mod types;

fuzz_target!(|data: &[u8]| {
    let mut de = serde_json::Deserializer::from_slice(data);
    let parsed: Result<types::GenerationRequest, _> = serde_path_to_error::deserialize(&mut de);
    if let Ok(req) = parsed {
        let _ = de.end();
        // Touch what the handlers read first.
        let _ = req.messages.as_ref().map(Vec::len);
        let _ = req.stop.map(types::StopSequences::into_vec);
    }
});
