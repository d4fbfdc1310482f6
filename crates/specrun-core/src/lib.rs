//! specrun-core: the speculative-decoding algorithm, pure.
//!
//! A small *draft* (a model, or an n-gram lookup in the context) proposes tokens, the *target*
//! model checks them all in one batched decode, and the text that comes out is exactly what the
//! target alone would have produced (token for token when greedy, in distribution when sampling).
//!
//! Nothing here touches llama.cpp, files, the environment, the terminal or a clock: models are
//! reached through the [`model::Model`] trait, time through [`stats::Clock`], randomness through
//! each sequence's seeded RNG. [`mock::MockModel`] is a deterministic implementation of the seam
//! for tests; the llama.cpp one lives in the `specrun` crate.
//!
//! - [`model`] — the seam: `Model`, `KvCursor` (cache bookkeeping), `TextCodec`.
//! - [`engine`] — one round (`Engine::step`, or `Engine::step_many` for several sequences in
//!   one target decode) and per-sequence state (`Sequence`).
//! - [`batching`] — continuous batching: slots, prefill between rounds, refill at once.
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
//! - [`stats`], [`vocab`], [`detok`] — counters and timings, pair compatibility, UTF-8 streaming.

pub mod anchor;
pub mod batching;
pub mod closing;
pub mod constraint;
pub mod control;
pub mod detok;
pub mod draft;
pub mod engine;
pub mod mock;
pub mod model;
pub mod ngram;
pub mod outlook;
pub mod prefix_cache;
pub mod sampling;
pub mod stats;
pub mod verify;
pub mod vocab;
