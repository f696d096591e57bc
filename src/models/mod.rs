//! Model files: a small GGUF writer, deterministic synthesis of tiny random test models, the
//! hand-built colour projector, and the demo (SmolLM2 fetched from PyPI + that projector).

pub mod clip;
pub mod colour;
pub mod demo;
#[cfg(test)]
pub(crate) mod gguf_test_reader;
pub mod gguf_writer;
pub mod smollm2;
pub mod tiny;
pub mod tiny_families;
