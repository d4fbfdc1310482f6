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

use crate::closing::{forces_after, CloseKey, Closers};
use crate::constraint::{ConstraintError, ConstraintSpec, Guide};
use crate::control::{allocate_drafts, AdaptiveMode, Controller, CostCurve, DraftAsk, DraftYield, Observation, VerifyCosts};
use crate::draft::{DraftCursor, DraftReport, DraftRequest, DraftSource, Drafter, ProposeJob};
use crate::model::{KvCursor, Model, ModelError, SeqId, Token};
use crate::outlook::{Pace, PaceMean};
use crate::sampling::TokenLogprob;
use crate::sampling::{Dist, SamplingParams, Scratch};
use crate::stats::{Clock, FinishReason, GenStats, PlanCheck, RoundRecord};
use crate::verify::{verify, RowFn, Rows, VerifyMode};
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
/// tokens). Forced tokens are nearly always accepted, so a long span is worth one decode on a
/// flat (GPU) cost curve and still about two on a CPU's; longer spans go on next round.
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

/// The drafting half of a round, handed to the verifying half.
struct Drafted {
    n_hist: usize,
    k_planned: usize,
    run: usize,
    n_drafted: usize,
    report: crate::draft::DraftReport,
    draft_gap: usize,
    n_rows: usize,
    t_start: std::time::Duration,
    t_drafted: std::time::Duration,
    /// What the plan expected of this round, `(tokens, seconds)` (one sequence's own rounds).
    expected: Option<(f64, f64)>,
    /// The n-gram drafter's first token, in a round that planned no draft ([`Drafter::peek`]).
    peek: Option<Token>,
    /// Where the drafter's copy was cut as a value's end (an offset into the draft, forced
    /// tokens included) with what ended it there, and how many closing tokens were drafted
    /// in its place ([`crate::closing`]).
    cut: Option<(usize, CloseKey)>,
    n_closing: usize,
    /// Of the drafted tokens, how many the constraint forced (they come first).
    n_forced: usize,
}

/// What a shared round decided for one sequence before drafting: the source, the draft
/// length, and the copy run the plan started from.
#[derive(Debug, Clone, Copy)]
struct RoundPlan {
    source: DraftSource,
    k: usize,
    run: usize,
}

/// One sequence of a shared round as its plan left it, for a check of the round's drafts by
/// the run as a whole ([`Engine::step_many`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedPace {
    /// What the round gives it at its plan ([`Pace::PLAIN`]: no draft planned, or it reads its
    /// prompt).
    pub pace: Pace,
    /// Its planned paces on the whole so far (`None` before its first planned round).
    pub mean: Option<Pace>,
    /// Tokens it has generated, and at most may.
    pub n_generated: usize,
    pub max_tokens: usize,
    /// It goes on past end-of-generation: its length is `max_tokens`.
    pub ignore_eos: bool,
    /// Its draft lengths are `auto` (the drafts a check may hold).
    pub auto: bool,
}

impl PlannedPace {
    fn plain(seq: &Sequence) -> Self {
        Self {
            pace: Pace::PLAIN,
            mean: seq.pace_mean.mean(),
            n_generated: seq.tokens.len() - seq.n_prompt,
            max_tokens: seq.config.max_tokens,
            ignore_eos: seq.config.ignore_eos,
            auto: seq.config.adaptive == AdaptiveMode::Auto,
        }
    }
}

/// A round's plan, before drafting.
struct RoundStart {
    n_hist: usize,
    source: DraftSource,
    k_planned: usize,
    /// The n-gram copy run the plan started from (see [`Observation::run`]).
    run: usize,
    draft_gap: usize,
    t_start: Duration,
    /// What the plan expected, `(tokens, seconds)`: one sequence's own rounds only (a shared
    /// round is checked as a whole, [`Engine::shared_plan`]).
    expected: Option<(f64, f64)>,
    /// The n-gram drafter's first token when the plan drafts nothing ([`Drafter::peek`]).
    peek: Option<Token>,
}

impl RoundStart {
    fn drafts(&self) -> bool {
        self.k_planned > 0 && self.source != DraftSource::None
    }

    fn request_for<'a>(&self, config: &'a GenConfig) -> DraftRequest<'a> {
        let verify = config.effective_verify();
        DraftRequest {
            max: self.k_planned,
            params: &config.params,
            keep_q: verify.needs_q(),
            p_min: config.draft_p_min,
            key: (verify == VerifyMode::Seeded).then_some(config.seed),
        }
    }
}

/// The target's rows of one round under a constraint: row `i` masked by the grammar's state
/// after the history and the first `i` drafted tokens (a mask is computed only for the rows
/// verification reads).
struct MaskedRows<'a, T> {
    target: &'a T,
    row_base: usize,
    guide: &'a mut Guide,
    tokens: &'a [Token],
    n_hist: usize,
    error: Option<ConstraintError>,
}

impl<T: Model> Rows for MaskedRows<'_, T> {
    fn row(&mut self, i: usize) -> &[f32] {
        let (target, raw) = (self.target, self.target.logits(self.row_base + i));
        if self.error.is_some() {
            return raw;
        }
        match self.guide.masked_row(&self.tokens[..self.n_hist + i], raw, &|t| target.is_eog(t)) {
            Ok(masked) => masked,
            Err(e) => {
                self.error = Some(e);
                raw
            }
        }
    }
}

/// What a finished sequence left in its slot's caches ([`Sequence::kept_cells`]): the tokens
/// whose cells the target and the draft model still hold for that sequence id. The next
/// prompt read in the slot keeps the cells it shares with them ([`Engine::admit_after`]), as
/// llama.cpp's server reuses a slot's prompt cache: a chat's next turn, or requests with one
/// system prompt, read only what is new.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptCells {
    tokens: Vec<Token>,
    n_target: usize,
    n_draft: usize,
}

impl KeptCells {
    /// Cells holding `tokens[..n_target]` in the target and `tokens[..n_draft]` in the draft model.
    pub(crate) fn new(tokens: Vec<Token>, n_target: usize, n_draft: usize) -> Self {
        Self { tokens, n_target, n_draft }
    }

    /// The tokens the cells hold (the longer of the two models' runs).
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Tokens the target's cells hold.
    pub fn n_target(&self) -> usize {
        self.n_target
    }

    /// Tokens the draft model's cells hold.
    pub fn n_draft(&self) -> usize {
        self.n_draft
    }

    /// Nothing kept (a cleared slot).
    pub fn is_empty(&self) -> bool {
        self.n_target == 0 && self.n_draft == 0
    }

    /// Tokens kept in either cache.
    pub fn len(&self) -> usize {
        self.n_target.max(self.n_draft)
    }

    /// How many leading tokens of `head` the target's and the draft model's kept cells hold.
    pub fn reusable(&self, head: &[Token]) -> (usize, usize) {
        let common = self.tokens.iter().zip(head).take_while(|(a, b)| a == b).count();
        (common.min(self.n_target), common.min(self.n_draft))
    }
}

/// One prompt being generated.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub id: SeqId,
    /// This sequence's settings (the engine's at [`Engine::start`]): several sequences with
    /// different settings can share one engine and one target decode.
    pub config: GenConfig,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<Token>,
    pub n_prompt: usize,
    pub target: KvCursor,
    pub draft: DraftCursor,
    pub rng: ChaCha8Rng,
    pub stats: GenStats,
    pub finish: Option<FinishReason>,
    /// Chooses each round's draft length.
    pub controller: Controller,
    /// Keep each round's [`RoundRecord`] in `last_round` (a trace; off by default).
    pub trace_rounds: bool,
    pub last_round: Option<RoundRecord>,
    q: Vec<Dist>,
    /// When [`Engine::admit`] took the sequence in (its prompt time runs from here).
    t_admitted: Duration,
    /// Its shared rounds' planned paces (whether or not the round drafted), on the whole: what
    /// a job like it may give ([`crate::outlook`]).
    pub pace_mean: PaceMean,
    /// The grammar its output follows, in step with its tokens.
    pub guide: Option<Guide>,
    /// Tokens the constraint forced at the end of `tokens` this round (drafted, not verified).
    forced: usize,
    /// With [`GenConfig::logprobs`]: one entry per generated token, in order.
    pub logprobs: Vec<TokenLogprob>,
    /// The tokens the target wrote where a copied value ended ([`crate::closing`]).
    closers: Closers,
}

impl Sequence {
    pub fn generated(&self) -> &[Token] {
        &self.tokens[self.n_prompt..]
    }

    /// Whether the target is still reading the prompt (admitted by [`Engine::admit`], no token
    /// generated yet).
    pub fn reading_prompt(&self) -> bool {
        self.finish.is_none() && self.tokens.len() == self.n_prompt
    }

    /// What this sequence leaves in its slot's caches when it ends (see [`KeptCells`]).
    pub fn kept_cells(&self) -> KeptCells {
        let (n_target, n_draft) = (self.target.n_cached, self.draft.n_cached);
        KeptCells { tokens: self.tokens[..n_target.max(n_draft).min(self.tokens.len())].to_vec(), n_target, n_draft }
    }

    /// Prompt tokens the target has not read yet.
    pub fn prompt_left(&self) -> usize {
        if self.reading_prompt() {
            self.n_prompt - self.target.n_cached
        } else {
            0
        }
    }
}

/// The target model and a drafter, with one generation's settings.
pub struct Engine<T, D> {
    pub target: T,
    pub drafter: D,
    pub config: GenConfig,
    /// Tokens decoded by the target in rounds so far (prompts excluded).
    pub n_decoded: usize,
    /// Prompt tokens the shared rounds read (of sequences taken in by [`Engine::admit`]).
    pub n_prefilled: usize,
    /// Shared rounds ([`Engine::step_many`]) planned with known costs: what their plans
    /// expected, as a whole, against what they emitted and took.
    pub shared_plan: PlanCheck,
    /// What the shared rounds' drafts gave against their plans; scales later plans.
    pub draft_yield: DraftYield,
    scratch: Scratch,
}

impl<T: Model, D: Drafter> Engine<T, D> {
    pub fn new(target: T, drafter: D, config: GenConfig) -> Self {
        Self {
            target,
            drafter,
            config,
            n_decoded: 0,
            n_prefilled: 0,
            shared_plan: PlanCheck::default(),
            draft_yield: DraftYield::default(),
            scratch: Scratch::new(),
        }
    }

    /// Clear sequence `id` in both models, read the prompt and take the first token: the target
    /// decodes the whole prompt in one run, and the first token comes from that batch's last
    /// logits row, read where it lies (no decode, no copy; the same batch shape as in
    /// llama.cpp), so it is out when the prompt is. The drafter reads all but the prompt's
    /// last token; drafting starts with the next round.
    pub fn start(&mut self, id: SeqId, prompt: Vec<Token>, clock: &dyn Clock) -> Result<Sequence, EngineError> {
        self.start_after(id, prompt, None, clock)
    }

    /// [`Engine::start`] in a slot whose caches still hold `kept` (what the sequence before
    /// left there): the cells the prompt shares with it are kept, and only the rest is read.
    pub fn start_after(
        &mut self,
        id: SeqId,
        prompt: Vec<Token>,
        kept: Option<&KeptCells>,
        clock: &dyn Clock,
    ) -> Result<Sequence, EngineError> {
        let mut seq = self.admit_after(id, prompt, kept, clock)?;
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
        self.admit_after(id, prompt, None, clock)
    }

    /// [`Engine::admit`] in a slot whose caches still hold `kept`: the target keeps the cells
    /// of the prompt's longest common prefix with it (all but the prompt's last token, whose
    /// row gives the first token), the draft model likewise, and the rest of both caches is
    /// removed. Without `kept` the slot's caches are cleared. A model that refuses to cut a
    /// sequence's cells part way (llama.cpp's recurrent and some sliding-window caches) reads
    /// the whole prompt.
    pub fn admit_after(
        &mut self,
        id: SeqId,
        prompt: Vec<Token>,
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
            config: self.config.clone(),
            rng: ChaCha8Rng::seed_from_u64(self.config.seed),
            stats: GenStats::default(),
            finish: None,
            // Each sequence learns its own costs: a record's output never depends on the
            // records before it (so a resumed batch equals an uninterrupted one).
            controller: Controller::with_curve(self.config.adaptive, self.config.draft_max, self.config.cost_curve.clone()),
            trace_rounds: false,
            last_round: None,
            q: Vec::new(),
            t_admitted: t0,
            pace_mean: PaceMean::default(),
            guide: None,
            forced: 0,
            closers: Closers::default(),
            logprobs: Vec::new(),
        };
        seq.guide = self.config.constraint.as_ref().map(|c| Guide::new(c.start(), seq.n_prompt));
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
        seq.stats.n_prompt = seq.n_prompt;
        seq.stats.n_prompt_cached = seq.target.n_cached;
        if self.config.max_tokens == 0 {
            seq.stats.t_prompt = clock.now() - t0;
            seq.finish = Some(FinishReason::Length);
        }
        Ok(seq)
    }

    /// The first token, from row `row` of the decode that read the prompt's last token (at
    /// `t_read`, which ends the prompt's time): the first round, with nothing drafted and
    /// nothing decoded of its own.
    fn first_token(
        &mut self,
        seq: &mut Sequence,
        row: usize,
        shared: Option<usize>,
        t_read: Duration,
        clock: &dyn Clock,
    ) -> Result<Range<usize>, EngineError> {
        seq.stats.t_prompt = t_read.saturating_sub(seq.t_admitted);
        let n_hist = seq.n_prompt;
        let first = Drafted {
            n_hist,
            k_planned: 0,
            run: 0,
            n_drafted: 0,
            report: DraftReport::default(),
            draft_gap: n_hist - seq.draft.n_cached,
            n_rows: 0,
            t_start: t_read,
            t_drafted: t_read,
            expected: None,
            peek: None,
            n_forced: 0,
            cut: None,
            n_closing: 0,
        };
        self.finish_phase(seq, first, row, shared, t_read, clock)
    }

    /// How many tokens to draft this round.
    fn draft_len(&self, seq: &Sequence) -> usize {
        if !self.drafter.is_active() {
            return 0;
        }
        // tokens already forced this round come before the draft
        let n = seq.tokens.len();
        let remaining = (seq.config.max_tokens - seq.stats.n_generated).saturating_sub(seq.forced);
        seq.config
            .draft_max
            .min(remaining.saturating_sub(1))
            // the target batch (last token, forced tokens, draft) must fit n_batch and the context
            .min(self.target.n_batch().saturating_sub(1 + seq.forced))
            .min(self.target.n_ctx().saturating_sub(n))
            // the draft decodes up to position n + k - 2
            .min(self.drafter.n_ctx().saturating_add(1).saturating_sub(n))
    }

    /// Run one round. Returns the range of `seq.tokens` it added (empty once finished).
    pub fn step(&mut self, seq: &mut Sequence, clock: &dyn Clock) -> Result<Range<usize>, EngineError> {
        self.open_round(seq, FORCED_MAX)?;
        let Some(d) = self.draft_phase(seq, None, clock)? else {
            return Ok(seq.tokens.len()..seq.tokens.len());
        };
        if d.n_rows > 0 {
            self.n_decoded += seq.tokens.len() - seq.target.n_cached;
            seq.target.decode_tail(&mut self.target, &seq.tokens, d.n_rows).map_err(EngineError::Target)?;
        }
        let t_verified = clock.now();
        self.finish_phase(seq, d, 0, None, t_verified, clock)
    }

    /// One round for several sequences (distinct ids) with **one** target decode carrying
    /// every active sequence's last token and draft. With `auto` draft lengths, the lengths
    /// are chosen together ([`allocate_drafts`]) for the most expected tokens per second of
    /// the shared decode, along `costs` (the cost of a target decode by total batch size,
    /// learned here from every shared decode), with each draft's expected gain scaled by the
    /// share the run's drafts have realised ([`Engine::draft_yield`]). The round's plan is
    /// recorded against what it did ([`Engine::shared_plan`]); before any shared decode was
    /// measured, several sequences decode plainly (that round measures it). With `allow_drafts` false the `auto` sequences
    /// decode plainly this round (the run's [`crate::control::DraftGuard`] measured drafting
    /// not to pay). Once planned, the round's drafts are put to `check` (each sequence's
    /// [`PlannedPace`], in `seqs` order, and the costs): false holds them all this round (the
    /// run's [`crate::outlook::Outlook`] found plain decoding ends the run sooner).
    ///
    /// Sequences still [`Sequence::reading_prompt`] draft nothing: up to `prompt_budget` of
    /// their prompt tokens (within what `n_batch` leaves after the others' rows, shared evenly
    /// among them) ride in the same decode, and one whose last prompt token is read takes its first token
    /// from that row. A round that carries prompt tokens is left out of what the run learns
    /// about decode costs, of the plan check and of the draft yield: its time is mostly the
    /// prompt's.
    ///
    /// Returns each sequence's added range (empty for one whose prompt is not read to the end).
    pub fn step_many(
        &mut self,
        seqs: &mut [&mut Sequence],
        costs: &mut VerifyCosts,
        allow_drafts: bool,
        check: &mut dyn FnMut(&[PlannedPace], &VerifyCosts) -> bool,
        prompt_budget: usize,
        clock: &dyn Clock,
    ) -> Result<Vec<Range<usize>>, EngineError> {
        let t_round = clock.now();
        // forced tokens first, each sequence's within its share of n_batch beside the others'
        // largest drafts
        let decoding = seqs.iter().filter(|s| s.finish.is_none() && !s.reading_prompt()).count().max(1);
        let draft_max = seqs.iter().map(|s| s.config.draft_max).max().unwrap_or(0);
        let share = (self.target.n_batch() / decoding).saturating_sub(1 + draft_max).min(FORCED_MAX);
        for seq in seqs.iter_mut() {
            self.open_round(seq, share)?;
        }
        let n_forced_all: usize = seqs.iter().map(|s| s.forced).sum();
        // plan: each sequence's source, cap and acceptance; then the lengths, together
        let mut plans: Vec<Option<RoundPlan>> = vec![None; seqs.len()];
        let mut asks: Vec<DraftAsk> = Vec::new();
        // for each ask: the sequence, its source and copy run
        let mut askers: Vec<(usize, DraftSource, usize)> = Vec::new();
        for (i, seq) in seqs.iter_mut().enumerate() {
            if seq.finish.is_some() || seq.reading_prompt() || seq.config.adaptive != AdaptiveMode::Auto {
                continue;
            }
            if !allow_drafts {
                plans[i] = Some(RoundPlan { source: DraftSource::None, k: 0, run: 0 });
                continue;
            }
            let limit = self.draft_len(seq);
            let source = if limit > 0 { self.drafter.source(&mut seq.draft, &seq.tokens) } else { DraftSource::None };
            let run = if source == DraftSource::None { 0 } else { self.drafter.copy_run(&seq.draft, &seq.tokens) };
            let cap = if source == DraftSource::None { 0 } else { seq.config.draft_max.min(limit) };
            let reach = seq.controller.reach(source, run, cap);
            let forced = if cap > 0 { seq.controller.forced_len(source, cap) } else { None };
            let draft_cost = match source {
                DraftSource::Model => seq.controller.model_step_cost().unwrap_or(0.0),
                _ => 0.0,
            };
            asks.push(DraftAsk { reach, cap, min: forced.unwrap_or(0), draft_cost });
            askers.push((i, source, run));
        }
        // the prompts being read come before drafts (a draft is optional, a prompt is not)
        let n_batch = self.target.n_batch();
        let decoding = seqs.iter().filter(|s| s.finish.is_none() && !s.reading_prompt()).count();
        let prompt_room = |rows: usize| prompt_budget.min(n_batch.saturating_sub(rows));
        let reserved = prompt_room(decoding).min(seqs.iter().map(|s| s.prompt_left()).sum());
        let budget = (n_batch - reserved).saturating_sub(n_forced_all);
        // the gains as the run's drafts have realised them (the plan check keeps the raw ones)
        let yield_factor = self.draft_yield.factor();
        let mut ks = allocate_drafts(&asks, costs, budget, yield_factor);
        // what each plan gives its sequence this round; the run may hold every draft (each
        // keeps its source: an n-gram one still peeks)
        if let Some(ks) = ks.as_mut() {
            let mut planned: Vec<PlannedPace> = seqs.iter().map(|s| PlannedPace::plain(s)).collect();
            for (&k, (&(i, _, _), ask)) in ks.iter().zip(askers.iter().zip(&asks)) {
                let pace = Pace {
                    tokens: 1.0 + yield_factor * ask.reach[..k].iter().sum::<f64>(),
                    rows: 1.0 + k as f64,
                    draft_secs: ask.draft_cost * k as f64,
                };
                seqs[i].pace_mean.add(pace);
                planned[i] = PlannedPace { pace, mean: seqs[i].pace_mean.mean(), ..planned[i] };
            }
            if ks.iter().any(|&k| k > 0) && !check(&planned, costs) {
                ks.iter_mut().for_each(|k| *k = 0);
            }
        }
        for (j, (&(i, source, run), ask)) in askers.iter().zip(&asks).enumerate() {
            // costs unknown yet: one sequence drafts what its own controller would explore
            // with; several decode plainly, once, and the round measures what their decode
            // costs (every one of 16 sequences drafting blind made a decode of ~4 plain ones)
            let blind = if asks.len() > 1 { 0 } else { ask.cap.min(4).max(ask.min) };
            let k = ks.as_ref().map_or(blind, |ks| ks[j]);
            plans[i] = Some(RoundPlan { source, k, run });
        }
        // what the plans expect of the round as a whole, when every active sequence was
        // planned here (a plain round of `auto` sequences included) and its costs are known
        let active = decoding;
        let lengths = match &ks {
            Some(ks) => Some(ks.as_slice()),
            None if askers.is_empty() => Some(&[][..]),
            None => None,
        };
        let expected = lengths.filter(|_| active > 0 && plans.iter().flatten().count() == active).and_then(|ks| {
            let (mut rows, mut tokens, mut drafting) = (active + n_forced_all, (active + n_forced_all) as f64, 0.0);
            for (a, &k) in asks.iter().zip(ks) {
                rows += k;
                tokens += a.reach[..k].iter().sum::<f64>();
                drafting += a.draft_cost * k as f64;
            }
            Some((tokens, costs.estimate_shared(rows, active)? + drafting))
        });
        // draft for all (a draft model: one decode per draft step for every sequence that
        // drafts from it), then one target decode for all
        let starts: Vec<Option<RoundStart>> = seqs
            .iter_mut()
            .enumerate()
            .map(|(i, seq)| if seq.reading_prompt() { None } else { self.round_start(seq, plans[i], clock) })
            .collect();
        let mut reports: Vec<DraftReport> = vec![DraftReport::default(); seqs.len()];
        {
            let mut jobs = Vec::new();
            let mut owners = Vec::new();
            for (i, (seq, start)) in seqs.iter_mut().zip(&starts).enumerate() {
                let Some(start) = start.as_ref().filter(|s| s.drafts()) else { continue };
                let seq: &mut Sequence = seq;
                let req = start.request_for(&seq.config);
                jobs.push(ProposeJob {
                    cursor: &mut seq.draft,
                    tokens: &mut seq.tokens,
                    q: &mut seq.q,
                    req,
                    rng: &mut seq.rng,
                    guide: seq.guide.as_mut(),
                });
                owners.push(i);
            }
            if !jobs.is_empty() {
                for (i, r) in owners.into_iter().zip(self.drafter.propose_many(&mut jobs, &mut self.scratch).map_err(EngineError::Draft)?) {
                    reports[i] = r;
                }
            }
        }
        let t_drafted = clock.now();
        // a shared draft's time belongs to its steps: each sequence bears its share of them
        let (all_steps, t_drafting) = (
            reports.iter().map(|r| r.n_steps).sum::<usize>(),
            starts.iter().flatten().map(|s| t_drafted.saturating_sub(s.t_start)).max().unwrap_or_default(),
        );
        let mut drafted = Vec::with_capacity(seqs.len());
        for ((seq, start), report) in seqs.iter_mut().zip(starts).zip(reports) {
            drafted.push(start.map(|mut start| {
                // its share of the draft steps (n-gram lookup or nothing: none worth counting)
                let share = if report.n_steps > 0 { t_drafting.mul_f64(report.n_steps as f64 / all_steps as f64) } else { Duration::ZERO };
                start.t_start = t_drafted.saturating_sub(share);
                self.round_drafted(seq, start, report, t_drafted)
            }));
        }
        // the prompts' share: what n_batch leaves after the decoding rows, up to the budget,
        // shared evenly (a prompt that needs less than its share leaves the rest to the
        // longer ones): a short prompt gets its first token soon, a long one is never starved
        let mut room = prompt_room(drafted.iter().flatten().map(|d| d.n_rows).sum());
        let mut takes: Vec<usize> = vec![0; seqs.len()];
        let mut reading: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].prompt_left() > 0).collect();
        reading.sort_by_key(|&i| seqs[i].prompt_left());
        for (n, &i) in reading.iter().enumerate() {
            let share = room.div_ceil(reading.len() - n);
            takes[i] = seqs[i].prompt_left().min(share);
            room -= takes[i];
        }
        // one decode: each sequence's rows (its last token and draft, or a prompt chunk), in
        // slot order
        let mut parts = Vec::new();
        let mut owners = Vec::new();
        let mut row_bases: Vec<usize> = vec![0; seqs.len()];
        let mut n_rows_all = 0;
        for (i, d) in drafted.iter().enumerate() {
            let seq = &seqs[i];
            let part = match d {
                Some(d) if d.n_rows > 0 => seq.target.part(&seq.tokens, d.n_rows),
                _ if takes[i] > 0 => {
                    let end = seq.target.n_cached + takes[i];
                    seq.target.part_upto(&seq.tokens, end, usize::from(end == seq.n_prompt))
                }
                _ => continue,
            };
            row_bases[i] = n_rows_all;
            n_rows_all += part.tokens.len() - part.logits_from;
            parts.push(part);
            owners.push(i);
        }
        let lens: Vec<usize> = parts.iter().map(|p| p.tokens.len()).collect();
        let n_tokens: usize = lens.iter().sum();
        let n_prompt_tokens: usize = takes.iter().sum();
        let t0 = clock.now();
        if !parts.is_empty() {
            self.target.decode_parts(&parts).map_err(EngineError::Target)?;
        }
        drop(parts);
        let t_verified = clock.now();
        if n_tokens > 0 && n_prompt_tokens == 0 {
            costs.observe_shared(n_tokens, owners.len(), (t_verified - t0).as_secs_f64());
        }
        self.n_decoded += n_tokens - n_prompt_tokens;
        self.n_prefilled += n_prompt_tokens;
        for (&i, len) in owners.iter().zip(lens) {
            seqs[i].target.part_decoded(len);
        }
        // verify each sequence on its own rows; a prompt read to its end gives the first token
        let mut ranges = Vec::with_capacity(seqs.len());
        for (i, d) in drafted.into_iter().enumerate() {
            let seq = &mut *seqs[i];
            match d {
                None if takes[i] > 0 && seq.target.n_cached == seq.n_prompt => {
                    ranges.push(self.first_token(seq, row_bases[i], Some(n_tokens), t_verified, clock)?)
                }
                None => ranges.push(seq.tokens.len()..seq.tokens.len()),
                Some(d) => ranges.push(self.finish_phase(seq, d, row_bases[i], Some(n_tokens), t_verified, clock)?),
            }
        }
        if let Some(expected) = expected.filter(|_| n_prompt_tokens == 0) {
            let emitted: usize = ranges.iter().map(|r| r.len()).sum();
            self.shared_plan.add(expected, emitted, (clock.now() - t_round).as_secs_f64());
            self.draft_yield.observe(expected.0 - active as f64, emitted as f64 - active as f64);
        }
        Ok(ranges)
    }

    /// Before a round is planned: forget the last round's draft distributions and, under a
    /// constraint, draft the tokens the grammar forces (at most `cap`, within the sequence's
    /// budget, context and batch): they lead the round's draft, whatever the drafter adds.
    /// Target-only decoding (no active drafter, or `draft_max` 0) forces nothing.
    fn open_round(&mut self, seq: &mut Sequence, cap: usize) -> Result<(), EngineError> {
        seq.q.clear();
        seq.forced = 0;
        if seq.finish.is_some() || seq.reading_prompt() || !self.drafter.is_active() || seq.config.draft_max == 0 {
            return Ok(());
        }
        let n = seq.tokens.len();
        let remaining = seq.config.max_tokens - seq.stats.n_generated;
        let cap =
            cap.min(remaining.saturating_sub(1)).min(self.target.n_batch().saturating_sub(1)).min(self.target.n_ctx().saturating_sub(n));
        let Some(guide) = seq.guide.as_mut().filter(|_| cap > 0) else {
            return Ok(());
        };
        let target = &self.target;
        let forced = guide.forced_after(&seq.tokens, cap, &|t| target.is_eog(t)).map_err(EngineError::Constraint)?;
        if seq.config.effective_verify().needs_q() {
            seq.q.extend(forced.iter().map(|&t| Dist::one_hot(t)));
        }
        seq.forced = forced.len();
        seq.tokens.extend(forced);
        Ok(())
    }

    /// The first half of a round: stop if finished, choose the draft length (or take `plan`)
    /// and draft.
    fn draft_phase(&mut self, seq: &mut Sequence, plan: Option<RoundPlan>, clock: &dyn Clock) -> Result<Option<Drafted>, EngineError> {
        let Some(start) = self.round_start(seq, plan, clock) else {
            return Ok(None);
        };
        let mut report = crate::draft::DraftReport::default();
        if start.drafts() {
            let req = start.request_for(&seq.config);
            report = match seq.guide.as_mut() {
                // a constrained sequence drafts through the batch path, which carries its guide
                Some(guide) => {
                    let job = ProposeJob {
                        cursor: &mut seq.draft,
                        tokens: &mut seq.tokens,
                        q: &mut seq.q,
                        req,
                        rng: &mut seq.rng,
                        guide: Some(guide),
                    };
                    self.drafter.propose_many(&mut [job], &mut self.scratch).map_err(EngineError::Draft)?.remove(0)
                }
                None => self
                    .drafter
                    .propose(&mut seq.draft, &mut seq.tokens, &mut seq.q, &req, &mut self.scratch, &mut seq.rng)
                    .map_err(EngineError::Draft)?,
            };
        }
        let t_drafted = clock.now();
        Ok(Some(self.round_drafted(seq, start, report, t_drafted)))
    }

    /// A round's start: `None` when the sequence is finished (or its context is); else the
    /// source and length to draft (the controller's, or `plan`).
    fn round_start(&mut self, seq: &mut Sequence, plan: Option<RoundPlan>, clock: &dyn Clock) -> Option<RoundStart> {
        let n_hist = seq.tokens.len() - seq.forced;
        if seq.finish.is_some() {
            return None;
        }
        if n_hist > self.target.n_ctx() {
            seq.finish = Some(FinishReason::Context);
            return None;
        }
        let t_start = clock.now();
        // the controller picks the length for the source that would propose
        let (source, k_planned, run, expected) = match plan {
            Some(RoundPlan { source, k, run }) => (source, k, run, None),
            None => {
                let limit = self.draft_len(seq);
                let source = if limit > 0 { self.drafter.source(&mut seq.draft, &seq.tokens) } else { DraftSource::None };
                let run = if source == DraftSource::None { 0 } else { self.drafter.copy_run(&seq.draft, &seq.tokens) };
                let k = seq.controller.plan(source, limit, run);
                (source, k, run, seq.controller.expect(source, run, k))
            }
        };
        // a round that will not draft still learns what an n-gram draft would have given
        let peek = (k_planned == 0 && source == DraftSource::Ngram && seq.config.adaptive == AdaptiveMode::Auto)
            .then(|| self.drafter.peek(&seq.draft, &seq.tokens))
            .flatten();
        Some(RoundStart { n_hist, source, k_planned, run, draft_gap: n_hist - seq.draft.n_cached, t_start, expected, peek })
    }

    /// After drafting: drop a draft shorter than `draft_min`, and say which rows the target
    /// decodes.
    fn round_drafted(&mut self, seq: &mut Sequence, start: RoundStart, report: DraftReport, t_drafted: Duration) -> Drafted {
        let RoundStart { n_hist, k_planned, run, draft_gap, t_start, expected, peek, .. } = start;
        let n_forced = std::mem::take(&mut seq.forced);
        let own = n_hist + n_forced;
        seq.stats.n_draft_steps += report.n_steps;
        // a drafter's tokens end at the first the grammar refuses (a draft model sampled
        // under the mask already; n-gram drafts may leave the grammar), or where the target
        // ended such a copy before
        let mut end = None;
        if let Some(guide) = seq.guide.as_mut().filter(|_| seq.tokens.len() > own) {
            let target = &self.target;
            let is_eog = |t| target.is_eog(t);
            let proposed = seq.tokens.len() - own;
            let allowed = guide.allowed_prefix(&seq.tokens[..own], &seq.tokens[own..], &is_eog).unwrap_or(0);
            end = if allowed < proposed {
                guide
                    .mask_after(&seq.tokens[..own + allowed], &is_eog)
                    .ok()
                    .map(|m| (allowed, CloseKey { mask: m.fingerprint(), source: None }))
            } else {
                seq.closers.first_replaced(guide, &seq.tokens, own, &is_eog).ok().flatten()
            };
            let kept = end.map_or(allowed, |(i, _)| i);
            end = end.map(|(_, key)| (proposed - kept, key));
            seq.tokens.truncate(own + kept);
            seq.q.truncate(n_forced + kept);
        }
        if seq.tokens.len() > own && seq.tokens.len() - own < seq.config.draft_min.max(1) {
            // too short to be worth a bigger target batch (llama.cpp's --draft-min)
            seq.tokens.truncate(own);
            seq.q.truncate(n_forced);
            end = None;
        }
        let cut = end.map(|(_, key)| (seq.tokens.len() - n_hist, key));
        let n_closing = end.map_or(0, |(room, key)| self.close(seq, room, key));
        let n_drafted = seq.tokens.len() - n_hist;
        // the target decodes the last accepted token and the whole draft
        Drafted {
            n_hist,
            k_planned,
            run,
            n_drafted,
            report,
            draft_gap,
            n_rows: n_drafted + 1,
            t_start,
            t_drafted,
            expected,
            peek,
            n_forced,
            cut,
            n_closing,
        }
    }

    /// Where a copied value ends (`key`), draft the closer the target wrote at such an end
    /// before and the tokens the grammar forces after it, in the `room` the cut tokens left
    /// ([`crate::closing`]). Returns how many tokens were drafted.
    fn close(&mut self, seq: &mut Sequence, room: usize, key: CloseKey) -> usize {
        let (Some(guide), Some(closer)) = (seq.guide.as_mut(), seq.closers.closer(key)) else { return 0 };
        let target = &self.target;
        let start = seq.tokens.len();
        seq.tokens.push(closer);
        if let Ok(forced) = guide.forced_after(&seq.tokens, room - 1, &|t| target.is_eog(t)) {
            seq.tokens.extend(forced);
        }
        if seq.config.effective_verify().needs_q() {
            seq.q.extend(seq.tokens[start..].iter().map(|&t| Dist::one_hot(t)));
        }
        seq.tokens.len() - start
    }

    /// After verification: the closer the target wrote where a copy was cut, or where it
    /// rejected a copied token for one (a token after which the grammar forces the next key).
    fn learn_closer(&self, seq: &mut Sequence, n_hist: usize, cut: Option<(usize, CloseKey)>, rejected: Option<(usize, Token)>) {
        let Some(guide) = seq.guide.as_mut() else { return };
        let target = &self.target;
        let is_eog = |t| target.is_eog(t);
        if let Some((c, key)) = cut {
            if let Some(&closer) = seq.tokens.get(n_hist + c) {
                seq.closers.learn(key, closer);
            }
            return;
        }
        let Some((c, source)) = rejected else { return };
        let Some(&closer) = seq.tokens.get(n_hist + c) else { return };
        let Ok(mask) = guide.mask_after(&seq.tokens[..n_hist + c], &is_eog).map(|m| m.fingerprint()) else { return };
        if forces_after(guide, &seq.tokens[..=n_hist + c], &is_eog) {
            seq.closers.learn(CloseKey { mask, source: Some(source) }, closer);
        }
    }

    /// The second half of a round, after the target decode: verify on rows
    /// `row_base..row_base + d.n_rows` of that decode, keep what is accepted, roll back,
    /// learn. `shared`: the total batch size when the decode carried other sequences too.
    fn finish_phase(
        &mut self,
        seq: &mut Sequence,
        d: Drafted,
        row_base: usize,
        shared: Option<usize>,
        t_verified: std::time::Duration,
        clock: &dyn Clock,
    ) -> Result<Range<usize>, EngineError> {
        let Drafted {
            n_hist,
            k_planned,
            run,
            n_drafted,
            report,
            draft_gap,
            n_rows,
            t_start,
            t_drafted,
            expected,
            peek,
            n_forced,
            cut,
            n_closing,
        } = d;
        // a trace keeps the draft, which verification cuts back to what was accepted
        let traced_draft = seq.trace_rounds.then(|| seq.tokens[n_hist..n_hist + n_drafted].to_vec());
        let verify_mode = seq.config.effective_verify();
        let params = &seq.config.params;
        let target = &self.target;
        let plain_row = |i: usize| target.logits(row_base + i);
        let mut plain = RowFn(&plain_row);
        let mut masked = seq.guide.as_mut().map(|guide| MaskedRows { target, row_base, guide, tokens: &seq.tokens, n_hist, error: None });
        let rows: &mut dyn Rows = match masked.as_mut() {
            Some(m) => m,
            None => &mut plain,
        };
        let verdict =
            verify(verify_mode, seq.config.seed, rows, &seq.tokens, &seq.tokens[n_hist..], &seq.q, params, &mut self.scratch, &mut seq.rng);
        if let Some(e) = masked.and_then(|m| m.error) {
            return Err(EngineError::Constraint(e));
        }

        // the copied token the target turned from, if it did (before it is cut away)
        let rejected_copy = (seq.guide.is_some() && report.source == DraftSource::Ngram)
            .then(|| seq.tokens.get(n_hist + verdict.n_accepted).copied())
            .flatten();
        // 3. keep the accepted prefix, add the target's token, stop at EOG / max_tokens (a
        // constrained sequence ends where its grammar lets the target end it)
        seq.tokens.truncate(n_hist + verdict.n_accepted);
        seq.tokens.push(verdict.next);
        let ends_at_eog = !seq.config.ignore_eos || seq.guide.is_some();
        if let Some(i) = seq.tokens[n_hist..].iter().position(|&t| ends_at_eog && self.target.is_eog(t)) {
            seq.tokens.truncate(n_hist + i + 1);
            seq.finish = Some(FinishReason::Stop);
        }
        seq.stats.n_generated = seq.tokens.len() - seq.n_prompt;
        // row i of the round chose token n_hist + i (verification read the rows; they are
        // still the decode's)
        if let Some(top) = seq.config.logprobs {
            for (i, &t) in seq.tokens[n_hist..].iter().enumerate() {
                seq.logprobs.push(TokenLogprob::of(self.target.logits(row_base + i), t, top));
            }
        }
        if seq.finish.is_none() && seq.stats.n_generated >= seq.config.max_tokens {
            seq.finish = Some(FinishReason::Length);
        }

        // 4. roll both caches back to what they share with the accepted tokens
        let keep = (n_hist + verdict.n_accepted).min(seq.tokens.len());
        seq.target.keep(&mut self.target, keep).map_err(EngineError::Target)?;
        self.drafter.rollback(&mut seq.draft, keep).map_err(EngineError::Draft)?;

        // what the target wrote where the copy ended, or where it turned from the copy
        let reached_cut = cut.filter(|&(c, _)| verdict.n_accepted >= c);
        let own_end = n_drafted - n_closing;
        let rejected = rejected_copy.filter(|_| reached_cut.is_none() && verdict.n_accepted >= n_forced && verdict.n_accepted < own_end);
        self.learn_closer(seq, n_hist, reached_cut, rejected.map(|t| (verdict.n_accepted, t)));
        // forced and closing tokens are the grammar's, not a drafter's: the controller learns
        // from the drafter's tokens between them (none when a forced token was refused)
        let n_forced_accepted = verdict.n_accepted.min(n_forced);
        let own_drafted = n_drafted - n_forced - n_closing;
        let (own_drafted, own_accepted) =
            if n_forced_accepted == n_forced { (own_drafted, (verdict.n_accepted - n_forced).min(own_drafted)) } else { (0, 0) };
        let n_closing_accepted = cut.map_or(0, |(c, _)| verdict.n_accepted.saturating_sub(c).min(n_closing));
        let source = if own_drafted > 0 { report.source } else { DraftSource::None };
        seq.stats.record_round(n_drafted, verdict.n_accepted);
        seq.stats.n_forced += n_forced;
        seq.stats.n_forced_accepted += n_forced_accepted;
        seq.stats.n_closing += n_closing;
        seq.stats.n_closing_accepted += n_closing_accepted;
        seq.stats.n_masks = seq.guide.as_ref().map_or(0, |g| g.n_masks);
        if let Some(drafted) = traced_draft {
            seq.last_round = Some(RoundRecord {
                n_hist,
                source,
                run,
                k_planned,
                n_forced,
                drafted,
                n_accepted: verdict.n_accepted,
                expected,
                t_draft: t_drafted - t_start,
                t_verify: t_verified - t_drafted,
                n_rows: shared.unwrap_or(n_rows),
            });
        }
        seq.stats.record_source(source, k_planned);
        let t_end = clock.now();
        seq.controller.observe(&Observation {
            source,
            k_planned,
            n_drafted: own_drafted,
            n_accepted: own_accepted,
            run,
            n_draft_steps: report.n_steps,
            draft_gap,
            // a shared decode's cost belongs to the batch, not to this sequence
            n_verified: if shared.is_some() { 0 } else { n_rows },
            t_draft: t_drafted - t_start,
            t_verify: t_verified - t_drafted,
        });
        if let Some(t) = peek {
            seq.controller.observe_peek(run, t == verdict.next);
        }
        seq.stats.t_draft += t_drafted - t_start;
        seq.stats.t_verify += t_verified - t_drafted;
        if n_drafted > 0 {
            seq.stats.t_verify_drafted += t_verified - t_drafted;
        }
        seq.stats.t_decode += t_end - t_start;
        // (only a sequence's own rounds carry an expectation; shared ones are checked whole)
        if let Some(expected) = expected {
            seq.stats.plan_check.add(expected, seq.tokens.len() - n_hist, (t_end - t_start).as_secs_f64());
        }
        Ok(n_hist..seq.tokens.len())
    }

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
