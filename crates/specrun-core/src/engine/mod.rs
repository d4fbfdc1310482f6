//! The speculative decoding loop.
//!
//! One [`Engine::step`] is one round: choose a draft length, let the drafter propose, decode the
//! last accepted token plus the draft in **one** target batch, [`verify`], append the accepted
//! prefix and the target's token, and cut both caches back to what the two agree on.
//!
//! A [`Sequence`] is everything that belongs to one prompt (its tokens, cache cursors, RNG,
//! statistics); the [`Engine`] owns the models. Several sequences can take turns on one engine.
//!
//! Architecture invariant: between rounds, each cursor's cache holds exactly
//! `tokens[..n_cached]` and `n_cached` is at most `tokens.len() - 1`, so the last token is
//! decoded by the next round's target batch — with one exception: right after
//! [`Engine::start`] the target has decoded the whole prompt and the sequence holds that
//! batch's last logits row, which the first round verifies with (as llama.cpp samples its
//! first token from the prompt batch). A sequence taken in by [`Engine::admit`] instead has
//! its prompt read by the shared rounds ([`Engine::step_many`]), a chunk a round: until the
//! round that reads its last prompt token (and takes the first token from that row), it is
//! [`Sequence::reading_prompt`], drafts nothing, and its target cursor lies anywhere in the
//! prompt.

mod closers;
mod round;
mod sequence;
mod shared;

pub use sequence::{KeptCells, Sequence};
pub use shared::{DecodeShape, PlannedPace, RoundPolicy, RoundReport};

use round::{Drafted, RoundPlan, RoundStart};

use crate::clock::Clock;
use crate::closing::{breaks_clause, forces_after, CloseKey, Closers, Endings};
use crate::constraint::{ConstraintError, ConstraintSpec, Guide};
use crate::control::{allocate_drafts, AdaptiveMode, Controller, CostCurve, DraftAsk, Observation, VerifyCosts};
use crate::draft::{DraftCursor, DraftPlan, DraftReport, DraftRequest, DraftSource, Drafter, ProposeJob};
use crate::model::{KvCursor, Model, ModelError, SeqId, Token};
use crate::outlook::{Pace, PaceMean};
use crate::sampling::TokenLogprob;
use crate::sampling::{Dist, SamplingParams, Scratch};
use crate::stats::{Expectation, FinishReason, GenStats, RoundRecord};
use crate::verify::{verify, RowFn, Rows, Verdict, VerifyMode, VerifyRule};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::ops::Range;
use std::time::Duration;
use thiserror::Error;

/// Settings of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    pub max_tokens: usize,
    /// Largest draft per round (0: no speculation).
    pub draft_max: usize,
    /// Stop drafting when the draft's top probability is below this.
    pub draft_p_min: f32,
    /// Drafts shorter than this are not verified (the round decodes plainly).
    pub draft_min: usize,
    /// How the draft length is chosen each round.
    pub adaptive: AdaptiveMode,
    pub params: SamplingParams,
    pub verify: VerifyMode,
    pub seed: u64,
    /// The target's calibrated decode cost by batch size, when one is known; `auto` plans
    /// draft lengths along it (otherwise it extrapolates from the sizes it has seen).
    pub cost_curve: Option<std::sync::Arc<CostCurve>>,
    /// Go on past end-of-generation tokens (for benchmarks: every run generates `max_tokens`).
    /// A constrained sequence still ends where its grammar does.
    pub ignore_eos: bool,
    /// The grammar the output must follow (each sequence gets its own matcher).
    pub constraint: Option<ConstraintSpec>,
    /// Keep each generated token's log-probability under the target's raw row, with this many
    /// most likely alternatives ([`Sequence::logprobs`]; OpenAI's `logprobs`/`top_logprobs`).
    pub logprobs: Option<usize>,
}

/// Most tokens a constraint's forced span puts into one round's draft (ahead of any drafter's
/// tokens). Forced tokens are nearly always accepted, so a long span is worth a decode on a
/// flat (GPU) cost curve and still on a CPU's; longer spans go on next round.
pub const FORCED_MAX: usize = 32;

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            draft_max: 4,
            draft_p_min: 0.0,
            draft_min: 0,
            adaptive: AdaptiveMode::Fixed,
            params: SamplingParams::greedy(),
            verify: VerifyMode::Greedy,
            seed: 0,
            cost_curve: None,
            ignore_eos: false,
            constraint: None,
            logprobs: None,
        }
    }
}

impl GenConfig {
    /// The verification that fits the sampling settings: greedy at temperature 0, otherwise the
    /// requested stochastic mode.
    pub fn effective_verify(&self) -> VerifyMode {
        if self.params.is_greedy() {
            VerifyMode::Greedy
        } else if self.verify == VerifyMode::Greedy {
            VerifyMode::Seeded
        } else {
            self.verify
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EngineError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {n_prompt} tokens but the context holds {n_ctx}")]
    PromptTooLong { n_prompt: usize, n_ctx: usize },
    #[error("target model: {0}")]
    Target(ModelError),
    #[error("draft model: {0}")]
    Draft(ModelError),
    #[error("{0}")]
    Constraint(ConstraintError),
}

/// The target model and a drafter, with one generation's settings.
pub struct Engine<T, D> {
    pub target: T,
    pub drafter: D,
    /// The settings of sequences started without their own ([`Engine::start`],
    /// [`Engine::admit`]).
    pub config: GenConfig,
    scratch: Scratch,
    /// How the constrained outputs of this engine's sequences ended ([`crate::closing`]).
    endings: Endings,
    /// The closers its sequences learned: a new sequence starts knowing them (the values of
    /// one run's outputs end alike).
    closers: Closers,
}

impl<T: Model, D: Drafter> Engine<T, D> {
    pub fn new(target: T, drafter: D, config: GenConfig) -> Self {
        Self { target, drafter, config, scratch: Scratch::new(), endings: Endings::default(), closers: Closers::default() }
    }

    /// Clear sequence `id` in both models, read the prompt and take the first token: the target
    /// decodes the whole prompt in one run, and the first token comes from that batch's last
    /// logits row, read where it lies (no decode, no copy; the same batch shape as in
    /// llama.cpp), so it is out when the prompt is. The drafter reads all but the prompt's
    /// last token; drafting starts with the next round.
    pub fn start(&mut self, id: SeqId, prompt: Vec<Token>, clock: &dyn Clock) -> Result<Sequence, EngineError> {
        self.start_after(id, prompt, self.config.clone(), None, clock)
    }

    /// [`Engine::start`] with the sequence's own settings, in a slot whose caches still hold
    /// `kept` (what the sequence before left there): the cells the prompt shares with it are
    /// kept, and only the rest is read.
    pub fn start_after(
        &mut self,
        id: SeqId,
        prompt: Vec<Token>,
        config: GenConfig,
        kept: Option<&KeptCells>,
        clock: &dyn Clock,
    ) -> Result<Sequence, EngineError> {
        let mut seq = self.admit_after(id, prompt, config, kept, clock)?;
        if seq.finish.is_some() {
            return Ok(seq);
        }
        seq.target.decode_tail(&mut self.target, &seq.tokens, 1).map_err(EngineError::Target)?;
        let t_read = clock.now();
        self.first_token(&mut seq, 0, None, t_read, clock)?;
        Ok(seq)
    }

    /// Clear sequence `id` in both models and let the drafter read the prompt, but leave the
    /// target's reading of it to the shared rounds: [`Engine::step_many`] decodes it there, a
    /// chunk a round, beside the other sequences' tokens, and the round that reads its last
    /// token takes the first token from that row. The sequence is
    /// [`Sequence::reading_prompt`] until then (finished at once when `max_tokens` is 0).
    pub fn admit(&mut self, id: SeqId, prompt: Vec<Token>, clock: &dyn Clock) -> Result<Sequence, EngineError> {
        self.admit_after(id, prompt, self.config.clone(), None, clock)
    }

    /// [`Engine::admit`] with the sequence's own settings, in a slot whose caches still hold
    /// `kept`: the target keeps the cells
    /// of the prompt's longest common prefix with it (all but the prompt's last token, whose
    /// row gives the first token), the draft model likewise, and the rest of both caches is
    /// removed. Without `kept` the slot's caches are cleared. A model that refuses to cut a
    /// sequence's cells part way (llama.cpp's recurrent and some sliding-window caches) reads
    /// the whole prompt.
    pub fn admit_after(
        &mut self,
        id: SeqId,
        prompt: Vec<Token>,
        config: GenConfig,
        kept: Option<&KeptCells>,
        clock: &dyn Clock,
    ) -> Result<Sequence, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        // A prompt that fits the target but not the draft runs target-only (see `draft_len`).
        let n_ctx = self.target.n_ctx();
        if prompt.len() > n_ctx {
            return Err(EngineError::PromptTooLong { n_prompt: prompt.len(), n_ctx });
        }
        let t0 = clock.now();
        let mut seq = Sequence {
            id,
            n_prompt: prompt.len(),
            tokens: prompt,
            target: KvCursor::new(id),
            draft: DraftCursor::new(id),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            stats: GenStats::default(),
            finish: None,
            // Each sequence learns its own costs: a record's output never depends on the
            // records before it (so a resumed batch equals an uninterrupted one).
            controller: Controller::with_curve(config.adaptive, config.draft_max, config.cost_curve.clone()),
            config,
            trace_rounds: false,
            last_round: None,
            q: Vec::new(),
            t_admitted: t0,
            pace_mean: PaceMean::default(),
            guide: None,
            failed: None,
            forced: 0,
            likely: 0,
            ending: None,
            spare: 0,
            closers: self.closers.clone(),
            logprobs: Vec::new(),
        };
        seq.guide = seq.config.constraint.as_ref().map(|c| Guide::new(c.start(), seq.n_prompt));
        let head_len = seq.n_prompt - 1;
        let (reuse_target, reuse_draft) = kept.map_or((0, 0), |k| k.reusable(&seq.tokens[..head_len]));
        seq.target.n_cached = if reuse_target > 0 && self.target.truncate(id, reuse_target).is_ok() {
            reuse_target
        } else {
            self.target.truncate(id, 0).map_err(EngineError::Target)?;
            0
        };
        // the drafter keeps the cells before its cursor and removes the rest (see `Drafter::begin`)
        seq.draft.kv.n_cached = reuse_draft;
        self.drafter.begin(&mut seq.draft, &seq.tokens[..head_len]).map_err(EngineError::Draft)?;
        seq.draft.ngram.set_structured(seq.guide.is_some(), seq.n_prompt);
        seq.stats.n_prompt = seq.n_prompt;
        seq.stats.n_prompt_cached = seq.target.n_cached;
        if seq.config.max_tokens == 0 {
            seq.stats.t_prompt = clock.now() - t0;
            seq.finish = Some(FinishReason::Length);
        }
        Ok(seq)
    }
}

impl<T: Model, D: Drafter> Engine<T, D> {
    /// Run rounds until the sequence finishes, handing each round's new tokens to `on_tokens`
    /// (the first token, which [`Engine::start`] took, is already in `seq.generated()`).
    pub fn generate(
        &mut self,
        seq: &mut Sequence,
        clock: &dyn Clock,
        mut on_tokens: impl FnMut(&[Token]),
    ) -> Result<FinishReason, EngineError> {
        loop {
            if let Some(reason) = seq.finish {
                return Ok(reason);
            }
            let added = self.step(seq, clock)?;
            on_tokens(&seq.tokens[added]);
        }
    }
}
