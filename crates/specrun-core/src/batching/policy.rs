//! The policy of a continuous-batching run: what its shared rounds may do and what the run
//! learns from them, in one place ([`SharedPolicy`], the run's [`RoundPolicy`]): decode costs,
//! the draft guard, the draft yield, the prompt pacer, the prior that finished sequences pool
//! for new ones, and the outlook on the work left (paces, length share, queued jobs).

use super::Prefill;
use crate::control::{CostCurve, DraftGuard, DraftYield, SharedPrior, VerifyCosts};
use crate::engine::{GenConfig, PlannedPace, RoundPolicy, RoundReport, Sequence};
use crate::outlook::{Outlook, Pace};
use std::sync::Arc;

/// Everything a continuous-batching run decides and learns across its shared rounds.
#[derive(Debug, Clone, Default)]
pub struct SharedPolicy {
    costs: VerifyCosts,
    /// Whether drafting measured to pay in this run's rounds.
    guard: DraftGuard,
    /// What the shared rounds' drafts gave against their plans; scales later plans.
    draft_yield: DraftYield,
    pacer: PromptPacer,
    prefill: Option<Prefill>,
    /// What finished sequences learned about each drafter; new ones start from it.
    prior: SharedPrior,
    /// What the finished sequences' drafting gave per round, and how much of its token budget
    /// a job that may end on its own used: the run's outlook plays queued jobs like them.
    finished_paces: Vec<Pace>,
    used: LengthShare,
    n_parallel: usize,
    /// The settings of the jobs queued behind the ones in flight, this round (`None`: the
    /// source cannot say).
    queued: Option<Vec<GenConfig>>,
}

impl SharedPolicy {
    /// A run whose decode costs start from the calibrated `curve`, when there is one.
    pub fn new(curve: Option<Arc<CostCurve>>) -> Self {
        Self::with_costs(VerifyCosts::from_curve(curve))
    }

    /// A run whose decode costs start from `costs`.
    pub fn with_costs(costs: VerifyCosts) -> Self {
        Self { costs, ..Self::default() }
    }

    /// The decode costs measured so far.
    pub fn costs(&self) -> &VerifyCosts {
        &self.costs
    }

    /// Rounds run with drafting paused by the guard, and the verdicts that paused it.
    pub fn guard_pauses(&self) -> (usize, usize) {
        (self.guard.n_paused_rounds, self.guard.n_pauses)
    }

    /// A run begins with `n_parallel` slots, prompts read as `prefill` says.
    pub(super) fn begin(&mut self, n_parallel: usize, prefill: Prefill) {
        (self.n_parallel, self.prefill) = (n_parallel, Some(prefill));
    }

    /// The next round: these jobs are queued behind the ones in flight.
    pub(super) fn queue(&mut self, queued: Option<Vec<GenConfig>>) {
        self.queued = queued;
    }

    /// A sequence joins the rounds: it starts from what the run knows of each drafter.
    pub(super) fn seed(&self, seq: &mut Sequence) {
        seq.controller.seed(&self.prior);
    }

    /// A sequence left the rounds: what it learned joins the pool.
    pub(super) fn finished(&mut self, seq: &Sequence) {
        self.prior.add(&seq.controller);
        self.finished_paces.extend(seq.pace_mean.mean());
        if !seq.config.ignore_eos && seq.config.max_tokens > 0 {
            self.used.add(seq.generated().len() as f64 / seq.config.max_tokens as f64);
        }
    }
}

impl RoundPolicy for SharedPolicy {
    fn costs(&self) -> &VerifyCosts {
        &self.costs
    }

    fn allows_drafts(&self, generating: usize) -> bool {
        self.guard.allows(generating)
    }

    fn yield_factor(&self) -> f64 {
        self.draft_yield.factor()
    }

    fn prompt_budget(&self, generating: usize, n_batch: usize) -> usize {
        match self.prefill.unwrap_or(Prefill::Between) {
            Prefill::Between => 0,
            // nothing generating: nothing waits for the prompt
            _ if generating == 0 => n_batch,
            Prefill::Inside { chunk } => chunk.max(1),
            Prefill::Paced { round_secs } => self.pacer.chunk(round_secs, generating),
        }
    }

    fn drafts_pay(&mut self, planned: &[PlannedPace]) -> bool {
        outlook_pays(self.n_parallel, planned, self.queued.as_deref(), &self.finished_paces, self.used, &self.costs)
    }

    fn observe(&mut self, round: &RoundReport) {
        if let Some(d) = round.decode {
            self.costs.observe_shared(d.rows, d.seqs, d.secs);
        }
        if let Some(e) = round.expected {
            let active = round.generating as f64;
            self.draft_yield.observe(e.tokens - active, round.n_emitted as f64 - active);
        }
        if round.n_prefilled > 0 {
            self.pacer.observe(round.n_prefilled + round.n_decoded, round.secs);
        } else {
            // a round that read prompts says nothing of what drafting costs
            let plain = self.costs.estimate_shared(round.generating, round.generating);
            self.guard.observe(round.generating, round.n_drafted, round.n_emitted, round.secs, plain);
        }
    }
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
fn outlook_pays(
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
