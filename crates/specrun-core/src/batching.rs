//! Continuous batching: several sequences in flight on one engine, one target decode per
//! round for all of them ([`Engine::step_many`]), a finished sequence's slot refilled at once.
//!
//! Slots are sequence ids `0..n_parallel`. Where a new job's prompt is read is a choice
//! ([`Prefill`]):
//! - **between rounds** ([`Prefill::Between`]): the prompt is decoded on its own (in `n_batch`
//!   chunks) before the job joins the shared rounds, and its first token comes from that
//!   batch's last row ([`Engine::start`]), handed to `on_tokens` at once. The sequences in
//!   flight wait for the whole prompt; the first token's logits have the prompt batch's shape
//!   (as llama.cpp's tools sample it). For batch runs, where no one watches a stream.
//! - **inside the rounds** ([`Prefill::Inside`], [`Prefill::Paced`]): the job is admitted
//!   ([`Engine::admit`]) and its prompt rides in the shared rounds' decodes, a chunk a round,
//!   beside the running sequences' tokens and drafts ([`Engine::step_many`]; prompts read in
//!   the same round share it evenly); the round that reads its last token gives its first
//!   token.
//!   A long prompt no longer stops the running streams: they go on getting tokens every round
//!   while it is read (as llama.cpp's server mixes prompts into its running batch). For the
//!   server (the draft model, if any, still reads a new prompt when the job is admitted).
//!   The chunk is a number of tokens, or paced: as many as the measured cost of
//!   earlier prompt rounds says fit a round of a given time ([`PromptPacer`]), so it follows
//!   the machine (tens of tokens on a small CPU, whole prompts on a GPU) and a long prompt's
//!   growing attention cost. When nothing else is generating, the budget is `n_batch` (no
//!   one waits).
//!
//! When a sequence finishes, its cells are removed from both caches before the slot is
//! reused, and what its controller learned about each drafter joins a pool that later
//! sequences start from ([`SharedPrior`]): they skip exploring a drafter the run already
//! knows (draft lengths only; greedy output does not depend on them beyond batch-shape
//! near-ties). Each sequence keeps its own settings, RNG and acceptance estimates, so a job's
//! output does not depend on which jobs share its rounds (greedy: up to batch-shape near-ties;
//! sampling: its own seed decides). A run-level [`DraftGuard`] sets the drafted rounds
//! against plain rounds of as many sequences, by measured time and emitted tokens, and pauses
//! `auto` drafting in rounds of that many sequences when it loses (plans rest on estimates;
//! this rests on what the rounds took); and the engine scales the shared drafts' expected
//! gains by the share of them the run's drafts have realised
//! ([`crate::control::DraftYield`]). A fixed list of jobs says what is queued
//! ([`JobSource::upcoming`]), and each planned round's drafts go ahead only where playing the
//! work left to the end says drafting ends it sooner than plain decoding ([`Outlook`]): near
//! a run's end, its slowest chain of jobs on one slot sets its length, not a round's rate.

use crate::control::{DraftGuard, SharedPrior, VerifyCosts};
use crate::draft::Drafter;
use crate::engine::{Engine, EngineError, GenConfig, KeptCells, PlannedPace, Sequence};
use crate::model::{Model, Token};
use crate::outlook::{Outlook, Pace};
use crate::prefix_cache::{PrefixCache, PrefixCacheStats};
use crate::stats::{Clock, FinishReason, PlanCheck};
use std::collections::VecDeque;
use std::ops::Range;
use std::time::Duration;

/// Where the prompts of new jobs are read (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prefill {
    /// Alone, between rounds: the sequences in flight wait.
    Between,
    /// Inside the shared rounds, at most `chunk` prompt tokens a round (all prompts together).
    Inside { chunk: usize },
    /// Inside the shared rounds, as many prompt tokens as fit a round of about `round_secs`
    /// by the measured cost of earlier prompt rounds ([`PromptPacer`]).
    Paced { round_secs: f64 },
}

/// Sizes the prompt chunks of [`Prefill::Paced`] rounds from what rounds that read prompts
/// took: seconds per row (the chunk's tokens and the running sequences' rows alike), the
/// latest rounds weighing most, so that the chunk follows the machine and the attention cost
/// that grows as a long prompt is read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PromptPacer {
    secs_per_row: Option<f64>,
}

impl PromptPacer {
    /// The chunk before any prompt round was measured.
    pub const FIRST_CHUNK: usize = 32;

    /// Prompt tokens for a round of about `round_secs` that also carries `other_rows`.
    pub fn chunk(&self, round_secs: f64, other_rows: usize) -> usize {
        match self.secs_per_row {
            None => Self::FIRST_CHUNK,
            Some(c) => ((round_secs / c).min(1e9) as usize).saturating_sub(other_rows).max(1),
        }
    }

    /// A round that read prompt tokens decoded `rows` rows in all and took `secs`.
    pub fn observe(&mut self, rows: usize, secs: f64) {
        if rows == 0 || !secs.is_finite() || secs <= 0.0 {
            return;
        }
        let c = secs / rows as f64;
        self.secs_per_row = Some(self.secs_per_row.map_or(c, |old| 0.5 * old + 0.5 * c));
    }
}

/// How many jobs are in flight at once, where their prompts are read, and whether a slot
/// keeps its last sequence's cells for the next prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slots {
    pub n_parallel: usize,
    pub prefill: Prefill,
    /// A sequence that finished on its own leaves its cells in its slot ([`KeptCells`]); a new
    /// job goes to the free slot whose kept tokens share the longest prefix with its prompt
    /// and reads only the rest. A sequence the caller ended (`on_tokens` said stop: a client
    /// gone, a stop string) leaves its prompt's cells only; one cancelled or failed leaves
    /// nothing. Off: every slot starts empty.
    pub prompt_cache: bool,
    /// Host memory for finished sequences' cells ([`PrefixCache`]), in bytes (0: none): a
    /// prompt restores the longest cached prefix into whichever slot it gets.
    pub prefix_cache_bytes: usize,
}

impl From<usize> for Slots {
    /// `n_parallel` slots, prompts read between rounds, no prompt cache.
    fn from(n_parallel: usize) -> Self {
        Self { n_parallel, prefill: Prefill::Between, prompt_cache: false, prefix_cache_bytes: 0 }
    }
}

/// One job to run.
#[derive(Debug, Clone)]
pub struct BatchJob<J> {
    pub tag: J,
    pub config: GenConfig,
    pub prompt: Vec<Token>,
}

/// How a run of [`run_continuous`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// Every job finished.
    Done,
    /// `cancel` said stop: the jobs in flight were dropped unfinished.
    Cancelled,
}

/// Per-run counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchStats {
    /// Shared rounds (target decodes after prefill).
    pub n_rounds: usize,
    /// Sum over rounds of the sequences in flight (mean = this / `n_rounds`).
    pub active_sum: usize,
    /// Tokens the shared rounds decoded in the target (each active sequence's last token and
    /// draft; mean tokens per target decode = this / `n_rounds`).
    pub n_decoded: usize,
    /// Tokens the shared rounds added to the sequences.
    pub n_generated: usize,
    /// Time spent reading prompts between rounds, and in the shared rounds (with the prompt
    /// chunks read inside them, [`Prefill::Inside`]).
    pub t_prefill: Duration,
    pub t_decode: Duration,
    /// Prompt tokens not read because a slot's kept cells held them ([`Slots::prompt_cache`])
    /// or the prefix cache restored them ([`Slots::prefix_cache_bytes`]).
    pub n_prompt_cached: usize,
    /// Of those, the ones the prefix cache restored; its counters at the run's end.
    pub n_prompt_restored: usize,
    pub prefix_cache: PrefixCacheStats,
    /// Host memory the prefix cache holds.
    pub prefix_cache_bytes: usize,
    /// Prompt tokens read inside shared rounds, and the rounds that carried some.
    pub n_prompt_in_rounds: usize,
    pub n_prompt_rounds: usize,
    /// Rounds in which `auto` drafting was paused because drafted rounds measured slower than
    /// plain ones ([`DraftGuard`]), and how many times it was paused.
    pub n_paused_rounds: usize,
    pub n_pauses: usize,
    /// Shared rounds in the run's tail: no job was left to take a slot that freed
    /// ([`JobSource::exhausted`]).
    pub n_tail_rounds: usize,
    /// Rounds whose planned drafts were held because the run's [`Outlook`] played the work
    /// left to end sooner plainly.
    pub n_held_rounds: usize,
    /// The shared rounds' plans against what the rounds did ([`Engine::shared_plan`]).
    pub plan_check: PlanCheck,
}

impl BatchStats {
    /// Mean sequences in flight per shared round.
    pub fn mean_active(&self) -> f64 {
        if self.n_rounds == 0 {
            0.0
        } else {
            self.active_sum as f64 / self.n_rounds as f64
        }
    }
    /// Mean tokens per shared target decode.
    pub fn tokens_per_decode(&self) -> f64 {
        if self.n_rounds == 0 {
            0.0
        } else {
            self.n_decoded as f64 / self.n_rounds as f64
        }
    }
    /// Generated tokens per second of shared rounds (prompts read between rounds excluded).
    pub fn decode_tok_per_s(&self) -> f64 {
        let t = self.t_decode.as_secs_f64();
        if t > 0.0 {
            self.n_generated as f64 / t
        } else {
            0.0
        }
    }
}

/// What a [`JobSource`] has for a free slot.
pub enum NextJob<J> {
    Job(BatchJob<J>),
    /// Nothing now; ask again after the next round.
    Later,
    /// Nothing now or ever: the run ends when the jobs in flight finish.
    Closed,
}

/// Where jobs come from: a fixed list (any iterator, through [`run_continuous`]) or a queue
/// that grows while the run goes on (a server).
pub trait JobSource<J> {
    /// The next job for a free slot. `idle` is true when nothing is in flight: a source may
    /// then wait for a job (it must return eventually, `Later` included, so that `cancel` is
    /// seen).
    fn next_job(&mut self, idle: bool) -> NextJob<J>;

    /// True once no job will ever come (a fixed list that has handed out its last): the run's
    /// tail, where slots that free stay empty and the rounds thin out
    /// ([`BatchStats::n_tail_rounds`]). A queue that may still grow never says so.
    fn exhausted(&mut self) -> bool {
        false
    }

    /// Told after every shared round, with the run's counters so far (a server shows them
    /// while the run goes on; a fixed list has no use for them).
    fn after_round(&mut self, _stats: &BatchStats) {}

    /// The settings of the next jobs, up to `n`, in the order they will be handed out — all
    /// of them when fewer are left; `None` when the source cannot say (a queue that may
    /// grow). The run's [`Outlook`] plays the work left with them.
    fn upcoming(&mut self, _n: usize) -> Option<Vec<GenConfig>> {
        None
    }
}

struct IterJobs<I: Iterator> {
    iter: I,
    /// Jobs taken from `iter` to be looked at, handed out first.
    ahead: VecDeque<I::Item>,
}

impl<J, I: Iterator<Item = BatchJob<J>>> JobSource<J> for IterJobs<I> {
    fn next_job(&mut self, _idle: bool) -> NextJob<J> {
        self.ahead.pop_front().or_else(|| self.iter.next()).map_or(NextJob::Closed, NextJob::Job)
    }
    fn exhausted(&mut self) -> bool {
        if self.ahead.is_empty() {
            self.ahead.extend(self.iter.next());
        }
        self.ahead.is_empty()
    }
    fn upcoming(&mut self, n: usize) -> Option<Vec<GenConfig>> {
        while self.ahead.len() < n {
            let Some(job) = self.iter.next() else { break };
            self.ahead.push_back(job);
        }
        Some(self.ahead.iter().take(n).map(|j| j.config.clone()).collect())
    }
}

/// Run `jobs` (a fixed list) with up to `slots.n_parallel` in flight (a number: prompts read
/// between rounds). `on_tokens(tag, seq, added)` sees each
/// round's new tokens and may end the sequence (return `true`: stop, e.g. at a stop string);
/// `on_done(tag, result)` gets every job once, finished or failed (a job that fails alone —
/// its prompt does not fit — does not stop the others). `Err` only when a shared decode fails.
#[allow(clippy::too_many_arguments)]
pub fn run_continuous<T: Model, D: Drafter, J>(
    engine: &mut Engine<T, D>,
    jobs: impl IntoIterator<Item = BatchJob<J>>,
    slots: impl Into<Slots>,
    costs: &mut VerifyCosts,
    clock: &dyn Clock,
    cancel: &dyn Fn() -> bool,
    on_tokens: impl FnMut(&J, &Sequence, Range<usize>) -> bool,
    on_done: impl FnMut(J, Result<Sequence, EngineError>),
    stats: &mut BatchStats,
) -> Result<BatchEnd, EngineError> {
    let mut jobs = IterJobs { iter: jobs.into_iter(), ahead: VecDeque::new() };
    run_continuous_from(engine, &mut jobs, slots, costs, clock, cancel, on_tokens, on_done, stats)
}

/// [`run_continuous`] over a [`JobSource`]: the run ends when the source is closed and every
/// job in flight has finished (or when `cancel` says stop). A source that returns `Later`
/// while nothing is in flight is asked again (it should wait, see [`JobSource::next_job`]).
#[allow(clippy::too_many_arguments)]
pub fn run_continuous_from<T: Model, D: Drafter, J>(
    engine: &mut Engine<T, D>,
    jobs: &mut dyn JobSource<J>,
    slots: impl Into<Slots>,
    costs: &mut VerifyCosts,
    clock: &dyn Clock,
    cancel: &dyn Fn() -> bool,
    mut on_tokens: impl FnMut(&J, &Sequence, Range<usize>) -> bool,
    mut on_done: impl FnMut(J, Result<Sequence, EngineError>),
    stats: &mut BatchStats,
) -> Result<BatchEnd, EngineError> {
    let Slots { n_parallel, prefill, prompt_cache, prefix_cache_bytes } = slots.into();
    let mut store = PrefixCache::new(prefix_cache_bytes);
    let n_parallel = n_parallel.max(1);
    let mut slots: Vec<Option<(J, Sequence)>> = (0..n_parallel).map(|_| None).collect();
    // what each free slot's caches still hold (with `prompt_cache`)
    let mut kept: Vec<KeptCells> = vec![KeptCells::default(); n_parallel];
    // the sequences in flight that `on_tokens` ended (they leave no cells)
    let mut ended_by_caller = vec![false; n_parallel];
    let mut closed = false;
    // what finished sequences learned about each drafter; new ones start from it
    let mut prior = SharedPrior::default();
    // whether drafting measured to pay in this run's rounds
    let mut guard = DraftGuard::default();
    let mut pacer = PromptPacer::default();
    // what the finished sequences' drafting gave per round, and how much of its token budget
    // a job that may end on its own used: the run's outlook plays queued jobs like them
    let mut finished_paces: Vec<Pace> = Vec::new();
    let mut used = LengthShare::default();
    loop {
        if cancel() {
            for (_, seq) in slots.iter_mut().flatten() {
                free(engine, seq);
            }
            return Ok(BatchEnd::Cancelled);
        }
        // fill free slots (reading prompts now, or admitting them to the rounds)
        while !closed && slots.iter().any(Option::is_none) {
            let idle = slots.iter().all(Option::is_none);
            let job = match jobs.next_job(idle) {
                NextJob::Job(job) => job,
                NextJob::Later => break,
                NextJob::Closed => {
                    closed = true;
                    break;
                }
            };
            let id = pick_slot(&slots, &kept, &job.prompt);
            engine.config = job.config;
            let t_start = clock.now();
            let head = &job.prompt[..job.prompt.len().saturating_sub(1)];
            let in_slot = std::mem::take(&mut kept[id]);
            let from_slot = in_slot.reusable(head).0;
            let cells = store.restore(engine, id as i32, head, in_slot);
            let restored = cells.reusable(head).0 > from_slot;
            let cells = (!cells.is_empty()).then_some(&cells);
            let started = match prefill {
                Prefill::Between => engine.start_after(id as i32, job.prompt, cells, clock),
                Prefill::Inside { .. } | Prefill::Paced { .. } => engine.admit_after(id as i32, job.prompt, cells, clock),
            };
            stats.t_prefill += clock.now() - t_start;
            match started {
                Ok(mut seq) => {
                    stats.n_prompt_cached += seq.stats.n_prompt_cached;
                    if restored {
                        seq.stats.n_prompt_restored = seq.stats.n_prompt_cached;
                        stats.n_prompt_restored += seq.stats.n_prompt_cached;
                    }
                    // its first token, taken from the prompt batch
                    let added = seq.n_prompt..seq.tokens.len();
                    stats.n_generated += added.len();
                    let mut by_caller = false;
                    if !added.is_empty() && on_tokens(&job.tag, &seq, added) && seq.finish.is_none() {
                        seq.finish = Some(FinishReason::Stop);
                        by_caller = true;
                    }
                    if seq.finish.is_some() {
                        kept[id] = release(engine, &mut seq, prompt_cache, by_caller, &mut store);
                        engine.drafter.learn(seq.generated());
                        on_done(job.tag, Ok(seq));
                    } else {
                        seq.controller.seed(&prior);
                        ended_by_caller[id] = false;
                        slots[id] = Some((job.tag, seq));
                    }
                }
                // what the slot kept is forgotten (the next start there clears its caches)
                Err(e) => on_done(job.tag, Err(e)),
            }
        }
        (stats.prefix_cache, stats.prefix_cache_bytes) = (store.stats, store.bytes());
        let active: Vec<usize> = (0..n_parallel).filter(|&i| slots[i].is_some()).collect();
        if active.is_empty() {
            if closed {
                return Ok(BatchEnd::Done);
            }
            continue;
        }
        stats.n_rounds += 1;
        stats.active_sum += active.len();
        let t_round = clock.now();
        // the sequences that decode tokens of their own this round (not reading a prompt)
        let generating = slots.iter().flatten().filter(|(_, s)| !s.reading_prompt()).count();
        let (decoded_before, prefilled_before) = (engine.n_decoded, engine.n_prefilled);
        let prompt_budget = match prefill {
            Prefill::Between => 0,
            // nothing generating: nothing waits for the prompt
            _ if generating == 0 => engine.target.n_batch(),
            Prefill::Inside { chunk } => chunk.max(1),
            Prefill::Paced { round_secs } => pacer.chunk(round_secs, generating),
        };
        let drafted_before: usize = slots.iter().flatten().map(|(_, s)| s.stats.n_drafted).sum();
        stats.n_tail_rounds += usize::from(closed || jobs.exhausted());
        let queued = jobs.upcoming(LOOKAHEAD_PER_SLOT * n_parallel);
        let mut held = false;
        let ranges = {
            let mut seqs: Vec<&mut Sequence> = slots.iter_mut().flatten().map(|(_, s)| s).collect();
            let mut check = |planned: &[PlannedPace], costs: &VerifyCosts| {
                let pays = drafts_pay(n_parallel, planned, queued.as_deref(), &finished_paces, used, costs);
                held = !pays;
                pays
            };
            engine.step_many(&mut seqs, costs, guard.allows(generating), &mut check, prompt_budget, clock)?
        };
        stats.n_held_rounds += usize::from(held);
        let secs = clock.now() - t_round;
        stats.plan_check.merge(&std::mem::take(&mut engine.shared_plan));
        stats.n_decoded += engine.n_decoded - decoded_before;
        stats.t_decode += secs;
        let prefilled = engine.n_prefilled - prefilled_before;
        stats.n_prompt_in_rounds += prefilled;
        stats.n_prompt_rounds += usize::from(prefilled > 0);
        if prefilled > 0 {
            pacer.observe(prefilled + engine.n_decoded - decoded_before, secs.as_secs_f64());
        }
        let drafted = slots.iter().flatten().map(|(_, s)| s.stats.n_drafted).sum::<usize>() - drafted_before;
        let emitted = ranges.iter().map(|r| r.len()).sum();
        // a round that read prompts says nothing of what drafting costs
        if prefilled == 0 {
            guard.observe(generating, drafted, emitted, secs.as_secs_f64(), costs.estimate_shared(generating, generating));
        }
        (stats.n_paused_rounds, stats.n_pauses) = (guard.n_paused_rounds, guard.n_pauses);
        let in_flight = slots.iter_mut().enumerate().filter_map(|(id, s)| s.as_mut().map(|s| (id, s)));
        for ((id, (tag, seq)), range) in in_flight.zip(ranges) {
            stats.n_generated += range.len();
            if on_tokens(tag, seq, range) && seq.finish.is_none() {
                seq.finish = Some(FinishReason::Stop);
                ended_by_caller[id] = true;
            }
        }
        jobs.after_round(stats);
        for (id, slot) in slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|(_, s)| s.finish.is_some()) {
                let (tag, mut seq) = slot.take().expect("checked");
                prior.add(&seq.controller);
                finished_paces.extend(seq.pace_mean.mean());
                if !seq.config.ignore_eos && seq.config.max_tokens > 0 {
                    used.add(seq.generated().len() as f64 / seq.config.max_tokens as f64);
                }
                kept[id] = release(engine, &mut seq, prompt_cache, ended_by_caller[id], &mut store);
                // a drafter that learns across sequences (the draft cache) sees every output
                engine.drafter.learn(seq.generated());
                on_done(tag, Ok(seq));
            }
        }
    }
}

/// How many queued jobs per slot the run's outlook plays beyond the jobs in flight. The tail
/// it weighs against drafting's faster rounds is about one job per slot; eight more per slot
/// make the play long enough that a long queue drafts as a steady run would (the tail then
/// a ninth of it), at a few thousand steps a round.
pub const LOOKAHEAD_PER_SLOT: usize = 8;

/// The mean share of their token budget that finished jobs which may end on their own used
/// (1 before any finished: a budget is all that is known of a job's length).
#[derive(Debug, Clone, Copy, Default)]
struct LengthShare {
    sum: f64,
    n: usize,
}

impl LengthShare {
    fn add(&mut self, share: f64) {
        self.sum += share.clamp(0.0, 1.0);
        self.n += 1;
    }
    fn share(&self) -> f64 {
        if self.n == 0 {
            1.0
        } else {
            self.sum / self.n as f64
        }
    }
}

/// Whether a shared round's planned drafts pay by the run's [`Outlook`]: the jobs in flight
/// (tokens left: the budget with `ignore_eos`, else the budget times the share finished jobs
/// used) and the queued ones played to the end, plainly and at the planned paces. True when
/// it cannot tell: the source does not say what is queued, a sequence's drafts are not `auto`,
/// or a cost is unknown.
fn drafts_pay(
    n_parallel: usize,
    planned: &[PlannedPace],
    queued: Option<&[GenConfig]>,
    finished: &[Pace],
    used: LengthShare,
    costs: &VerifyCosts,
) -> bool {
    let Some(queued) = queued else { return true };
    if planned.iter().any(|p| !p.auto) {
        return true;
    }
    let length = |max_tokens: usize, ignore_eos: bool| {
        if ignore_eos {
            max_tokens as f64
        } else {
            (max_tokens as f64 * used.share()).max(1.0)
        }
    };
    let in_flight = planned
        .iter()
        .map(|p| {
            let budget_left = p.max_tokens.saturating_sub(p.n_generated).max(1) as f64;
            let left = (length(p.max_tokens, p.ignore_eos) - p.n_generated as f64).clamp(1.0, budget_left);
            (left, p.pace)
        })
        .collect();
    let outlook = Outlook {
        slots: n_parallel,
        in_flight,
        queued: queued.iter().map(|c| length(c.max_tokens, c.ignore_eos)).collect(),
        paces: finished.iter().copied().chain(planned.iter().filter_map(|p| p.mean)).collect(),
    };
    outlook.drafting_pays(&|rows, seqs| costs.estimate_shared(rows, seqs)).unwrap_or(true)
}

/// The free slot for a job: with a prompt cache, the one whose kept cells share the longest
/// prefix with its prompt (ties: the one that keeps least, then the lowest id); otherwise the
/// lowest free id.
fn pick_slot<J>(slots: &[Option<(J, Sequence)>], kept: &[KeptCells], prompt: &[Token]) -> usize {
    let head = &prompt[..prompt.len().saturating_sub(1)];
    (0..slots.len())
        .filter(|&i| slots[i].is_none())
        .max_by_key(|&i| {
            let (t, _) = kept[i].reusable(head);
            (t, std::cmp::Reverse(kept[i].len()), std::cmp::Reverse(i))
        })
        .expect("a free slot")
}

/// A finished sequence's slot: its cells stay for the next prompt (`keep`), or are removed
/// from both caches so that the slot starts empty.
fn release<T: Model, D: Drafter>(
    engine: &mut Engine<T, D>,
    seq: &mut Sequence,
    prompt_cache: bool,
    by_caller: bool,
    store: &mut PrefixCache,
) -> KeptCells {
    if !prompt_cache && !store.is_enabled() {
        free(engine, seq);
        return KeptCells::default();
    }
    if by_caller {
        // cut short (a stop string, a client gone): what it generated goes, its prompt's cells
        // stay for the next prompt that begins the same way
        let n = seq.n_prompt;
        if seq.target.keep(&mut engine.target, n).is_err() || engine.drafter.rollback(&mut seq.draft, n).is_err() {
            free(engine, seq);
            return KeptCells::default();
        }
    }
    let cells = seq.kept_cells();
    store.save(engine, seq.id, &cells);
    if !prompt_cache {
        free(engine, seq);
        return KeptCells::default();
    }
    cells
}

/// Remove a sequence's cells from both caches.
fn free<T: Model, D: Drafter>(engine: &mut Engine<T, D>, seq: &mut Sequence) {
    let _ = seq.target.keep(&mut engine.target, 0);
    let _ = engine.drafter.rollback(&mut seq.draft, 0);
}
