//! The per-round trace of `specrun run --trace-rounds FILE` (and `batch`'s, each line with its
//! record's id): one JSON object per round —
//! where the draft came from, how long the plan wanted it, what was proposed and kept, what
//! the plan expected and what the round took. For seeing why speculation pays on one prompt
//! and not on another.

use serde::Serialize;
use specrun_core::draft::DraftSource;
use specrun_core::stats::RoundRecord;

/// One round of the trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundLine {
    /// The id of the record the round belongs to (`batch`; absent for `run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    /// The round's number: the first token, taken with the prompt, is round 1, so the first
    /// traced round is 2.
    pub round: usize,
    /// Tokens before the round (prompt and generated).
    pub position: usize,
    pub source: DraftSource,
    /// How long the copy the n-gram drafter continued had lasted.
    pub copy_run: usize,
    pub k_planned: usize,
    pub n_drafted: usize,
    /// Of the drafted tokens, how many a constraint forced (they come first; absent when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub n_forced: usize,
    /// Of the drafted tokens, how many a closing draft added (at their end; absent when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub n_closing: usize,
    pub n_accepted: usize,
    /// Tokens the round added (accepted draft and the target's own).
    pub n_emitted: usize,
    /// What the plan expected of the round, when its costs were known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_tokens: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_ms: Option<f64>,
    pub draft_ms: f64,
    pub verify_ms: f64,
    /// Rows of the target decode.
    pub rows: usize,
    pub drafted: String,
    pub emitted: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl RoundLine {
    /// Round `round` from its record, the number of tokens it added and the text of its
    /// draft and of what it added.
    pub fn new(round: usize, r: &RoundRecord, n_emitted: usize, drafted: String, emitted: String) -> Self {
        let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e5).round() / 1e2;
        Self {
            id: None,
            round,
            position: r.n_hist,
            source: r.source,
            copy_run: r.run,
            k_planned: r.k_planned,
            n_drafted: r.drafted.len(),
            n_forced: r.n_forced,
            n_closing: r.n_closing,
            n_accepted: r.n_accepted,
            n_emitted,
            expected_tokens: r.expected.map(|e| (e.tokens * 1e3).round() / 1e3),
            expected_ms: r.expected.map(|e| (e.secs * 1e5).round() / 1e2),
            draft_ms: ms(r.t_draft),
            verify_ms: ms(r.t_verify),
            rows: r.n_rows,
            drafted,
            emitted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_round_renders_as_one_json_object() {
        let r = RoundRecord {
            n_hist: 40,
            source: DraftSource::Ngram,
            run: 7,
            k_planned: 4,
            n_forced: 0,
            n_closing: 0,
            drafted: vec![1, 2, 3, 4],
            n_accepted: 2,
            expected: Some(specrun_core::stats::Expectation { tokens: 3.25, secs: 0.0612345 }),
            t_draft: Duration::from_micros(20),
            t_verify: Duration::from_micros(61_004),
            n_rows: 5,
        };
        let line = serde_json::to_string(&RoundLine::new(3, &r, 3, "a b c d".into(), "a b x".into())).unwrap();
        assert_eq!(
            line,
            r#"{"round":3,"position":40,"source":"ngram","copy_run":7,"k_planned":4,"n_drafted":4,"n_accepted":2,"n_emitted":3,"expected_tokens":3.25,"expected_ms":61.23,"draft_ms":0.02,"verify_ms":61.0,"rows":5,"drafted":"a b c d","emitted":"a b x"}"#
        );
        let plain = RoundRecord { n_rows: 1, ..RoundRecord::default() };
        let line = serde_json::to_string(&RoundLine::new(1, &plain, 1, String::new(), "x".into())).unwrap();
        assert!(!line.contains("expected"), "{line}");
    }
}
