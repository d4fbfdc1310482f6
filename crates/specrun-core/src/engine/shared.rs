//! One round for several sequences: their draft lengths planned together, one target decode
//! for all of them (prompt chunks included), each verified on its own rows.

use super::*;
use crate::control::EXPLORE_LEN;

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

/// What the run decides for a shared round and learns from it: the seam between one round
/// ([`Engine::step_many`]) and the policy of the run it belongs to (costs, the draft guard,
/// the draft yield, the prompt pacing, the outlook on the work left).
pub trait RoundPolicy {
    /// What a target decode costs by its shape: the plans' prices.
    fn costs(&self) -> &VerifyCosts;
    /// Whether `auto` sequences may draft in a round where `generating` sequences decode.
    fn allows_drafts(&self, generating: usize) -> bool;
    /// The share of their expected gains the run's drafts have realised (scales plans, ≤ 1).
    fn yield_factor(&self) -> f64;
    /// Prompt tokens that may ride in a round beside `generating` decoding sequences, in a
    /// decode of at most `n_batch` rows.
    fn prompt_budget(&self, generating: usize, n_batch: usize) -> usize;
    /// Whether the round's planned drafts go ahead (each sequence's [`PlannedPace`], in
    /// order); false holds them all this round.
    fn drafts_pay(&mut self, planned: &[PlannedPace]) -> bool;
    /// What the round did.
    fn observe(&mut self, round: &RoundReport);
}

/// A target decode that read no prompt tokens: what the run learns decode costs from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeShape {
    pub rows: usize,
    pub seqs: usize,
    pub secs: f64,
}

/// What one shared round did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundReport {
    /// Each sequence's added range of its tokens, in the order given (empty for one whose
    /// prompt is not read to the end, or finished).
    pub ranges: Vec<Range<usize>>,
    /// Sequences that decoded tokens of their own (not reading a prompt).
    pub generating: usize,
    /// Target rows of those sequences (last tokens, forced tokens, drafts).
    pub n_decoded: usize,
    /// Prompt tokens read in the same decode.
    pub n_prefilled: usize,
    /// Tokens drafted, over all sequences.
    pub n_drafted: usize,
    /// Tokens added, over all sequences.
    pub n_emitted: usize,
    /// The decode's shape and time, when it read no prompt tokens.
    pub decode: Option<DecodeShape>,
    /// What the plans expected of the round, when every generating sequence was planned with
    /// known costs and no prompt was read.
    pub expected: Option<Expectation>,
    /// The policy held the planned drafts ([`RoundPolicy::drafts_pay`]).
    pub held: bool,
    /// The whole round, drafting and verification included.
    pub secs: f64,
}

/// A shared round's plans: per sequence (`None`: its own controller plans), what they expect
/// together, and whether the policy held them.
struct SharedPlan {
    plans: Vec<Option<RoundPlan>>,
    expected: Option<Expectation>,
    held: bool,
}

/// The one target decode of a shared round.
struct SharedDecode {
    /// Each sequence's first row in the decode's logits.
    row_bases: Vec<usize>,
    n_tokens: usize,
    n_prompt_tokens: usize,
    n_seqs: usize,
    secs: f64,
    t_verified: Duration,
}

impl<T: Model, D: Drafter> Engine<T, D> {
    /// One round for several sequences (distinct ids) with **one** target decode carrying
    /// every active sequence's last token and draft. With `auto` draft lengths, the lengths
    /// are chosen together ([`allocate_drafts`]) for the most expected tokens per second of
    /// the shared decode, along the policy's costs, with each draft's expected gain scaled by
    /// the share the run's drafts have realised ([`RoundPolicy::yield_factor`]); before any
    /// shared decode was measured, several sequences decode plainly (that round measures it).
    /// The policy may forbid drafting this round ([`RoundPolicy::allows_drafts`]) or hold the
    /// planned drafts ([`RoundPolicy::drafts_pay`]).
    ///
    /// Sequences still [`Sequence::reading_prompt`] draft nothing: up to the policy's prompt
    /// budget of their prompt tokens (within what `n_batch` leaves after the others' rows,
    /// shared evenly among them) ride in the same decode, and one whose last prompt token is
    /// read takes its first token from that row. A round that carries prompt tokens reports
    /// no decode shape and no expectation: its time is mostly the prompt's.
    ///
    /// The policy observes the [`RoundReport`] before it is returned.
    pub fn step_many(
        &mut self,
        seqs: &mut [&mut Sequence],
        policy: &mut dyn RoundPolicy,
        clock: &dyn Clock,
    ) -> Result<RoundReport, EngineError> {
        let t_round = clock.now();
        let drafted_before: usize = seqs.iter().map(|s| s.stats.n_drafted).sum();
        let generating = seqs.iter().filter(|s| s.finish.is_none() && !s.reading_prompt()).count();
        self.open_rounds(seqs)?;
        let prompt_budget = policy.prompt_budget(generating, self.target.n_batch());
        let plan = self.plan_shared(seqs, policy, generating, prompt_budget);
        let drafted = self.draft_shared(seqs, &plan.plans, clock)?;
        let n_batch = self.target.n_batch();
        let drafted_rows: usize = drafted.iter().flatten().map(|d| d.n_rows).sum();
        let takes = prompt_takes(seqs, prompt_budget.min(n_batch.saturating_sub(drafted_rows)));
        let decode = self.decode_shared(seqs, &drafted, &takes, clock)?;
        let ranges = self.verify_shared(seqs, drafted, &takes, &decode, clock)?;
        let n_emitted = ranges.iter().map(|r| r.len()).sum();
        let prompt_read = decode.n_prompt_tokens > 0;
        let report = RoundReport {
            ranges,
            generating,
            n_decoded: decode.n_tokens - decode.n_prompt_tokens,
            n_prefilled: decode.n_prompt_tokens,
            n_drafted: seqs.iter().map(|s| s.stats.n_drafted).sum::<usize>() - drafted_before,
            n_emitted,
            decode: (decode.n_tokens > 0 && !prompt_read).then_some(DecodeShape {
                rows: decode.n_tokens,
                seqs: decode.n_seqs,
                secs: decode.secs,
            }),
            expected: plan.expected.filter(|_| !prompt_read),
            held: plan.held,
            secs: (clock.now() - t_round).as_secs_f64(),
        };
        policy.observe(&report);
        Ok(report)
    }

    /// Open every sequence's round: forced tokens first, each sequence's within its share of
    /// `n_batch` beside the others' largest drafts. What its forced tokens leave of the share
    /// is its closing drafts' spare: a sequence's rows (its last token, forced tokens, draft
    /// and closing draft) stay within `n_batch / decoding`, so the decode within `n_batch`.
    fn open_rounds(&mut self, seqs: &mut [&mut Sequence]) -> Result<(), EngineError> {
        let decoding = seqs.iter().filter(|s| s.finish.is_none() && !s.reading_prompt()).count().max(1);
        let draft_max = seqs.iter().map(|s| s.config.draft_max).max().unwrap_or(0);
        let share = (self.target.n_batch() / decoding).saturating_sub(1 + draft_max).min(FORCED_MAX);
        for seq in seqs.iter_mut() {
            let opened = self.open_round(seq, share);
            own_failure(seq, opened)?;
        }
        Ok(())
    }

    /// Plan the round: each `auto` sequence's source, cap and acceptance, then the lengths
    /// together (the prompts being read come before drafts: a draft is optional, a prompt is
    /// not), and what the plans expect of the round as a whole.
    fn plan_shared(
        &mut self,
        seqs: &mut [&mut Sequence],
        policy: &mut dyn RoundPolicy,
        generating: usize,
        prompt_budget: usize,
    ) -> SharedPlan {
        let n_forced_all: usize = seqs.iter().map(|s| s.forced).sum();
        let mut plans: Vec<Option<RoundPlan>> = vec![None; seqs.len()];
        let allow_drafts = policy.allows_drafts(generating);
        let mut asks: Vec<DraftAsk> = Vec::new();
        // for each ask: the sequence and its draft plan
        let mut askers: Vec<(usize, DraftPlan)> = Vec::new();
        for (i, seq) in seqs.iter_mut().enumerate() {
            if seq.finish.is_some() || seq.reading_prompt() || seq.config.adaptive != AdaptiveMode::Auto {
                continue;
            }
            if !allow_drafts {
                plans[i] = Some(RoundPlan { draft: DraftPlan::NONE, k: 0 });
                continue;
            }
            let (ask, draft) = self.ask(seq);
            asks.push(ask);
            askers.push((i, draft));
        }
        let n_batch = self.target.n_batch();
        let reserved = prompt_budget.min(n_batch.saturating_sub(generating)).min(seqs.iter().map(|s| s.prompt_left()).sum());
        let budget = (n_batch - reserved).saturating_sub(n_forced_all);
        // the gains as the run's drafts have realised them (the plan check keeps the raw ones)
        let yield_factor = policy.yield_factor();
        let mut ks = allocate_drafts(&asks, policy.costs(), budget, yield_factor);
        let mut held = false;
        // what each plan gives its sequence this round; the run may hold every draft (each
        // keeps its source: an n-gram one still peeks)
        if let Some(ks) = ks.as_mut() {
            let mut planned: Vec<PlannedPace> = seqs.iter().map(|s| PlannedPace::plain(s)).collect();
            for (&k, (&(i, _), ask)) in ks.iter().zip(askers.iter().zip(&asks)) {
                let pace = Pace {
                    tokens: 1.0 + yield_factor * ask.reach[..k].iter().sum::<f64>(),
                    rows: 1.0 + k as f64,
                    draft_secs: ask.draft_cost * k as f64,
                };
                seqs[i].pace_mean.add(pace);
                planned[i] = PlannedPace { pace, mean: seqs[i].pace_mean.mean(), ..planned[i] };
            }
            if ks.iter().any(|&k| k > 0) && !policy.drafts_pay(&planned) {
                ks.iter_mut().for_each(|k| *k = 0);
                held = true;
            }
        }
        for (j, (&(i, draft), ask)) in askers.iter().zip(&asks).enumerate() {
            // costs unknown yet: one sequence drafts what its own controller would explore
            // with; several decode plainly, once, and the round measures what their decode
            // costs (every one of many sequences drafting blind made a decode of several
            // plain ones)
            let blind = if asks.len() > 1 { 0 } else { ask.cap.min(EXPLORE_LEN).max(ask.min) };
            let k = ks.as_ref().map_or(blind, |ks| ks[j]);
            plans[i] = Some(RoundPlan { draft, k });
        }
        // what the plans expect of the round as a whole, when every active sequence was
        // planned here (a plain round of `auto` sequences included) and its costs are known
        let lengths = match &ks {
            Some(ks) => Some(ks.as_slice()),
            None if askers.is_empty() => Some(&[][..]),
            None => None,
        };
        let expected = lengths.filter(|_| generating > 0 && plans.iter().flatten().count() == generating).and_then(|ks| {
            let (mut rows, mut tokens, mut drafting) = (generating + n_forced_all, (generating + n_forced_all) as f64, 0.0);
            for (a, &k) in asks.iter().zip(ks) {
                rows += k;
                tokens += a.reach[..k].iter().sum::<f64>();
                drafting += a.draft_cost * k as f64;
            }
            Some(Expectation { tokens, secs: policy.costs().estimate_shared(rows, generating)? + drafting })
        });
        SharedPlan { plans, expected, held }
    }

    /// One `auto` sequence's say in the shared plan: its draft plan, cap, the reach of each
    /// drafted token, forced exploration, and a draft step's cost.
    fn ask(&mut self, seq: &mut Sequence) -> (DraftAsk, DraftPlan) {
        let limit = self.draft_len(seq);
        let draft = if limit > 0 { self.drafter.plan(&mut seq.draft, &seq.tokens) } else { DraftPlan::NONE };
        let DraftPlan { source, run, sure, .. } = draft;
        let cap = if source == DraftSource::None { 0 } else { seq.config.draft_max.min(limit) };
        let reach = seq.controller.reach(source, run, cap);
        let forced = if cap > 0 { seq.controller.forced_len(source, cap) } else { None };
        let draft_cost = match source {
            DraftSource::Model => seq.controller.model_step_cost().unwrap_or(0.0),
            _ => 0.0,
        };
        (DraftAsk { reach, cap, min: forced.unwrap_or(0).max(sure.min(cap)), draft_cost }, draft)
    }

    /// Draft for all (a draft model: one decode per draft step for every sequence that
    /// drafts from it); a shared draft's time is shared by its steps.
    fn draft_shared(
        &mut self,
        seqs: &mut [&mut Sequence],
        plans: &[Option<RoundPlan>],
        clock: &dyn Clock,
    ) -> Result<Vec<Option<Drafted>>, EngineError> {
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
        Ok(drafted)
    }

    /// The one decode: each sequence's rows (its last token and draft, or a prompt chunk of
    /// `takes[i]` tokens), in slot order.
    fn decode_shared(
        &mut self,
        seqs: &mut [&mut Sequence],
        drafted: &[Option<Drafted>],
        takes: &[usize],
        clock: &dyn Clock,
    ) -> Result<SharedDecode, EngineError> {
        let mut parts = Vec::new();
        let mut owners = Vec::new();
        let mut row_bases: Vec<usize> = vec![0; seqs.len()];
        let mut n_rows_all = 0;
        for (i, d) in drafted.iter().enumerate() {
            let seq = &seqs[i];
            let part = match d {
                Some(d) if d.n_rows > 0 => seq.target.part(&seq.tokens, d.n_rows).unread(&d.unread),
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
        let t0 = clock.now();
        if !parts.is_empty() {
            self.target.decode_parts(&parts).map_err(EngineError::Target)?;
        }
        drop(parts);
        let t_verified = clock.now();
        for (&i, &len) in owners.iter().zip(&lens) {
            seqs[i].target.part_decoded(len);
        }
        Ok(SharedDecode {
            row_bases,
            n_tokens: lens.iter().sum(),
            n_prompt_tokens: takes.iter().sum(),
            n_seqs: owners.len(),
            secs: (t_verified - t0).as_secs_f64(),
            t_verified,
        })
    }

    /// Verify each sequence on its own rows; a prompt read to its end gives the first token.
    fn verify_shared(
        &mut self,
        seqs: &mut [&mut Sequence],
        drafted: Vec<Option<Drafted>>,
        takes: &[usize],
        decode: &SharedDecode,
        clock: &dyn Clock,
    ) -> Result<Vec<Range<usize>>, EngineError> {
        let mut ranges = Vec::with_capacity(seqs.len());
        let (rows, t) = (Some(decode.n_tokens), decode.t_verified);
        for (i, d) in drafted.into_iter().enumerate() {
            let seq = &mut *seqs[i];
            let verified = match d {
                None if takes[i] > 0 && seq.target.n_cached == seq.n_prompt => self.first_token(seq, decode.row_bases[i], rows, t, clock),
                None => Ok(seq.tokens.len()..seq.tokens.len()),
                Some(d) => self.finish_phase(seq, d, decode.row_bases[i], rows, t, clock),
            };
            ranges.push(own_failure(seq, verified)?.unwrap_or(seq.tokens.len()..seq.tokens.len()));
        }
        Ok(ranges)
    }
}

/// A constraint's failure ends its own sequence, not the shared round: the sequence is
/// finished with the error in [`Sequence::failed`] (its cells are freed when it is released)
/// and the others go on. Other errors (the model's) stay the round's.
fn own_failure<T>(seq: &mut Sequence, result: Result<T, EngineError>) -> Result<Option<T>, EngineError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(EngineError::Constraint(e)) => {
            seq.failed = Some(e);
            seq.finish = Some(FinishReason::Length);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The prompts' share of a round: `room` rows shared evenly among the sequences reading a
/// prompt (one that needs less than its share leaves the rest to the longer ones), so a
/// short prompt gets its first token soon and a long one is never starved.
fn prompt_takes(seqs: &[&mut Sequence], mut room: usize) -> Vec<usize> {
    let mut takes: Vec<usize> = vec![0; seqs.len()];
    let mut reading: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].prompt_left() > 0).collect();
    reading.sort_by_key(|&i| seqs[i].prompt_left());
    for (n, &i) in reading.iter().enumerate() {
        let share = room.div_ceil(reading.len() - n);
        takes[i] = seqs[i].prompt_left().min(share);
        room -= takes[i];
    }
    takes
}
