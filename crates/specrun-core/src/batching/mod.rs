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
//! With a cache on ([`Slots::prompt_cache`], [`Slots::prefix_cache_bytes`]) a new job starts
//! from the longest prefix of its prompt that its slot's kept cells, another slot's cells (in
//! flight too: `share`, where a job may wait for a sequence still reading the same prompt)
//! or the prefix cache hold, and reads only the rest.
//!
//! When a sequence finishes, its cells are removed from both caches before the slot is
//! reused, and what its controller learned about each drafter joins a pool that later
//! sequences start from ([`crate::control::SharedPrior`]): they skip exploring a drafter the run already
//! knows (draft lengths only; greedy output does not depend on them beyond batch-shape
//! near-ties). Each sequence keeps its own settings, RNG and acceptance estimates, so a job's
//! output does not depend on which jobs share its rounds (greedy: up to batch-shape near-ties;
//! sampling: its own seed decides). A run-level [`crate::control::DraftGuard`] sets the drafted rounds
//! against plain rounds of as many sequences, by measured time and emitted tokens, and pauses
//! `auto` drafting in rounds of that many sequences when it loses (plans rest on estimates;
//! this rests on what the rounds took); and the engine scales the shared drafts' expected
//! gains by the share of them the run's drafts have realised
//! ([`crate::control::DraftYield`]). A fixed list of jobs says what is queued
//! ([`JobSource::upcoming`]), and each planned round's drafts go ahead only where playing the
//! work left to the end says drafting ends it sooner than plain decoding ([`crate::outlook::Outlook`]): near
//! a run's end, its slowest chain of jobs on one slot sets its length, not a round's rate.

mod policy;
mod share;
mod sink;
mod slot;

pub use policy::{PromptPacer, SharedPolicy, LOOKAHEAD_PER_SLOT};
pub use sink::{Callbacks, RunSink};

use crate::clock::Clock;
use crate::draft::Drafter;
use crate::engine::{Engine, EngineError, GenConfig, KeptCells, RoundReport, Sequence};
use crate::model::{Model, Token};
use crate::prefix_cache::{PrefixCache, PrefixCacheStats};
use crate::stats::{FinishReason, PlanCheck};
use share::Share;
use slot::{free, pick_slot, release, Slot};
use std::collections::VecDeque;
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
    ///
    /// With either cache on, a prompt also takes what it shares with another slot's cells —
    /// a sequence in flight, or still reading that prompt (it then waits for it), or a free
    /// slot's kept cells (see `share`): a prompt is read once however many jobs begin with it.
    pub prefix_cache_bytes: usize,
}

impl Slots {
    /// Whether prompts may take cells other sequences read (either cache is on).
    fn reuses_cells(&self) -> bool {
        self.prompt_cache || self.prefix_cache_bytes > 0
    }
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
    /// Of those, the ones shared from another slot's cells ([`Model::copy_cells`]): a prompt
    /// another sequence in flight was reading, or another free slot kept.
    pub n_prompt_shared: usize,
    pub prefix_cache: PrefixCacheStats,
    /// Host memory the prefix cache holds.
    pub prefix_cache_bytes: usize,
    /// Prompt tokens read inside shared rounds, and the rounds that carried some.
    pub n_prompt_in_rounds: usize,
    pub n_prompt_rounds: usize,
    /// Rounds in which `auto` drafting was paused because drafted rounds measured slower than
    /// plain ones ([`crate::control::DraftGuard`]), and how many times it was paused.
    pub n_paused_rounds: usize,
    pub n_pauses: usize,
    /// Shared rounds in the run's tail: no job was left to take a slot that freed
    /// ([`JobSource::exhausted`]).
    pub n_tail_rounds: usize,
    /// Rounds whose planned drafts were held because the run's [`crate::outlook::Outlook`] played the work
    /// left to end sooner plainly.
    pub n_held_rounds: usize,
    /// The shared rounds' plans against what the rounds did ([`RoundReport::expected`]).
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
    /// grow). The run's [`crate::outlook::Outlook`] plays the work left with them.
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

/// How a run ended, and its counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunOutcome {
    pub end: BatchEnd,
    pub stats: BatchStats,
}

/// Run `jobs` (a fixed list) with up to `slots.n_parallel` in flight (a number: prompts read
/// between rounds), deciding and learning across rounds with `policy`, handing tokens and
/// ended jobs to `sink`. `Err` only when a shared decode fails.
pub fn run_continuous<T: Model, D: Drafter, J>(
    engine: &mut Engine<T, D>,
    jobs: impl IntoIterator<Item = BatchJob<J>>,
    slots: impl Into<Slots>,
    policy: &mut SharedPolicy,
    clock: &dyn Clock,
    sink: &mut dyn RunSink<J>,
) -> Result<RunOutcome, EngineError> {
    let mut jobs = IterJobs { iter: jobs.into_iter(), ahead: VecDeque::new() };
    run_continuous_from(engine, &mut jobs, slots, policy, clock, sink)
}

/// [`run_continuous`] over a [`JobSource`]: the run ends when the source is closed and every
/// job in flight has finished (or when the sink cancels it). A source that returns `Later`
/// while nothing is in flight is asked again (it should wait, see [`JobSource::next_job`]).
pub fn run_continuous_from<T: Model, D: Drafter, J>(
    engine: &mut Engine<T, D>,
    jobs: &mut dyn JobSource<J>,
    slots: impl Into<Slots>,
    policy: &mut SharedPolicy,
    clock: &dyn Clock,
    sink: &mut dyn RunSink<J>,
) -> Result<RunOutcome, EngineError> {
    let config: Slots = slots.into();
    let n_parallel = config.n_parallel.max(1);
    policy.begin(n_parallel, config.prefill);
    let mut run = Run {
        slots: (0..n_parallel).map(|_| Slot::Free(KeptCells::default())).collect(),
        store: PrefixCache::new(config.prefix_cache_bytes),
        config,
        stats: BatchStats::default(),
        closed: false,
        clock,
    };
    loop {
        if sink.cancel() {
            run.cancel(engine, sink);
            return Ok(RunOutcome { end: BatchEnd::Cancelled, stats: run.stats });
        }
        run.fill(engine, jobs, policy, sink);
        if !run.slots.iter().any(Slot::is_busy) {
            if run.closed && run.slots.iter().all(Slot::is_free) {
                return Ok(RunOutcome { end: BatchEnd::Done, stats: run.stats });
            }
            continue;
        }
        run.round(engine, jobs, policy, sink)?;
        jobs.after_round(&run.stats);
        run.release_finished(engine, policy, sink);
    }
}

/// What a job starting in a slot does with the cells it can take ([`Run::take_cells`]).
enum Taken {
    /// Wait in the slot (which keeps `kept`) until slot `from` has read `want` tokens.
    Wait { kept: KeptCells, from: usize, want: usize },
    /// Start from `cells`.
    Start { cells: KeptCells, origin: Origin },
}

/// Where a starting job's cells came from.
enum Origin {
    /// Its slot's own (or none).
    Slot,
    Restored,
    Shared,
}

/// The state of one run between rounds.
struct Run<'a, J> {
    slots: Vec<Slot<J>>,
    store: PrefixCache,
    config: Slots,
    stats: BatchStats,
    /// The source said no job will come.
    closed: bool,
    clock: &'a dyn Clock,
}

impl<J> Run<'_, J> {
    /// Start the waiting jobs whose prompt is now read, then fill free slots from the source
    /// (reading prompts now, or admitting them to the rounds).
    fn fill<T: Model, D: Drafter>(
        &mut self,
        engine: &mut Engine<T, D>,
        jobs: &mut dyn JobSource<J>,
        policy: &mut SharedPolicy,
        sink: &mut dyn RunSink<J>,
    ) {
        self.resume_waiting(engine, policy, sink);
        while !self.closed && self.slots.iter().any(Slot::is_free) {
            let idle = self.slots.iter().all(Slot::is_free);
            match jobs.next_job(idle) {
                NextJob::Job(job) => self.start(engine, job, policy, sink),
                NextJob::Later => break,
                NextJob::Closed => self.closed = true,
            }
        }
        (self.stats.prefix_cache, self.stats.prefix_cache_bytes) = (self.store.stats, self.store.bytes());
    }

    /// Start `job` in the free slot that suits it best.
    fn start<T: Model, D: Drafter>(
        &mut self,
        engine: &mut Engine<T, D>,
        job: BatchJob<J>,
        policy: &SharedPolicy,
        sink: &mut dyn RunSink<J>,
    ) {
        let id = pick_slot(&self.slots, &job.prompt).expect("a free slot");
        let Slot::Free(kept) = std::mem::replace(&mut self.slots[id], Slot::Free(KeptCells::default())) else {
            unreachable!("picked a free slot")
        };
        self.start_in(engine, id, job, kept, policy, sink);
    }

    /// Start the jobs waiting for a prompt another slot reads ([`share`]) once it has read
    /// what they share, or has stopped reading.
    fn resume_waiting<T: Model, D: Drafter>(&mut self, engine: &mut Engine<T, D>, policy: &SharedPolicy, sink: &mut dyn RunSink<J>) {
        for id in 0..self.slots.len() {
            let Slot::Waiting { from, want, .. } = self.slots[id] else { continue };
            let ready = match &self.slots[from] {
                Slot::Busy { seq, .. } => !seq.reading_prompt() || seq.target.n_cached >= want,
                Slot::Free(_) | Slot::Waiting { .. } => true,
            };
            if ready {
                let Slot::Waiting { job, kept, .. } = std::mem::replace(&mut self.slots[id], Slot::Free(KeptCells::default())) else {
                    unreachable!("a waiting slot")
                };
                self.start_in(engine, id, *job, kept, policy, sink);
            }
        }
    }

    /// Start `job` in slot `id`, whose caches hold `kept`: its prompt taken as far as it goes
    /// from those cells, another slot's ([`share`]; or it waits for another slot reading the
    /// same prompt) or the prefix cache, the rest read now or in the rounds.
    fn start_in<T: Model, D: Drafter>(
        &mut self,
        engine: &mut Engine<T, D>,
        id: usize,
        mut job: BatchJob<J>,
        kept: KeptCells,
        policy: &SharedPolicy,
        sink: &mut dyn RunSink<J>,
    ) {
        let t_start = self.clock.now();
        let head_len = job.prompt.len().saturating_sub(1);
        let (cells, origin) = match self.take_cells(engine, id, &job.prompt[..head_len], kept) {
            Taken::Wait { kept, from, want } => {
                self.slots[id] = Slot::Waiting { job: Box::new(job), kept, from, want };
                return;
            }
            Taken::Start { cells, origin } => (cells, origin),
        };
        let cells = (!cells.is_empty()).then_some(&cells);
        let started = match self.config.prefill {
            Prefill::Between => engine.start_after(id as i32, job.prompt, job.config, cells, self.clock),
            Prefill::Inside { .. } | Prefill::Paced { .. } => engine.admit_after(id as i32, job.prompt, job.config, cells, self.clock),
        };
        self.stats.t_prefill += self.clock.now() - t_start;
        let mut seq = match started {
            Ok(seq) => seq,
            // what the slot kept is forgotten (the next start there clears its caches)
            Err(e) => return sink.finished(job.tag, Err(e)),
        };
        self.stats.n_prompt_cached += seq.stats.n_prompt_cached;
        match origin {
            Origin::Slot => {}
            Origin::Restored => {
                seq.stats.n_prompt_restored = seq.stats.n_prompt_cached;
                self.stats.n_prompt_restored += seq.stats.n_prompt_cached;
            }
            Origin::Shared => {
                seq.stats.n_prompt_shared = seq.stats.n_prompt_cached;
                self.stats.n_prompt_shared += seq.stats.n_prompt_cached;
            }
        }
        // its first token, taken from the prompt batch
        let added = seq.n_prompt..seq.tokens.len();
        self.stats.n_generated += added.len();
        let mut by_caller = false;
        if !added.is_empty() && sink.tokens(&mut job.tag, &seq, added) && seq.finish.is_none() {
            seq.finish = Some(FinishReason::Stop);
            by_caller = true;
        }
        if seq.finish.is_some() {
            self.slots[id] = Slot::Free(release(engine, &mut seq, self.config.prompt_cache, by_caller, &mut self.store));
            engine.drafter.learn(seq.generated());
            sink.finished(job.tag, Ok(seq));
        } else {
            policy.seed(&mut seq);
            self.slots[id] = Slot::Busy { tag: job.tag, seq: Box::new(seq), ended_by_caller: false };
        }
    }

    /// The cells slot `id` (holding `kept`) starts a prompt whose tokens before the last are
    /// `head` from: the longest prefix its own cells, another slot's ([`share`]) or the prefix
    /// cache hold — or a wait for another slot still reading the same prompt.
    fn take_cells<T: Model, D: Drafter>(&mut self, engine: &mut Engine<T, D>, id: usize, head: &[Token], kept: KeptCells) -> Taken {
        let from_slot = kept.reusable(head).0;
        let have = from_slot.max(self.store.longest(head));
        let plan = if self.config.reuses_cells() { share::plan(&self.slots, id, head, have) } else { Share::Nothing };
        let (cells, kept) = match plan {
            Share::Wait { from, want } => return Taken::Wait { kept, from, want },
            Share::Copy { from, n_target, n_draft } => {
                let cells = share::copy(engine, (from, id), head, n_target, n_draft);
                if !cells.is_empty() {
                    return Taken::Start { cells, origin: Origin::Shared };
                }
                // the copy failed and cleared the slot: what the prefix cache has
                (self.store.restore(engine, id as i32, head, KeptCells::default()), None)
            }
            Share::Nothing => (self.store.restore(engine, id as i32, head, kept), Some(from_slot)),
        };
        let restored = kept.is_none_or(|n| cells.reusable(head).0 > n);
        Taken::Start { origin: if restored && !cells.is_empty() { Origin::Restored } else { Origin::Slot }, cells }
    }

    /// One shared round for the jobs in flight; their new tokens go to the sink.
    fn round<T: Model, D: Drafter>(
        &mut self,
        engine: &mut Engine<T, D>,
        jobs: &mut dyn JobSource<J>,
        policy: &mut SharedPolicy,
        sink: &mut dyn RunSink<J>,
    ) -> Result<(), EngineError> {
        let n_active = self.slots.iter().filter(|s| s.is_busy()).count();
        self.stats.n_tail_rounds += usize::from(self.closed || jobs.exhausted());
        policy.queue(jobs.upcoming(LOOKAHEAD_PER_SLOT * self.slots.len()));
        let t_round = self.clock.now();
        let report = {
            let mut seqs: Vec<&mut Sequence> = self.slots.iter_mut().filter_map(Slot::busy).collect();
            engine.step_many(&mut seqs, policy, self.clock)?
        };
        self.stats.add_round(n_active, &report, self.clock.now() - t_round);
        (self.stats.n_paused_rounds, self.stats.n_pauses) = policy.guard_pauses();
        let busy = self.slots.iter_mut().filter_map(|s| match s {
            Slot::Busy { tag, seq, ended_by_caller } => Some((tag, seq, ended_by_caller)),
            Slot::Free(_) | Slot::Waiting { .. } => None,
        });
        for ((tag, seq, ended_by_caller), range) in busy.zip(report.ranges) {
            if sink.tokens(tag, seq, range) && seq.finish.is_none() {
                seq.finish = Some(FinishReason::Stop);
                *ended_by_caller = true;
            }
        }
        Ok(())
    }

    /// Free the slots whose sequences finished: what they learned joins the policy's pool,
    /// their cells stay or go, the drafter learns their output, the sink gets them.
    fn release_finished<T: Model, D: Drafter>(&mut self, engine: &mut Engine<T, D>, policy: &mut SharedPolicy, sink: &mut dyn RunSink<J>) {
        for i in 0..self.slots.len() {
            if !self.slots[i].done() {
                continue;
            }
            let Slot::Busy { tag, mut seq, ended_by_caller } = std::mem::replace(&mut self.slots[i], Slot::Free(KeptCells::default()))
            else {
                unreachable!("a finished sequence's slot is busy")
            };
            if let Some(e) = seq.failed.take() {
                free(engine, &mut seq);
                sink.finished(tag, Err(EngineError::Constraint(e)));
                continue;
            }
            policy.finished(&seq);
            self.slots[i] = Slot::Free(release(engine, &mut seq, self.config.prompt_cache, ended_by_caller, &mut self.store));
            // a drafter that learns across sequences (the draft cache) sees every output
            engine.drafter.learn(seq.generated());
            sink.finished(tag, Ok(*seq));
        }
    }

    /// Drop the jobs in flight: their cells are freed, the sink told.
    fn cancel<T: Model, D: Drafter>(&mut self, engine: &mut Engine<T, D>, sink: &mut dyn RunSink<J>) {
        for slot in &mut self.slots {
            match std::mem::replace(slot, Slot::Free(KeptCells::default())) {
                Slot::Busy { tag, mut seq, .. } => {
                    free(engine, &mut seq);
                    sink.cancelled(tag);
                }
                Slot::Waiting { job, .. } => sink.cancelled(job.tag),
                Slot::Free(_) => {}
            }
        }
    }
}

impl BatchStats {
    /// Count one shared round of `n_active` sequences that took `took`.
    fn add_round(&mut self, n_active: usize, round: &RoundReport, took: Duration) {
        self.n_rounds += 1;
        self.active_sum += n_active;
        self.n_held_rounds += usize::from(round.held);
        if let Some(e) = round.expected {
            self.plan_check.add(e, round.n_emitted, round.secs);
        }
        self.n_decoded += round.n_decoded;
        self.t_decode += took;
        self.n_prompt_in_rounds += round.n_prefilled;
        self.n_prompt_rounds += usize::from(round.n_prefilled > 0);
        self.n_generated += round.n_emitted;
    }
}
