//! The seam for constrained output: a grammar (JSON schema, regex, CFG) that says which tokens
//! may come next.
//!
//! A [`Constraint`] is a matcher over token sequences with rollback, the shape of llguidance's
//! `Matcher`: the tokens it allows next ([`Constraint::mask`]), the tokens it forces
//! ([`Constraint::forced`]), how much of a draft it accepts ([`Constraint::validate`]), and
//! consume / rollback. The core never sees how a grammar is written: the binary crate implements
//! the seam over llguidance, `mock::MockGrammar` implements it for tests.
//!
//! [`Guide`] is one sequence's constraint kept in step with its generated tokens: whatever the
//! round drafted, verified or rolled back, [`Guide::sync`] brings the matcher to a prefix of the
//! tokens by rolling back to the common prefix and consuming the rest, so the engine never
//! tracks the matcher's position by hand.
//!
//! Exactness: the target's rows and the draft model's rows are masked the same way before the
//! warp (the mask comes first, then penalties, temperature and the cuts), so greedy takes the
//! masked argmax and rejection sampling compares the masked, renormalised distributions — the
//! output is what target-only constrained decoding gives.

use crate::model::Token;
use std::fmt;
use std::sync::Arc;
use thiserror::Error;

/// A constraint failed (the grammar refused a token it should have allowed, or its matcher
/// broke): the sequence cannot go on under it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("constraint: {0}")]
pub struct ConstraintError(pub String);

/// Which tokens a constraint allows, one bit per token id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMask {
    words: Vec<u32>,
    n_vocab: usize,
}

impl TokenMask {
    /// No token allowed.
    pub fn none(n_vocab: usize) -> Self {
        Self { words: vec![0; n_vocab.div_ceil(32)], n_vocab }
    }

    /// A mask from 32-bit words (bit `i % 32` of word `i / 32` allows token `i`), as llguidance
    /// stores them; bits past `n_vocab` are ignored.
    pub fn from_words(mut words: Vec<u32>, n_vocab: usize) -> Self {
        words.resize(n_vocab.div_ceil(32), 0);
        if let Some(last) = words.last_mut().filter(|_| !n_vocab.is_multiple_of(32)) {
            *last &= (1u32 << (n_vocab % 32)) - 1;
        }
        Self { words, n_vocab }
    }

    pub fn allow(&mut self, token: Token) {
        if let Some(w) = usize::try_from(token).ok().filter(|&t| t < self.n_vocab).map(|t| &mut self.words[t / 32]) {
            *w |= 1 << (token as usize % 32);
        }
    }

    pub fn allows(&self, token: Token) -> bool {
        usize::try_from(token).ok().filter(|&t| t < self.n_vocab).is_some_and(|t| self.words[t / 32] >> (t % 32) & 1 == 1)
    }

    /// A hash of the allowed set: grammar states that allow the same tokens (inside any JSON
    /// string, after any number in an object) share it.
    pub fn fingerprint(&self) -> u64 {
        self.words.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &w| (h ^ w as u64).wrapping_mul(0x0000_0100_0000_01b3))
    }

    /// The allowed tokens, in id order.
    pub fn allowed(&self) -> impl Iterator<Item = Token> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| (0..32).filter(move |b| w >> b & 1 == 1).map(move |b| (i * 32 + b) as Token))
    }

    /// The token allowed, when exactly one is.
    pub fn only(&self) -> Option<Token> {
        let mut only = None;
        for (i, &w) in self.words.iter().enumerate().filter(|(_, &w)| w != 0) {
            if only.is_some() || w.count_ones() != 1 {
                return None;
            }
            only = Some((i * 32 + w.trailing_zeros() as usize) as Token);
        }
        only
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Set every disallowed token's logit to -inf (tokens past the mask's vocabulary too).
    pub fn apply(&self, row: &mut [f32]) {
        for (i, chunk) in row.chunks_mut(32).enumerate() {
            let w = self.words.get(i).copied().unwrap_or(0);
            if w == u32::MAX && chunk.len() == 32 {
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if w >> b & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// A grammar matcher over tokens, with rollback (llguidance's `Matcher` is the model).
///
/// Architecture invariant: the engine consumes only tokens the constraint allowed (masked
/// choices, drafts cut by [`Constraint::validate`]), never an end-of-generation token, and
/// rolls back at most what it consumed.
pub trait Constraint: Send {
    /// The tokens allowed after what was consumed (only end-of-generation tokens once the
    /// grammar is complete).
    fn mask(&mut self) -> Result<TokenMask, ConstraintError>;
    /// Tokens the grammar forces next, whatever the model prefers (may be empty).
    fn forced(&mut self) -> Vec<Token>;
    /// After `forced` (what [`Constraint::forced`] just returned), the rest of the text the
    /// grammar forces, in the tokens a tokenizer gives it: the model may spell that text
    /// otherwise (a quote alone or merged with the value after it), so these are drafts for
    /// the target to check, not certain. None by default.
    fn likely(&mut self, _forced: &[Token]) -> Vec<Token> {
        Vec::new()
    }
    /// How many leading tokens of `tokens` the grammar allows, in order, without consuming any.
    fn validate(&mut self, tokens: &[Token]) -> usize;
    /// Advance over `tokens` (each allowed).
    fn consume(&mut self, tokens: &[Token]) -> Result<(), ConstraintError>;
    /// Undo the last `n` consumed tokens.
    fn rollback(&mut self, n: usize) -> Result<(), ConstraintError>;
    /// Whether the output so far is complete under the grammar (it may end here).
    fn is_accepting(&mut self) -> bool;
    /// A fresh copy in the same state (for a sequence copied whole).
    fn boxed_clone(&self) -> Box<dyn Constraint>;
}

/// Makes one fresh [`Constraint`] per sequence from a grammar compiled once; it travels with a
/// job's settings ([`crate::engine::GenConfig::constraint`]). Equal when it is the same
/// compiled grammar.
#[derive(Clone)]
pub struct ConstraintSpec {
    /// What the grammar is, for reports ("json_schema", "regex", ...).
    pub kind: String,
    make: Arc<dyn Fn() -> Box<dyn Constraint> + Send + Sync>,
}

impl ConstraintSpec {
    pub fn new(kind: impl Into<String>, make: impl Fn() -> Box<dyn Constraint> + Send + Sync + 'static) -> Self {
        Self { kind: kind.into(), make: Arc::new(make) }
    }

    /// A matcher at the grammar's start.
    pub fn start(&self) -> Box<dyn Constraint> {
        (self.make)()
    }
}

impl fmt::Debug for ConstraintSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConstraintSpec({})", self.kind)
    }
}

impl PartialEq for ConstraintSpec {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.make, &other.make)
    }
}

/// One sequence's constraint, in step with the tokens it generated. Its methods take the
/// sequence's whole token list (prompt first; the guide skips the prompt's `n_prompt` tokens),
/// so any state of a round — drafted, verified, rolled back — is reached by [`Guide::sync`].
///
/// Masks are kept for the states of the current path (at most [`MASKS_KEPT`]): a draft
/// model's masks are the verification's masks at the same states, computed once.
pub struct Guide {
    matcher: Box<dyn Constraint>,
    n_prompt: usize,
    /// The generated tokens the matcher has consumed, in order.
    consumed: Vec<Token>,
    /// The generated tokens the kept masks were computed along, and the masks by how many of
    /// them came before.
    path: Vec<Token>,
    masks: std::collections::VecDeque<(usize, TokenMask)>,
    /// A logits row with the mask applied (one buffer, reused).
    row: Vec<f32>,
    /// Masks computed (not counting those reused), for the statistics.
    pub n_masks: usize,
}

/// Masks a [`Guide`] keeps: more than one round's states (forced tokens, a draft, the bonus
/// row).
pub const MASKS_KEPT: usize = 64;

impl Clone for Guide {
    fn clone(&self) -> Self {
        Self {
            matcher: self.matcher.boxed_clone(),
            n_prompt: self.n_prompt,
            consumed: self.consumed.clone(),
            path: self.path.clone(),
            masks: self.masks.clone(),
            row: Vec::new(),
            n_masks: self.n_masks,
        }
    }
}

impl fmt::Debug for Guide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guide({} tokens consumed)", self.consumed.len())
    }
}

impl Guide {
    /// A guide for a sequence whose first `n_prompt` tokens are its prompt.
    pub fn new(matcher: Box<dyn Constraint>, n_prompt: usize) -> Self {
        Self { matcher, n_prompt, consumed: Vec::new(), path: Vec::new(), masks: Default::default(), row: Vec::new(), n_masks: 0 }
    }

    /// Bring the matcher to the state after `tokens` (end-of-generation tokens excluded:
    /// they end the output, the grammar never consumes them).
    pub fn sync(&mut self, tokens: &[Token], is_eog: &dyn Fn(Token) -> bool) -> Result<(), ConstraintError> {
        let generated = &tokens[self.n_prompt.min(tokens.len())..];
        let generated = match generated.iter().position(|&t| is_eog(t)) {
            Some(i) => &generated[..i],
            None => generated,
        };
        let common = self.consumed.iter().zip(generated).take_while(|(a, b)| a == b).count();
        if common < self.consumed.len() {
            self.matcher.rollback(self.consumed.len() - common)?;
            self.consumed.truncate(common);
        }
        if common < generated.len() {
            self.matcher.consume(&generated[common..])?;
            self.consumed.extend_from_slice(&generated[common..]);
        }
        Ok(())
    }

    /// The mask after `tokens` (computed once per state of the current path).
    pub fn mask_after(&mut self, tokens: &[Token], is_eog: &dyn Fn(Token) -> bool) -> Result<&TokenMask, ConstraintError> {
        let i = self.mask_slot(tokens, is_eog)?;
        Ok(&self.masks[i].1)
    }

    /// `row` (a logits row at the state after `tokens`) with every token the grammar refuses
    /// at -inf, in the guide's own buffer.
    pub fn masked_row(&mut self, tokens: &[Token], row: &[f32], is_eog: &dyn Fn(Token) -> bool) -> Result<&[f32], ConstraintError> {
        let i = self.mask_slot(tokens, is_eog)?;
        self.row.clear();
        self.row.extend_from_slice(row);
        self.masks[i].1.apply(&mut self.row);
        Ok(&self.row)
    }

    /// The token the grammar allows after `tokens` when it allows only that one (the mask is
    /// kept for verification, like [`Guide::mask_after`]'s).
    pub fn only_after(&mut self, tokens: &[Token], is_eog: &dyn Fn(Token) -> bool) -> Result<Option<Token>, ConstraintError> {
        Ok(self.mask_after(tokens, is_eog)?.only())
    }

    /// A row of `n_vocab` logits certain of `token`: every other token at -inf, in the guide's
    /// own buffer. It stands for a target row the grammar left one token in: masked, any row
    /// is this one, so its logits need not be computed.
    pub fn certain_row(&mut self, token: Token, n_vocab: usize) -> &[f32] {
        self.row.clear();
        self.row.resize(n_vocab, f32::NEG_INFINITY);
        if let Some(l) = usize::try_from(token).ok().and_then(|t| self.row.get_mut(t)) {
            *l = 0.0;
        }
        &self.row
    }

    /// Where the mask after `tokens` is kept, computing it unless it was.
    fn mask_slot(&mut self, tokens: &[Token], is_eog: &dyn Fn(Token) -> bool) -> Result<usize, ConstraintError> {
        self.sync(tokens, is_eog)?;
        // masks kept along another path are stale past where the two part; along this one
        // (a prefix of it, or one it extends) they all hold
        let common = self.path.iter().zip(&self.consumed).take_while(|(a, b)| a == b).count();
        if common < self.path.len() && common < self.consumed.len() {
            self.masks.retain(|(n, _)| *n <= common);
            self.path.truncate(common);
        }
        if self.consumed.len() > self.path.len() {
            self.path.extend_from_slice(&self.consumed[self.path.len()..]);
        }
        let n = self.consumed.len();
        if let Some(i) = self.masks.iter().position(|(m, _)| *m == n) {
            return Ok(i);
        }
        if self.masks.len() == MASKS_KEPT {
            self.masks.pop_front();
        }
        self.masks.push_back((n, self.matcher.mask()?));
        self.n_masks += 1;
        Ok(self.masks.len() - 1)
    }

    /// Up to `max` tokens the grammar forces after `tokens`.
    pub fn forced_after(&mut self, tokens: &[Token], max: usize, is_eog: &dyn Fn(Token) -> bool) -> Result<Vec<Token>, ConstraintError> {
        self.sync(tokens, is_eog)?;
        let mut forced = self.matcher.forced();
        forced.truncate(max);
        Ok(forced)
    }

    /// The tokens the grammar forces after `tokens` (at most `max`) and, when all of them fit,
    /// those of the rest of its forced text ([`Constraint::likely`]), the grammar allowing
    /// them: `(forced, likely)`.
    pub fn forced_and_likely_after(
        &mut self,
        tokens: &[Token],
        max: usize,
        is_eog: &dyn Fn(Token) -> bool,
    ) -> Result<(Vec<Token>, Vec<Token>), ConstraintError> {
        let forced = self.forced_after(tokens, max, is_eog)?;
        if forced.len() == max {
            return Ok((forced, Vec::new()));
        }
        let mut likely = self.matcher.likely(&forced);
        likely.truncate(max - forced.len());
        let both: Vec<Token> = forced.iter().chain(&likely).copied().collect();
        let allowed = self.matcher.validate(&both);
        likely.truncate(allowed.saturating_sub(forced.len()));
        Ok((forced, likely))
    }

    /// The end-of-generation token where the output in `tokens` is complete and the grammar
    /// allows nothing else after it: `prefer` where it is allowed (the end a model wrote
    /// before), else the lowest id.
    pub fn end_after(
        &mut self,
        tokens: &[Token],
        prefer: Option<Token>,
        is_eog: &dyn Fn(Token) -> bool,
    ) -> Result<Option<Token>, ConstraintError> {
        self.sync(tokens, is_eog)?;
        if !self.matcher.is_accepting() {
            return Ok(None);
        }
        let mask = self.mask_after(tokens, is_eog)?;
        let mut allowed = mask.allowed();
        let Some(lowest) = allowed.next().filter(|&t| is_eog(t)) else { return Ok(None) };
        if !allowed.all(is_eog) {
            return Ok(None);
        }
        Ok(Some(prefer.filter(|&t| mask.allows(t)).unwrap_or(lowest)))
    }

    /// How many leading tokens of `draft` the grammar allows after `tokens`.
    pub fn allowed_prefix(&mut self, tokens: &[Token], draft: &[Token], is_eog: &dyn Fn(Token) -> bool) -> Result<usize, ConstraintError> {
        self.sync(tokens, is_eog)?;
        Ok(self.matcher.validate(draft))
    }

    /// Whether the output in `tokens` is complete under the grammar.
    pub fn accepts(&mut self, tokens: &[Token], is_eog: &dyn Fn(Token) -> bool) -> Result<bool, ConstraintError> {
        self.sync(tokens, is_eog)?;
        Ok(self.matcher.is_accepting())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_sends_disallowed_logits_to_minus_infinity() {
        let mut m = TokenMask::none(70);
        m.allow(3);
        m.allow(64);
        m.allow(500); // past the vocabulary: ignored
        assert_eq!(m.count(), 2);
        assert!(m.allows(3) && m.allows(64) && !m.allows(4) && !m.allows(-1) && !m.allows(500));
        let mut row = vec![1.0f32; 70];
        m.apply(&mut row);
        assert_eq!(row.iter().filter(|l| l.is_finite()).count(), 2);
        assert!(row[3] == 1.0 && row[64] == 1.0);
        let all = TokenMask::from_words(vec![u32::MAX; 3], 70);
        assert_eq!(all.count(), 70);
        let mut row = vec![1.0f32; 70];
        all.apply(&mut row);
        assert!(row.iter().all(|l| *l == 1.0));
    }

    #[test]
    fn a_mask_names_its_only_token_and_the_certain_row_allows_just_it() {
        let mut m = TokenMask::none(100);
        assert_eq!(m.only(), None);
        m.allow(67);
        assert_eq!(m.only(), Some(67));
        m.allow(68); // same word
        assert_eq!(m.only(), None);
        let mut m = TokenMask::none(100);
        m.allow(5);
        m.allow(99); // another word
        assert_eq!(m.only(), None);
        let mut guide = Guide::new(Box::new(crate::mock::MockGrammar::new(vec![], 0, 100)), 0);
        let row = guide.certain_row(67, 100);
        assert_eq!(row.len(), 100);
        assert_eq!(row.iter().filter(|l| l.is_finite()).count(), 1);
        assert_eq!(row[67], 0.0);
    }

    #[test]
    fn a_state_is_masked_once_along_one_path_and_again_along_another() {
        use crate::mock::{MockGrammar, MockSegment};
        let g = MockGrammar::new(vec![MockSegment::Choice { allowed: vec![3, 4, 5], min: 1, max: 4 }], 0, 8);
        let mut guide = Guide::new(Box::new(g), 2);
        let no_eog = |t: Token| t == 0;
        let prompt = [9, 9];
        let draft = [9, 9, 3, 4, 5];
        for n in 2..=5 {
            guide.mask_after(&draft[..n], &no_eog).unwrap();
        }
        assert_eq!(guide.n_masks, 4);
        // verification walks the same states again: nothing recomputed
        for n in 2..=5 {
            guide.mask_after(&draft[..n], &no_eog).unwrap();
        }
        assert_eq!(guide.n_masks, 4);
        // another token at the second step: the states after it are new
        let other = [9, 9, 3, 5, 5];
        for n in 2..=5 {
            guide.mask_after(&other[..n], &no_eog).unwrap();
        }
        assert_eq!(guide.n_masks, 6);
        let mut row = vec![0.0f32; 8];
        row[7] = 9.0;
        let masked = guide.masked_row(&prompt, &row, &no_eog).unwrap();
        assert_eq!(masked.iter().map(|l| l.is_finite()).collect::<Vec<_>>(), [false, false, false, true, true, true, false, false]);
    }
}
