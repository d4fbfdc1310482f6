//! The draft cache across sequences: earlier outputs, indexed, proposing where a
//! sequence's own context has no match.

use super::index::{best_candidate, hash_key, MAX_EXTEND};
use crate::model::Token;
use std::collections::HashMap;

/// A draft cache across sequences: the outputs of earlier sequences (vLLM's suffix decoding,
/// llama.cpp's n-gram cache files), indexed by trigram. When a sequence's own context has no
/// match, the longest match of its last tokens in earlier outputs proposes the continuation.
/// It only proposes: verification is unchanged, so greedy output does not depend on which
/// sequences came before (up to batch-shape near-ties, see the README); only
/// timing does.
#[derive(Debug, Clone, Default)]
pub struct NgramCorpus {
    pub(crate) tokens: Vec<Token>,
    pub(crate) index: HashMap<u64, Vec<u32>>,
}

/// Tokens an [`NgramCorpus`] keeps at most (older outputs are forgotten wholesale).
pub(crate) const CORPUS_MAX: usize = 1 << 20;
/// Key length of the corpus index, and the shortest match it proposes from.
pub(crate) const CORPUS_KEY: usize = 3;
/// Separates outputs in the corpus (not a token id).
pub(crate) const SEPARATOR: Token = -1;

impl NgramCorpus {
    /// Add one sequence's output.
    pub fn add(&mut self, generated: &[Token]) {
        if generated.len() < CORPUS_KEY + 1 {
            return;
        }
        if self.tokens.len() + generated.len() + 1 > CORPUS_MAX {
            *self = Self::default();
        }
        let start = self.tokens.len();
        self.tokens.extend_from_slice(generated);
        self.tokens.push(SEPARATOR);
        for pos in (start + CORPUS_KEY)..self.tokens.len() {
            self.index.entry(hash_key(&self.tokens[pos - CORPUS_KEY..pos])).or_default().push(pos as u32);
        }
    }

    /// Where in the corpus the longest match (at least the key length) of the end of `tokens`
    /// continues, most recent among equals.
    pub(crate) fn lookup(&self, tokens: &[Token]) -> Option<usize> {
        let n = tokens.len();
        if n < CORPUS_KEY {
            return None;
        }
        let candidates = self.index.get(&hash_key(&tokens[n - CORPUS_KEY..]))?;
        let usable = |pos: usize| pos < self.tokens.len() && self.tokens[pos] != SEPARATOR;
        best_candidate(candidates, &self.tokens, tokens, CORPUS_KEY, MAX_EXTEND, usable).map(|(pos, _)| pos)
    }

    /// Append up to `max` tokens of the continuation at `pos` (stopping at an output's end).
    pub(crate) fn copy(&self, pos: usize, tokens: &mut Vec<Token>, max: usize) {
        tokens.extend(self.tokens[pos..].iter().take(max).take_while(|&&t| t != SEPARATOR));
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}
