//! The run-level check on drafting: drafted rounds against plain rounds of as many
//! sequences, by measured time; pauses `auto` drafting where it loses.

use super::estimate::ema;

/// Drafted rounds a [`DraftGuard`] weighs before it judges.
pub const GUARD_WINDOW: usize = 16;
/// Shared rounds without drafting after the first verdict against it (doubles after each
/// further one, up to `GUARD_MAX_PAUSE`).
pub const GUARD_FIRST_PAUSE: usize = 32;
const GUARD_MAX_PAUSE: usize = 1024;

/// Whether drafting pays in the shared rounds of one run, by what the rounds measured rather
/// than by what was planned: each round that drafted is set against a plain round of as many
/// sequences (its measured time, as an EMA per number of sequences, or the cost estimate of
/// that decode until one was measured): the `tokens` it emitted vs `seqs × secs / plain secs`,
/// the tokens plain rounds would have emitted in its time. After [`GUARD_WINDOW`] drafted
/// rounds of one number of sequences, if they emitted fewer than plain rounds would have,
/// drafting in rounds of that many sequences pauses for [`GUARD_FIRST_PAUSE`] of them
/// (doubling after each further verdict against it), then is tried again; a verdict for it
/// resets the pause. Verdicts are kept per number of sequences because what a draft row
/// costs depends on how full the decode already is: on a CPU a full decode may sit at a step
/// of the cost curve, where a few more rows cost much more, while a half-full one has rows
/// nearly free. The plans of each sequence's controller rest on acceptance estimates and a
/// cost model that can both be wrong in ways their own rounds do not reveal; this is the
/// check that keeps such errors from costing more than a window of rounds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DraftGuard {
    by_seqs: std::collections::BTreeMap<usize, GuardState>,
    /// Rounds run with drafting paused, in all.
    pub n_paused_rounds: usize,
    /// Verdicts against drafting.
    pub n_pauses: usize,
}

/// A [`DraftGuard`]'s evidence and verdict for rounds of one number of sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct GuardState {
    /// Measured seconds of a plain round (EMA).
    plain_secs: Option<f64>,
    tokens: f64,
    plain_tokens: f64,
    rounds: usize,
    paused: usize,
    next_pause: usize,
}

impl DraftGuard {
    /// Whether the next round, of `seqs` sequences, may draft.
    pub fn allows(&self, seqs: usize) -> bool {
        self.by_seqs.get(&seqs).is_none_or(|g| g.paused == 0)
    }

    /// A shared round of `seqs` sequences ended after `secs` (drafting and verification),
    /// emitting `tokens`; `drafted` tokens were proposed in it. `estimate` is the estimated
    /// seconds of a plain decode of `seqs` sequences, used until a plain round of that many was
    /// measured.
    pub fn observe(&mut self, seqs: usize, drafted: usize, tokens: usize, secs: f64, estimate: Option<f64>) {
        if seqs == 0 || secs.is_nan() || secs <= 0.0 {
            return;
        }
        let g = self.by_seqs.entry(seqs).or_default();
        if drafted == 0 {
            g.plain_secs = Some(ema(g.plain_secs, secs));
        }
        if g.paused > 0 {
            // (sequences with a fixed draft length draft on: not judged here)
            g.paused -= 1;
            self.n_paused_rounds += 1;
            return;
        }
        let Some(plain) = g.plain_secs.or(estimate).filter(|&p| p > 0.0 && drafted > 0) else { return };
        g.tokens += tokens as f64;
        g.plain_tokens += seqs as f64 * secs / plain;
        g.rounds += 1;
        if g.rounds < GUARD_WINDOW {
            return;
        }
        if g.tokens < g.plain_tokens {
            g.next_pause = if g.next_pause == 0 { GUARD_FIRST_PAUSE } else { (g.next_pause * 2).min(GUARD_MAX_PAUSE) };
            g.paused = g.next_pause;
            self.n_pauses += 1;
        } else {
            g.next_pause = 0;
        }
        (g.tokens, g.plain_tokens, g.rounds) = (0.0, 0.0, 0);
    }
}
