//! The shared round's draft lengths, chosen together for the most expected tokens per second
//! of one target decode, and the yield that scales plans by what drafts realised.

use super::cost::VerifyCosts;
use super::estimate::DECAY;

/// The most that forced drafts (exploration, probes) may add to a shared decode's cost, as a
/// share of the decode without them.
pub const PROBE_BUDGET: f64 = 0.1;

/// One sequence's say in a shared round ([`allocate_drafts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DraftAsk {
    /// The chance that its `j`-th drafted token is accepted, for `j` = 1..=`cap` (see
    /// [`super::Controller::reach`]); non-increasing.
    pub reach: Vec<f64>,
    /// Longest draft it may take (0: nothing to draft from).
    pub cap: usize,
    /// Draft at least this much (exploration and probes of its own controller).
    pub min: usize,
    /// Seconds each drafted token costs before verification (a draft-model step; 0 for
    /// n-gram lookup).
    pub draft_cost: f64,
}

/// Draft lengths for sequences sharing one target decode, for the most expected tokens per
/// second of that round: every sequence emits at least one token; the `j`-th drafted token
/// of a sequence adds its `reach[j - 1]` expected tokens, one row and its drafting cost. Tokens are taken
/// in order of their expected gain, and the number taken is the one that maximises expected
/// tokens over the estimated cost of the round (`costs`, by total rows and the sequences
/// the decode carries, plus drafting) — so a sequence whose draft does not pay drafts nothing
/// while others still do. At most `n_batch` rows in all. Forced drafts (`min`: exploration,
/// probes) are honoured, in sequence order, only while they add at most
/// [`PROBE_BUDGET`] to the estimated cost of the plain decode: on a GPU, where rows are
/// nearly free, every probe goes; on a CPU one or two a round, so that sequences which
/// started together do not all probe in the same decode (a decode of every sequence's
/// probe costs several plain ones there). `None` while the costs are unknown.
///
/// `yield_factor` (at most 1) scales every draft token's gain: the share of expected draft
/// tokens the run's drafts have realised ([`DraftYield::factor`]).
pub fn allocate_drafts(asks: &[DraftAsk], costs: &VerifyCosts, n_batch: usize, yield_factor: f64) -> Option<Vec<usize>> {
    let seqs = asks.len().max(1);
    let verify = |rows: usize| costs.estimate_shared(rows.max(1), seqs);
    let mut ks: Vec<usize> = asks.iter().map(|a| a.min.min(a.cap)).collect();
    // every sequence decodes its last token
    let plain_rows = asks.len();
    let forced: usize = ks.iter().sum();
    if asks.len() > 1 && forced > 0 && plain_rows > 0 {
        let without = verify(plain_rows)?;
        let mut rows = plain_rows;
        for k in ks.iter_mut().filter(|k| **k > 0) {
            if verify(rows + *k)? - without <= PROBE_BUDGET * without {
                rows += *k;
            } else {
                *k = 0;
            }
        }
    }
    let base: usize = plain_rows + ks.iter().sum::<usize>();
    if base > n_batch {
        return Some(vec![0; asks.len()]);
    }
    let gain = |a: &DraftAsk, j: usize| yield_factor * a.reach.get(j - 1).copied().unwrap_or(0.0);
    let mut expected: f64 = asks.len() as f64 + asks.iter().zip(&ks).map(|(a, &k)| (1..=k).map(|j| gain(a, j)).sum::<f64>()).sum::<f64>();
    let mut drafting: f64 = asks.iter().zip(&ks).map(|(a, &k)| a.draft_cost * k as f64).sum();
    // every further token, best first (gain per unit of its own drafting cost breaks ties)
    let mut gains: Vec<(f64, usize)> = Vec::new();
    for (i, a) in asks.iter().enumerate() {
        for j in ks[i] + 1..=a.cap {
            gains.push((gain(a, j), i));
        }
    }
    gains.sort_by(|x, y| y.0.total_cmp(&x.0).then(asks[x.1].draft_cost.total_cmp(&asks[y.1].draft_cost)).then(x.1.cmp(&y.1)));
    let room = n_batch - base;
    let mut best = (expected / (verify(base)? + drafting), 0usize);
    for (n, &(g, i)) in gains.iter().take(room).enumerate() {
        expected += g;
        drafting += asks[i].draft_cost;
        let rate = expected / (verify(base + n + 1)? + drafting);
        if rate > best.0 * 1.000_001 {
            best = (rate, n + 1);
        }
    }
    for &(_, i) in gains.iter().take(best.1) {
        ks[i] += 1;
    }
    Some(ks)
}

/// What the drafts of shared rounds gave against what their plans expected: tokens beyond
/// one per sequence, both decayed by round like the acceptance estimates. A sequence drafts
/// when its acceptance estimate looks good, so plans run ahead of their drafts; where a draft
/// row pushes a full decode over a step of the cost curve, that shortfall turns a small
/// expected gain into a loss. [`DraftYield::factor`] scales the expected gains of further drafts by
/// the share the run's drafts realised, so marginal drafts stop while drafts that pay by more
/// than the shortfall go on.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DraftYield {
    expected: f64,
    realized: f64,
}

/// Expected draft tokens seen before [`DraftYield::factor`] moves from 1.
const YIELD_EVIDENCE: f64 = 16.0;
/// The smallest factor (a run whose drafts all failed still lets a sure draft through).
pub(super) const YIELD_MIN: f64 = 0.25;

impl DraftYield {
    /// A shared round's drafts were expected to add `expected` tokens beyond one per
    /// sequence and added `realized` (both 0 for a plain round: what was learned fades, so
    /// that a run whose first drafts failed drafts again once the evidence is old).
    pub fn observe(&mut self, expected: f64, realized: f64) {
        if !(expected.is_finite() && realized.is_finite()) {
            return;
        }
        self.expected = self.expected * DECAY + expected.max(0.0);
        self.realized = self.realized * DECAY + realized.max(0.0);
    }

    /// The share of expected draft tokens the drafts realised, at most 1 (drafts are never
    /// planned as better than their estimates) and at least `YIELD_MIN`; 1 until
    /// `YIELD_EVIDENCE` expected tokens were seen.
    pub fn factor(&self) -> f64 {
        if self.expected < YIELD_EVIDENCE {
            1.0
        } else {
            (self.realized / self.expected).clamp(YIELD_MIN, 1.0)
        }
    }
}
