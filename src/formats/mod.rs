//! What specrun reads and writes, as data: no models are loaded and nothing is decoded here.
//!
//! - [`models_toml`] — the models file: models, pairs, located errors, the lookup order,
//!   `write_best`.
//! - [`openai`] — the OpenAI-compatible requests, responses, stream chunks and errors of
//!   `specrun serve`.
//! - [`records`] — batch input records, the output schema, resume scanning.
//! - [`report`] — the run report (`--json`) and the stats block.
//! - [`trace`] — the per-round trace of `run --trace-rounds`.
//! - [`mod@bench`] — bench summaries (medians, min-max, predicted speed-up); [`export`] — one
//!   exporter per format (table, CSV, Markdown, JSON, SVG).

pub mod bench;
pub mod chat_template;
pub mod export;
pub mod models_toml;
pub mod openai;
pub mod records;
pub mod report;
pub mod tools;
pub mod trace;
