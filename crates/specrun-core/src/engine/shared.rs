//! One round for several sequences: their draft lengths planned together, one target decode
//! for all of them (prompt chunks included), each verified on its own rows.

use super::*;

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

impl<T: Model, D: Drafter> Engine<T, D> {
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
}
