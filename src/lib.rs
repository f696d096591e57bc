//! llama-dms: a local OpenAI-compatible multimodal server on llama.cpp with Dynamic Modality
//! Scheduling (per-request weighting of each image and of the user text).
//!
//! Layers: [`llama`] (a safe wrapper over llama.cpp; the only module with raw FFI), [`engine`] (one
//! worker thread that owns the model and serves requests), [`models`] (synthesised test models),
//! and [`cli`] (the command line).

pub mod api;
pub mod bench;
pub mod cli;
pub mod dms;
pub mod engine;
pub mod eval;
pub mod llama;
pub mod models;
pub mod plot;
