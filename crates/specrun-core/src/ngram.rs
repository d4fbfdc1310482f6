//! N-gram (prompt-lookup) drafting: propose what followed the last time the sequence's most
//! recent tokens appeared.
//!
//! No model, no cache, almost no cost: for input-grounded generation (editing given code,
//! quoting a given text) the continuation is often already in the context. The proposal is
//! deterministic, so for rejection sampling its `q` is one-hot: the target accepts `x` with
//! probability `p(x)` and otherwise samples from `p` without `x`.

use crate::draft::{DraftReport, DraftRequest, DraftSource, Drafter};
use crate::model::{KvCursor, ModelError, Token};
use crate::sampling::{Dist, Scratch};
use rand_chacha::ChaCha8Rng;

/// Settings of the n-gram lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramConfig {
    /// Shortest suffix that counts as a match.
    pub n_min: usize,
    /// Longest suffix tried first.
    pub n_max: usize,
}

impl Default for NgramConfig {
    fn default() -> Self {
        Self { n_min: 3, n_max: 5 }
    }
}

/// The continuation of the longest earlier occurrence of a suffix of `tokens` (lengths `n_max`
/// down to `n_min`), at most `max` tokens; empty if there is none. Among occurrences of the
/// same suffix the most recent one with `max` tokens after it wins.
pub fn lookup(tokens: &[Token], config: NgramConfig, max: usize) -> &[Token] {
    let len = tokens.len();
    if max == 0 {
        return &[];
    }
    for n in (config.n_min.max(1)..=config.n_max).rev() {
        if n >= len {
            continue;
        }
        let suffix = &tokens[len - n..];
        // The most recent earlier occurrence with a full continuation of `max` tokens; failing
        // that, the earliest one (whose continuation is the longest there is).
        let mut earliest = None;
        for start in (0..len - n).rev() {
            if &tokens[start..start + n] == suffix {
                let from = start + n;
                if len - from >= max {
                    return &tokens[from..from + max];
                }
                earliest = Some(from);
            }
        }
        if let Some(from) = earliest {
            return &tokens[from..];
        }
    }
    &[]
}

/// The n-gram drafter.
#[derive(Debug, Clone, Default)]
pub struct NgramDrafter {
    pub config: NgramConfig,
}

impl NgramDrafter {
    pub fn new(config: NgramConfig) -> Self {
        Self { config }
    }
}

impl Drafter for NgramDrafter {
    fn name(&self) -> &'static str {
        "ngram"
    }

    fn source(&self, tokens: &[Token]) -> DraftSource {
        if lookup(tokens, self.config, 1).is_empty() {
            DraftSource::None
        } else {
            DraftSource::Ngram
        }
    }

    fn begin(&mut self, _: &mut KvCursor, _: &[Token]) -> Result<(), ModelError> {
        Ok(())
    }

    fn propose(
        &mut self,
        _: &mut KvCursor,
        tokens: &mut Vec<Token>,
        q: &mut Vec<Dist>,
        req: &DraftRequest<'_>,
        _: &mut Scratch,
        _: &mut ChaCha8Rng,
    ) -> Result<DraftReport, ModelError> {
        let proposal = lookup(tokens, self.config, req.max).to_vec();
        if req.keep_q {
            q.extend(proposal.iter().map(|&t| Dist::one_hot(t)));
        }
        tokens.extend(proposal);
        Ok(DraftReport { n_steps: 0, source: DraftSource::Ngram })
    }

    fn rollback(&mut self, _: &mut KvCursor, _: usize) -> Result<(), ModelError> {
        Ok(())
    }
}

/// N-gram proposals when the context has a match, the draft model otherwise.
#[derive(Debug)]
pub struct HybridDrafter<D> {
    pub ngram: NgramDrafter,
    pub model: D,
}

impl<D: Drafter> Drafter for HybridDrafter<D> {
    fn name(&self) -> &'static str {
        "hybrid"
    }

    fn n_ctx(&self) -> usize {
        self.model.n_ctx()
    }

    fn source(&self, tokens: &[Token]) -> DraftSource {
        match self.ngram.source(tokens) {
            DraftSource::Ngram => DraftSource::Ngram,
            _ => self.model.source(tokens),
        }
    }

    fn begin(&mut self, cursor: &mut KvCursor, prompt: &[Token]) -> Result<(), ModelError> {
        self.model.begin(cursor, prompt)
    }

    fn propose(
        &mut self,
        cursor: &mut KvCursor,
        tokens: &mut Vec<Token>,
        q: &mut Vec<Dist>,
        req: &DraftRequest<'_>,
        scratch: &mut Scratch,
        rng: &mut ChaCha8Rng,
    ) -> Result<DraftReport, ModelError> {
        // The draft model's cache simply falls behind while n-grams draft; its next step
        // catches up in one batch.
        let before = tokens.len();
        let report = self.ngram.propose(cursor, tokens, q, req, scratch, rng)?;
        if tokens.len() > before {
            return Ok(report);
        }
        self.model.propose(cursor, tokens, q, req, scratch, rng)
    }

    fn rollback(&mut self, cursor: &mut KvCursor, keep: usize) -> Result<(), ModelError> {
        self.model.rollback(cursor, keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: NgramConfig = NgramConfig { n_min: 1, n_max: 3 };

    #[test]
    fn the_longest_suffix_wins_over_a_more_recent_shorter_one() {
        // suffix [1,2,3] occurred at 0 (followed by 9 8); suffix [3] alone occurs later (followed by 7)
        let t = [1, 2, 3, 9, 8, 3, 7, 5, 1, 2, 3];
        assert_eq!(lookup(&t, C, 2), &[9, 8]);
        assert_eq!(lookup(&t, C, 10), &[9, 8, 3, 7, 5, 1, 2, 3]);
    }

    #[test]
    fn the_most_recent_occurrence_wins_among_equal_lengths() {
        let t = [4, 5, 1, 4, 5, 2, 4, 5];
        assert_eq!(lookup(&t, NgramConfig { n_min: 2, n_max: 2 }, 1), &[2]);
    }

    #[test]
    fn no_match_gives_an_empty_proposal() {
        assert!(lookup(&[1, 2, 3, 4], C, 4).is_empty());
        assert!(lookup(&[], C, 4).is_empty());
        assert!(lookup(&[1, 2, 1], NgramConfig { n_min: 2, n_max: 3 }, 4).is_empty());
        assert!(lookup(&[1, 2, 1, 2], C, 0).is_empty());
    }

    #[test]
    fn repetitive_input_proposes_the_repetition() {
        let t = [7; 10];
        assert_eq!(lookup(&t, C, 4), &[7, 7, 7, 7]);
        let t = [1, 2, 1, 2, 1, 2, 1];
        assert_eq!(lookup(&t, C, 3), &[2, 1, 2]);
    }
}
