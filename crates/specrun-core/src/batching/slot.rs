//! A slot of a continuous-batching run, in one of three states (as llama.cpp's server keeps
//! its slots): free, holding what its last sequence left in the caches; waiting with a job
//! for another slot to read the prompt they share ([`super::share`]); or busy with a job.

use super::BatchJob;
use crate::draft::Drafter;
use crate::engine::{Engine, KeptCells, Sequence};
use crate::model::{Model, Token};
use crate::prefix_cache::PrefixCache;

/// One slot (its index is the sequence id its jobs run under).
pub(super) enum Slot<J> {
    /// No job: the cells its last sequence left ([`KeptCells`], empty when none).
    Free(KeptCells),
    /// Running `tag`'s sequence; `ended_by_caller` once the sink ended it (it keeps only its
    /// prompt's cells).
    Busy { tag: J, seq: Box<Sequence>, ended_by_caller: bool },
    /// Holding `job` (and the cells the slot kept) until slot `from` has read `want` tokens
    /// of the prompt they share.
    Waiting { job: Box<BatchJob<J>>, kept: KeptCells, from: usize, want: usize },
}

impl<J> Slot<J> {
    pub(super) fn is_free(&self) -> bool {
        matches!(self, Slot::Free(_))
    }

    pub(super) fn is_busy(&self) -> bool {
        matches!(self, Slot::Busy { .. })
    }

    /// The job in the slot, when busy.
    pub(super) fn busy(&mut self) -> Option<&mut Sequence> {
        match self {
            Slot::Busy { seq, .. } => Some(seq.as_mut()),
            Slot::Free(_) | Slot::Waiting { .. } => None,
        }
    }

    /// Whether a busy slot's sequence has finished.
    pub(super) fn done(&self) -> bool {
        matches!(self, Slot::Busy { seq, .. } if seq.finish.is_some())
    }
}

/// The free slot for a job: with a prompt cache, the one whose kept cells share the longest
/// prefix with its prompt (ties: the one that keeps least, then the lowest id); otherwise the
/// lowest free id (nothing is kept).
pub(super) fn pick_slot<J>(slots: &[Slot<J>], prompt: &[Token]) -> Option<usize> {
    let head = &prompt[..prompt.len().saturating_sub(1)];
    (0..slots.len())
        .filter_map(|i| match &slots[i] {
            Slot::Free(kept) => Some((i, kept)),
            Slot::Busy { .. } | Slot::Waiting { .. } => None,
        })
        .max_by_key(|&(i, kept)| {
            let (t, _) = kept.reusable(head);
            (t, std::cmp::Reverse(kept.len()), std::cmp::Reverse(i))
        })
        .map(|(i, _)| i)
}

/// A finished sequence's slot: its cells stay for the next prompt (`keep`), or are removed
/// from both caches so that the slot starts empty.
pub(super) fn release<T: Model, D: Drafter>(
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
pub(super) fn free<T: Model, D: Drafter>(engine: &mut Engine<T, D>, seq: &mut Sequence) {
    let _ = seq.target.keep(&mut engine.target, 0);
    let _ = engine.drafter.rollback(&mut seq.draft, 0);
}
