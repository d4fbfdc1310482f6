//! One round of one sequence: open it (forced tokens), plan and draft, verify on the target's
//! rows, keep the agreeing prefix and the target's token, roll both caches back.

use super::*;

/// The drafting half of a round, handed to the verifying half.
pub(super) struct Drafted {
    n_hist: usize,
    k_planned: usize,
    run: usize,
    n_drafted: usize,
    report: crate::draft::DraftReport,
    draft_gap: usize,
    pub(super) n_rows: usize,
    pub(super) t_start: std::time::Duration,
    t_drafted: std::time::Duration,
    /// What the plan expected of this round (one sequence's own rounds).
    expected: Option<Expectation>,
    /// The n-gram drafter's first token, in a round that planned no draft ([`Drafter::peek`]).
    peek: Option<Token>,
    /// Where the drafter's copy was cut as a value's end (an offset into the draft, forced
    /// tokens included) with what ended it there, and how many closing tokens were drafted
    /// in its place ([`crate::closing`]).
    cut: Option<(usize, CloseKey)>,
    n_closing: usize,
    /// Of the drafted tokens, how many the constraint forced (they come first), the likely
    /// spelling of its forced text included (`n_likely`, at their end).
    n_forced: usize,
    n_likely: usize,
    /// The state where the round drafted an ending ([`Sequence::ending`]).
    ending: Option<u64>,
    /// Per row, whether it is left unread ([`Engine::unread_rows`]); empty: all are read.
    pub(super) unread: Vec<bool>,
}

/// What a shared round decided for one sequence before drafting: the source, the draft
/// length, and the copy run the plan started from.
#[derive(Debug, Clone, Copy)]
pub(super) struct RoundPlan {
    pub(super) draft: DraftPlan,
    pub(super) k: usize,
}

/// A round's plan, before drafting.
pub(super) struct RoundStart {
    n_hist: usize,
    source: DraftSource,
    k_planned: usize,
    /// The n-gram copy run the plan started from (see [`Observation::run`]).
    run: usize,
    draft_gap: usize,
    pub(super) t_start: Duration,
    /// What the plan expected: one sequence's own rounds only (a shared
    /// round is checked as a whole, [`Engine::shared_plan`]).
    expected: Option<Expectation>,
    /// The n-gram drafter's first token when the plan drafts nothing ([`Drafter::peek`]).
    peek: Option<Token>,
}

impl RoundStart {
    pub(super) fn drafts(&self) -> bool {
        self.k_planned > 0 && self.source != DraftSource::None
    }

    pub(super) fn request_for<'a>(&self, config: &'a GenConfig) -> DraftRequest<'a> {
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
/// verification reads). A row left unread is the row certain of the one token its state
/// allows.
pub(super) struct MaskedRows<'a, T> {
    target: &'a T,
    row_base: usize,
    guide: &'a mut Guide,
    tokens: &'a [Token],
    n_hist: usize,
    unread: &'a [bool],
    error: Option<ConstraintError>,
}

impl<T: Model> Rows for MaskedRows<'_, T> {
    fn row(&mut self, i: usize) -> &[f32] {
        let (target, state) = (self.target, &self.tokens[..self.n_hist + i]);
        if self.unread.get(i).copied().unwrap_or(false) {
            // the state's mask, computed when the row was marked, allows one token
            let only = match self.error {
                Some(_) => None,
                None => self.guide.only_after(state, &|t| target.is_eog(t)).unwrap_or_else(|e| {
                    self.error = Some(e);
                    None
                }),
            };
            if only.is_none() && self.error.is_none() {
                self.error = Some(ConstraintError(format!("row {i} was left unread where the grammar allows more than one token")));
            }
            // (after an error the sequence ends: any row will do)
            return self.guide.certain_row(only.unwrap_or(0), target.n_vocab());
        }
        let raw = target.logits(self.row_base + i);
        if self.error.is_some() {
            return raw;
        }
        match self.guide.masked_row(state, raw, &|t| target.is_eog(t)) {
            Ok(masked) => masked,
            Err(e) => {
                self.error = Some(e);
                raw
            }
        }
    }
}

impl<T: Model, D: Drafter> Engine<T, D> {
    /// The first token, from row `row` of the decode that read the prompt's last token (at
    /// `t_read`, which ends the prompt's time): the first round, with nothing drafted and
    /// nothing decoded of its own.
    pub(super) fn first_token(
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
            n_likely: 0,
            ending: None,
            cut: None,
            n_closing: 0,
            unread: Vec::new(),
        };
        self.finish_phase(seq, first, row, shared, t_read, clock)
    }

    /// How many tokens to draft this round.
    pub(super) fn draft_len(&self, seq: &Sequence) -> usize {
        // nothing follows a drafted end ([`Engine::draft_ending`])
        if !self.drafter.is_active() || seq.tokens.last().is_some_and(|&t| seq.forced > 0 && self.target.is_eog(t)) {
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
            seq.target.decode_rows(&mut self.target, &seq.tokens, d.n_rows, &d.unread).map_err(EngineError::Target)?;
        }
        let t_verified = clock.now();
        self.finish_phase(seq, d, 0, None, t_verified, clock)
    }

    /// Before a round is planned: forget the last round's draft distributions and, under a
    /// constraint, draft the tokens the grammar forces and the likely spelling of the text it
    /// forces after them (at most `cap`, within the sequence's budget, context and batch):
    /// they lead the round's draft, whatever the drafter adds. The likely tokens make the
    /// target's own token of the round the one after the forced text — a value's first token
    /// instead of the quote before it. Target-only decoding (no active drafter, or `draft_max`
    /// 0) forces nothing.
    pub(super) fn open_round(&mut self, seq: &mut Sequence, cap: usize) -> Result<(), EngineError> {
        seq.q.clear();
        seq.forced = 0;
        seq.likely = 0;
        seq.ending = None;
        seq.spare = 0;
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
        let (forced, likely) = guide.forced_and_likely_after(&seq.tokens, cap, &|t| target.is_eog(t)).map_err(EngineError::Constraint)?;
        seq.forced = forced.len() + likely.len();
        seq.likely = likely.len();
        seq.tokens.extend(forced.into_iter().chain(likely));
        if seq.forced == 0 {
            // nothing forced: where outputs ended before in such a state, this one may end too
            seq.forced = self.draft_ending(seq, cap).map_err(EngineError::Constraint)?;
            seq.likely = seq.forced;
        }
        seq.spare = cap.saturating_sub(seq.forced);
        if seq.forced > 0 {
            // the grammar writes structure here: whatever value was being copied has ended
            seq.draft.ngram.end_run();
        }
        if seq.config.effective_verify().needs_q() {
            let span = &seq.tokens[n..];
            seq.q.extend(span.iter().map(|&t| Dist::one_hot(t)));
        }
        Ok(())
    }

    /// The first half of a round: stop if finished, choose the draft length (or take `plan`)
    /// and draft.
    pub(super) fn draft_phase(
        &mut self,
        seq: &mut Sequence,
        plan: Option<RoundPlan>,
        clock: &dyn Clock,
    ) -> Result<Option<Drafted>, EngineError> {
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
    pub(super) fn round_start(&mut self, seq: &mut Sequence, plan: Option<RoundPlan>, clock: &dyn Clock) -> Option<RoundStart> {
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
        let (DraftPlan { source, run, first, .. }, k_planned, expected) = match plan {
            Some(RoundPlan { draft, k }) => (draft, k, None),
            None => {
                let limit = self.draft_len(seq);
                let draft = if limit > 0 { self.drafter.plan(&mut seq.draft, &seq.tokens) } else { DraftPlan::NONE };
                let k = seq.controller.plan(draft.source, limit, draft.run).max(draft.sure.min(limit));
                (draft, k, seq.controller.expect(draft.source, draft.run, k))
            }
        };
        // a round that will not draft still learns what an n-gram draft would have given
        let peek = first.filter(|_| k_planned == 0 && source == DraftSource::Ngram && seq.config.adaptive == AdaptiveMode::Auto);
        Some(RoundStart { n_hist, source, k_planned, run, draft_gap: n_hist - seq.draft.n_cached, t_start, expected, peek })
    }

    /// After drafting: drop a draft shorter than `draft_min`, and say which rows the target
    /// decodes.
    pub(super) fn round_drafted(&mut self, seq: &mut Sequence, start: RoundStart, report: DraftReport, t_drafted: Duration) -> Drafted {
        let RoundStart { n_hist, k_planned, run, draft_gap, t_start, expected, peek, .. } = start;
        let n_forced = std::mem::take(&mut seq.forced);
        let n_likely = std::mem::take(&mut seq.likely);
        let ending = seq.ending.take();
        let own = n_hist + n_forced;
        seq.stats.n_draft_steps += report.n_steps;
        // a copy runs on past its value: it ends where a closer belongs (a draft model sampled
        // under the mask already)
        let mut end = None;
        if let Some(guide) = seq.guide.as_mut().filter(|_| seq.tokens.len() > own) {
            let target = &self.target;
            let proposed = seq.tokens.len() - own;
            let texts = self.drafter.texts();
            let breaks = |i: usize| texts.is_some_and(|texts| breaks_clause(texts, &seq.tokens[own..], i));
            let (kept, at) = seq.closers.draft_end(guide, &seq.tokens, own, &breaks, &|t| target.is_eog(t)).unwrap_or((0, None));
            end = at.map(|at| (proposed - kept, at));
            seq.tokens.truncate(own + kept);
            seq.q.truncate(n_forced + kept);
        }
        if seq.tokens.len() > own && seq.tokens.len() - own < seq.config.draft_min.max(1) {
            // too short to be worth a bigger target batch (llama.cpp's --draft-min)
            seq.tokens.truncate(own);
            seq.q.truncate(n_forced);
            end = None;
        }
        let cut = end.map(|(_, at)| (seq.tokens.len() - n_hist, at.key));
        let spare = std::mem::take(&mut seq.spare);
        // the closer learned there, or the token that ended outputs in such a state
        let closing = end.and_then(|(room, at)| Some((room, at.closer.or_else(|| self.endings.ending(at.key.mask))?)));
        let n_closing = match closing {
            Some((room, closer)) => {
                let room = self.closing_room(seq, n_hist, room, spare);
                self.close(seq, room, closer)
            }
            None => 0,
        };
        let n_drafted = seq.tokens.len() - n_hist;
        let unread = self.unread_rows(seq, n_hist, n_drafted + 1);
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
            n_likely,
            ending,
            cut,
            n_closing,
            unread,
        }
    }

    /// Which of a round's `n_rows` target rows nobody needs to read: where the grammar allows
    /// one token after the history and the draft before it (a key's spelling, the text forced
    /// after a closer), the target's masked row can only choose that token, so its logits are
    /// left uncomputed — the output head is a large share of a row's cost — and verification
    /// reads the row certain of that token. A sequence that keeps log-probabilities reads
    /// every row; so does one without a grammar.
    fn unread_rows(&self, seq: &mut Sequence, n_hist: usize, n_rows: usize) -> Vec<bool> {
        let Some(guide) = seq.guide.as_mut().filter(|_| seq.config.logprobs.is_none()) else {
            return Vec::new();
        };
        let target = &self.target;
        // (an error here is verification's to report: the row is read)
        (0..n_rows).map(|i| matches!(guide.only_after(&seq.tokens[..n_hist + i], &|t| target.is_eog(t)), Ok(Some(_)))).collect()
    }

    /// Room for a closing draft: the `room` the cut copy left, or more — the forced span after
    /// a closer is as sure as the closer, so it may take the `spare` the round's forced span
    /// left, within the budget, the batch and the context.
    fn closing_room(&self, seq: &Sequence, n_hist: usize, room: usize, spare: usize) -> usize {
        let limit = (seq.config.max_tokens - seq.stats.n_generated)
            .saturating_sub(1)
            .min(self.target.n_batch().saturating_sub(1))
            .min(self.target.n_ctx().saturating_sub(n_hist + 1));
        room.max((room + spare).min(limit.saturating_sub(seq.tokens.len() - n_hist)))
    }

    /// The second half of a round, after the target decode: verify on rows
    /// `row_base..row_base + d.n_rows` of that decode, keep what is accepted, roll back,
    /// learn. `shared`: the total batch size when the decode carried other sequences too.
    pub(super) fn finish_phase(
        &mut self,
        seq: &mut Sequence,
        d: Drafted,
        row_base: usize,
        shared: Option<usize>,
        t_verified: std::time::Duration,
        clock: &dyn Clock,
    ) -> Result<Range<usize>, EngineError> {
        let n_hist = d.n_hist;
        // a trace keeps the draft, which verification cuts back to what was accepted
        let traced_draft = seq.trace_rounds.then(|| seq.tokens[n_hist..n_hist + d.n_drafted].to_vec());
        let verdict = self.check_draft(seq, n_hist, row_base, &d.unread)?;
        // the copied token the target turned from, if it did (before it is cut away)
        let rejected_copy = (seq.guide.is_some() && d.report.source == DraftSource::Ngram)
            .then(|| seq.tokens.get(n_hist + verdict.n_accepted).copied())
            .flatten();
        self.keep_accepted(seq, n_hist, &verdict, row_base)?;
        // what the target wrote where the copy ended, or where it turned from the copy
        let reached_cut = d.cut.filter(|&(c, _)| verdict.n_accepted >= c);
        let own_end = d.n_drafted - d.n_closing;
        let rejected = rejected_copy.filter(|_| reached_cut.is_none() && verdict.n_accepted >= d.n_forced && verdict.n_accepted < own_end);
        self.learn_closer(seq, n_hist, reached_cut, rejected.map(|t| (verdict.n_accepted, t)));
        if self.drafter.is_active() {
            self.learn_own_closer(seq, n_hist + verdict.n_accepted);
        }
        if let Some(state) = d.ending.filter(|_| verdict.n_accepted < d.n_forced) {
            self.endings.forget(state);
        }
        let end = RoundEnd { verdict, traced_draft, shared, t_verified, t_end: clock.now() };
        record_round(seq, d, end);
        Ok(n_hist..seq.tokens.len())
    }

    /// Verify the round's draft (`seq.tokens[n_hist..]`) on the target's rows from
    /// `row_base`, masked by the sequence's grammar when it has one.
    fn check_draft(&mut self, seq: &mut Sequence, n_hist: usize, row_base: usize, unread: &[bool]) -> Result<Verdict, EngineError> {
        let rule = VerifyRule { mode: seq.config.effective_verify(), seed: seq.config.seed, params: &seq.config.params };
        let target = &self.target;
        let plain_row = |i: usize| target.logits(row_base + i);
        let mut plain = RowFn(&plain_row);
        let mut masked =
            seq.guide.as_mut().map(|guide| MaskedRows { target, row_base, guide, tokens: &seq.tokens, n_hist, unread, error: None });
        let rows: &mut dyn Rows = match masked.as_mut() {
            Some(m) => m,
            None => &mut plain,
        };
        let verdict = verify(&rule, rows, &seq.tokens, &seq.tokens[n_hist..], &seq.q, &mut self.scratch, &mut seq.rng);
        match masked.and_then(|m| m.error) {
            Some(e) => Err(EngineError::Constraint(e)),
            None => Ok(verdict),
        }
    }

    /// Keep the accepted prefix and add the target's token; stop at end-of-generation (a
    /// constrained sequence ends where its grammar lets the target end it) or `max_tokens`;
    /// keep the tokens' log-probabilities; roll both caches back to what they share with the
    /// accepted tokens.
    fn keep_accepted(&mut self, seq: &mut Sequence, n_hist: usize, verdict: &Verdict, row_base: usize) -> Result<(), EngineError> {
        seq.tokens.truncate(n_hist + verdict.n_accepted);
        seq.tokens.push(verdict.next);
        let ends_at_eog = !seq.config.ignore_eos || seq.guide.is_some();
        if let Some(i) = seq.tokens[n_hist..].iter().position(|&t| ends_at_eog && self.target.is_eog(t)) {
            seq.tokens.truncate(n_hist + i + 1);
            seq.finish = Some(FinishReason::Stop);
            if seq.guide.is_some() {
                self.endings.end = seq.tokens.last().copied();
            }
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
        let keep = (n_hist + verdict.n_accepted).min(seq.tokens.len());
        seq.target.keep(&mut self.target, keep).map_err(EngineError::Target)?;
        self.drafter.rollback(&mut seq.draft, keep).map_err(EngineError::Draft)
    }
}

/// How a round ended, for its record.
struct RoundEnd {
    verdict: Verdict,
    traced_draft: Option<Vec<Token>>,
    /// The shared decode's total rows, when it carried other sequences too.
    shared: Option<usize>,
    t_verified: Duration,
    t_end: Duration,
}

/// What a round tells the sequence's statistics, trace and controller. Forced, likely and
/// closing tokens are the grammar's, not a drafter's: the controller learns from the drafter's
/// tokens between them (none when one of the forced span was refused).
fn record_round(seq: &mut Sequence, d: Drafted, end: RoundEnd) {
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
        n_likely,
        ending: _,
        cut,
        n_closing,
        unread,
    } = d;
    let RoundEnd { verdict, traced_draft, shared, t_verified, t_end } = end;
    let n_certain = n_forced - n_likely;
    let n_forced_accepted = verdict.n_accepted.min(n_certain);
    let n_likely_accepted = verdict.n_accepted.saturating_sub(n_certain).min(n_likely);
    let own_drafted = n_drafted - n_forced - n_closing;
    let (own_drafted, own_accepted) =
        if verdict.n_accepted >= n_forced { (own_drafted, (verdict.n_accepted - n_forced).min(own_drafted)) } else { (0, 0) };
    let n_closing_accepted = cut.map_or(0, |(c, _)| verdict.n_accepted.saturating_sub(c).min(n_closing));
    let source = if own_drafted > 0 { report.source } else { DraftSource::None };
    seq.stats.record_round(n_drafted, verdict.n_accepted);
    seq.stats.n_forced += n_certain;
    seq.stats.n_forced_accepted += n_forced_accepted;
    seq.stats.n_likely += n_likely;
    seq.stats.n_likely_accepted += n_likely_accepted;
    seq.stats.n_closing += n_closing;
    seq.stats.n_closing_accepted += n_closing_accepted;
    seq.stats.n_rows_unread += unread.iter().filter(|&&u| u).count();
    seq.stats.n_masks = seq.guide.as_ref().map_or(0, |g| g.n_masks);
    if let Some(drafted) = traced_draft {
        seq.last_round = Some(RoundRecord {
            n_hist,
            source,
            run,
            k_planned,
            n_forced: n_certain,
            n_closing,
            drafted,
            n_accepted: verdict.n_accepted,
            expected,
            t_draft: t_drafted - t_start,
            t_verify: t_verified - t_drafted,
            n_rows: shared.unwrap_or(n_rows),
        });
    }
    seq.stats.record_source(source, k_planned);
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
}
