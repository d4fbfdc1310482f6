//! Continuous batching: several sequences in flight on one engine, one target decode per
//! round for all of them ([`Engine::step_many`]), a finished sequence's slot refilled at once.
//!
//! Slots are sequence ids `0..n_parallel`. A new job is **prefilled between rounds**: its
//! prompt is decoded on its own (in `n_batch` chunks) before it joins the shared rounds. On a
//! CPU a prompt batch is compute-bound and would only stretch the round that carried it, and
//! it keeps the first token's logits in the prompt batch's shape (as llama.cpp samples it).
//! When a sequence finishes, its cells are removed from both caches before the slot is
//! reused. Each sequence keeps its own settings, RNG and acceptance estimates, so a job's
//! output does not depend on which jobs share its rounds (greedy: up to batch-shape near-ties;
//! sampling: its own seed decides).

use crate::control::VerifyCosts;
use crate::draft::Drafter;
use crate::engine::{Engine, EngineError, GenConfig, Sequence};
use crate::model::{Model, Token};
use crate::stats::{Clock, FinishReason};
use std::ops::Range;

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
}

/// Run `jobs` with up to `n_parallel` in flight. `on_tokens(tag, seq, added)` sees each
/// round's new tokens and may end the sequence (return `true`: stop, e.g. at a stop string);
/// `on_done(tag, result)` gets every job once, finished or failed (a job that fails alone —
/// its prompt does not fit — does not stop the others). `Err` only when a shared decode fails.
#[allow(clippy::too_many_arguments)]
pub fn run_continuous<T: Model, D: Drafter, J>(
    engine: &mut Engine<T, D>,
    jobs: impl IntoIterator<Item = BatchJob<J>>,
    n_parallel: usize,
    costs: &mut VerifyCosts,
    clock: &dyn Clock,
    cancel: &dyn Fn() -> bool,
    mut on_tokens: impl FnMut(&J, &Sequence, Range<usize>) -> bool,
    mut on_done: impl FnMut(J, Result<Sequence, EngineError>),
    stats: &mut BatchStats,
) -> Result<BatchEnd, EngineError> {
    let n_parallel = n_parallel.max(1);
    let mut jobs = jobs.into_iter();
    let mut slots: Vec<Option<(J, Sequence)>> = (0..n_parallel).map(|_| None).collect();
    let mut exhausted = false;
    loop {
        if cancel() {
            for (_, seq) in slots.iter_mut().flatten() {
                free(engine, seq);
            }
            return Ok(BatchEnd::Cancelled);
        }
        // fill free slots (prefill between rounds)
        for (id, slot) in slots.iter_mut().enumerate() {
            while slot.is_none() && !exhausted {
                let Some(job) = jobs.next() else {
                    exhausted = true;
                    break;
                };
                engine.config = job.config;
                match engine.start(id as i32, job.prompt, clock) {
                    Ok(seq) if seq.finish.is_some() => on_done(job.tag, Ok(seq)),
                    Ok(seq) => *slot = Some((job.tag, seq)),
                    Err(e) => on_done(job.tag, Err(e)),
                }
            }
        }
        let active: Vec<usize> = (0..n_parallel).filter(|&i| slots[i].is_some()).collect();
        if active.is_empty() {
            return Ok(BatchEnd::Done);
        }
        stats.n_rounds += 1;
        stats.active_sum += active.len();
        let ranges = {
            let mut seqs: Vec<&mut Sequence> = slots.iter_mut().flatten().map(|(_, s)| s).collect();
            engine.step_many(&mut seqs, costs, clock)?
        };
        for (slot, range) in slots.iter_mut().flatten().zip(ranges) {
            let (tag, seq) = slot;
            if on_tokens(tag, seq, range) && seq.finish.is_none() {
                seq.finish = Some(FinishReason::Stop);
            }
        }
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|(_, s)| s.finish.is_some()) {
                let (tag, mut seq) = slot.take().expect("checked");
                free(engine, &mut seq);
                on_done(tag, Ok(seq));
            }
        }
    }
}

/// Remove a finished sequence's cells from both caches, so its slot starts empty.
fn free<T: Model, D: Drafter>(engine: &mut Engine<T, D>, seq: &mut Sequence) {
    let _ = seq.target.keep(&mut engine.target, 0);
    let _ = engine.drafter.rollback(&mut seq.draft, 0);
}
