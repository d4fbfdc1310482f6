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

    /// Where a drafter's tokens `tokens[own..]` end under the grammar: at the first the
    /// target replaced by a closer before in the same kind of grammar state, or else at the
    /// first the grammar refuses (a copy runs on past its value either way). Returns how many
    /// of them to keep and, when that is fewer than all, the key of the end.
    pub fn draft_end(
        &self,
        guide: &mut Guide,
        tokens: &[Token],
        own: usize,
        is_eog: &dyn Fn(Token) -> bool,
    ) -> Result<(usize, Option<CloseKey>), ConstraintError> {
        let allowed = guide.allowed_prefix(&tokens[..own], &tokens[own..], is_eog)?;
        if let Some((i, key)) = self.first_replaced(guide, &tokens[..own + allowed], own, is_eog)? {
            return Ok((i, Some(key)));
        }
        if own + allowed == tokens.len() {
            return Ok((allowed, None));
        }
        let mask = guide.mask_after(&tokens[..own + allowed], is_eog)?.fingerprint();
        Ok((allowed, Some(CloseKey { mask, source: None })))
    }

    /// The first position `i` of the draft `tokens[own..]` whose token the target replaced by
    /// a closer before, in the same kind of grammar state; with its key.
    fn first_replaced(
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
    fn a_copy_ends_at_a_token_replaced_before_even_where_the_grammar_refuses_one_later() {
        use crate::mock::{MockGrammar, MockSegment::*};
        let g = MockGrammar::new(vec![Literal(vec![10]), Choice { allowed: (20..24).collect(), min: 1, max: 4 }, Literal(vec![12])], 0, 32);
        let mut guide = Guide::new(Box::new(g), 1);
        let no_eog = |t: Token| t == 0;
        // prompt, the forced key, then a copy whose value runs on into a token the grammar refuses
        let tokens = [9, 10, 20, 21, 5];
        let mut closers = Closers::default();
        let refused = CloseKey { mask: guide.mask_after(&tokens[..4], &no_eog).unwrap().fingerprint(), source: None };
        assert_eq!(closers.draft_end(&mut guide, &tokens, 2, &no_eog).unwrap(), (2, Some(refused)));
        // the target wrote the closer where a copy proposed 21 after one value token
        let replaced = CloseKey { mask: guide.mask_after(&tokens[..3], &no_eog).unwrap().fingerprint(), source: Some(21) };
        closers.learn(replaced, 12);
        assert_eq!(closers.draft_end(&mut guide, &tokens, 2, &no_eog).unwrap(), (1, Some(replaced)));
        // another source token there is kept, up to the refused one
        let other = [9, 10, 20, 22, 5];
        let refused = CloseKey { mask: guide.mask_after(&other[..4], &no_eog).unwrap().fingerprint(), source: None };
        assert_eq!(closers.draft_end(&mut guide, &other, 2, &no_eog).unwrap(), (2, Some(refused)));
        // a draft the grammar allows whole, with no replaced token, is kept whole
        assert_eq!(closers.draft_end(&mut guide, &[9, 10, 20, 22], 2, &no_eog).unwrap(), (2, None));
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
