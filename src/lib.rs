//! specrun: speculative decoding for GGUF models on llama.cpp — the binary's layers.
//!
//! The algorithm is the pure [`specrun_core`] crate. This crate is its edge, in layers that
//! only import downwards (a test in `tests/layers.rs` checks it):
//!
//! 1. [`io`], [`settings`] — bounded file reads and stream errors; generation overrides and
//!    their one merge-and-validate path.
//! 2. [`backend`] — the model seam over llama.cpp (and the mock, from the core).
//! 3. [`formats`] — `models.toml`, the run report, batch records, bench summaries and exports.
//! 4. [`infer`] — resolve a plan, load models once, make drafters, generate with streaming.
//! 5. [`cli`] — the command line (clap), turned into the layers' own types.
//! 6. [`commands`] — one module per command; `main.rs` dispatches and maps errors to exit codes.
//!
//! See `ARCHITECTURE.md` for the code map and invariants.

pub mod backend;
pub mod cli;
pub mod commands;
pub mod constraint;
pub mod formats;
pub mod infer;
pub mod io;
pub mod settings;

pub use specrun_core as core;
