//! The hashed n-gram index of one sequence's tokens: every key-gram maps to the positions that
//! follow it, built as the history grows, so a lookup costs the candidates it examines.

use super::{NgramConfig, NgramState};
use crate::model::Token;

/// Key length of the n-gram index: bigrams (or the shortest n-gram asked for, if shorter).
pub(crate) const KEY_MAX: usize = 2;
/// Candidates examined per lookup, most recent first (a very common n-gram can occur
/// thousands of times; the most recent are the likely ones).
pub(crate) const MAX_CANDIDATES: usize = 256;

/// How far back a match is extended, for ranking candidates.
pub(crate) const MAX_EXTEND: usize = 64;

pub(crate) fn hash_key(tokens: &[Token]) -> u64 {
    // FxHash-style mixing: fast, and collisions are harmless (candidates are verified)
    tokens.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| (h.rotate_left(5) ^ t as u32 as u64).wrapping_mul(0x517c_c1b7_2722_0a95))
}

/// Length of the common suffix of `tokens[..a]` and `tokens[..b]`, at most `max`.
pub(crate) fn common_suffix(tokens: &[Token], a: usize, b: usize, max: usize) -> usize {
    common_suffix_of(tokens, a, tokens, b, max)
}

/// Length of the common suffix of `x[..a]` and `y[..b]`, at most `max`.
pub(crate) fn common_suffix_of(x: &[Token], a: usize, y: &[Token], b: usize, max: usize) -> usize {
    let mut n = 0;
    while n < max && n < a && n < b && x[a - 1 - n] == y[b - 1 - n] {
        n += 1;
    }
    n
}

/// Among index `candidates` (positions in `source` that follow a key), the one whose
/// preceding tokens agree longest with the end of `query`: at least `min` tokens, lengths
/// compared up to `cap` (agreement itself is measured up to [`MAX_EXTEND`] or `cap`), the most
/// recent winning ties; the most recent [`MAX_CANDIDATES`] are examined, `usable` filters.
/// Returns `(position, agreement)`.
pub(crate) fn best_candidate(
    candidates: &[u32],
    source: &[Token],
    query: &[Token],
    min: usize,
    cap: usize,
    usable: impl Fn(usize) -> bool,
) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    for &pos in candidates.iter().rev().take(MAX_CANDIDATES) {
        let pos = pos as usize;
        if !usable(pos) {
            continue;
        }
        let len = common_suffix_of(source, pos, query, query.len(), MAX_EXTEND.max(cap));
        if len >= min && best.is_none_or(|(_, l)| len.min(cap) > l.min(cap)) {
            best = Some((pos, len));
        }
    }
    best
}

impl NgramState {
    pub(crate) fn update_index(&mut self, tokens: &[Token], config: NgramConfig) {
        let key = config.n_min.clamp(1, KEY_MAX);
        if key != self.key || tokens.len() < self.indexed {
            // a new sequence, or another configuration: rebuild
            self.index.clear();
            self.key = key;
            self.indexed = 0;
        }
        // index positions whose key ends before the last token (the suffix being matched
        // must not find itself)
        let end = tokens.len().saturating_sub(1);
        for pos in self.indexed.max(key)..=end {
            if pos >= tokens.len() {
                break;
            }
            self.index.entry(hash_key(&tokens[pos - key..pos])).or_default().push(pos as u32);
        }
        self.indexed = self.indexed.max(end + 1).max(key);
    }

    /// The longest earlier match of a suffix of `tokens` (at least `n_min` long), most recent
    /// among equals: the position its continuation starts at.
    pub(crate) fn longest_match(&self, tokens: &[Token], config: NgramConfig) -> Option<(usize, usize)> {
        let n = tokens.len();
        if n <= self.key {
            return None;
        }
        let candidates = self.index.get(&hash_key(&tokens[n - self.key..]))?;
        best_candidate(candidates, tokens, tokens, config.n_min.max(1), config.n_max, |pos| pos < n.min(self.sources()))
    }
}
