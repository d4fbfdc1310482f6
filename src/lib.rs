//! specrun: speculative decoding for GGUF models on llama.cpp.
//!
//! A small *draft* model proposes tokens, the *target* model checks them all in one batched
//! decode, and the text that comes out is exactly what the target alone would have produced
//! (token for token when greedy, in distribution when sampling).
//!
//! The algorithm is pure: [`engine`], [`draft`], [`verify`], [`sampling`] and [`stats`] know
//! nothing of llama.cpp, files or clocks. They speak to models through the [`model::Model`]
//! trait, implemented over llama.cpp in `llama` (feature `llama`, on by default) and by the
//! deterministic [`mock::MockModel`]. See `ARCHITECTURE.md` for the code map.

pub mod app;
pub mod batch;
pub mod batch_cmd;
pub mod bench;
pub mod bench_cmd;
pub mod cli;
pub mod config;
pub mod control;
pub mod detok;
pub mod draft;
pub mod engine;
#[cfg(feature = "llama")]
pub mod llama;
pub mod mock;
pub mod model;
pub mod ngram;
pub mod report;
pub mod sampling;
pub mod stats;
pub mod verify;
pub mod vocab;
