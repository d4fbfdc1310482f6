//! Counters and timings of one generation (timed with a [`crate::clock::Clock`]).

use serde::Serialize;
use std::time::Duration;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-generation token (or a stop string).
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The context is full.
    Context,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Context => "context",
        }
    }
}

/// Everything measured about one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GenStats {
    pub n_prompt: usize,
    /// Prompt tokens whose cells an earlier sequence in the same slot left, or the prefix cache
    /// restored (not read again).
    pub n_prompt_cached: usize,
    /// Of those, the ones the prefix cache restored.
    pub n_prompt_restored: usize,
    /// Of those, the ones shared from another slot's cells (another sequence reading or
    /// holding the same prompt).
    pub n_prompt_shared: usize,
    pub n_generated: usize,
    /// Target decodes after the prompt (one per round).
    pub n_rounds: usize,
    pub n_drafted: usize,
    pub n_accepted: usize,
    /// Rounds in which a drafted token was rejected (at most one rejection per round).
    pub n_rejections: usize,
    /// `drafted_at[i]`: rounds that drafted a token at position `i + 1`.
    pub drafted_at: Vec<usize>,
    /// `accepted_at[i]`: rounds whose token at position `i + 1` was accepted.
    pub accepted_at: Vec<usize>,
    /// Rounds that ran without a draft (draft length 0 chosen, or nothing proposed).
    pub n_rounds_undrafted: usize,
    /// Rounds whose draft came from a draft model / from an n-gram match.
    pub n_rounds_model: usize,
    pub n_rounds_ngram: usize,
    /// `k_planned[k]`: rounds for which the controller chose draft length `k`.
    pub k_planned: Vec<usize>,
    /// Draft-model forward passes (one per drafted token, plus catch-up batches).
    pub n_draft_steps: usize,
    /// Tokens a constraint forced and the rounds drafted ahead of any drafter's (counted in
    /// `n_drafted` too), and how many of them the target accepted.
    pub n_forced: usize,
    pub n_forced_accepted: usize,
    /// Tokens drafted where the grammar refused a drafter's token (a closing token the target
    /// ended such a cut with before, and what the grammar forces after it; counted in
    /// `n_drafted` too), and how many of them the target accepted.
    pub n_closing: usize,
    pub n_closing_accepted: usize,
    /// Tokens drafted as the likely spelling of text the grammar forces after its forced tokens
    /// (a quote that may also merge with the value after it; counted in `n_drafted` too), and
    /// how many of them the target accepted.
    pub n_likely: usize,
    pub n_likely_accepted: usize,
    /// Grammar masks computed (drafting and verification).
    pub n_masks: usize,
    /// Target rows decoded without logits: the grammar allowed one token there.
    pub n_rows_unread: usize,
    #[serde(serialize_with = "secs")]
    pub t_prompt: Duration,
    #[serde(serialize_with = "secs")]
    pub t_draft: Duration,
    #[serde(serialize_with = "secs")]
    pub t_verify: Duration,
    /// Verify time of the rounds that had a draft.
    #[serde(serialize_with = "secs")]
    pub t_verify_drafted: Duration,
    /// Decode time after the prompt (draft + verify + bookkeeping).
    #[serde(serialize_with = "secs")]
    pub t_decode: Duration,
    /// The controller's expectations against what its rounds did (rounds it could price).
    #[serde(skip)]
    pub plan_check: PlanCheck,
}

/// One round, as it happened (kept when [`crate::engine::Sequence::trace_rounds`] is set): for
/// seeing why speculation does or does not pay on a prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundRecord {
    /// Tokens before the round (prompt and generated).
    pub n_hist: usize,
    pub source: crate::draft::DraftSource,
    /// The copy run the plan started from (n-gram drafts).
    pub run: usize,
    pub k_planned: usize,
    /// Of the tokens proposed, how many a constraint forced (they come first).
    pub n_forced: usize,
    /// Of the tokens proposed, how many a closing draft added (a closer and the structure
    /// after it, at their end: [`crate::closing`]).
    pub n_closing: usize,
    /// The tokens proposed (empty: a plain round).
    pub drafted: Vec<crate::model::Token>,
    pub n_accepted: usize,
    /// What the plan expected, when its costs were known.
    pub expected: Option<Expectation>,
    pub t_draft: Duration,
    pub t_verify: Duration,
    /// Rows of the target decode (all sequences' when it was shared).
    pub n_rows: usize,
}

/// What a plan expects of a round: the tokens it emits and the seconds it takes (drafting and
/// verification as the cost model prices them).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Expectation {
    pub tokens: f64,
    pub secs: f64,
}

/// What the draft-length plans expected of their rounds — tokens (from the acceptance
/// estimates) and seconds (from the cost model) — against what those rounds emitted and took.
/// Only rounds whose costs could be estimated when they were planned count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PlanCheck {
    pub n_rounds: usize,
    pub expected_tokens: f64,
    pub expected_secs: f64,
    pub n_tokens: usize,
    pub secs: f64,
}

impl PlanCheck {
    /// One round: `expected` as planned; `tokens` emitted in `secs`.
    pub fn add(&mut self, expected: Expectation, tokens: usize, secs: f64) {
        self.n_rounds += 1;
        self.expected_tokens += expected.tokens;
        self.expected_secs += expected.secs;
        self.n_tokens += tokens;
        self.secs += secs;
    }

    pub fn merge(&mut self, o: &PlanCheck) {
        self.n_rounds += o.n_rounds;
        self.expected_tokens += o.expected_tokens;
        self.expected_secs += o.expected_secs;
        self.n_tokens += o.n_tokens;
        self.secs += o.secs;
    }

    /// Tokens per second the plans expected (0 without planned rounds).
    pub fn expected_rate(&self) -> f64 {
        ratio(self.expected_tokens, self.expected_secs)
    }

    /// Emitted over expected tokens.
    pub fn tokens_ratio(&self) -> f64 {
        ratio(self.n_tokens as f64, self.expected_tokens)
    }

    /// Measured over expected seconds.
    pub fn time_ratio(&self) -> f64 {
        ratio(self.secs, self.expected_secs)
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

impl GenStats {
    /// Record one verified round: `n_drafted` proposed, `n_accepted` of them kept.
    pub fn record_round(&mut self, n_drafted: usize, n_accepted: usize) {
        self.n_rounds += 1;
        self.n_drafted += n_drafted;
        self.n_accepted += n_accepted;
        if n_drafted == 0 {
            self.n_rounds_undrafted += 1;
        }
        if n_accepted < n_drafted {
            self.n_rejections += 1;
        }
        if self.drafted_at.len() < n_drafted {
            self.drafted_at.resize(n_drafted, 0);
            self.accepted_at.resize(n_drafted, 0);
        }
        for i in 0..n_drafted {
            self.drafted_at[i] += 1;
            if i < n_accepted {
                self.accepted_at[i] += 1;
            }
        }
    }

    /// Record where a round's draft came from and the length planned for it.
    pub fn record_source(&mut self, source: crate::draft::DraftSource, k_planned: usize) {
        match source {
            crate::draft::DraftSource::Model => self.n_rounds_model += 1,
            crate::draft::DraftSource::Ngram => self.n_rounds_ngram += 1,
            crate::draft::DraftSource::None => {}
        }
        if self.k_planned.len() <= k_planned {
            self.k_planned.resize(k_planned + 1, 0);
        }
        self.k_planned[k_planned] += 1;
    }

    /// Mean draft length the controller chose.
    pub fn mean_k_planned(&self) -> f64 {
        let rounds: usize = self.k_planned.iter().sum();
        ratio(self.k_planned.iter().enumerate().map(|(k, &n)| (k * n) as f64).sum(), rounds as f64)
    }

    /// `n_accepted / n_drafted` (0 when nothing was drafted).
    pub fn acceptance_rate(&self) -> f64 {
        ratio(self.n_accepted as f64, self.n_drafted as f64)
    }

    /// Tokens emitted per target decode.
    pub fn tokens_per_round(&self) -> f64 {
        ratio(self.n_generated as f64, self.n_rounds as f64)
    }

    /// Per-token acceptance probability α as speculative-decoding theory uses it: accepted
    /// tokens over accepted tokens plus rejections (the geometric model's estimate; unlike
    /// `acceptance_rate` it does not count tokens after a rejection as rejected).
    pub fn alpha(&self) -> f64 {
        ratio(self.n_accepted as f64, (self.n_accepted + self.n_rejections) as f64)
    }

    /// Acceptance rate at each draft position 1..=K.
    pub fn acceptance_by_position(&self) -> Vec<f64> {
        self.drafted_at.iter().zip(&self.accepted_at).map(|(&d, &a)| ratio(a as f64, d as f64)).collect()
    }

    pub fn decode_tok_per_s(&self) -> f64 {
        ratio(self.n_generated as f64, self.t_decode.as_secs_f64())
    }

    pub fn prompt_tok_per_s(&self) -> f64 {
        // tokens a slot's prompt cache held were not read
        ratio((self.n_prompt - self.n_prompt_cached) as f64, self.t_prompt.as_secs_f64())
    }

    /// Decode time that was neither drafting nor verifying.
    pub fn t_other(&self) -> Duration {
        self.t_decode.saturating_sub(self.t_draft + self.t_verify)
    }

    /// Mean cost of one draft step relative to one target decode (a rough `c`).
    pub fn draft_cost_ratio(&self) -> f64 {
        let per_draft = ratio(self.t_draft.as_secs_f64(), self.n_draft_steps as f64);
        let per_verify = ratio(self.t_verify.as_secs_f64(), self.n_rounds as f64);
        ratio(per_draft, per_verify)
    }

    /// Add another generation's counters and times to these.
    pub fn merge(&mut self, o: &GenStats) {
        self.n_prompt += o.n_prompt;
        self.n_prompt_cached += o.n_prompt_cached;
        self.n_prompt_restored += o.n_prompt_restored;
        self.n_prompt_shared += o.n_prompt_shared;
        self.n_generated += o.n_generated;
        self.n_rounds += o.n_rounds;
        self.n_drafted += o.n_drafted;
        self.n_accepted += o.n_accepted;
        self.n_rejections += o.n_rejections;
        self.n_rounds_undrafted += o.n_rounds_undrafted;
        self.n_draft_steps += o.n_draft_steps;
        self.n_forced += o.n_forced;
        self.n_forced_accepted += o.n_forced_accepted;
        self.n_closing += o.n_closing;
        self.n_closing_accepted += o.n_closing_accepted;
        self.n_likely += o.n_likely;
        self.n_likely_accepted += o.n_likely_accepted;
        self.n_masks += o.n_masks;
        self.n_rows_unread += o.n_rows_unread;
        self.n_rounds_model += o.n_rounds_model;
        self.n_rounds_ngram += o.n_rounds_ngram;
        if self.k_planned.len() < o.k_planned.len() {
            self.k_planned.resize(o.k_planned.len(), 0);
        }
        for (k, &n) in o.k_planned.iter().enumerate() {
            self.k_planned[k] += n;
        }
        let k = self.drafted_at.len().max(o.drafted_at.len());
        self.drafted_at.resize(k, 0);
        self.accepted_at.resize(k, 0);
        for i in 0..o.drafted_at.len() {
            self.drafted_at[i] += o.drafted_at[i];
            self.accepted_at[i] += o.accepted_at[i];
        }
        self.t_prompt += o.t_prompt;
        self.t_draft += o.t_draft;
        self.t_verify += o.t_verify;
        self.t_verify_drafted += o.t_verify_drafted;
        self.t_decode += o.t_decode;
        self.plan_check.merge(&o.plan_check);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_position_acceptance_counts_prefixes() {
        let mut s = GenStats::default();
        s.record_round(3, 1);
        s.record_round(2, 2);
        s.record_round(0, 0);
        assert_eq!(s.drafted_at, vec![2, 2, 1]);
        assert_eq!(s.accepted_at, vec![2, 1, 0]);
        assert_eq!(s.acceptance_by_position(), vec![1.0, 0.5, 0.0]);
        assert_eq!(s.n_rounds_undrafted, 1);
        assert!((s.acceptance_rate() - 0.6).abs() < 1e-12);
    }

    #[test]
    fn plan_checks_add_merge_and_compare() {
        let mut a = PlanCheck::default();
        a.add(Expectation { tokens: 3.0, secs: 0.1 }, 2, 0.12);
        a.add(Expectation { tokens: 1.0, secs: 0.05 }, 1, 0.05);
        let mut b = PlanCheck::default();
        b.add(Expectation { tokens: 4.0, secs: 0.2 }, 5, 0.18);
        a.merge(&b);
        assert_eq!((a.n_rounds, a.n_tokens), (3, 8));
        assert!((a.expected_rate() - 8.0 / 0.35).abs() < 1e-9);
        assert!((a.tokens_ratio() - 1.0).abs() < 1e-12);
        assert!((a.time_ratio() - 1.0).abs() < 1e-12);
        assert_eq!(PlanCheck::default().expected_rate(), 0.0);
    }
}
