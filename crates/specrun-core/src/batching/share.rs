//! One prompt read once for several slots. A new job whose prompt begins like the cells
//! another slot holds — a sequence in flight, even one still reading its prompt, or a free
//! slot's kept cells — gets those cells shared into its own sequence
//! ([`Model::copy_cells`]) instead of reading them again. When the other sequence has not yet
//! read the shared part, the job waits for it if that saves at least half of what it waits
//! for: requests that arrive together with one long document read it once, not once each
//! (a host-memory cache only holds what a *finished* sequence read).

use super::slot::Slot;
use crate::draft::Drafter;
use crate::engine::{Engine, KeptCells};
use crate::model::{Model, SeqId, Token};

/// What a job starting in one slot can take from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Share {
    /// Start now with the first `n_target` (target) and `n_draft` (draft model) cells of slot
    /// `from`.
    Copy { from: usize, n_target: usize, n_draft: usize },
    /// Wait until slot `from`'s sequence, reading its prompt, has read `want` tokens.
    Wait { from: usize, want: usize },
    /// No slot holds more of the prompt than the job already has.
    Nothing,
}

/// What slot `i` holds now: its tokens, how many of them each model has cells for, and the
/// prompt length while its sequence is still reading it.
fn holdings<J>(slot: &Slot<J>) -> Option<(&[Token], usize, usize, Option<usize>)> {
    match slot {
        Slot::Free(kept) => Some((kept.tokens(), kept.n_target(), kept.n_draft(), None)),
        Slot::Busy { seq, .. } => {
            Some((&seq.tokens, seq.target.n_cached, seq.draft.kv.n_cached, seq.reading_prompt().then_some(seq.n_prompt)))
        }
        Slot::Waiting { .. } => None,
    }
}

/// What a job in slot `to`, whose prompt's tokens before the last are `head` and which can
/// already start with `have` of them (its slot's cells, the prefix cache), should take from
/// the other slots.
pub(super) fn plan<J>(slots: &[Slot<J>], to: usize, head: &[Token], have: usize) -> Share {
    let mut copy = Share::Nothing;
    let mut now = have;
    let mut waits = Vec::new();
    for (from, slot) in slots.iter().enumerate().filter(|&(i, _)| i != to) {
        let Some((tokens, n_target, n_draft, reading)) = holdings(slot) else { continue };
        let common = tokens.iter().zip(head).take_while(|(a, b)| a == b).count();
        let n = common.min(n_target);
        if n > now {
            now = n;
            copy = Share::Copy { from, n_target: n, n_draft: common.min(n_draft) };
        }
        if let Some(n_prompt) = reading {
            let want = common.min(n_prompt);
            if want > n_target {
                waits.push((from, want, n_target));
            }
        }
    }
    let worth_waiting = waits
        .into_iter()
        .filter(|&(_, want, read)| want > now && 2 * (want - now) >= want - read)
        .max_by_key(|&(from, want, _)| (want, std::cmp::Reverse(from)));
    match worth_waiting {
        Some((from, want, _)) => Share::Wait { from, want },
        None => copy,
    }
}

/// Give slot `to` the first `n_target`/`n_draft` cells of slot `from` in both models; what
/// slot `to` then holds (empty when the target could not share them: the prompt is read).
pub(super) fn copy<T: Model, D: Drafter>(
    engine: &mut Engine<T, D>,
    (from, to): (usize, usize),
    head: &[Token],
    n_target: usize,
    n_draft: usize,
) -> KeptCells {
    let (from, to) = (from as SeqId, to as SeqId);
    if engine.target.copy_cells(from, to, n_target).is_err() {
        let _ = engine.target.truncate(to, 0);
        return KeptCells::default();
    }
    // a draft model that cannot share reads the prompt itself (its cursor starts at 0)
    let n_draft = if n_draft > 0 && engine.drafter.copy_cells(from, to, n_draft).is_ok() { n_draft } else { 0 };
    KeptCells::new(head[..n_target.max(n_draft)].to_vec(), n_target, n_draft)
}
