//! Closing drafts inside a round: where a copied value ends under a grammar, the closer the
//! target wrote at such an end before is drafted, and after verification what the target
//! wrote there is learned ([`crate::closing`]).

use super::*;

impl<T: Model, D: Drafter> Engine<T, D> {
    /// Where a copied value ends, draft the `closer` the target wrote at such an end before
    /// and the tokens the grammar forces after it (and the likely spelling of the text it
    /// forces after those, or the end where they complete the output), in `room` tokens: the
    /// cut tokens' room and what the round's forced span left of its share
    /// ([`crate::closing`]). Returns how many tokens were drafted.
    pub(super) fn close(&mut self, seq: &mut Sequence, room: usize, closer: Token) -> usize {
        let Some(guide) = seq.guide.as_mut() else { return 0 };
        let target = &self.target;
        let start = seq.tokens.len();
        seq.tokens.push(closer);
        let is_eog = |t| target.is_eog(t);
        if let Ok((forced, likely)) = guide.forced_and_likely_after(&seq.tokens, room - 1, &is_eog) {
            seq.tokens.extend(forced.into_iter().chain(likely));
        }
        // a closer that completes the output: its end too, which the target would write next
        if seq.tokens.len() - start < room {
            if let Ok(Some(end)) = guide.end_after(&seq.tokens, self.endings.end, &is_eog) {
                seq.tokens.push(end);
            }
        }
        if seq.config.effective_verify().needs_q() {
            seq.q.extend(seq.tokens[start..].iter().map(|&t| Dist::one_hot(t)));
        }
        seq.tokens.len() - start
    }

    /// After verification: the closer the target wrote where a copy was cut, or where it
    /// rejected a copied token for one (a token after which the grammar forces the next key).
    /// A value that was closed ends its copy run: the next value anchors afresh.
    pub(super) fn learn_closer(
        &mut self,
        seq: &mut Sequence,
        n_hist: usize,
        cut: Option<(usize, CloseKey)>,
        rejected: Option<(usize, Token)>,
    ) {
        let Some(guide) = seq.guide.as_mut() else { return };
        let target = &self.target;
        let is_eog = |t| target.is_eog(t);
        if let Some((c, key)) = cut {
            if let Some(&token) = seq.tokens.get(n_hist + c) {
                let written = &seq.tokens[..=n_hist + c];
                let closes = forces_after(guide, written, &is_eog);
                if closes || key.source == Some(token) || completes(guide, written, &is_eog) {
                    // a closer, or the copied token itself (the target went on through it)
                    seq.closers.learn(key, token);
                    self.closers.learn(key, token);
                } else {
                    // the value goes on with other text: no closer belongs there (in free
                    // text that would be its next word, drafted at every later break)
                    seq.closers.forget(key);
                    self.closers.forget(key);
                }
                if closes {
                    seq.draft.ngram.end_run();
                }
            }
            return;
        }
        let Some((c, source)) = rejected else { return };
        let Some(&closer) = seq.tokens.get(n_hist + c) else { return };
        let Ok(mask) = guide.mask_after(&seq.tokens[..n_hist + c], &is_eog).map(|m| m.fingerprint()) else { return };
        if forces_after(guide, &seq.tokens[..=n_hist + c], &is_eog) {
            seq.closers.learn(CloseKey { mask, source: Some(source) }, closer);
            self.closers.learn(CloseKey { mask, source: Some(source) }, closer);
            seq.draft.ngram.end_run();
        }
    }

    /// After verification: where the target's own token of the round closed a value (the
    /// grammar forces structure after it), that token is the closer of that kind of state,
    /// whatever a copy proposed there ([`crate::closing`]: a clause break in a later copy
    /// drafts it); where it completed the output, it is remembered as an ending of that kind
    /// of state, for this engine's later sequences.
    pub(super) fn learn_own_closer(&mut self, seq: &mut Sequence, at: usize) {
        let (Some(guide), Some(&closer)) = (seq.guide.as_mut(), seq.tokens.get(at)) else { return };
        let target = &self.target;
        let is_eog = |t| target.is_eog(t);
        if is_eog(closer) {
            return;
        }
        let Ok(mask) = guide.mask_after(&seq.tokens[..at], &is_eog).map(|m| m.fingerprint()) else { return };
        if forces_after(guide, &seq.tokens[..=at], &is_eog) {
            seq.closers.learn(CloseKey { mask, source: None }, closer);
            self.closers.learn(CloseKey { mask, source: None }, closer);
        } else if completes(guide, &seq.tokens[..=at], &is_eog) {
            self.endings.learn(mask, closer);
        }
    }

    /// The ending learned for a state like the one after `seq.tokens`, where nothing is
    /// forced and the state was just entered (inside a value every state looks alike, and an
    /// ending learned there would be drafted at every token): drafted with the end after it,
    /// in at most `room` tokens. Returns how many were drafted.
    pub(super) fn draft_ending(&mut self, seq: &mut Sequence, room: usize) -> Result<usize, ConstraintError> {
        let n = seq.tokens.len();
        let Some(guide) = seq.guide.as_mut().filter(|_| room > 0 && n > seq.n_prompt) else { return Ok(0) };
        let target = &self.target;
        let is_eog = |t| target.is_eog(t);
        let before = guide.mask_after(&seq.tokens[..n - 1], &is_eog)?.fingerprint();
        let mask = guide.mask_after(&seq.tokens, &is_eog)?;
        let fingerprint = mask.fingerprint();
        let Some(ending) = self.endings.ending(fingerprint).filter(|&t| fingerprint != before && mask.allows(t)) else { return Ok(0) };
        seq.tokens.push(ending);
        seq.ending = Some(fingerprint);
        if room > 1 {
            if let Some(end) = guide.end_after(&seq.tokens, self.endings.end, &is_eog)? {
                seq.tokens.push(end);
                return Ok(2);
            }
        }
        Ok(1)
    }
}

/// Whether the output may end after `tokens` (their last token completed it).
fn completes(guide: &mut Guide, tokens: &[Token], is_eog: &dyn Fn(Token) -> bool) -> bool {
    guide.end_after(tokens, None, is_eog).is_ok_and(|end| end.is_some())
}
