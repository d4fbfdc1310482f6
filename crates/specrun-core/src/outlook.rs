//! The run's outlook: whether drafting in a continuous-batching run's shared rounds ends the
//! run sooner than plain decoding, judged over the work left — the jobs in flight and the next
//! ones queued — and not by one round's rate.
//!
//! A shared round's plan ([`crate::control::allocate_drafts`]) maximises that round's tokens per
//! second. That is the right measure while every slot has work waiting behind it: a token
//! drafted now is a token no later round has to decode. It is the wrong one near a run's end,
//! where the run lasts as long as its slowest chain of jobs on one slot: a job that copies well
//! and drafts ends early and hands its slot the next job sooner, the rounds thin out while the
//! jobs that draft nothing (open questions) decode a token a round to the end, and every draft
//! row was paid for in a dearer round. With few jobs per slot that tail is much of the run,
//! and drafting can lose there (docs/benchmarks.md, "Design measurements").
//!
//! [`Outlook::drafting_pays`] plays the rest of the run both ways — every sequence plain, and
//! every sequence at its planned pace — with the run's own cost of a shared decode (by rows and
//! sequences), jobs taking the first slot that frees, as the runner does. The queued jobs' paces
//! are not known before they run: each play draws them from the paces of the run's sequences
//! so far, so a run with few jobs per slot sees that some slot will likely get two jobs that
//! draft nothing, and a run with many sees those chains average out. The round drafts when the
//! drafting play is expected to take less time. Deciding again every round between two whole
//! plays keeps the run at least as fast as the faster of them, up to what the model of the
//! run gets wrong (a rollout over two base policies).
//!
//! Architecture Invariant: pure arithmetic over numbers it is given; no clock, no model.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What one shared round gives a sequence at its plan: tokens added, rows it puts in the target
/// decode, and seconds its draft costs beside it (a draft model's steps; n-gram lookup: 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    pub tokens: f64,
    pub rows: f64,
    pub draft_secs: f64,
}

impl Pace {
    /// A plain round: one row, one token.
    pub const PLAIN: Pace = Pace { tokens: 1.0, rows: 1.0, draft_secs: 0.0 };
}

/// The mean of a sequence's planned paces over the rounds it was planned (its drafting pace on
/// the whole, what a queued job may be like).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PaceMean {
    sum: (f64, f64, f64),
    n: usize,
}

impl PaceMean {
    pub fn add(&mut self, p: Pace) {
        self.sum = (self.sum.0 + p.tokens, self.sum.1 + p.rows, self.sum.2 + p.draft_secs);
        self.n += 1;
    }
    pub fn mean(&self) -> Option<Pace> {
        (self.n > 0).then(|| {
            let n = self.n as f64;
            Pace { tokens: self.sum.0 / n, rows: self.sum.1 / n, draft_secs: self.sum.2 / n }
        })
    }
}

/// The work left in a run, as the outlook plays it.
#[derive(Debug, Clone, Default)]
pub struct Outlook {
    /// Sequence slots of the run.
    pub slots: usize,
    /// Each sequence in flight: tokens left, and its pace at this round's plan.
    pub in_flight: Vec<(f64, Pace)>,
    /// Tokens each queued job will generate, in the order they will be taken.
    pub queued: Vec<f64>,
    /// The drafting paces of the run's sequences so far (finished and in flight); the queued
    /// jobs' paces are drawn from these.
    pub paces: Vec<Pace>,
}

/// Plays per decision (each draws every queued job's pace once; the same draws every round,
/// so that the decision does not flicker with the draws).
pub const DRAWS: usize = 32;
const DRAW_SEED: u64 = 0x5eed;

impl Outlook {
    /// Expected seconds to finish the work with every sequence plain, and with every sequence
    /// at its pace (queued jobs at drawn paces), along `cost(rows, seqs)`: the seconds of one
    /// shared target decode of that many rows over that many sequences. `None` when a cost is
    /// unknown or there is nothing to play.
    pub fn play(&self, cost: &dyn Fn(usize, usize) -> Option<f64>) -> Option<(f64, f64)> {
        if self.in_flight.is_empty() || self.slots == 0 {
            return None;
        }
        let mut memo = std::collections::HashMap::new();
        let mut cost = |rows: f64, seqs: usize| -> Option<f64> {
            // fractional rows: between the two whole counts around them
            let lo = rows.floor().max(1.0);
            let mut at = |r: usize| -> Option<f64> {
                if let Some(&c) = memo.get(&(r, seqs)) {
                    return c;
                }
                let c = cost(r, seqs);
                memo.insert((r, seqs), c);
                c
            };
            let c_lo = at(lo as usize)?;
            let frac = rows - lo;
            if frac <= 1e-9 {
                return Some(c_lo);
            }
            Some(c_lo + frac * (at(lo as usize + 1)? - c_lo))
        };
        let plain_jobs: Vec<(f64, Pace)> = self.in_flight.iter().map(|&(left, _)| (left, Pace::PLAIN)).collect();
        let plain_queue: Vec<(f64, Pace)> = self.queued.iter().map(|&len| (len, Pace::PLAIN)).collect();
        let plain = simulate(self.slots, &plain_jobs, &plain_queue, &mut cost)?;
        if self.queued.is_empty() || self.paces.is_empty() {
            let queue: Vec<(f64, Pace)> = self.queued.iter().map(|&len| (len, Pace::PLAIN)).collect();
            return Some((plain, simulate(self.slots, &self.in_flight, &queue, &mut cost)?));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(DRAW_SEED);
        let mut total = 0.0;
        let mut queue: Vec<(f64, Pace)> = Vec::with_capacity(self.queued.len());
        for _ in 0..DRAWS {
            queue.clear();
            queue.extend(self.queued.iter().map(|&len| (len, self.paces[rng.gen_range(0..self.paces.len())])));
            total += simulate(self.slots, &self.in_flight, &queue, &mut cost)?;
        }
        Some((plain, total / DRAWS as f64))
    }

    /// Whether drafting at the planned paces is expected to finish the work sooner than plain
    /// decoding (`None`: it cannot tell — a cost unknown, nothing to play).
    pub fn drafting_pays(&self, cost: &dyn Fn(usize, usize) -> Option<f64>) -> Option<bool> {
        let (plain, drafting) = self.play(cost)?;
        Some(drafting < plain)
    }
}

/// Seconds to finish `in_flight` and then `queue` on `slots` slots: each job advances at its
/// pace every round (fractional rounds: a fluid model of the rounds), a round costs the shared
/// decode of every running job's rows plus their drafts, and a job that ends hands its slot to
/// the next queued one at once.
fn simulate(
    slots: usize,
    in_flight: &[(f64, Pace)],
    queue: &[(f64, Pace)],
    cost: &mut dyn FnMut(f64, usize) -> Option<f64>,
) -> Option<f64> {
    let mut running: Vec<(f64, Pace)> = in_flight.iter().copied().filter(|(left, _)| *left > 0.0).collect();
    let mut waiting = queue.iter().copied().filter(|(left, _)| *left > 0.0);
    while running.len() < slots {
        match waiting.next() {
            Some(job) => running.push(job),
            None => break,
        }
    }
    let mut secs = 0.0;
    while !running.is_empty() {
        // rounds until the first job ends
        let dt = running.iter().map(|(left, p)| left / p.tokens.max(1e-9)).fold(f64::INFINITY, f64::min);
        let rows: f64 = running.iter().map(|(_, p)| p.rows).sum();
        let drafting: f64 = running.iter().map(|(_, p)| p.draft_secs).sum();
        secs += dt * (cost(rows, running.len())? + drafting);
        let mut i = 0;
        while i < running.len() {
            let (left, p) = &mut running[i];
            *left -= dt * p.tokens;
            if *left <= 1e-9 {
                match waiting.next() {
                    Some(job) => running[i] = job,
                    None => {
                        running.swap_remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
    }
    Some(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds of a decode by rows, in one-row decodes, shaped like a small CPU's curve:
    /// nearly linear to 12 rows, a cheaper kernel path from 16.
    fn cpu(rows: usize, _seqs: usize) -> Option<f64> {
        crate::control::interpolate(&[(1, 1.0), (2, 1.5), (4, 2.7), (8, 6.2), (12, 8.1), (16, 8.4), (32, 16.7)], rows)
    }

    /// A GPU-like curve: up to 16 rows cost what one does.
    fn gpu(rows: usize, _seqs: usize) -> Option<f64> {
        Some(1.0 + rows.saturating_sub(16) as f64 / 16.0)
    }

    /// A job that copies: 4.5 tokens for a draft of 4 (5 rows).
    const COPY: Pace = Pace { tokens: 4.5, rows: 5.0, draft_secs: 0.0 };

    fn outlook(slots: usize, in_flight: &[(f64, Pace)], queued: usize, len: f64) -> Outlook {
        let paces = in_flight.iter().map(|j| j.1).collect();
        Outlook { slots, in_flight: in_flight.to_vec(), queued: vec![len; queued], paces }
    }

    /// 12 slots, one job copying, 11 with nothing to draft from.
    fn one_copying_in(slots: usize) -> Vec<(f64, Pace)> {
        let mut jobs = vec![(64.0, COPY)];
        jobs.extend(vec![(64.0, Pace::PLAIN); slots - 1]);
        jobs
    }

    #[test]
    fn the_plain_play_is_its_rounds_times_the_cost_of_a_round() {
        // 4 jobs of 10 tokens on 2 slots: 20 rounds of two sequences
        let o = outlook(2, &[(10.0, COPY), (10.0, COPY)], 2, 10.0);
        let (plain, _) = o.play(&cpu).unwrap();
        assert!((plain - 20.0 * cpu(2, 2).unwrap()).abs() < 1e-9, "{plain}");
    }

    #[test]
    fn a_round_that_pays_for_itself_gains_nothing_when_a_chain_of_plain_jobs_sets_the_end() {
        // 16 rows cost what 12 do: the round gives 15.5 tokens instead of 12 for nothing
        let jobs = one_copying_in(12);
        assert_eq!(gpu(16, 12), gpu(12, 12));
        // but the run lasts two plain jobs back to back on some slot either way, and every
        // round costs the same: nothing gained, and drafting is not chosen
        let (plain, drafting) = outlook(12, &jobs, 12, 64.0).play(&gpu).unwrap();
        assert!(drafting >= plain, "plain {plain} drafting {drafting}");
        assert_eq!(outlook(12, &jobs, 12, 64.0).drafting_pays(&gpu), Some(false));
    }

    #[test]
    fn with_many_jobs_per_slot_queued_drafting_shortens_the_run() {
        // on the CPU curve the copying slot takes more of the queue while its rows ride where
        // 16 cost about what 12 do
        let (plain, drafting) = outlook(12, &one_copying_in(12), 12 * 8, 64.0).play(&cpu).unwrap();
        assert!(drafting < plain, "plain {plain} drafting {drafting}");
        // where rows are free, a run of equal plain jobs packs perfectly and one copying job in
        // twelve only unsettles the packing; half of them copying shortens every chain
        let mut half = vec![(64.0, COPY); 6];
        half.extend(vec![(64.0, Pace::PLAIN); 6]);
        let (plain, drafting) = outlook(12, &half, 12 * 8, 64.0).play(&gpu).unwrap();
        assert!(drafting < 0.9 * plain, "plain {plain} drafting {drafting}");
    }

    #[test]
    fn jobs_that_all_copy_draft() {
        assert_eq!(outlook(4, &[(64.0, COPY); 4], 4, 64.0).drafting_pays(&cpu), Some(true));
    }

    #[test]
    fn one_slot_drafts_when_its_pace_beats_plain_decoding() {
        // 4.5 tokens for a decode of 5 rows (3.3 one-row decodes) pays
        assert_eq!(outlook(1, &[(64.0, COPY)], 4, 64.0).drafting_pays(&cpu), Some(true));
        // 1.2 tokens for 5 rows does not
        let weak = Pace { tokens: 1.2, rows: 5.0, draft_secs: 0.0 };
        assert_eq!(outlook(1, &[(64.0, weak)], 4, 64.0).drafting_pays(&cpu), Some(false));
    }

    #[test]
    fn a_draft_models_own_cost_counts() {
        // rows nearly free, but each round's draft costs more than 3.5 decodes
        let dear = Pace { tokens: 4.5, rows: 5.0, draft_secs: 3.6 };
        assert_eq!(outlook(1, &[(64.0, dear)], 0, 64.0).drafting_pays(&gpu), Some(false));
        let cheap = Pace { draft_secs: 1.0, ..dear };
        assert_eq!(outlook(1, &[(64.0, cheap)], 0, 64.0).drafting_pays(&gpu), Some(true));
    }

    #[test]
    fn unknown_costs_or_nothing_in_flight_tell_nothing() {
        assert_eq!(outlook(4, &[], 4, 64.0).drafting_pays(&cpu), None);
        assert_eq!(outlook(4, &[(8.0, COPY)], 4, 64.0).drafting_pays(&|_, _| None), None);
    }
}
