//! Deciding, round by round, how much to speculate: fixed, a simple step rule, or the
//! cost-aware controller that falls back to plain decoding when speculation does not pay.
//!
//! The cost-aware rule ([`AdaptiveMode::Auto`]) keeps, per draft source (draft model, n-gram):
//! an acceptance estimate `α` (accepted tokens over accepted tokens plus rejections, decayed
//! so it follows the text) — for n-gram drafts one per copy-run length, since a copy that has
//! lasted long tends to go on ([`Controller::reach`]) —, the cost of one draft step, and the
//! cost of verifying a batch of `b` tokens (a calibrated curve scaled by what was measured,
//! see [`VerifyCosts`]). It then picks the draft length `k` that maximises expected tokens per
//! unit of time, `E(k) / T(k)` with `E(k) = 1 + Σ_{j≤k} P(first j accepted)` (`(1 −
//! α^(k+1)) / (1 − α)` for one α) and `T(k) = k·c_draft + t_verify(k+1)`.
//! A draft model first drafts two rounds at `min(K, 4)` (after one plain round that measures
//! the 1-token cost), so that α is measured before drafting can be switched off; n-gram drafts
//! are planned from the copy run's evidence from the first round.
//! `k = 0` is plain decoding; while it wins, a probe round drafts anyway now and then, so that a
//! text that turns predictable is noticed. Probes back off exponentially (the interval doubles
//! after each probe that did not resume drafting). A draft *model* that sat out has to catch up
//! on every token it missed before it can draft, which on a small CPU costs a good part of what
//! the skipped rounds saved, so its probes start 256 rounds apart (n-gram probes: 16), and its
//! step cost is learned only from rounds without a catch-up.
//!
//! Architecture invariant: no clock is read here; durations come in through [`Observation`].

use crate::draft::DraftSource;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How the draft length is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum AdaptiveMode {
    /// Always `draft_max`.
    Fixed,
    /// +2 after a fully accepted draft, −1 otherwise, within 1..=draft_max.
    Step,
    /// Maximise expected tokens per second from measured acceptance and costs; fall back to
    /// plain decoding when drafting does not pay.
    Auto,
}

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
struct SourceEstimate {
    accepted: f64,
    rejected: f64,
    /// Rounds this source drafted.
    rounds: usize,
    /// Mean seconds per draft step (EMA); `None` until seen.
    step_cost: Option<f64>,
}

impl SourceEstimate {
    fn new(prior_alpha: f64) -> Self {
        // a weak prior worth two tokens
        Self { accepted: 2.0 * prior_alpha, rejected: 2.0 * (1.0 - prior_alpha), rounds: 0, step_cost: None }
    }

    fn alpha(&self) -> f64 {
        (self.accepted / (self.accepted + self.rejected)).clamp(0.0, 0.995)
    }
}

/// Upper ends (inclusive) of the copy-run buckets: runs of 0, 1–2, 3–6, 7–14, 15–30 and
/// over 30 tokens.
const RUN_BUCKETS: [usize; 5] = [0, 2, 6, 14, 30];
const N_RUN_BUCKETS: usize = RUN_BUCKETS.len() + 1;

fn run_bucket(run: usize) -> usize {
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
struct RunAcceptance {
    accepted: [f64; N_RUN_BUCKETS],
    rejected: [f64; N_RUN_BUCKETS],
}

impl RunAcceptance {
    fn new(prior_alpha: f64) -> Self {
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
    fn alpha(&self, run: usize) -> f64 {
        let b = run_bucket(run);
        (self.accepted[b] / (self.accepted[b] + self.rejected[b])).clamp(0.0, 0.995)
    }

    /// A round drafted `n_drafted` tokens from a run of `run`, and `n_accepted` were right:
    /// each accepted token counts for the run length it extended, the first wrong one against
    /// its own.
    fn observe(&mut self, run: usize, n_drafted: usize, n_accepted: usize) {
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

/// A calibrated cost curve: the cost of one target decode of `b` tokens relative to a decode
/// of one token, at measured batch sizes (`specrun calibrate`), interpolated linearly between
/// them and extrapolated along the last segment. Its absolute scale is learned online.
///
/// With `seq_points` it also knows what spreading a decode over several sequences costs: a
/// decode of one token for each of `s` sequences, relative to one token of one sequence. A
/// decode of `b` rows over `s` sequences is then modelled as `relative(b) × seq_factor(s)`
/// (the extra cost of `s` separate attention streams, measured at `b = s`, applied to any
/// row count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostCurve {
    /// `(batch size, cost relative to batch size 1)`, sorted by batch size, starting at 1.
    pub points: Vec<(usize, f64)>,
    /// `(sequences, cost relative to batch size 1)` of a decode of one token for each of that
    /// many sequences, sorted; empty when not calibrated with several sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seq_points: Vec<(usize, f64)>,
}

/// Linear interpolation over sorted `(x, y)` points, extrapolated along the last segment (never
/// downwards); `None` without points.
pub(crate) fn interpolate(pts: &[(usize, f64)], x: usize) -> Option<f64> {
    Some(match pts.iter().position(|&(px, _)| px >= x) {
        Some(0) => pts[0].1,
        Some(i) if pts[i].0 == x => pts[i].1,
        Some(i) => {
            let ((x0, y0), (x1, y1)) = (pts[i - 1], pts[i]);
            y0 + (y1 - y0) * (x - x0) as f64 / (x1 - x0) as f64
        }
        None => match pts.len() {
            0 => return None,
            1 => pts[0].1 * x as f64 / pts[0].0.max(1) as f64,
            n => {
                let ((x0, y0), (x1, y1)) = (pts[n - 2], pts[n - 1]);
                let slope = ((y1 - y0) / (x1 - x0) as f64).max(0.0);
                y1 + slope * (x - x1) as f64
            }
        },
    })
}

impl CostCurve {
    /// From measured seconds per batch size (any order; must include batch size 1).
    pub fn from_seconds(secs: Vec<(usize, f64)>) -> Option<Self> {
        Self::from_seconds_with_seqs(secs, Vec::new())
    }

    /// From measured seconds per batch size (one sequence) and per number of sequences (one
    /// token each); the second may be empty.
    pub fn from_seconds_with_seqs(secs: Vec<(usize, f64)>, seq_secs: Vec<(usize, f64)>) -> Option<Self> {
        fn clean(mut v: Vec<(usize, f64)>) -> Vec<(usize, f64)> {
            v.retain(|&(b, t)| b >= 1 && t.is_finite() && t > 0.0);
            v.sort_by_key(|&(b, _)| b);
            v.dedup_by_key(|&mut (b, _)| b);
            v
        }
        let secs = clean(secs);
        let (b0, t1) = *secs.first()?;
        if b0 != 1 {
            return None;
        }
        let rel = |v: Vec<(usize, f64)>| v.into_iter().map(|(b, t)| (b, t / t1)).collect::<Vec<_>>();
        Some(Self { points: rel(secs), seq_points: rel(clean(seq_secs)) })
    }

    /// Cost of a `b`-token decode (one sequence) relative to a 1-token decode.
    pub fn relative(&self, b: usize) -> f64 {
        interpolate(&self.points, b).unwrap_or(b as f64)
    }

    /// How much more a decode costs when its rows belong to `seqs` sequences rather than one
    /// (1 for one sequence, or without a several-sequence calibration).
    pub fn seq_factor(&self, seqs: usize) -> f64 {
        if seqs <= 1 {
            return 1.0;
        }
        match interpolate(&self.seq_points, seqs) {
            Some(c) => (c / self.relative(seqs)).max(1.0),
            None => 1.0,
        }
    }

    /// Cost of a decode of `rows` rows over `seqs` sequences relative to a 1-token decode.
    pub fn relative_shared(&self, rows: usize, seqs: usize) -> f64 {
        self.relative(rows) * self.seq_factor(seqs)
    }

    /// Cost of a decode of one token for each of `seqs` sequences relative to a 1-token decode
    /// (measured when calibrated with several sequences, else the one-sequence curve).
    pub fn relative_seqs(&self, seqs: usize) -> f64 {
        self.relative_shared(seqs, seqs)
    }

    /// The largest batch size measured.
    pub fn max_batch(&self) -> usize {
        self.points.last().map_or(1, |p| p.0)
    }
}

/// Verification cost by batch shape (EMA seconds per target decode of `rows` tokens over
/// `seqs` sequences), over a calibrated [`CostCurve`] when there is one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyCosts {
    seen: std::collections::BTreeMap<(usize, usize), f64>,
    curve: Option<std::sync::Arc<CostCurve>>,
}

const EMA: f64 = 0.3;
const PROBE_FIRST: usize = 16;
/// A draft model that sat out must catch up on every token it missed before a probe; on a
/// small CPU that costs ~1/8 of a target step per token, so its probes start far apart.
const PROBE_FIRST_MODEL: usize = 256;
const EXPLORE_ROUNDS: usize = 2;
/// The most that forced drafts (exploration, probes) may add to a shared decode's cost, as a
/// share of the decode without them.
pub const PROBE_BUDGET: f64 = 0.1;
const PROBE_MAX: usize = 1024;
const DECAY: f64 = 0.97;

fn ema(old: Option<f64>, x: f64) -> f64 {
    old.map_or(x, |o| o + EMA * (x - o))
}

impl VerifyCosts {
    /// A decode of `batch` tokens of one sequence took `secs` seconds.
    pub fn observe(&mut self, batch: usize, secs: f64) {
        self.observe_shared(batch, 1, secs);
    }

    /// A decode of `rows` tokens over `seqs` sequences took `secs` seconds.
    pub fn observe_shared(&mut self, rows: usize, seqs: usize, secs: f64) {
        let key = (rows, seqs.max(1));
        let old = self.seen.get(&key).copied();
        self.seen.insert(key, ema(old, secs));
    }

    /// Every decode shape measured so far: `((rows, sequences), EMA seconds)`.
    pub fn measured(&self) -> Vec<((usize, usize), f64)> {
        self.seen.iter().map(|(&k, &t)| (k, t)).collect()
    }

    /// Costs that follow `curve` for batch sizes not measured yet.
    pub fn with_curve(curve: std::sync::Arc<CostCurve>) -> Self {
        Self { seen: Default::default(), curve: Some(curve) }
    }

    /// Whether a one-token decode of one sequence was measured.
    pub fn knows_one_token(&self) -> bool {
        self.seen.contains_key(&(1, 1))
    }

    /// Estimated seconds to verify `batch` tokens of one sequence.
    pub fn estimate(&self, batch: usize) -> Option<f64> {
        self.estimate_shared(batch, 1)
    }

    /// Estimated seconds of a decode of `rows` tokens over `seqs` sequences: measured if that
    /// shape was seen; else, with a calibrated curve, the curve's cost of that shape scaled by
    /// what was measured **near** it (ratios of measured to curve cost, weighted by closeness
    /// in rows and sequences: a curve taken at another context depth or machine load is
    /// corrected locally, and a shape far from anything measured leans on its nearest
    /// neighbours rather than on an average dominated by small decodes); else an affine fit
    /// in rows through what was seen (a prior slope of 0.3 of a 1-token step per extra token
    /// when only one size is known).
    pub fn estimate_shared(&self, rows: usize, seqs: usize) -> Option<f64> {
        let seqs = seqs.max(1);
        if let Some(t) = self.seen.get(&(rows, seqs)) {
            return Some(*t);
        }
        if self.seen.is_empty() {
            return None;
        }
        if let Some(curve) = &self.curve {
            let (mut wsum, mut lsum) = (0.0, 0.0);
            for (&(r, s), &t) in &self.seen {
                let d = r.abs_diff(rows) as f64 + 2.0 * s.abs_diff(seqs) as f64;
                let w = 1.0 / (1.0 + d).powi(2);
                wsum += w;
                lsum += w * (t / curve.relative_shared(r, s)).ln();
            }
            return Some((lsum / wsum).exp() * curve.relative_shared(rows, seqs));
        }
        // without a curve: one point per row count (the mean over sequence counts)
        let mut by_rows: Vec<(f64, f64, f64)> = Vec::new();
        for (&(r, _), &t) in &self.seen {
            match by_rows.last_mut() {
                Some(last) if last.0 == r as f64 => {
                    last.1 += t;
                    last.2 += 1.0;
                }
                _ => by_rows.push((r as f64, t, 1.0)),
            }
        }
        let by_rows: Vec<(f64, f64)> = by_rows.into_iter().map(|(r, t, n)| (r, t / n)).collect();
        match by_rows.len() {
            0 => None,
            1 => {
                let (b0, t0) = by_rows[0];
                let base = t0 / (1.0 + 0.3 * (b0 - 1.0));
                Some(base * (1.0 + 0.3 * (rows as f64 - 1.0)))
            }
            _ => {
                let n = by_rows.len() as f64;
                let (mb, mt) = (by_rows.iter().map(|s| s.0).sum::<f64>() / n, by_rows.iter().map(|s| s.1).sum::<f64>() / n);
                let cov: f64 = by_rows.iter().map(|s| (s.0 - mb) * (s.1 - mt)).sum();
                let var: f64 = by_rows.iter().map(|s| (s.0 - mb).powi(2)).sum();
                let slope = (cov / var).max(0.0);
                Some((mt + slope * (rows as f64 - mb)).max(1e-9))
            }
        }
    }
}

/// One sequence's say in a shared round ([`allocate_drafts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DraftAsk {
    /// The chance that its `j`-th drafted token is accepted, for `j` = 1..=`cap` (see
    /// [`Controller::reach`]); non-increasing.
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
/// started together do not all probe in the same decode (measured here: 16 sequences
/// probing two tokens each made a 48-row decode that cost 2.5 plain 16-row ones). `None`
/// while the costs are unknown.
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
/// when its acceptance estimate looks good, so plans run ahead of their drafts (measured
/// here: 0.88–0.94 of the tokens expected); at 16 sequences on a CPU, where a draft row pushes
/// the decode over a step of the cost curve, that shortfall turns an expected gain of a few
/// percent into a loss. [`DraftYield::factor`] scales the expected gains of further drafts by
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
const YIELD_MIN: f64 = 0.25;

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
const MODEL_PRIOR: f64 = 0.8;
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
            verify: curve.map_or_else(VerifyCosts::default, VerifyCosts::with_curve),
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

    fn estimate(&self, source: DraftSource) -> &SourceEstimate {
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
            return Some(cap.min(4));
        }
        (self.probes(source) && self.plain_streak + 1 >= self.probe_interval(source)).then_some(cap.min(2))
    }

    /// Whether `source` still drafts its first rounds regardless of plans. Only a draft
    /// model does: n-gram drafts are planned from the copy run's own evidence from the start
    /// (on a CPU a forced 4-token draft costs nearly three more decodes: two of them are 6%
    /// of a 96-token answer, spent even on a prompt with nothing to copy).
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
    /// to give: `(tokens, seconds)` — one token plus each drafted token's [`Self::reach`], and
    /// the drafting and verification the cost model prices it at. `None` while a cost is
    /// unknown.
    pub fn expect(&self, source: DraftSource, run: usize, k: usize) -> Option<(f64, f64)> {
        let k = if source == DraftSource::None { 0 } else { k };
        let step = if k > 0 { self.step_cost(source)? } else { 0.0 };
        let tokens = 1.0 + self.reach(source, run, k).iter().sum::<f64>();
        Some((tokens, k as f64 * step + self.verify.estimate(k + 1)?))
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
            return cap.min(4);
        }
        match self.best_k(source, cap, run) {
            None => cap.min(4),
            Some(0) if self.probes(source) && self.plain_streak + 1 >= self.probe_interval(source) => {
                // probe: a short draft that tells us whether acceptance went up
                cap.min(2)
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
/// costs depends on how full the decode already is: on a 2-core CPU a decode of 16 sequences
/// is at a step of the cost curve (17–20 rows cost a quarter more) while one of 9 has 7 rows
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

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(source: DraftSource, k: usize, accepted: usize, t_draft_ms: u64, t_verify_ms: u64) -> Observation {
        Observation {
            source,
            k_planned: k,
            n_drafted: k,
            n_accepted: accepted,
            run: 0,
            n_draft_steps: if source == DraftSource::Model { k } else { 0 },
            draft_gap: 1,
            n_verified: k + 1,
            t_draft: Duration::from_millis(t_draft_ms),
            t_verify: Duration::from_millis(t_verify_ms),
        }
    }

    #[test]
    fn the_draft_yield_is_the_realised_share_once_there_is_evidence() {
        let mut y = DraftYield::default();
        y.observe(10.0, 5.0);
        assert_eq!(y.factor(), 1.0, "10 expected tokens are too little evidence");
        y.observe(10.0, 5.0);
        assert!((y.factor() - 0.5).abs() < 1e-12);
        // never above 1, never below the floor
        let mut good = DraftYield::default();
        good.observe(20.0, 30.0);
        assert_eq!(good.factor(), 1.0);
        let mut bad = DraftYield::default();
        bad.observe(20.0, 0.0);
        assert_eq!(bad.factor(), YIELD_MIN);
        // old rounds fade: after many rounds at 0.9 the factor is near 0.9
        for _ in 0..200 {
            bad.observe(10.0, 9.0);
        }
        assert!((bad.factor() - 0.9).abs() < 0.01, "{}", bad.factor());
        bad.observe(f64::NAN, 1.0);
        assert!((bad.factor() - 0.9).abs() < 0.01);
        // plain rounds let the evidence fade until the drafts are planned as estimated again
        let mut faded = DraftYield::default();
        faded.observe(40.0, 0.0);
        assert_eq!(faded.factor(), YIELD_MIN);
        let mut rounds = 0;
        while faded.factor() < 1.0 {
            faded.observe(0.0, 0.0);
            rounds += 1;
        }
        assert!((20..40).contains(&rounds), "{rounds} plain rounds");
    }

    #[test]
    fn expected_tokens_follows_the_geometric_series() {
        assert_eq!(expected_tokens(0.0, 4.0), 1.0);
        assert!((expected_tokens(0.5, 2.0) - 1.75).abs() < 1e-12);
        assert_eq!(expected_tokens(1.0, 4.0), 5.0);
    }

    #[test]
    fn step_rule_goes_up_two_on_full_acceptance_and_down_one_otherwise() {
        let mut c = Controller::new(AdaptiveMode::Step, 8);
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 4);
        c.observe(&obs(DraftSource::Model, 4, 4, 10, 50));
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 6);
        c.observe(&obs(DraftSource::Model, 6, 6, 10, 50));
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 8);
        c.observe(&obs(DraftSource::Model, 8, 8, 10, 50));
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 8, "capped by draft_max");
        c.observe(&obs(DraftSource::Model, 8, 3, 10, 50));
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 7);
        assert_eq!(c.plan(DraftSource::Model, 2, 0), 2, "capped by the round's limit");
        for _ in 0..20 {
            c.observe(&obs(DraftSource::Model, 1, 0, 10, 50));
        }
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 1, "never below 1");
    }

    #[test]
    fn a_shared_prior_skips_exploration_and_starts_at_the_pooled_rate() {
        // one sequence that learned the n-gram drafter is poor here: 1 of 8 tokens accepted
        let mut old = Controller::new(AdaptiveMode::Auto, 8);
        old.observe(&obs(DraftSource::Ngram, 0, 0, 0, 100));
        for _ in 0..4 {
            old.observe(&obs(DraftSource::Ngram, 4, 0, 0, 210));
        }
        let mut prior = SharedPrior::default();
        prior.add(&old);
        let mut fresh = Controller::new(AdaptiveMode::Auto, 8);
        fresh.seed(&prior);
        // the pool holds 4 rounds (= 2 × EXPLORE_ROUNDS) of all-rejected drafts
        assert_eq!(fresh.forced_len(DraftSource::Ngram, 8), None, "no forced exploration");
        assert!(fresh.reach(DraftSource::Ngram, 0, 1)[0] < 0.05);
        assert_eq!(fresh.forced_len(DraftSource::Model, 8), Some(4), "the model drafter was never seen: explored as before");
        // too little evidence: nothing changes
        let mut thin = Controller::new(AdaptiveMode::Auto, 8);
        thin.observe(&obs(DraftSource::Ngram, 4, 0, 0, 210));
        let mut small = SharedPrior::default();
        small.add(&thin);
        let mut c = Controller::new(AdaptiveMode::Auto, 8);
        c.seed(&small);
        assert_eq!(c, Controller::new(AdaptiveMode::Auto, 8));
    }

    #[test]
    fn catch_up_rounds_do_not_count_as_step_costs() {
        let mut c = Controller::new(AdaptiveMode::Auto, 8);
        c.observe(&obs(DraftSource::Model, 0, 0, 0, 100));
        c.observe(&obs(DraftSource::Model, 4, 4, 200, 210));
        let clean = c.model_step_cost().unwrap();
        let mut catch_up = obs(DraftSource::Model, 4, 4, 2000, 210);
        catch_up.draft_gap = 40;
        c.observe(&catch_up);
        assert_eq!(c.model_step_cost().unwrap(), clean);
    }

    #[test]
    fn verify_costs_interpolate_affinely() {
        let mut v = VerifyCosts::default();
        assert_eq!(v.estimate(3), None);
        v.observe(1, 0.100);
        assert!((v.estimate(5).unwrap() - 0.100 * 2.2).abs() < 1e-9, "prior slope 0.3");
        v.observe(5, 0.210);
        assert!((v.estimate(3).unwrap() - 0.155).abs() < 1e-9);
        assert!((v.estimate(9).unwrap() - 0.320).abs() < 1e-9);
    }

    /// A 2-core CPU's costs: a draft step costs 0.5 of a target step, verifying 5 tokens 2.1x one.
    fn slow_draft_costs(c: &mut Controller, accepted_of_4: usize, rounds: usize) {
        c.observe(&obs(DraftSource::Model, 0, 0, 0, 100));
        for _ in 0..rounds {
            c.observe(&obs(DraftSource::Model, 4, accepted_of_4, 200, 210));
        }
    }

    #[test]
    fn auto_falls_back_to_plain_decoding_when_drafting_costs_more_than_it_gains() {
        let mut c = Controller::new(AdaptiveMode::Auto, 8);
        assert_eq!(c.plan(DraftSource::Model, 8, 0), 0, "first round measures a plain step");
        slow_draft_costs(&mut c, 2, 30);
        // alpha ~ 2/3: E(k)/T(k) < 1/t1 for every k -> plain
        assert_eq!(c.best_k(DraftSource::Model, 8, 0), Some(0));
        let mut plans = vec![];
        for _ in 0..16 {
            let k = c.plan(DraftSource::Model, 8, 0);
            plans.push(k);
            c.observe(&obs(DraftSource::Model, k, k.min(1), 50 * k as u64, 100 + 25 * k as u64));
        }
        let probes = plans.iter().filter(|&&k| k > 0).count();
        assert_eq!(probes, 0, "plain, the draft model probed only rarely: {plans:?}");
        // probes back off: 256 rounds, then 512, ...
        let mut plans = vec![];
        for _ in 0..1200 {
            let k = c.plan(DraftSource::Model, 8, 0);
            plans.push(k);
            c.observe(&obs(DraftSource::Model, k, k.min(1), 100 * k as u64, 100 + 25 * k as u64));
        }
        let at: Vec<usize> = plans.iter().enumerate().filter(|(_, &k)| k > 0).map(|(i, _)| i).collect();
        assert!(!at.is_empty() && at.len() <= 3, "probes at {at:?}");
        assert!(at.windows(2).all(|w| w[1] - w[0] > 256), "probes at {at:?}");
        // n-gram probes cost no catch-up: they come sooner
        let mut c = Controller::new(AdaptiveMode::Auto, 8);
        c.observe(&obs(DraftSource::Ngram, 0, 0, 0, 100));
        for _ in 0..4 {
            c.observe(&obs(DraftSource::Ngram, 4, 0, 0, 300));
        }
        let ks: Vec<usize> = (0..40)
            .map(|_| {
                let k = c.plan(DraftSource::Ngram, 8, 0);
                c.observe(&obs(DraftSource::Ngram, k, 0, 0, 100 + 50 * k as u64));
                k
            })
            .collect();
        assert!(ks.iter().filter(|&&k| k > 0).count() >= 1, "{ks:?}");
    }

    #[test]
    fn auto_drafts_long_when_drafts_are_cheap_and_accepted() {
        let mut c = Controller::new(AdaptiveMode::Auto, 8);
        c.observe(&obs(DraftSource::Model, 0, 0, 0, 100));
        for _ in 0..30 {
            c.observe(&obs(DraftSource::Model, 4, 4, 20, 130));
        }
        let k = c.plan(DraftSource::Model, 8, 0);
        assert!(k >= 6, "cheap, always-accepted drafts should be long, got {k}");
        // n-grams cost nothing to draft: even a mediocre acceptance pays
        for _ in 0..20 {
            c.observe(&obs(DraftSource::Ngram, 4, 2, 0, 130));
        }
        assert!(c.plan(DraftSource::Ngram, 8, 0) > 0);
        assert_eq!(c.plan(DraftSource::None, 8, 0), 0);
    }

    #[test]
    fn a_curve_interpolates_extrapolates_and_scales_to_what_was_measured() {
        // this CPU (llama-bench): 1, 1.5, 2.7, 6.2, 8.1, 8.4, 16.7 steps for 1..32 tokens
        let secs = [(1, 0.08), (2, 0.12), (4, 0.216), (8, 0.496), (12, 0.648), (16, 0.672), (32, 1.336)];
        let curve = CostCurve::from_seconds(secs.to_vec()).unwrap();
        assert!((curve.relative(1) - 1.0).abs() < 1e-12);
        assert!((curve.relative(12) - 8.1).abs() < 1e-9);
        assert!((curve.relative(14) - 8.25).abs() < 1e-9, "between 12 and 16");
        assert!((curve.relative(64) - (16.7 + (16.7 - 8.4) / 16.0 * 32.0)).abs() < 1e-9, "along the last segment");
        assert!(CostCurve::from_seconds(vec![(2, 0.1)]).is_none(), "needs batch size 1");
        let mut v = VerifyCosts::with_curve(std::sync::Arc::new(curve));
        assert_eq!(v.estimate(16), None, "no scale before a measurement");
        v.observe(1, 0.1);
        assert!((v.estimate(16).unwrap() - 0.84).abs() < 1e-9, "scaled by the 1-token cost");
        // a 16-token decode that was this time cheaper than the curve says counts as measured
        v.observe(16, 0.7);
        assert_eq!(v.estimate(16), Some(0.7));
        // between them, the scale leans on the nearer measurement (weights 1/(1+distance)²)
        let (s1, s16) = (0.1 / 1.0, 0.7 / 8.4);
        let (w1, w16) = (1.0 / 144.0, 1.0 / 25.0);
        let scale = ((w1 * f64::ln(s1) + w16 * f64::ln(s16)) / (w1 + w16)).exp();
        assert!((v.estimate(12).unwrap() - scale * 8.1).abs() < 1e-9);
        assert!(v.estimate(12).unwrap() < (s1 + s16) / 2.0 * 8.1, "nearer 16's cheaper scale than the mean");
    }

    #[test]
    fn probes_of_many_sequences_share_a_small_budget_unless_rows_are_free() {
        let probe = DraftAsk { reach: geometric_reach(0.1, 4), cap: 4, min: 2, draft_cost: 0.0 };
        let asks = vec![probe; 16];
        // this CPU: 16 rows 9.3, 18 rows ~10.9 one-row decodes
        let cpu = CostCurve::from_seconds(vec![(1, 1.0), (2, 1.6), (4, 2.6), (8, 6.9), (16, 9.3), (20, 12.5), (48, 23.5)]).unwrap();
        let mut v = VerifyCosts::with_curve(std::sync::Arc::new(cpu));
        v.observe_shared(16, 16, 0.34);
        let ks = allocate_drafts(&asks, &v, 512, 1.0).unwrap();
        let honoured = ks.iter().filter(|&&k| k > 0).count();
        assert!(honoured <= 1, "at most one probe fits 10% of a 16-row decode here: {ks:?}");
        // a GPU-like curve: everyone probes
        let flat = CostCurve::from_seconds(vec![(1, 1.0), (64, 1.05)]).unwrap();
        let mut v = VerifyCosts::with_curve(std::sync::Arc::new(flat));
        v.observe_shared(16, 16, 0.02);
        assert!(allocate_drafts(&asks, &v, 512, 1.0).unwrap().iter().all(|&k| k >= 2));
    }

    #[test]
    fn several_sequences_cost_what_the_calibration_measured_for_them() {
        // one sequence: 1, 2, 4, 16 rows cost 1, 1.6, 2.6, 8.6; sixteen sequences with one row each cost 10.2
        let curve =
            CostCurve::from_seconds_with_seqs(vec![(1, 0.04), (2, 0.064), (4, 0.104), (16, 0.344)], vec![(2, 0.072), (16, 0.408)]).unwrap();
        assert!((curve.seq_factor(1) - 1.0).abs() < 1e-12);
        assert!((curve.seq_factor(16) - 10.2 / 8.6).abs() < 1e-9);
        assert!((curve.seq_factor(2) - 1.8 / 1.6).abs() < 1e-9);
        assert!((curve.relative_seqs(16) - 10.2).abs() < 1e-9);
        assert!((curve.relative_shared(20, 16) - curve.relative(20) * 10.2 / 8.6).abs() < 1e-9);
        // without a several-sequence calibration, sequences cost nothing extra
        assert_eq!(CostCurve::from_seconds(vec![(1, 0.04), (16, 0.344)]).unwrap().seq_factor(16), 1.0);
        // measured shapes win; unmeasured ones follow the curve, scaled near what was measured
        let mut v = VerifyCosts::with_curve(std::sync::Arc::new(curve));
        v.observe_shared(16, 16, 0.5);
        assert_eq!(v.estimate_shared(16, 16), Some(0.5));
        let at_20 = v.estimate_shared(20, 16).unwrap();
        assert!((at_20 - 0.5 / 10.2 * curve_rel(20) * 10.2 / 8.6).abs() < 1e-9, "{at_20}");
        v.observe(1, 0.04);
        // one sequence's cost barely moves the estimate for sixteen
        let at_20_now = v.estimate_shared(20, 16).unwrap();
        assert!((at_20_now - at_20).abs() / at_20 < 0.01, "{at_20} → {at_20_now}");
    }

    fn curve_rel(b: usize) -> f64 {
        CostCurve::from_seconds(vec![(1, 0.04), (2, 0.064), (4, 0.104), (16, 0.344)]).unwrap().relative(b)
    }

    #[test]
    fn on_a_flat_curve_auto_drafts_long_and_a_copy_run_lengthens_drafts() {
        // a GPU-like curve: 16 tokens cost 1.2 of one
        let flat = CostCurve { points: vec![(1, 1.0), (16, 1.2), (64, 2.0)], seq_points: vec![] };
        let mut c = Controller::with_curve(AdaptiveMode::Auto, 16, Some(std::sync::Arc::new(flat)));
        c.observe(&Observation {
            source: DraftSource::Ngram,
            k_planned: 0,
            n_drafted: 0,
            n_accepted: 0,
            run: 0,
            n_draft_steps: 0,
            draft_gap: 1,
            n_verified: 1,
            t_draft: Duration::ZERO,
            t_verify: Duration::from_millis(100),
        });
        for _ in 0..4 {
            c.observe(&obs(DraftSource::Model, 4, 3, 0, 110));
        }
        let k = c.best_k(DraftSource::Model, 16, 0).unwrap();
        assert!(k >= 8, "a cheap long verification pays at α ≈ 0.75: k = {k}");
        // on this CPU's curve a plain n-gram α of 0.75 drafts short, a long copy run long
        let cpu = CostCurve::from_seconds(vec![(1, 1.0), (2, 1.5), (4, 2.7), (8, 6.2), (12, 8.1), (16, 8.4), (32, 16.7)]).unwrap();
        let mut c = Controller::with_curve(AdaptiveMode::Auto, 16, Some(std::sync::Arc::new(cpu)));
        c.observe(&Observation {
            source: DraftSource::Ngram,
            k_planned: 0,
            n_drafted: 0,
            n_accepted: 0,
            run: 0,
            n_draft_steps: 0,
            draft_gap: 1,
            n_verified: 1,
            t_draft: Duration::ZERO,
            t_verify: Duration::from_millis(100),
        });
        for _ in 0..4 {
            c.observe(&obs(DraftSource::Ngram, 4, 3, 0, 270));
        }
        let short = c.best_k(DraftSource::Ngram, 16, 0).unwrap();
        let long = c.best_k(DraftSource::Ngram, 16, 400).unwrap();
        assert!(short <= 4 && long > short, "short {short}, long {long}");
        assert!(c.reach(DraftSource::Ngram, 400, 1)[0] > 0.97, "a long run's prior: Laplace's rule");
    }

    #[test]
    fn n_gram_acceptance_is_learned_per_copy_run_length() {
        let mut c = Controller::new(AdaptiveMode::Auto, 16);
        // n-gram drafts are planned from the start; a draft model explores its first rounds
        assert_eq!(c.forced_len(DraftSource::Ngram, 8), None);
        assert_eq!(c.forced_len(DraftSource::Model, 8), Some(4));
        // priors: run 0 the source's 0.6; runs 1–2 Laplace at 1.5; runs 3–6 at 4.5
        let (a1, a2) = (2.5 / 3.5, 5.5 / 6.5);
        let r = c.reach(DraftSource::Ngram, 0, 4);
        let want = [0.6, 0.6 * a1, 0.6 * a1 * a1, 0.6 * a1 * a1 * a2];
        for (got, want) in r.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{r:?}");
        }
        // from a run of 1, four drafted, two accepted: runs 1 and 2 count for, run 3 against
        c.observe(&Observation { run: 1, ..obs(DraftSource::Ngram, 4, 2, 0, 100) });
        let b1 = (2.0 * a1 * DECAY + 2.0) / (2.0 * DECAY + 2.0);
        let b2 = 2.0 * a2 * DECAY / (2.0 * DECAY + 1.0);
        let r = c.reach(DraftSource::Ngram, 1, 3);
        assert!((r[0] - b1).abs() < 1e-12 && (r[1] - b1 * b1).abs() < 1e-12 && (r[2] - b1 * b1 * b2).abs() < 1e-12, "{r:?}");
        // the draft model keeps one α
        let m = c.reach(DraftSource::Model, 7, 3);
        assert!((m[2] - MODEL_PRIOR.powi(3)).abs() < 1e-12);
    }

    #[test]
    fn short_copy_runs_that_fail_stop_drafting_and_long_ones_that_hold_draft_long() {
        // this CPU's curve: a draft token costs most of a decode, so only sure ones pay
        let cpu = CostCurve::from_seconds(vec![(1, 1.0), (2, 1.8), (4, 3.2), (8, 7.9), (12, 10.1), (16, 9.9), (32, 17.4)]).unwrap();
        let mut c = Controller::with_curve(AdaptiveMode::Auto, 16, Some(std::sync::Arc::new(cpu)));
        c.observe(&obs(DraftSource::Ngram, 0, 0, 0, 100));
        // before any evidence a 4-token match plans on Laplace's 0.85: one token at most
        let before = c.best_k(DraftSource::Ngram, 16, 4).unwrap();
        assert!(before <= 1, "{before}");
        // a text where 4-token matches (a JSON key, say) are wrong at once, while copies that
        // reached 20 tokens went on to the end of every draft
        for _ in 0..6 {
            c.observe(&Observation { run: 4, ..obs(DraftSource::Ngram, 3, 0, 0, 300) });
            c.observe(&Observation { run: 20, ..obs(DraftSource::Ngram, 15, 15, 0, 990) });
        }
        assert_eq!(c.best_k(DraftSource::Ngram, 16, 4), Some(0), "short runs: plain decoding");
        let long = c.best_k(DraftSource::Ngram, 16, 20).unwrap();
        assert!(long >= 15, "long runs: the cheap 16-row decode or longer, got {long}");
        // one α for the source (most drafted tokens were accepted) would have drafted after a
        // 4-token match too: one token pays at α above 0.8 here
        let alpha = c.estimate(DraftSource::Ngram).alpha();
        assert!(alpha > 0.9, "α {alpha}");
    }

    #[test]
    fn the_guard_pauses_drafting_that_measured_slower_than_plain_and_tries_again() {
        let mut g = DraftGuard::default();
        // plain rounds of 4 sequences: 0.4 s for 4 tokens
        g.observe(4, 0, 4, 0.4, None);
        // drafted rounds: 0.6 s for 5 tokens (plain would give 6 in that time)
        for _ in 0..GUARD_WINDOW - 1 {
            g.observe(4, 4, 5, 0.6, None);
            assert!(g.allows(4));
        }
        g.observe(4, 4, 5, 0.6, None);
        assert!(!g.allows(4));
        assert_eq!(g.n_pauses, 1);
        for i in 0..GUARD_FIRST_PAUSE {
            assert!(!g.allows(4), "paused round {i}");
            g.observe(4, 0, 4, 0.4, None);
        }
        assert!(g.allows(4));
        assert_eq!(g.n_paused_rounds, GUARD_FIRST_PAUSE);
        // still slower: twice as long a pause
        for _ in 0..GUARD_WINDOW {
            g.observe(4, 4, 5, 0.6, None);
        }
        for _ in 0..2 * GUARD_FIRST_PAUSE {
            assert!(!g.allows(4));
            g.observe(4, 0, 4, 0.4, None);
        }
        assert!(g.allows(4));
        // drafting that pays (8 tokens where plain gives 6) resets the pause
        for _ in 0..GUARD_WINDOW {
            g.observe(4, 4, 8, 0.6, None);
        }
        assert!(g.allows(4));
        for _ in 0..GUARD_WINDOW {
            g.observe(4, 4, 5, 0.6, None);
        }
        for _ in 0..GUARD_FIRST_PAUSE {
            assert!(!g.allows(4));
            g.observe(4, 0, 4, 0.4, None);
        }
        assert!(g.allows(4));
    }

    #[test]
    fn the_guard_compares_with_plain_rounds_of_as_many_sequences() {
        let mut g = DraftGuard::default();
        // plain rounds of 2 sequences are fast, of 8 slow; drafted rounds of 8 sequences that
        // beat plain rounds of 8 keep drafting on, whatever rounds of 2 cost
        g.observe(2, 0, 2, 0.1, None);
        g.observe(8, 0, 8, 1.0, None);
        for _ in 0..GUARD_WINDOW {
            g.observe(8, 4, 10, 1.1, None);
        }
        assert!(g.allows(8));
        // without a measured plain round of 3 sequences, the estimate stands in (3 tokens in
        // 0.2 s, so 4.5 in 0.3 s): 4 tokens in 0.3 s lose
        for _ in 0..GUARD_WINDOW {
            g.observe(3, 2, 4, 0.3, Some(0.2));
        }
        assert!(!g.allows(3));
        // a verdict about rounds of 3 sequences says nothing about rounds of 8 or 2
        assert!(g.allows(8) && g.allows(2));
        // rounds of other sizes do not use up the pause of rounds of 3
        for _ in 0..2 * GUARD_FIRST_PAUSE {
            g.observe(8, 0, 8, 1.0, None);
        }
        assert!(!g.allows(3));
        // nothing to compare with: no verdict
        let mut g = DraftGuard::default();
        for _ in 0..3 * GUARD_WINDOW {
            g.observe(3, 2, 1, 9.0, None);
        }
        assert!(g.allows(3));
    }
}
