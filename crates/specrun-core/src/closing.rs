//! Closing drafts: where a copied value ends under a grammar, and what the target writes there.
//!
//! A copy from the prompt runs on past the value the output takes from it: into a newline the
//! grammar refuses inside a JSON string, or into a table's ` |` that the grammar would allow
//! but the target replaces by `",`. Either way the target's token there is a *closer*, and
//! after it the grammar forces the next key. A sequence learns its closers as it goes, keyed
//! by the kind of grammar state (the fingerprint of its mask: inside a string, after a number)
//! and by the source token the copy proposed (none where the grammar refused it), and drafts
//! the closer and the forced span after it in place of the copy's run-on (the span as long as
//! the grammar forces it, not cut to the copy's planned length: it is as sure as the closer).
//! Verification decides as for any draft, so the output is unchanged.

use crate::constraint::{ConstraintError, Guide};
use crate::model::Token;

/// Closers a sequence remembers (the most recent replace the oldest).
const CLOSERS_MAX: usize = 32;

/// Where a copied value ended: the grammar state's mask fingerprint, and the token the copy
/// proposed there (`None`: one the grammar refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseKey {
    pub mask: u64,
    pub source: Option<Token>,
}

/// One sequence's learned closers, most recent first.
#[derive(Debug, Clone, Default)]
pub struct Closers {
    entries: Vec<(CloseKey, Token)>,
}

impl Closers {
    /// The target wrote `closer` where a copy ended at `key`.
    pub fn learn(&mut self, key: CloseKey, closer: Token) {
        self.entries.retain(|(k, _)| *k != key);
        self.entries.insert(0, (key, closer));
        self.entries.truncate(CLOSERS_MAX);
    }

    /// The closer learned for `key`.
    pub fn closer(&self, key: CloseKey) -> Option<Token> {
        self.entries.iter().find(|(k, _)| *k == key).map(|&(_, c)| c)
    }

    /// The first position `i` of the draft `tokens[own..]` whose token the target replaced by
    /// a closer before, in the same kind of grammar state; with its key.
    pub fn first_replaced(
        &self,
        guide: &mut Guide,
        tokens: &[Token],
        own: usize,
        is_eog: &dyn Fn(Token) -> bool,
    ) -> Result<Option<(usize, CloseKey)>, ConstraintError> {
        let is_source = |t: Token| self.entries.iter().any(|(k, _)| k.source == Some(t));
        for (i, &t) in tokens[own..].iter().enumerate().filter(|&(_, &t)| is_source(t)) {
            let key = CloseKey { mask: guide.mask_after(&tokens[..own + i], is_eog)?.fingerprint(), source: Some(t) };
            if self.closer(key).is_some() {
                return Ok(Some((i, key)));
            }
        }
        Ok(None)
    }
}

/// Whether the last of `tokens` is a closer: the grammar forces a token after it (a key, a
/// separator), so that a draft through it is worth the forced span.
pub fn forces_after(guide: &mut Guide, tokens: &[Token], is_eog: &dyn Fn(Token) -> bool) -> bool {
    guide.forced_after(tokens, 1, is_eog).is_ok_and(|f| !f.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_recent_closer_of_a_key_wins_and_keys_stay_apart() {
        let mut c = Closers::default();
        let string = CloseKey { mask: 1, source: None };
        let pipe = CloseKey { mask: 1, source: Some(7) };
        c.learn(string, 10);
        c.learn(pipe, 11);
        c.learn(string, 12);
        assert_eq!(c.closer(string), Some(12));
        assert_eq!(c.closer(pipe), Some(11));
        assert_eq!(c.closer(CloseKey { mask: 2, source: None }), None);
    }

    #[test]
    fn only_so_many_are_remembered() {
        let mut c = Closers::default();
        for m in 0..CLOSERS_MAX as u64 + 1 {
            c.learn(CloseKey { mask: m, source: None }, 1);
        }
        assert_eq!(c.closer(CloseKey { mask: 0, source: None }), None);
        assert_eq!(c.closer(CloseKey { mask: CLOSERS_MAX as u64, source: None }), Some(1));
    }
}
