//! Model files for tests and demos: a small GGUF writer and deterministic synthesis of tiny
//! random text and image-projector models that llama.cpp loads.

pub mod gguf_writer;
pub mod smollm2;
pub mod tiny;
