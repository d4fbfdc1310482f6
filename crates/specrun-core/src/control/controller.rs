//! The per-sequence draft-length controller: fixed, step, or `auto` (expected tokens per
//! unit of time over the estimates and costs), with exploration and back-off probes, and the
//! prior a run's finished sequences pool for new ones.

use super::cost::{CostCurve, VerifyCosts};
use super::estimate::*;
use super::AdaptiveMode;
use crate::draft::DraftSource;
use crate::stats::Expectation;

/// Plain rounds in a row before an n-gram probe (doubling after each probe that did not
/// resume drafting, up to `PROBE_MAX`).
const PROBE_FIRST: usize = 16;
/// The same for a draft model: one that sat out must catch up on every token it missed
/// before a probe, so its probes start far apart (up to `4 × PROBE_MAX`).
const PROBE_FIRST_MODEL: usize = 256;
const PROBE_MAX: usize = 1024;
/// Rounds a draft model drafts at [`EXPLORE_LEN`] before plans may switch it off.
const EXPLORE_ROUNDS: usize = 2;
/// Draft length while exploring a source, or while its costs are unknown.
pub const EXPLORE_LEN: usize = 4;
/// Draft length of a probe: short, it only tells whether acceptance went up.
pub const PROBE_LEN: usize = 2;

/// The draft-length controller of one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Controller {
    pub mode: AdaptiveMode,
    pub draft_max: usize,
    /// Auto: draft one round after this many plain rounds in a row (doubles after each probe
    /// that did not resume drafting).
    pub probe_every: usize,
    step_k: usize,
    /// Auto: plain rounds before the draft model is probed again (doubles after each probe).
    pub probe_every_model: usize,
    model: SourceEstimate,
    ngram: SourceEstimate,
    /// The n-gram source's acceptance by copy-run length (plans of n-gram drafts use it).
    ngram_runs: RunAcceptance,
    pub verify: VerifyCosts,
    plain_streak: usize,
    rounds: usize,
    /// Rounds that drafted nothing where the n-gram drafter had a proposal, and the target's
    /// token was compared with its first token ([`Controller::observe_peek`]).
    ngram_peeks: usize,
}

/// What the sequences of one continuous-batching run have learned about each source, pooled:
/// a new sequence starts from it instead of exploring (a few forced drafts per sequence add
/// up when records are short and many).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SharedPrior {
    /// Pooled evidence per source (sums over sequences, their priors excluded).
    model: SourceEstimate,
    ngram: SourceEstimate,
    ngram_runs: RunAcceptance,
}

/// Tokens of evidence a shared prior is worth to a new sequence (its own rounds soon dominate).
const PRIOR_WEIGHT: f64 = 8.0;
/// Acceptance a source is assumed to have before it drafted (a prior worth two tokens).
pub(super) const MODEL_PRIOR: f64 = 0.8;
const NGRAM_PRIOR: f64 = 0.6;

impl SharedPrior {
    /// Pool a finished sequence's evidence (its prior excluded).
    pub fn add(&mut self, c: &Controller) {
        for (pool, est, init) in [(&mut self.model, &c.model, MODEL_PRIOR), (&mut self.ngram, &c.ngram, NGRAM_PRIOR)] {
            if est.rounds == 0 {
                continue;
            }
            let fresh = SourceEstimate::new(init);
            pool.accepted += (est.accepted - fresh.accepted).max(0.0);
            pool.rejected += (est.rejected - fresh.rejected).max(0.0);
            pool.rounds += est.rounds;
            pool.step_cost = est.step_cost.map(|s| ema(pool.step_cost, s)).or(pool.step_cost);
        }
        if c.ngram.rounds > 0 || c.ngram_peeks > 0 {
            let fresh = RunAcceptance::new(NGRAM_PRIOR);
            for b in 0..N_RUN_BUCKETS {
                self.ngram_runs.accepted[b] += (c.ngram_runs.accepted[b] - fresh.accepted[b]).max(0.0);
                self.ngram_runs.rejected[b] += (c.ngram_runs.rejected[b] - fresh.rejected[b]).max(0.0);
            }
        }
    }
}

impl Controller {
    /// Start from what other sequences of the same run learned: a source with enough pooled
    /// evidence (as many rounds as exploring would take, from at least two sequences' worth)
    /// is not explored again, and its acceptance starts at the pooled rate, weighted as
    /// `PRIOR_WEIGHT` tokens. The n-gram source's acceptance by copy-run length starts from
    /// the pool's wherever the pool saw that length at least as often as the prior counts
    /// (drafted tokens and peeks alike).
    pub fn seed(&mut self, prior: &SharedPrior) {
        let fresh_ngram = self.ngram.rounds == 0 && self.ngram_peeks == 0;
        for (est, pool) in [(&mut self.model, prior.model), (&mut self.ngram, prior.ngram)] {
            if est.rounds > 0 || pool.rounds < 2 * EXPLORE_ROUNDS || pool.accepted + pool.rejected <= 0.0 {
                continue;
            }
            let alpha = pool.accepted / (pool.accepted + pool.rejected);
            est.accepted = PRIOR_WEIGHT * alpha;
            est.rejected = PRIOR_WEIGHT * (1.0 - alpha);
            est.rounds = EXPLORE_ROUNDS;
            est.step_cost = est.step_cost.or(pool.step_cost);
        }
        // the n-gram source's acceptance by run length, where the pool has seen that length
        // at least as often as the prior counts (drafted tokens and peeks alike)
        if fresh_ngram {
            for b in 0..N_RUN_BUCKETS {
                let (a, r) = (prior.ngram_runs.accepted[b], prior.ngram_runs.rejected[b]);
                if a + r >= 2.0 {
                    let weight = (a + r).min(PRIOR_WEIGHT);
                    self.ngram_runs.accepted[b] = weight * a / (a + r);
                    self.ngram_runs.rejected[b] = weight * r / (a + r);
                }
            }
        }
    }

    pub fn new(mode: AdaptiveMode, draft_max: usize) -> Self {
        Self::with_curve(mode, draft_max, None)
    }

    /// A controller that plans verification costs along a calibrated curve.
    pub fn with_curve(mode: AdaptiveMode, draft_max: usize, curve: Option<std::sync::Arc<CostCurve>>) -> Self {
        Self {
            mode,
            draft_max,
            probe_every: PROBE_FIRST,
            probe_every_model: PROBE_FIRST_MODEL,
            step_k: draft_max.clamp(1, 4),
            model: SourceEstimate::new(MODEL_PRIOR),
            ngram: SourceEstimate::new(NGRAM_PRIOR),
            ngram_runs: RunAcceptance::new(NGRAM_PRIOR),
            verify: VerifyCosts::from_curve(curve),
            plain_streak: 0,
            rounds: 0,
            ngram_peeks: 0,
        }
    }

    fn probe_interval(&self, source: DraftSource) -> usize {
        match source {
            DraftSource::Model => self.probe_every_model,
            _ => self.probe_every,
        }
    }

    /// Seconds per draft-model step learned so far.
    pub fn model_step_cost(&self) -> Option<f64> {
        self.model.step_cost
    }

    pub(super) fn estimate(&self, source: DraftSource) -> &SourceEstimate {
        match source {
            DraftSource::Ngram => &self.ngram,
            _ => &self.model,
        }
    }

    /// Draft length for the next round, at most `limit`, given which source would draft and
    /// how many tokens its current copy run has been right for (`run`, 0 if none).
    pub fn plan(&mut self, source: DraftSource, limit: usize, run: usize) -> usize {
        let cap = self.draft_max.min(limit);
        if source == DraftSource::None || cap == 0 {
            return 0;
        }
        match self.mode {
            AdaptiveMode::Fixed => cap,
            AdaptiveMode::Step => self.step_k.min(cap),
            AdaptiveMode::Auto => self.plan_auto(source, cap, run),
        }
    }

    /// The chance that the `j`-th drafted token (`j` = 1..=`cap`) is accepted, every token
    /// before it too: `α^j` for the draft model; for n-gram drafts the product of the
    /// acceptance learned for each run length the draft passes through, from a copy run that
    /// has lasted `run` tokens (`RunAcceptance`).
    pub fn reach(&self, source: DraftSource, run: usize, cap: usize) -> Vec<f64> {
        if source != DraftSource::Ngram {
            return geometric_reach(self.estimate(source).alpha(), cap);
        }
        let mut p = 1.0;
        (0..cap)
            .map(|i| {
                p *= self.ngram_runs.alpha(run + i);
                p
            })
            .collect()
    }

    /// A draft length this controller insists on in a shared round: while it explores a
    /// source (its first rounds) or when a probe is due. `None`: it leaves the length to the
    /// shared plan.
    pub fn forced_len(&self, source: DraftSource, cap: usize) -> Option<usize> {
        if self.explores(source) {
            return Some(cap.min(EXPLORE_LEN));
        }
        (self.probes(source) && self.plain_streak + 1 >= self.probe_interval(source)).then_some(cap.min(PROBE_LEN))
    }

    /// Whether `source` still drafts its first rounds regardless of plans. Only a draft
    /// model does: n-gram drafts are planned from the copy run's own evidence from the start
    /// (on a CPU forced drafts cost decodes of their own, spent even on a prompt with nothing
    /// to copy).
    fn explores(&self, source: DraftSource) -> bool {
        source != DraftSource::Ngram && self.estimate(source).rounds < EXPLORE_ROUNDS
    }

    /// Whether plain rounds are interrupted by short drafts of `source` to see whether its
    /// acceptance went up: not for n-gram drafts once their acceptance is learned from the
    /// rounds that drafted nothing ([`Controller::observe_peek`]) — a probe would spend rows
    /// on what the peeks already tell for free.
    fn probes(&self, source: DraftSource) -> bool {
        source != DraftSource::Ngram || self.ngram_peeks == 0
    }

    /// The k in 0..=cap with the most expected tokens per second (None: costs unknown yet).
    pub fn best_k(&self, source: DraftSource, cap: usize, run: usize) -> Option<usize> {
        let reach = self.reach(source, run, cap);
        let step = self.step_cost(source)?;
        let t1 = self.verify.estimate(1)?;
        if t1 <= 0.0 {
            return None; // no measurable cost (a clock that does not move)
        }
        let mut best = (0usize, 1.0 / t1);
        let mut expected = 1.0;
        for k in 1..=cap {
            expected += reach[k - 1];
            let rate = expected / (k as f64 * step + self.verify.estimate(k + 1)?);
            if rate > best.1 * 1.000_001 {
                best = (k, rate);
            }
        }
        Some(best.0)
    }

    /// What a round drafting `k` tokens from `source` (a copy run of `run` tokens) is expected
    /// to give: one token plus each drafted token's [`Self::reach`], and
    /// the drafting and verification the cost model prices it at. `None` while a cost is
    /// unknown.
    pub fn expect(&self, source: DraftSource, run: usize, k: usize) -> Option<Expectation> {
        let k = if source == DraftSource::None { 0 } else { k };
        let step = if k > 0 { self.step_cost(source)? } else { 0.0 };
        let tokens = 1.0 + self.reach(source, run, k).iter().sum::<f64>();
        Some(Expectation { tokens, secs: k as f64 * step + self.verify.estimate(k + 1)? })
    }

    /// Seconds per drafted token from `source`: measured for the draft model (`None` until
    /// then), an n-gram lookup's (0 until measured: it costs next to nothing).
    fn step_cost(&self, source: DraftSource) -> Option<f64> {
        match source {
            DraftSource::Ngram => Some(self.ngram.step_cost.unwrap_or(0.0)),
            _ => self.estimate(source).step_cost,
        }
    }

    fn plan_auto(&mut self, source: DraftSource, cap: usize, run: usize) -> usize {
        // Explore first: one plain round (the 1-token cost), then draft at full length until
        // the costs of both are known.
        if !self.verify.knows_one_token() {
            return 0;
        }
        // Then let a draft model draft a few rounds at a moderate length, so that its α rests
        // on evidence rather than on the prior before it can be switched off.
        if self.explores(source) {
            return cap.min(EXPLORE_LEN);
        }
        match self.best_k(source, cap, run) {
            None => cap.min(EXPLORE_LEN),
            Some(0) if self.probes(source) && self.plain_streak + 1 >= self.probe_interval(source) => {
                // probe: a short draft that tells us whether acceptance went up
                cap.min(PROBE_LEN)
            }
            Some(0) => 0,
            Some(k) => {
                self.probe_every = PROBE_FIRST;
                self.probe_every_model = PROBE_FIRST_MODEL;
                k
            }
        }
    }

    /// A round that drafted nothing, where an n-gram draft from a copy run of `run` tokens
    /// would have begun with a token that the target's own token equalled (`agreed`) or not:
    /// the same evidence a one-token draft would have given, at no cost. (With sampling the
    /// target's token equals a proposed `x` with probability `p(x)`, the chance rejection
    /// sampling accepts `x`.) Unlike drafted rounds, peeks are not chosen by the estimate
    /// they update, so acceptance at copy runs that plans turn down is learned too.
    pub fn observe_peek(&mut self, run: usize, agreed: bool) {
        self.ngram_peeks += 1;
        self.ngram_runs.observe(run, 1, usize::from(agreed));
    }

    /// Learn from a finished round.
    pub fn observe(&mut self, o: &Observation) {
        self.rounds += 1;
        if o.n_verified > 0 {
            self.verify.observe(o.n_verified, o.t_verify.as_secs_f64());
        }
        if o.n_drafted == 0 {
            self.plain_streak += 1;
            return;
        }
        if self.plain_streak + 1 >= self.probe_interval(o.source) && self.mode == AdaptiveMode::Auto {
            // this was a probe: if drafting still does not pay, wait twice as long next time
            match o.source {
                DraftSource::Model => self.probe_every_model = (self.probe_every_model * 2).min(PROBE_MAX * 4),
                _ => self.probe_every = (self.probe_every * 2).min(PROBE_MAX),
            }
        }
        self.plain_streak = 0;
        let est = match o.source {
            DraftSource::Ngram => &mut self.ngram,
            _ => &mut self.model,
        };
        if o.source == DraftSource::Ngram {
            self.ngram_runs.observe(o.run, o.n_drafted, o.n_accepted);
        }
        est.rounds += 1;
        est.accepted = est.accepted * DECAY + o.n_accepted as f64;
        est.rejected = est.rejected * DECAY + if o.n_accepted < o.n_drafted { 1.0 } else { 0.0 };
        if o.n_draft_steps > 0 && o.draft_gap <= 2 {
            est.step_cost = Some(ema(est.step_cost, o.t_draft.as_secs_f64() / o.n_draft_steps as f64));
        } else if o.n_draft_steps > 0 && est.step_cost.is_none() {
            // a first measurement, catch-up included, beats none (it errs on the costly side)
            est.step_cost = Some(o.t_draft.as_secs_f64() / o.n_draft_steps as f64);
        } else if o.source == DraftSource::Ngram {
            est.step_cost = Some(ema(est.step_cost, o.t_draft.as_secs_f64() / o.n_drafted as f64));
        }
        // the step rule
        if o.n_accepted == o.k_planned && o.n_drafted == o.k_planned {
            self.step_k = (self.step_k + 2).min(self.draft_max.max(1));
        } else {
            self.step_k = self.step_k.saturating_sub(1).max(1);
        }
    }
}
