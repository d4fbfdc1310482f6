//! The copy pointer: where the output is being copied from, kept while the target agrees,
//! re-anchored near it after an edit, else the longest match anywhere (or a text or word anchor).

use super::edits::{edit_at, Edit, Replay, EDIT_MAX, MIN_RUN_FOR_EDIT};
use super::index::common_suffix;
use super::NgramConfig;
use crate::anchor::{text_anchor, word_anchor, TokenTexts};
use crate::model::Token;
use std::collections::HashMap;

/// A re-anchoring near the pointer needs the last this many tokens to agree (one token is
/// too little evidence: measured, it proposed often and was rarely accepted).
pub(crate) const NEAR_MIN: usize = 2;
/// Window around the copy pointer searched when re-anchoring after an edit.
pub(crate) const NEAR_BEHIND: usize = 8;
pub(crate) const NEAR_AHEAD: usize = 32;

/// One sequence's n-gram state: a hashed index of its tokens, and a copy pointer.
///
/// The **index** maps every `KEY`-gram of the history to the positions that follow it, built
/// incrementally (the history only grows between a sequence's rounds), so a lookup costs
/// the candidates it examines, not a scan of the context.
///
/// The **copy pointer** is the offset `d` from the position being predicted to the source
/// position it is copied from (`tokens[n + d]` predicts `tokens[n]`). While the target keeps
/// agreeing with the source (the last token equals the source's token before the pointer),
/// the run continues there, however repetitive the text around it. After a mismatch (an edit)
/// it re-anchors on the nearest short match to the pointer; if there is none it assumes a
/// substitution and tries the same offset once more, then falls back to the longest suffix
/// match anywhere (most recent among equals).
///
/// **Edits are replayed**: when a copy breaks and resumes a few tokens later (the output
/// replaced source tokens `old` by `new`), the pair is remembered, and a later draft that
/// copies `old` again proposes `new` instead — a rename or a changed name repeats through
/// the rest of the file. An edit whose replay the target rejects is forgotten; one that is
/// accepted keeps the copy run going (and so its evidence for long drafts).
#[derive(Debug, Clone, Default)]
pub struct NgramState {
    pub(crate) index: HashMap<u64, Vec<u32>>,
    pub(crate) key: usize,
    pub(crate) indexed: usize,
    pub(crate) offset: Option<isize>,
    /// Position where the current copy run was anchored.
    pub(crate) run_start: usize,
    /// Proposals in a row from a pointer that did not align (an edit assumed).
    pub(crate) misses: u8,
    /// The plan for `tokens.len() == .0`: copy from `.1`.
    pub(crate) planned: Option<(usize, usize)>,
    /// Where the current copy broke, `(output position, source position)`, until it resumes.
    pub(crate) broke_at: Option<(usize, usize)>,
    pub(crate) edits: Vec<Edit>,
    /// The edits the last draft replayed.
    pub(crate) replays: Vec<Replay>,
    /// Where the last plan copied from: a text anchor prefers the source after it.
    pub(crate) last_source: Option<usize>,
    /// `(n, token)`: the plan for `tokens.len() == n` drafts `token` before copying (the rest
    /// of a source token the output's text ends inside of, [`crate::anchor`]).
    pub(crate) head: Option<(usize, Token)>,
    /// `Some(n_prompt)`: the output is structured (a grammar's values). A short word begun
    /// after punctuation may anchor near the last copy ([`word_anchor`]), the rest of a word
    /// the output began is a sure draft, and copies come from the first `n_prompt` tokens
    /// only: the output's own earlier records share their keys with the next one (the grammar
    /// forces those anyway), rarely their values, which copied ran on as long rejected drafts.
    /// Free text keeps to the token and text anchors and copies from anywhere (measured: these
    /// rules added rejected drafts there).
    pub(crate) structured: Option<usize>,
}

impl NgramState {
    /// Forget everything (a new sequence).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Whether the output is structured (see [`NgramState`]'s `structured`); if so, copies
    /// come from the first `n_prompt` tokens only.
    pub fn set_structured(&mut self, on: bool, n_prompt: usize) {
        self.structured = on.then_some(n_prompt);
    }

    /// Whether the output is structured.
    pub fn is_structured(&self) -> bool {
        self.structured.is_some()
    }

    /// Copies come from positions before this.
    pub(crate) fn sources(&self) -> usize {
        self.structured.unwrap_or(usize::MAX)
    }

    /// The copy ended where the output closed a value: the next plan anchors afresh (keeping
    /// the pointer, the tokens after the closer and the forced key looked like an edit, and a
    /// long run's substitution rule copied on past the value).
    pub fn end_run(&mut self) {
        self.offset = None;
        self.broke_at = None;
        self.misses = 0;
        self.planned = None;
    }

    /// The match nearest to `p` in a window around it that agrees with the last tokens
    /// (longest agreement first, then nearest).
    pub(crate) fn near(&self, tokens: &[Token], p: usize) -> Option<(usize, usize)> {
        let n = tokens.len();
        let lo = p.saturating_sub(NEAR_BEHIND).max(1);
        let hi = (p + NEAR_AHEAD).min(n - 1).min(self.sources().saturating_sub(1));
        let mut best: Option<(usize, usize, usize)> = None; // (len, distance, pos)
        for j in lo..=hi {
            let len = common_suffix(tokens, j, n, 8);
            if len < NEAR_MIN {
                continue;
            }
            let dist = j.abs_diff(p);
            if best.is_none_or(|(l, d, _)| len > l || (len == l && dist < d)) {
                best = Some((len, dist, j));
            }
        }
        best.map(|(len, _, j)| (j, len))
    }

    /// Where the next proposal copies from, after `tokens`; updates the pointer.
    pub fn plan(&mut self, tokens: &[Token], config: NgramConfig) -> Option<usize> {
        self.plan_anchored(tokens, config, None)
    }

    /// [`NgramState::plan`], and where no tokens match, a match of the bytes across
    /// tokenizations when the token `texts` are known ([`crate::anchor`]).
    pub fn plan_anchored(&mut self, tokens: &[Token], config: NgramConfig, texts: Option<&TokenTexts>) -> Option<usize> {
        let n = tokens.len();
        if let Some((at, from)) = self.planned {
            if at == n {
                return Some(from);
            }
        }
        self.update_index(tokens, config);
        let from = self.locate(tokens, config, texts);
        self.planned = from.map(|f| (n, f));
        self.last_source = from.or(self.last_source);
        from
    }

    /// Where the copy for `tokens` goes on: the pointer kept (the run goes on, through an
    /// accepted replay or an edit just written), re-anchored near it, past a substituted
    /// token, else the longest match anywhere, else a text anchor.
    pub(crate) fn locate(&mut self, tokens: &[Token], config: NgramConfig, texts: Option<&TokenTexts>) -> Option<usize> {
        let n = tokens.len();
        if n < 2 {
            return None;
        }
        let resumed = self.settle_replays(tokens);
        // the matched tokens count as the run's first evidence
        let anchor = |s: &mut Self, from: usize, matched: usize| {
            s.learn_edit(tokens, from, matched);
            s.offset = Some(from as isize - n as isize);
            s.run_start = n - matched.min(n);
            s.misses = 0;
            Some(from)
        };
        if let Some(d) = self.offset {
            let p = n as isize + d;
            if p >= 1 && (p as usize) < n.min(self.sources()) {
                let p = p as usize;
                if let Some(p) = resumed {
                    // an accepted replay: the same run, the pointer past the edit
                    self.offset = Some(p as isize - n as isize);
                    self.misses = 0;
                    return Some(p);
                }
                if tokens[p - 1] == tokens[n - 1] {
                    self.misses = 0;
                    self.learn_edit(tokens, p, 1);
                    return Some(p); // the run goes on
                }
                if let Some(p) = self.through_edit(tokens, p) {
                    // the output just wrote an edit's `new` where the source has its `old`
                    self.offset = Some(p as isize - n as isize);
                    self.misses = 0;
                    return Some(p);
                }
                if self.broke_at.is_none() {
                    self.broke_at = Some((n - 1, p - 1));
                }
                if let Some((j, len)) = self.near(tokens, p) {
                    return anchor(self, j, len);
                }
                if self.misses == 0 && n.saturating_sub(self.run_start) >= MIN_RUN_FOR_EDIT {
                    // a long copy run, then no match near the pointer: a substituted token;
                    // the source goes on
                    self.misses = 1;
                    self.run_start = n;
                    return Some(p);
                }
            }
        }
        // a copy that broke a few tokens ago keeps its pointer: the tokens after an edit's
        // `new` re-anchor near it (however many tokens `new` takes)
        if self.broke_at.is_none_or(|(g, _)| n - 1 > g + EDIT_MAX) {
            self.offset = None;
            self.broke_at = None;
        }
        if let Some((from, len)) = self.longest_match(tokens, config) {
            return anchor(self, from, len);
        }
        // the same text tokenized otherwise, or a short word begun after the last copy: a new
        // run (what came before it is no edit)
        let texts = texts?;
        let word = |s: &Self| if s.is_structured() { word_anchor(tokens, texts, s.last_source?, s.sources()) } else { None };
        let found = text_anchor(tokens, texts, self.last_source, self.sources()).or_else(|| word(self))?;
        self.broke_at = None;
        anchor(self, found.from, 1);
        if let Some(h) = found.head {
            // the head takes output position n, the source goes on at `from`
            self.head = Some((n, h));
            self.offset = Some(found.from as isize - n as isize - 1);
        }
        Some(found.from)
    }

    /// The token the plan for `tokens` drafts before copying, if any.
    pub(crate) fn head_for(&self, tokens: &[Token]) -> Option<Token> {
        self.head.filter(|&(at, _)| at == tokens.len()).map(|(_, h)| h)
    }

    /// Append up to `max` tokens copied from `from`, replaying the remembered edits: where the
    /// source has an edit's `old`, its `new` is drafted instead (the most recent edit first).
    /// Overlapping copies repeat, as in LZ77. Returns how many tokens were appended.
    pub fn copy(&mut self, tokens: &mut Vec<Token>, from: usize, max: usize) -> usize {
        let start = tokens.len();
        self.replays.clear();
        if let Some(h) = self.head_for(tokens).filter(|_| max > 0) {
            tokens.push(h);
        }
        let mut i = from;
        while tokens.len() - start < max && i < tokens.len() {
            match edit_at(&self.edits, tokens, i) {
                Some((k, e)) => {
                    let at = tokens.len();
                    let take = e.new.len().min(max - (at - start));
                    tokens.extend_from_slice(&e.new[..take]);
                    i += e.old.len();
                    self.replays.push(Replay { start: at, end: at + e.new.len(), source_end: i, edit: k });
                    if take < e.new.len() {
                        break;
                    }
                }
                None => {
                    let t = tokens[i];
                    tokens.push(t);
                    i += 1;
                }
            }
        }
        tokens.len() - start
    }

    /// The position [`NgramState::plan`] chose to copy from after exactly these `tokens`
    /// (`None` if it chose none, or the tokens moved on since).
    pub fn planned_from(&self, tokens: &[Token]) -> Option<usize> {
        self.planned.filter(|&(at, _)| at == tokens.len()).map(|(_, from)| from)
    }

    /// The first token [`NgramState::copy`] would append after `tokens` from the position
    /// [`NgramState::plan`] chose for them, without copying (`None`: no plan for these tokens,
    /// or nothing after it).
    pub fn peek(&self, tokens: &[Token]) -> Option<Token> {
        let mut i = self.planned_from(tokens)?;
        if let Some(h) = self.head_for(tokens) {
            return Some(h);
        }
        while i < tokens.len() {
            match edit_at(&self.edits, tokens, i) {
                Some((_, e)) if !e.new.is_empty() => return Some(e.new[0]),
                // a deletion: the copy goes on after it (an edit's `old` is never empty)
                Some((_, e)) => i += e.old.len(),
                None => return Some(tokens[i]),
            }
        }
        None
    }

    /// Tokens the current copy run has lasted (from the match it was anchored on).
    pub fn run(&self, tokens: &[Token]) -> usize {
        if self.offset.is_some() {
            tokens.len().saturating_sub(self.run_start)
        } else {
            0
        }
    }
}
