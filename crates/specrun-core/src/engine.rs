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
//! first token from the prompt batch).

use crate::control::{AdaptiveMode, Controller, CostCurve, Observation};
use crate::draft::{DraftCursor, DraftRequest, DraftSource, Drafter};
use crate::model::{KvCursor, Model, ModelError, SeqId, Token};
use crate::sampling::{Dist, SamplingParams, Scratch};
use crate::stats::{Clock, FinishReason, GenStats};
use crate::verify::{verify, VerifyMode};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::ops::Range;
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
    /// Greedy only: when a token emitted from a batch of several rows won by less than this
    /// many logits over the runner-up, it is not emitted from the batch; the next round
    /// decodes it alone, as plain decoding would (0: off). Batch shape moves logits by up to
    /// ~0.7 on a CPU, so near-ties can otherwise flip between speculative and plain output.
    pub tie_margin: f32,
}

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
            tie_margin: 0.0,
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
            VerifyMode::Rejection
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
}

/// Logit of the best token minus that of the runner-up.
fn top2_gap(row: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in row {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    a - b
}

/// One prompt being generated.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub id: SeqId,
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
    q: Vec<Dist>,
    /// The target's logits row for the prompt's last token, from the prompt batch, until the
    /// first round uses it: the first token comes from the same batch shape as in llama.cpp.
    prompt_row: Option<Vec<f32>>,
    /// The next round decodes one token alone (a near-tie is being rechecked).
    force_plain: bool,
}

impl Sequence {
    pub fn generated(&self) -> &[Token] {
        &self.tokens[self.n_prompt..]
    }
}

/// The target model and a drafter, with one generation's settings.
pub struct Engine<T, D> {
    pub target: T,
    pub drafter: D,
    pub config: GenConfig,
    scratch: Scratch,
}

impl<T: Model, D: Drafter> Engine<T, D> {
    pub fn new(target: T, drafter: D, config: GenConfig) -> Self {
        Self { target, drafter, config, scratch: Scratch::new() }
    }

    /// Clear sequence `id` in both models and read the prompt: the target decodes all of it in
    /// one run and keeps the last logits row for the first round (the prompt batch is the first
    /// verification batch); the drafter reads all but the last token.
    pub fn start(&mut self, id: SeqId, prompt: Vec<Token>, clock: &dyn Clock) -> Result<Sequence, EngineError> {
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
            rng: ChaCha8Rng::seed_from_u64(self.config.seed),
            stats: GenStats::default(),
            finish: None,
            // Each sequence learns its own costs: a record's output never depends on the
            // records before it (so a resumed batch equals an uninterrupted one).
            controller: Controller::with_curve(self.config.adaptive, self.config.draft_max, self.config.cost_curve.clone()),
            q: Vec::new(),
            prompt_row: None,
            force_plain: false,
        };
        self.target.truncate(id, 0).map_err(EngineError::Target)?;
        if self.config.max_tokens > 0 {
            seq.target.decode_tail(&mut self.target, &seq.tokens, 1).map_err(EngineError::Target)?;
            seq.prompt_row = Some(self.target.logits(0).to_vec());
        }
        let head = &seq.tokens[..seq.n_prompt - 1];
        self.drafter.begin(&mut seq.draft, head).map_err(EngineError::Draft)?;
        seq.stats.n_prompt = seq.n_prompt;
        seq.stats.t_prompt = clock.now() - t0;
        if self.config.max_tokens == 0 {
            seq.finish = Some(FinishReason::Length);
        }
        Ok(seq)
    }

    /// How many tokens to draft this round.
    fn draft_len(&self, seq: &Sequence) -> usize {
        if !self.drafter.is_active() {
            return 0;
        }
        let n = seq.tokens.len();
        let remaining = self.config.max_tokens - seq.stats.n_generated;
        self.config
            .draft_max
            .min(remaining.saturating_sub(1))
            // the target batch (last token + draft) must fit n_batch and the context
            .min(self.target.n_batch().saturating_sub(1))
            .min(self.target.n_ctx().saturating_sub(n))
            // the draft decodes up to position n + k - 2
            .min(self.drafter.n_ctx().saturating_add(1).saturating_sub(n))
    }

    /// Run one round. Returns the range of `seq.tokens` it added (empty once finished).
    pub fn step(&mut self, seq: &mut Sequence, clock: &dyn Clock) -> Result<Range<usize>, EngineError> {
        let n_hist = seq.tokens.len();
        if seq.finish.is_some() {
            return Ok(n_hist..n_hist);
        }
        if n_hist > self.target.n_ctx() {
            seq.finish = Some(FinishReason::Context);
            return Ok(n_hist..n_hist);
        }
        let t_start = clock.now();
        let verify_mode = self.config.effective_verify();
        let params = &self.config.params;

        // 1. draft: the controller picks the length for the source that would propose
        let limit = if std::mem::take(&mut seq.force_plain) { 0 } else { self.draft_len(seq) };
        let source = if limit > 0 { self.drafter.source(&mut seq.draft, &seq.tokens) } else { DraftSource::None };
        let run = if source == DraftSource::None { 0 } else { self.drafter.copy_run(&seq.draft, &seq.tokens) };
        let k_planned = seq.controller.plan(source, limit, run);
        seq.q.clear();
        let mut report = crate::draft::DraftReport::default();
        let draft_gap = n_hist - seq.draft.n_cached;
        if k_planned > 0 {
            let req = DraftRequest { max: k_planned, params, keep_q: verify_mode.needs_q(), p_min: self.config.draft_p_min };
            report = self
                .drafter
                .propose(&mut seq.draft, &mut seq.tokens, &mut seq.q, &req, &mut self.scratch, &mut seq.rng)
                .map_err(EngineError::Draft)?;
            seq.stats.n_draft_steps += report.n_steps;
            if seq.tokens.len() - n_hist < self.config.draft_min.max(1) {
                // too short to be worth a bigger target batch (llama.cpp's --draft-min)
                seq.tokens.truncate(n_hist);
                seq.q.clear();
            }
        }
        let t_drafted = clock.now();
        let n_drafted = seq.tokens.len() - n_hist;

        // 2. one target batch: the last accepted token and the whole draft (in the first round
        //    the last token's row comes from the prompt batch, and only the draft is decoded)
        let prompt_row = seq.prompt_row.take();
        let n_rows = n_drafted + usize::from(prompt_row.is_none());
        if n_rows > 0 {
            seq.target.decode_tail(&mut self.target, &seq.tokens, n_rows).map_err(EngineError::Target)?;
        }
        let target = &self.target;
        let verdict = match &prompt_row {
            Some(row0) => {
                let rows = |i: usize| if i == 0 { row0.as_slice() } else { target.logits(i - 1) };
                verify(verify_mode, &rows, &seq.tokens, &seq.tokens[n_hist..], &seq.q, params, &mut self.scratch, &mut seq.rng)
            }
            None => verify(
                verify_mode,
                &|i| target.logits(i),
                &seq.tokens,
                &seq.tokens[n_hist..],
                &seq.q,
                params,
                &mut self.scratch,
                &mut seq.rng,
            ),
        };
        // a near-tie decided in a batch of several rows is rechecked alone next round
        let recheck_at = if self.config.tie_margin > 0.0 && verify_mode == VerifyMode::Greedy {
            (0..=verdict.n_accepted).find(|&r| {
                let (row, batch_rows) = match (&prompt_row, r) {
                    (Some(_), 0) => return false, // the prompt batch: llama.cpp's own shape
                    (Some(_), r) => (target.logits(r - 1), n_rows),
                    (None, r) => (target.logits(r), n_rows),
                };
                batch_rows > 1 && top2_gap(row) < self.config.tie_margin
            })
        } else {
            None
        };
        let t_verified = clock.now();

        // 3. keep the accepted prefix, add the target's token, stop at EOG / max_tokens
        let (n_kept, keep) = match recheck_at {
            Some(r) => {
                seq.tokens.truncate(n_hist + r);
                seq.force_plain = true;
                seq.stats.n_tie_rechecks += 1;
                // drop the last kept token from the cache: it is decoded again, alone
                (r, n_hist + r - 1)
            }
            None => {
                seq.tokens.truncate(n_hist + verdict.n_accepted);
                seq.tokens.push(verdict.next);
                (verdict.n_accepted, n_hist + verdict.n_accepted)
            }
        };
        if let Some(i) = seq.tokens[n_hist..].iter().position(|&t| self.target.is_eog(t)) {
            seq.tokens.truncate(n_hist + i + 1);
            seq.finish = Some(FinishReason::Stop);
        }
        seq.stats.n_generated = seq.tokens.len() - seq.n_prompt;
        if seq.finish.is_none() && seq.stats.n_generated >= self.config.max_tokens {
            seq.finish = Some(FinishReason::Length);
        }

        // 4. roll both caches back to what they share with the accepted tokens
        let keep = keep.min(seq.tokens.len());
        seq.target.keep(&mut self.target, keep).map_err(EngineError::Target)?;
        self.drafter.rollback(&mut seq.draft, keep).map_err(EngineError::Draft)?;

        let source = if n_drafted > 0 { report.source } else { DraftSource::None };
        seq.stats.record_round(n_drafted, n_kept.min(verdict.n_accepted));
        seq.stats.record_source(source, k_planned);
        let t_end = clock.now();
        seq.controller.observe(&Observation {
            source,
            k_planned,
            n_drafted,
            n_accepted: verdict.n_accepted,
            n_draft_steps: report.n_steps,
            draft_gap,
            n_verified: n_rows,
            t_draft: t_drafted - t_start,
            t_verify: t_verified - t_drafted,
        });
        seq.stats.t_draft += t_drafted - t_start;
        seq.stats.t_verify += t_verified - t_drafted;
        if n_drafted > 0 {
            seq.stats.t_verify_drafted += t_verified - t_drafted;
        }
        seq.stats.t_decode += t_end - t_start;

        Ok(n_hist..seq.tokens.len())
    }

    /// Run rounds until the sequence finishes, handing each round's new tokens to `on_tokens`.
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
