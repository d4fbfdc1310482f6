//! specrun-core: the speculative-decoding algorithm, pure.
//!
//! A small *draft* (a model, or an n-gram lookup in the context) proposes tokens, the *target*
//! model checks them all in one batched decode, and the text that comes out is exactly what the
//! target alone would have produced (token for token when greedy, in distribution when sampling).
//!
//! Nothing here touches llama.cpp, files, the environment, the terminal or a clock: models are
//! reached through the [`model::Model`] trait, time through [`clock::Clock`], randomness through
//! each sequence's seeded RNG. `mock::MockModel` (feature `mock`) is a deterministic
//! implementation of the seam for tests and examples; the llama.cpp one lives in the `specrun`
//! crate.
//!
//! The crate root re-exports what an embedder needs (a model, a drafter, an engine, a run of
//! several prompts with its policy and sink); `examples/embed.rs` puts them together.
//!
//! - [`model`] — the seam: `Model`, `KvCursor` (cache bookkeeping), `TextCodec`.
//! - [`clock`] — the time source the core is handed.
//! - [`engine`] — one round (`Engine::step`, or `Engine::step_many` for several sequences in
//!   one target decode, behind a `RoundPolicy`) and per-sequence state (`Sequence`).
//! - [`batching`] — continuous batching: slots, the run's policy (`SharedPolicy`), the sink
//!   runs deliver to (`RunSink`).
//! - [`prefix_cache`] — finished sequences' cells in host memory, restored for prompts that
//!   begin the same way.
//! - [`draft`], [`ngram`], [`anchor`] — drafters: a draft model, n-gram lookup (on tokens,
//!   and on text across tokenizations), hybrid.
//! - [`constraint`], [`closing`] — the grammar seam, and the closing drafts learned where
//!   copied values end.
//! - [`control`] — how long each draft is (fixed, step, cost-aware auto).
//! - [`outlook`] — whether a batch run's drafts end it sooner than plain decoding, played to
//!   the end.
//! - [`verify`], [`sampling`] — greedy and rejection-sampling verification, the warp.
//! - [`stats`], [`vocab`], [`detok`] — counters and timings, pair compatibility, text streaming
//!   (UTF-8 across tokens, stop strings).
//! - `mock` (feature `mock`) — a deterministic model, codec and clock for tests and examples.

pub mod anchor;
pub mod batching;
pub mod clock;
pub mod closing;
pub mod constraint;
pub mod control;
pub mod detok;
pub mod draft;
pub mod engine;
#[cfg(any(test, feature = "mock"))]
pub mod mock;
pub mod model;
pub mod ngram;
pub mod outlook;
pub mod prefix_cache;
pub mod sampling;
pub mod stats;
pub mod verify;
pub mod vocab;

pub use batching::{run_continuous, BatchJob, RunSink, SharedPolicy, Slots};
pub use clock::Clock;
pub use control::AdaptiveMode;
pub use detok::TextStream;
pub use draft::{Drafter, HybridDrafter, ModelDrafter, NgramDrafter, NoDraft};
pub use engine::{Engine, EngineError, GenConfig, Sequence};
pub use model::{Model, TextCodec, Token};
pub use sampling::SamplingParams;
pub use stats::{FinishReason, GenStats};
pub use verify::VerifyMode;
