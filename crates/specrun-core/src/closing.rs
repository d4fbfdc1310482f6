//! Closing drafts: where a copied value ends under a grammar, and what the target writes there.
//!
//! A copy from the prompt runs on past the value the output takes from it: into a newline the
//! grammar refuses inside a JSON string, or into a table's ` |` that the grammar would allow
//! but the target replaces by `",`. Either way the target's token there is a *closer*, and
//! after it the grammar forces the next key. Sequences learn closers as they go (a new one
//! starts from what the engine's earlier sequences learned: one run's values end alike), keyed
//! by the kind of grammar state (the fingerprint of its mask: inside a string, after a number)
//! and by the source token the copy proposed (none where the grammar refused it, or where the
//! target closed a value on its own), and drafts the closer and the forced span after it in
//! place of the copy's run-on (the span as long as the grammar forces it, not cut to the
//! copy's planned length: it is as sure as the closer).
//!
//! Prose marks a value's end with punctuation that differs from value to value (`Madrid.`,
//! `Jorge,`, `Ruiz (`): where the source breaks a clause there (punctuation, then a space),
//! the closer the state had before is drafted, unless the target went on through that very
//! token in that state before. Verification decides as for any draft, so the output is
//! unchanged.

use crate::anchor::TokenTexts;
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

/// Learned closers (a sequence's, or an engine's across its sequences), most recent first.
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

    /// Nothing closes a value at `key` (the target went on with other text there).
    pub fn forget(&mut self, key: CloseKey) {
        self.entries.retain(|(k, _)| *k != key);
    }

    /// The closer learned for `key`.
    pub fn closer(&self, key: CloseKey) -> Option<Token> {
        self.entries.iter().find(|(k, _)| *k == key).map(|&(_, c)| c)
    }

    /// The closer to draft where a copy reaches `key`: the one learned there, unless the target
    /// went on with the copied token itself; where nothing was learned there and the source
    /// breaks a clause (`breaks`), the one the same kind of state had most recently.
    fn closer_at(&self, key: CloseKey, breaks: bool) -> Option<Token> {
        match self.closer(key) {
            Some(c) => Some(c).filter(|&c| Some(c) != key.source),
            None if breaks => self.entries.iter().find(|(k, c)| k.mask == key.mask && Some(*c) != k.source).map(|&(_, c)| c),
            None => None,
        }
    }

    /// Where a drafter's tokens `tokens[own..]` end under the grammar: at the first where a
    /// closer belongs (learned there, or at a clause break: `breaks(i)`, the source breaks one at
    /// `tokens[own + i]`), or else at the first the grammar refuses (a copy runs on past its
    /// value either way). Returns how many of them to keep and, when that is fewer than all,
    /// where they ended.
    pub fn draft_end(
        &self,
        guide: &mut Guide,
        tokens: &[Token],
        own: usize,
        breaks: &dyn Fn(usize) -> bool,
        is_eog: &dyn Fn(Token) -> bool,
    ) -> Result<(usize, Option<CopyEnd>), ConstraintError> {
        let allowed = guide.allowed_prefix(&tokens[..own], &tokens[own..], is_eog)?;
        let is_source = |t: Token| self.entries.iter().any(|(k, _)| k.source == Some(t));
        for (i, &t) in tokens[own..own + allowed].iter().enumerate() {
            let breaks = breaks(i);
            if !breaks && !is_source(t) {
                continue;
            }
            let key = CloseKey { mask: guide.mask_after(&tokens[..own + i], is_eog)?.fingerprint(), source: Some(t) };
            if let Some(closer) = self.closer_at(key, breaks) {
                return Ok((i, Some(CopyEnd { key, closer: Some(closer) })));
            }
        }
        if own + allowed == tokens.len() {
            return Ok((allowed, None));
        }
        let key = CloseKey { mask: guide.mask_after(&tokens[..own + allowed], is_eog)?.fingerprint(), source: None };
        Ok((allowed, Some(CopyEnd { key, closer: self.closer_at(key, true) })))
    }
}

/// The tokens that completed outputs under a grammar (`]}` after a list's last record, `"}`
/// after a last string value), by the kind of state they were written in; the engine keeps
/// them across sequences (every output ends once, and the outputs of one run end alike), and a
/// state that ended an output before drafts that token and the end after it.
#[derive(Debug, Clone, Default)]
pub struct Endings {
    entries: Vec<(u64, Token)>,
    /// The end-of-generation token the last output that ended under a grammar ended with.
    pub end: Option<Token>,
}

impl Endings {
    /// The target completed an output with `token` in a state of mask fingerprint `mask`.
    pub fn learn(&mut self, mask: u64, token: Token) {
        self.entries.retain(|&(m, _)| m != mask);
        self.entries.insert(0, (mask, token));
        self.entries.truncate(CLOSERS_MAX);
    }

    /// The target turned down the ending drafted in a state of fingerprint `mask`.
    pub fn forget(&mut self, mask: u64) {
        self.entries.retain(|&(m, _)| m != mask);
    }

    /// The token that completed an output in a state like this one.
    pub fn ending(&self, mask: u64) -> Option<Token> {
        self.entries.iter().find(|&&(m, _)| m == mask).map(|&(_, t)| t)
    }
}

/// Where a drafter's tokens were cut as a value's end, and the closer to draft there (none
/// known yet: the target's token there is learned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyEnd {
    pub key: CloseKey,
    pub closer: Option<Token>,
}

/// Whether the text breaks a clause at `tokens[i]`: a token of punctuation (after any
/// spaces), then a space or a line's end, in the token or at the start of the next one
/// (`Madrid. Her`, `Jorge, a`, `Ruiz (71)`; not `3.8.1`, `app@db`, `x.com`, `-ui`, nor a
/// token the draft ends with, whose next is unknown).
pub fn breaks_clause(texts: &TokenTexts, tokens: &[Token], i: usize) -> bool {
    let spaced = |b: &u8| b.is_ascii_whitespace();
    let text = texts.text(tokens[i]);
    let marks = text.trim_ascii();
    if marks.is_empty() || !marks.iter().all(|b| b".,;:!?()[]|@-".contains(b)) {
        return false;
    }
    text.last().is_some_and(spaced) || tokens.get(i + 1).is_some_and(|&t| texts.text(t).first().is_some_and(spaced))
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

    fn value_grammar() -> Guide {
        use crate::mock::{MockGrammar, MockSegment::*};
        // a key (10), a value of one to four tokens from 20..24, a closer (12)
        let g = MockGrammar::new(vec![Literal(vec![10]), Choice { allowed: (20..24).collect(), min: 1, max: 4 }, Literal(vec![12])], 0, 32);
        Guide::new(Box::new(g), 1)
    }

    fn no_eog(t: Token) -> bool {
        t == 0
    }

    fn end(key: CloseKey, closer: Option<Token>) -> Option<CopyEnd> {
        Some(CopyEnd { key, closer })
    }

    #[test]
    fn a_copy_ends_at_a_token_replaced_before_even_where_the_grammar_refuses_one_later() {
        let mut guide = value_grammar();
        let no_break = |_: usize| false;
        // prompt, the forced key, then a copy whose value runs on into a token the grammar refuses
        let tokens = [9, 10, 20, 21, 5];
        let mut closers = Closers::default();
        let refused = CloseKey { mask: guide.mask_after(&tokens[..4], &no_eog).unwrap().fingerprint(), source: None };
        assert_eq!(closers.draft_end(&mut guide, &tokens, 2, &no_break, &no_eog).unwrap(), (2, end(refused, None)));
        // the target wrote the closer where a copy proposed 21 after one value token
        let replaced = CloseKey { mask: guide.mask_after(&tokens[..3], &no_eog).unwrap().fingerprint(), source: Some(21) };
        closers.learn(replaced, 12);
        assert_eq!(closers.draft_end(&mut guide, &tokens, 2, &no_break, &no_eog).unwrap(), (1, end(replaced, Some(12))));
        // another source token there is kept, up to the refused one, where the closer of the
        // same kind of state is drafted
        let other = [9, 10, 20, 22, 5];
        let refused = CloseKey { mask: guide.mask_after(&other[..4], &no_eog).unwrap().fingerprint(), source: None };
        assert_eq!(closers.draft_end(&mut guide, &other, 2, &no_break, &no_eog).unwrap(), (2, end(refused, Some(12))));
        // a draft the grammar allows whole, with no replaced token, is kept whole
        assert_eq!(closers.draft_end(&mut guide, &[9, 10, 20, 22], 2, &no_break, &no_eog).unwrap(), (2, None));
    }

    #[test]
    fn a_clause_break_in_the_source_ends_a_copy_unless_the_target_went_on_there() {
        let mut guide = value_grammar();
        // `Mad` `rid` `.` ` Her`: the source breaks a clause at `.`
        let mut words: Vec<Vec<u8>> = (0..32).map(|i| format!("w{i}").into_bytes()).collect();
        for (t, w) in [(20, "Mad"), (21, "rid"), (22, "."), (23, " Her"), (24, ".com"), (25, ", ")] {
            words[t] = w.as_bytes().to_vec();
        }
        let texts = TokenTexts::new(words);
        let tokens = [9, 10, 20, 21, 22, 23];
        let breaks = |i: usize| breaks_clause(&texts, &tokens[2..], i);
        assert_eq!((0..4).map(breaks).collect::<Vec<_>>(), [false, false, true, false]);
        assert!(!breaks_clause(&texts, &[22, 21], 0), "no break inside `3.8` or `app.example`");
        assert!(!breaks_clause(&texts, &[24, 23], 0), "`.com` is no punctuation token");
        assert!(!breaks_clause(&texts, &[21, 22], 1), "nothing known after it: no break");
        assert!(breaks_clause(&texts, &[21, 25], 1), "a token of punctuation and space breaks");
        let mut closers = Closers::default();
        // nothing learned of this kind of state yet: the copy is kept whole
        assert_eq!(closers.draft_end(&mut guide, &tokens, 2, &breaks, &no_eog).unwrap(), (4, None));
        // the target closed a value in this kind of state on its own
        let state = guide.mask_after(&tokens[..3], &no_eog).unwrap().fingerprint();
        closers.learn(CloseKey { mask: state, source: None }, 12);
        let at = CloseKey { mask: guide.mask_after(&tokens[..4], &no_eog).unwrap().fingerprint(), source: Some(22) };
        assert_eq!(at.mask, state, "inside the value every state looks alike");
        assert_eq!(closers.draft_end(&mut guide, &tokens, 2, &breaks, &no_eog).unwrap(), (2, end(at, Some(12))));
        // there the target went on with the copied token itself: that break is copied through
        closers.learn(at, 22);
        assert_eq!(closers.draft_end(&mut guide, &tokens, 2, &breaks, &no_eog).unwrap(), (4, None));
    }

    #[test]
    fn an_ending_turned_down_is_forgotten_and_others_stay() {
        let mut e = Endings::default();
        e.learn(1, 7);
        e.learn(2, 8);
        e.learn(1, 9);
        assert_eq!((e.ending(1), e.ending(2), e.ending(3)), (Some(9), Some(8), None));
        e.forget(1);
        assert_eq!((e.ending(1), e.ending(2)), (None, Some(8)));
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
