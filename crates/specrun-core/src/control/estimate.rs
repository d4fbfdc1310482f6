//! What the drafts of one source have shown: acceptance estimates (one per copy-run length
//! for n-gram drafts), draft-step costs, and the expected tokens of a draft under them.

use crate::draft::DraftSource;
use std::time::Duration;

/// What one round did, as the controller learns from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub source: DraftSource,
    /// Draft length asked for.
    pub k_planned: usize,
    /// Tokens actually proposed (a confidence stop or a short n-gram can give fewer).
    pub n_drafted: usize,
    pub n_accepted: usize,
    /// How many tokens the n-gram drafter's copy run had lasted when the round was planned
    /// (0 for other sources): the first drafted token extends the run to `run + 1`.
    pub run: usize,
    pub n_draft_steps: usize,
    /// Tokens the draft model had to catch up on before its first step (1 normally, 2 after
    /// a fully accepted round, more after rounds it sat out). Such catch-up batches make the
    /// round's draft time say nothing about the cost of a step.
    pub draft_gap: usize,
    pub t_draft: Duration,
    /// Tokens the target decoded this round: `n_drafted + 1`, or `n_drafted` in the first
    /// round, whose first row comes from the prompt batch (0: nothing decoded, no cost sample).
    pub n_verified: usize,
    /// Target decode + verification of `n_verified` tokens.
    pub t_verify: Duration,
}

/// Learned facts about one draft source.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct SourceEstimate {
    pub(super) accepted: f64,
    pub(super) rejected: f64,
    /// Rounds this source drafted.
    pub(super) rounds: usize,
    /// Mean seconds per draft step (EMA); `None` until seen.
    pub(super) step_cost: Option<f64>,
}

impl SourceEstimate {
    pub(super) fn new(prior_alpha: f64) -> Self {
        // a weak prior worth two tokens
        Self { accepted: 2.0 * prior_alpha, rejected: 2.0 * (1.0 - prior_alpha), rounds: 0, step_cost: None }
    }

    pub(super) fn alpha(&self) -> f64 {
        (self.accepted / (self.accepted + self.rejected)).clamp(0.0, 0.995)
    }
}

/// Upper ends (inclusive) of the copy-run buckets: runs of 0, 1–2, 3–6, 7–14, 15–30 and
/// over 30 tokens.
pub(super) const RUN_BUCKETS: [usize; 5] = [0, 2, 6, 14, 30];
pub(super) const N_RUN_BUCKETS: usize = RUN_BUCKETS.len() + 1;

pub(super) fn run_bucket(run: usize) -> usize {
    RUN_BUCKETS.iter().position(|&hi| run <= hi).unwrap_or(RUN_BUCKETS.len())
}

/// The n-gram drafter's acceptance by copy-run length, learned per sequence: the chance that
/// a drafted token is right given how many tokens the copy it continues has lasted. A verbatim
/// copy that has run for 20 tokens will usually go on; a 3-token match of a JSON key usually
/// will not — one α for both drafts the first too short and the second too long. Each bucket
/// starts from a prior worth two tokens: at run 0 the source's prior, above it Laplace's rule
/// of succession `(r + 1) / (r + 2)` at the bucket's middle `r`; rounds then move it (decayed
/// like the source's α).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct RunAcceptance {
    pub(super) accepted: [f64; N_RUN_BUCKETS],
    pub(super) rejected: [f64; N_RUN_BUCKETS],
}

impl RunAcceptance {
    pub(super) fn new(prior_alpha: f64) -> Self {
        let mut r = Self { accepted: [0.0; N_RUN_BUCKETS], rejected: [0.0; N_RUN_BUCKETS] };
        for b in 0..N_RUN_BUCKETS {
            let alpha = if b == 0 {
                prior_alpha
            } else {
                let lo = RUN_BUCKETS[b - 1] + 1;
                let mid = RUN_BUCKETS.get(b).map_or(1.5 * lo as f64, |&hi| (lo + hi) as f64 / 2.0);
                (mid + 1.0) / (mid + 2.0)
            };
            r.accepted[b] = 2.0 * alpha;
            r.rejected[b] = 2.0 * (1.0 - alpha);
        }
        r
    }

    /// Acceptance of a drafted token that extends the copy run to `run + 1`.
    pub(super) fn alpha(&self, run: usize) -> f64 {
        let b = run_bucket(run);
        (self.accepted[b] / (self.accepted[b] + self.rejected[b])).clamp(0.0, 0.995)
    }

    /// A round drafted `n_drafted` tokens from a run of `run`, and `n_accepted` were right:
    /// each accepted token counts for the run length it extended, the first wrong one against
    /// its own.
    pub(super) fn observe(&mut self, run: usize, n_drafted: usize, n_accepted: usize) {
        for b in 0..N_RUN_BUCKETS {
            self.accepted[b] *= DECAY;
            self.rejected[b] *= DECAY;
        }
        for i in 0..n_accepted {
            self.accepted[run_bucket(run + i)] += 1.0;
        }
        if n_accepted < n_drafted {
            self.rejected[run_bucket(run + n_accepted)] += 1.0;
        }
    }
}

pub(super) const EMA: f64 = 0.3;

pub(super) const DECAY: f64 = 0.97;

pub(super) fn ema(old: Option<f64>, x: f64) -> f64 {
    old.map_or(x, |o| o + EMA * (x - o))
}

/// `[α, α², …, α^cap]`: the chance that each of `cap` drafted tokens is accepted with every
/// token before it, when each is accepted with probability `alpha` on its own.
pub fn geometric_reach(alpha: f64, cap: usize) -> Vec<f64> {
    (1..=cap).map(|j| alpha.powi(j as i32)).collect()
}

/// Expected tokens from one round drafting `k` tokens with per-token acceptance `alpha`
/// (`k` may be a mean draft length).
pub fn expected_tokens(alpha: f64, k: f64) -> f64 {
    if (1.0 - alpha).abs() < 1e-12 {
        return k + 1.0;
    }
    (1.0 - alpha.powf(k + 1.0)) / (1.0 - alpha)
}
