//! N-gram (prompt-lookup) drafting: propose what followed the last time the sequence's most
//! recent tokens appeared.
//!
//! No model, no cache, almost no cost: for input-grounded generation (editing given code,
//! quoting a given text) the continuation is often already in the context. The proposal is
//! deterministic, so for rejection sampling its `q` is one-hot: the target accepts `x` with
//! probability `p(x)` and otherwise samples from `p` without `x`.

use crate::anchor::{text_anchor, TokenTexts};
use crate::draft::DraftCursor;
use crate::draft::{DraftReport, DraftRequest, DraftSource, Drafter, ProposeJob};
use crate::model::{ModelError, Token};
use crate::sampling::{Dist, Scratch};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::sync::Arc;

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

/// Key length of the n-gram index: bigrams (or the shortest n-gram asked for, if shorter).
const KEY_MAX: usize = 2;
/// Candidates examined per lookup, most recent first (a very common n-gram can occur
/// thousands of times; the most recent are the likely ones).
const MAX_CANDIDATES: usize = 256;
/// How far back a match is extended, for ranking candidates.
const MAX_EXTEND: usize = 64;
/// A re-anchoring near the pointer needs the last this many tokens to agree (one token is
/// too little evidence: measured, it proposed often and was rarely accepted).
const NEAR_MIN: usize = 2;
/// Only a copy run at least this long is assumed to go on past one substituted token.
const MIN_RUN_FOR_EDIT: usize = 6;
/// Window around the copy pointer searched when re-anchoring after an edit.
const NEAR_BEHIND: usize = 8;
const NEAR_AHEAD: usize = 32;
/// Longest stretch (source or output) that counts as one edit to replay.
const EDIT_MAX: usize = 8;
/// Edits remembered per sequence (the most recent replace the oldest).
const EDITS_MAX: usize = 8;

/// A substitution the output made in what it copied: where the source had `old`, it wrote
/// `new` (a rename, a changed literal). Later copies of `old` are drafted as `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Edit {
    old: Vec<Token>,
    new: Vec<Token>,
}

/// Where the last draft replayed an edit: output `start..end` is the edit's `new`, and the
/// source goes on at `source_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replay {
    start: usize,
    end: usize,
    source_end: usize,
    edit: usize,
}

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
    index: HashMap<u64, Vec<u32>>,
    key: usize,
    indexed: usize,
    offset: Option<isize>,
    /// Position where the current copy run was anchored.
    run_start: usize,
    /// Proposals in a row from a pointer that did not align (an edit assumed).
    misses: u8,
    /// The plan for `tokens.len() == .0`: copy from `.1`.
    planned: Option<(usize, usize)>,
    /// Where the current copy broke, `(output position, source position)`, until it resumes.
    broke_at: Option<(usize, usize)>,
    edits: Vec<Edit>,
    /// The edits the last draft replayed.
    replays: Vec<Replay>,
    /// Where the last plan copied from: a text anchor prefers the source after it.
    last_source: Option<usize>,
    /// `(n, token)`: the plan for `tokens.len() == n` drafts `token` before copying (the rest
    /// of a source token the output's text ends inside of, [`crate::anchor`]).
    head: Option<(usize, Token)>,
}

/// The most recent edit whose `old` starts at `tokens[i]`, with its index: what a copy
/// through position `i` replays.
fn edit_at<'a>(edits: &'a [Edit], tokens: &[Token], i: usize) -> Option<(usize, &'a Edit)> {
    edits.iter().enumerate().rev().find(|(_, e)| tokens.get(i..i + e.old.len()) == Some(&e.old[..]))
}

fn hash_key(tokens: &[Token]) -> u64 {
    // FxHash-style mixing: fast, and collisions are harmless (candidates are verified)
    tokens.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| (h.rotate_left(5) ^ t as u32 as u64).wrapping_mul(0x517c_c1b7_2722_0a95))
}

/// Length of the common suffix of `tokens[..a]` and `tokens[..b]`, at most `max`.
fn common_suffix(tokens: &[Token], a: usize, b: usize, max: usize) -> usize {
    common_suffix_of(tokens, a, tokens, b, max)
}

/// Length of the common suffix of `x[..a]` and `y[..b]`, at most `max`.
fn common_suffix_of(x: &[Token], a: usize, y: &[Token], b: usize, max: usize) -> usize {
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
fn best_candidate(
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
    /// Forget everything (a new sequence).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    fn update_index(&mut self, tokens: &[Token], config: NgramConfig) {
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
    fn longest_match(&self, tokens: &[Token], config: NgramConfig) -> Option<(usize, usize)> {
        let n = tokens.len();
        if n <= self.key {
            return None;
        }
        let candidates = self.index.get(&hash_key(&tokens[n - self.key..]))?;
        best_candidate(candidates, tokens, tokens, config.n_min.max(1), config.n_max, |pos| pos < n)
    }

    /// The match nearest to `p` in a window around it that agrees with the last tokens
    /// (longest agreement first, then nearest).
    fn near(&self, tokens: &[Token], p: usize) -> Option<(usize, usize)> {
        let n = tokens.len();
        let lo = p.saturating_sub(NEAR_BEHIND).max(1);
        let hi = (p + NEAR_AHEAD).min(n - 1);
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

    fn locate(&mut self, tokens: &[Token], config: NgramConfig, texts: Option<&TokenTexts>) -> Option<usize> {
        let n = tokens.len();
        if n < 2 {
            return None;
        }
        // the last draft's replayed edits: one the target rejected is forgotten; after one it
        // accepted, the source goes on past the edit's `old`
        let replays = std::mem::take(&mut self.replays);
        let mut dropped: Vec<usize> = replays
            .iter()
            .filter(|r| r.start < n && n - 1 < r.end && tokens[n - 1] != self.edits[r.edit].new[n - 1 - r.start])
            .map(|r| r.edit)
            .collect();
        let resumed = replays
            .iter()
            .rev()
            .find(|r| r.end <= n && r.source_end + (n - r.end) < n && tokens[r.end..n] == tokens[r.source_end..r.source_end + (n - r.end)])
            .map(|r| r.source_end + (n - r.end));
        dropped.sort_unstable();
        dropped.dedup();
        for &e in dropped.iter().rev() {
            self.edits.remove(e);
        }
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
            if p >= 1 && (p as usize) < n {
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
        // the same text tokenized otherwise: a new run (what came before it is no edit)
        let found = text_anchor(tokens, texts?, self.last_source)?;
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
    fn head_for(&self, tokens: &[Token]) -> Option<Token> {
        self.head.filter(|&(at, _)| at == tokens.len()).map(|(_, h)| h)
    }

    /// With the pointer at `p`: if the output ends with an edit's `new` (not empty) and the
    /// source, `p` moved past the edit's `old`, ends with `old`, the pointer past it.
    fn through_edit(&self, tokens: &[Token], p: usize) -> Option<usize> {
        let n = tokens.len();
        self.edits.iter().rev().find_map(|e| {
            let p2 = (p + e.old.len()).checked_sub(e.new.len())?;
            let aligned =
                !e.new.is_empty() && p2 < n && p2 >= e.old.len() && tokens.ends_with(&e.new) && tokens[p2 - e.old.len()..p2] == e.old[..];
            aligned.then_some(p2)
        })
    }

    /// The copy resumed: output `..n` agrees with source `..from` over the last `matched`
    /// tokens. If it broke a few tokens before, what the output wrote instead of the source
    /// there is an edit to replay.
    fn learn_edit(&mut self, tokens: &[Token], from: usize, matched: usize) {
        let Some((g, s)) = self.broke_at else { return };
        let n = tokens.len();
        if n - 1 <= g {
            return; // still at the break
        }
        self.broke_at = None;
        // where the agreement resumed, in the output and in the source: walk back over the
        // agreeing tokens (at least `matched`), never to before the break
        let m = matched.min(n - g).min(from.saturating_sub(s));
        let (mut g2, mut s2) = (n - m, from - m);
        while g2 > g + 1 && s2 > s + 1 && tokens[g2 - 1] == tokens[s2 - 1] {
            g2 -= 1;
            s2 -= 1;
        }
        if s2 <= s || s2 - s > EDIT_MAX || g2 < g || g2 - g > EDIT_MAX || s2 > n || s >= g {
            return;
        }
        let edit = Edit { old: tokens[s..s2].to_vec(), new: tokens[g..g2].to_vec() };
        if edit.old == edit.new {
            return;
        }
        self.edits.retain(|e| e.old != edit.old);
        if self.edits.len() == EDITS_MAX {
            self.edits.remove(0);
        }
        self.edits.push(edit);
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

/// A draft cache across sequences: the outputs of earlier sequences (vLLM's suffix decoding,
/// llama.cpp's n-gram cache files), indexed by trigram. When a sequence's own context has no
/// match, the longest match of its last tokens in earlier outputs proposes the continuation.
/// It only proposes: verification is unchanged, so greedy output does not depend on which
/// sequences came before (up to batch-shape near-ties, see the README); only
/// timing does.
#[derive(Debug, Clone, Default)]
pub struct NgramCorpus {
    tokens: Vec<Token>,
    index: HashMap<u64, Vec<u32>>,
}

/// Tokens an [`NgramCorpus`] keeps at most (older outputs are forgotten wholesale).
const CORPUS_MAX: usize = 1 << 20;
/// Key length of the corpus index, and the shortest match it proposes from.
const CORPUS_KEY: usize = 3;
/// Separates outputs in the corpus (not a token id).
const SEPARATOR: Token = -1;

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
    fn lookup(&self, tokens: &[Token]) -> Option<usize> {
        let n = tokens.len();
        if n < CORPUS_KEY {
            return None;
        }
        let candidates = self.index.get(&hash_key(&tokens[n - CORPUS_KEY..]))?;
        let usable = |pos: usize| pos < self.tokens.len() && self.tokens[pos] != SEPARATOR;
        best_candidate(candidates, &self.tokens, tokens, CORPUS_KEY, MAX_EXTEND, usable).map(|(pos, _)| pos)
    }

    /// Append up to `max` tokens of the continuation at `pos` (stopping at an output's end).
    fn copy(&self, pos: usize, tokens: &mut Vec<Token>, max: usize) {
        tokens.extend(self.tokens[pos..].iter().take(max).take_while(|&&t| t != SEPARATOR));
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// The n-gram drafter: copy-aware prompt lookup over the sequence's [`NgramState`], and
/// optionally a draft cache of earlier outputs ([`NgramCorpus`]).
#[derive(Debug, Clone, Default)]
pub struct NgramDrafter {
    pub config: NgramConfig,
    /// `Some`: learn from every finished sequence and propose from earlier outputs.
    pub corpus: Option<NgramCorpus>,
    /// The tokens' texts: where no tokens match, the bytes may ([`crate::anchor`]).
    pub texts: Option<Arc<TokenTexts>>,
}

impl NgramDrafter {
    pub fn new(config: NgramConfig) -> Self {
        Self { config, corpus: None, texts: None }
    }

    /// With a draft cache across sequences.
    pub fn with_cache(config: NgramConfig) -> Self {
        Self { config, corpus: Some(NgramCorpus::default()), texts: None }
    }

    /// Anchoring copies on text as well as on tokens.
    pub fn with_texts(self, texts: Arc<TokenTexts>) -> Self {
        Self { texts: Some(texts), ..self }
    }
}

impl Drafter for NgramDrafter {
    fn name(&self) -> &'static str {
        "ngram"
    }

    fn source(&self, cursor: &mut DraftCursor, tokens: &[Token]) -> DraftSource {
        let cached = || self.corpus.as_ref().is_some_and(|c| c.lookup(tokens).is_some());
        match cursor.ngram.plan_anchored(tokens, self.config, self.texts.as_deref()) {
            Some(_) => DraftSource::Ngram,
            None if cached() => DraftSource::Ngram,
            None => DraftSource::None,
        }
    }

    fn learn(&mut self, generated: &[Token]) {
        if let Some(c) = &mut self.corpus {
            c.add(generated);
        }
    }

    fn copy_run(&self, cursor: &DraftCursor, tokens: &[Token]) -> usize {
        cursor.ngram.run(tokens)
    }

    fn peek(&self, cursor: &DraftCursor, tokens: &[Token]) -> Option<Token> {
        // as `propose`: the sequence's own plan, else the draft cache
        if cursor.ngram.planned_from(tokens).is_some() {
            return cursor.ngram.peek(tokens);
        }
        let c = self.corpus.as_ref()?;
        c.lookup(tokens).map(|pos| c.tokens[pos])
    }

    fn begin(&mut self, cursor: &mut DraftCursor, _: &[Token]) -> Result<(), ModelError> {
        cursor.ngram.reset();
        Ok(())
    }

    fn propose(
        &mut self,
        cursor: &mut DraftCursor,
        tokens: &mut Vec<Token>,
        q: &mut Vec<Dist>,
        req: &DraftRequest<'_>,
        _: &mut Scratch,
        _: &mut ChaCha8Rng,
    ) -> Result<DraftReport, ModelError> {
        let start = tokens.len();
        match cursor.ngram.plan_anchored(tokens, self.config, self.texts.as_deref()) {
            Some(from) => {
                cursor.ngram.copy(tokens, from, req.max);
            }
            None => {
                if let Some((c, pos)) = self.corpus.as_ref().and_then(|c| c.lookup(tokens).map(|p| (c, p))) {
                    c.copy(pos, tokens, req.max);
                }
            }
        }
        if req.keep_q {
            q.extend(tokens[start..].iter().map(|&t| Dist::one_hot(t)));
        }
        Ok(DraftReport { n_steps: 0, source: DraftSource::Ngram })
    }

    fn rollback(&mut self, _: &mut DraftCursor, _: usize) -> Result<(), ModelError> {
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

    fn source(&self, cursor: &mut DraftCursor, tokens: &[Token]) -> DraftSource {
        match self.ngram.source(cursor, tokens) {
            DraftSource::Ngram => DraftSource::Ngram,
            _ => self.model.source(cursor, tokens),
        }
    }

    fn copy_run(&self, cursor: &DraftCursor, tokens: &[Token]) -> usize {
        self.ngram.copy_run(cursor, tokens)
    }

    fn peek(&self, cursor: &DraftCursor, tokens: &[Token]) -> Option<Token> {
        self.ngram.peek(cursor, tokens)
    }

    fn begin(&mut self, cursor: &mut DraftCursor, prompt: &[Token]) -> Result<(), ModelError> {
        self.ngram.begin(cursor, prompt)?;
        self.model.begin(cursor, prompt)
    }

    fn propose(
        &mut self,
        cursor: &mut DraftCursor,
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

    fn propose_many(&mut self, jobs: &mut [ProposeJob<'_>], scratch: &mut Scratch) -> Result<Vec<DraftReport>, ModelError> {
        // n-grams first, each sequence alone (free); the draft model for the others, together
        let mut reports = vec![DraftReport::default(); jobs.len()];
        let mut to_model = vec![false; jobs.len()];
        for (i, j) in jobs.iter_mut().enumerate() {
            let before = j.tokens.len();
            reports[i] = self.ngram.propose(j.cursor, j.tokens, j.q, &j.req, scratch, j.rng)?;
            to_model[i] = j.tokens.len() == before;
        }
        let mut rest: Vec<ProposeJob<'_>> = jobs.iter_mut().zip(&to_model).filter(|(_, &m)| m).map(|(j, _)| j.reborrow()).collect();
        let model_reports = self.model.propose_many(&mut rest, scratch)?;
        for (i, r) in (0..reports.len()).filter(|&i| to_model[i]).zip(model_reports) {
            reports[i] = r;
        }
        Ok(reports)
    }

    fn rollback(&mut self, cursor: &mut DraftCursor, keep: usize) -> Result<(), ModelError> {
        self.model.rollback(cursor, keep)
    }

    fn learn(&mut self, generated: &[Token]) {
        self.ngram.learn(generated);
    }

    fn snapshot(&mut self, seq: crate::model::SeqId) -> Option<crate::model::Snapshot> {
        self.model.snapshot(seq)
    }

    fn restore(&mut self, seq: crate::model::SeqId, snapshot: &crate::model::Snapshot) -> Result<(), ModelError> {
        self.model.restore(seq, snapshot)
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

    /// `source` (100..100+len), a separator, then `out`: what an edit-and-return prompt looks
    /// like after the model has written `out`.
    fn history(len: i32, out: &[Token]) -> Vec<Token> {
        let mut t: Vec<Token> = (100..100 + len).collect();
        t.extend([1, 2]);
        t.extend_from_slice(out);
        t
    }

    /// What the drafter proposes after `tokens`; every proposal also checks that
    /// [`NgramState::peek`] foretold its first token (what rounds that draft nothing learn from).
    fn propose(state: &mut NgramState, tokens: &[Token], config: NgramConfig, k: usize) -> Vec<Token> {
        let mut t = tokens.to_vec();
        match state.plan(&t, config) {
            Some(from) => {
                let peeked = state.peek(&t);
                let mut first = t.clone();
                state.clone().copy(&mut first, from, 1);
                assert_eq!(peeked, first.get(tokens.len()).copied(), "the peek is the proposal's first token");
                state.copy(&mut t, from, k);
                t[tokens.len()..].to_vec()
            }
            None => {
                assert_eq!(state.peek(&t), None, "no plan, nothing to peek");
                vec![]
            }
        }
    }

    const DEFAULT: NgramConfig = NgramConfig { n_min: 3, n_max: 5 };

    #[test]
    fn after_a_substituted_token_the_copy_goes_on_where_it_was() {
        let mut st = NgramState::default();
        // copying 100..: the model wrote 100..110, then 999 instead of 110
        let mut out: Vec<Token> = (100..110).collect();
        let t = history(40, &out);
        assert_eq!(propose(&mut st, &t, DEFAULT, 4), vec![110, 111, 112, 113], "the run is found");
        out.push(999);
        let t = history(40, &out);
        assert_eq!(propose(&mut st, &t, DEFAULT, 4), vec![111, 112, 113, 114], "the pointer skips the edited token");
        // the old scan needs three tokens after the edit before it matches again
        assert!(lookup(&t, DEFAULT, 4).is_empty());
    }

    #[test]
    fn after_a_deletion_it_re_anchors_near_the_pointer() {
        let mut st = NgramState::default();
        let mut out: Vec<Token> = (100..110).collect();
        assert_eq!(propose(&mut st, &history(40, &out), DEFAULT, 3), vec![110, 111, 112]);
        // the model skipped 110..112 and wrote 113: one token is too little to re-anchor on, so
        // the long run is taken to go on past a substituted token...
        out.push(113);
        assert_eq!(propose(&mut st, &history(40, &out), DEFAULT, 3), vec![111, 112, 113]);
        // ...until the next token shows the deletion: two tokens agree near the pointer
        out.push(114);
        assert_eq!(propose(&mut st, &history(40, &out), DEFAULT, 3), vec![115, 116, 117]);
        // and an insertion: a new token, then the source again
        out.extend([115, 777, 116, 117]);
        assert_eq!(propose(&mut st, &history(40, &out), DEFAULT, 2), vec![118, 119]);
    }

    /// A source in which token 50 (a name) occurs three times among distinct tokens.
    fn named_source() -> Vec<Token> {
        let mut t: Vec<Token> = (10..18).collect();
        t.extend([50, 18, 19, 20, 21, 22, 23, 50, 24, 25, 26, 50, 27, 28, 29]);
        t.extend([1, 2]); // the output starts after this
        t
    }

    /// The output has copied `named_source` up to the first 50, and the drafter proposes it.
    fn copying_up_to_the_name() -> (NgramState, Vec<Token>) {
        let mut st = NgramState::default();
        let mut t = named_source();
        t.extend(10..18);
        assert_eq!(propose(&mut st, &t, DEFAULT, 4), vec![50, 18, 19, 20]);
        (st, t)
    }

    #[test]
    fn a_peek_foretells_a_replayed_edit() {
        let (mut st, mut t) = copying_up_to_the_name();
        t.push(60);
        propose(&mut st, &t, DEFAULT, 4);
        t.extend([18, 19, 20, 21, 22, 23]);
        assert!(st.plan(&t, DEFAULT).is_some());
        assert_eq!(st.peek(&t), Some(60), "the source has 50 next; the edit says 60");
        t.push(60);
        assert_eq!(st.peek(&t), None, "a peek is of the tokens the plan was made for");
    }

    #[test]
    fn a_rename_is_replayed_in_later_copies() {
        let (mut st, mut t) = copying_up_to_the_name();
        // the target renames 50 to 60; the run is taken to go on past a substituted token
        t.push(60);
        assert_eq!(propose(&mut st, &t, DEFAULT, 4), vec![18, 19, 20, 21]);
        // the copy resumes: 50 -> 60 is an edit, replayed at the next 50
        t.extend([18, 19, 20]);
        assert_eq!(propose(&mut st, &t, DEFAULT, 6), vec![21, 22, 23, 60, 24, 25]);
        let run = st.run(&t);
        // accepted, and the target's own token is the next renamed 50: the run goes on
        t.extend([21, 22, 23, 60, 24, 25, 26, 60]);
        assert_eq!(propose(&mut st, &t, DEFAULT, 3), vec![27, 28, 29]);
        assert_eq!(st.run(&t), run + 8, "the replayed edit kept the copy run");
    }

    #[test]
    fn a_rename_of_another_length_is_replayed_and_the_pointer_follows() {
        let (mut st, mut t) = copying_up_to_the_name();
        // 50 becomes three tokens, one round each (every draft rejected); then two tokens
        // agreeing near the pointer re-anchor the copy
        for x in [60, 61, 62, 18] {
            t.push(x);
            let _ = propose(&mut st, &t, DEFAULT, 4);
        }
        t.push(19);
        assert_eq!(propose(&mut st, &t, DEFAULT, 8), vec![20, 21, 22, 23, 60, 61, 62, 24]);
        let run = st.run(&t);
        // all accepted and the target's own token follows the source: the pointer is past 50
        t.extend([20, 21, 22, 23, 60, 61, 62, 24, 25]);
        assert_eq!(propose(&mut st, &t, DEFAULT, 5), vec![26, 60, 61, 62, 27]);
        assert_eq!(st.run(&t), run + 9);
    }

    #[test]
    fn an_edit_whose_replay_is_rejected_is_forgotten() {
        let (mut st, mut t) = copying_up_to_the_name();
        t.push(60);
        let _ = propose(&mut st, &t, DEFAULT, 4);
        t.extend([18, 19]);
        assert_eq!(propose(&mut st, &t, DEFAULT, 6), vec![20, 21, 22, 23, 60, 24]);
        // the target keeps 50 this time: the replay was wrong
        t.extend([20, 21, 22, 23, 50]);
        assert_eq!(propose(&mut st, &t, DEFAULT, 5), vec![24, 25, 26, 50, 27], "the source is copied as it is again");
    }

    #[test]
    fn the_copy_pointer_keeps_its_place_in_repetitive_text() {
        // the source repeats "5 6 7" with different continuations; the model is copying the
        // first occurrence, so the pointer must not jump to the more recent one
        let source = [5, 6, 7, 10, 11, 12, 5, 6, 7, 20, 21, 22];
        let mut t: Vec<Token> = source.to_vec();
        t.extend([1, 2, 5, 6, 7]);
        let mut st = NgramState::default();
        assert_eq!(propose(&mut st, &t, DEFAULT, 2), vec![20, 21], "first match: the most recent occurrence");
        // the target disagreed: it wrote 10 (the other occurrence); the pointer re-anchors there
        t.push(10);
        assert_eq!(propose(&mut st, &t, DEFAULT, 2), vec![11, 12]);
        t.extend([11, 12, 5, 6, 7]);
        // the run continues in the first occurrence, even though "5 6 7" last occurred later
        assert_eq!(propose(&mut st, &t, DEFAULT, 2), vec![20, 21]);
        assert_eq!(st.run(&t), 5 + 4, "five tokens since the re-anchoring on four agreeing ones");
    }

    #[test]
    fn the_run_length_is_the_evidence_for_long_drafts() {
        let mut st = NgramState::default();
        let mut out: Vec<Token> = (100..104).collect();
        let _ = propose(&mut st, &history(60, &out), DEFAULT, 4);
        assert_eq!(st.run(&history(60, &out)), 4, "anchored on a 4-token match");
        out.extend(104..130);
        let t = history(60, &out);
        assert_eq!(propose(&mut st, &t, DEFAULT, 4), vec![130, 131, 132, 133]);
        assert_eq!(st.run(&t), 30);
    }

    #[test]
    fn the_index_agrees_with_the_scan_on_random_text() {
        use rand::{Rng, SeedableRng};
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            let len = rng.gen_range(1..60);
            let t: Vec<Token> = (0..len).map(|_| rng.gen_range(0..4)).collect();
            let config = NgramConfig { n_min: rng.gen_range(1..3), n_max: rng.gen_range(3..6) };
            let mut st = NgramState::default();
            let from = st.plan(&t, config);
            // same longest suffix as the scan (the continuation may differ only in which of
            // several equally long matches is taken: both take the most recent)
            let scan = lookup(&t, config, 1);
            assert_eq!(from.is_some(), !scan.is_empty(), "{t:?} {config:?}");
            if let Some(from) = from {
                let len_idx = common_suffix(&t, from, t.len(), config.n_max);
                let mut best = 0;
                for p in 1..t.len() {
                    best = best.max(common_suffix(&t, p, t.len(), config.n_max));
                }
                assert_eq!(len_idx, best, "{t:?} {config:?}");
            }
        }
    }

    #[test]
    fn the_draft_cache_proposes_from_earlier_outputs_only_when_the_context_has_nothing() {
        let mut d = NgramDrafter::with_cache(DEFAULT);
        // an earlier record wrote 50..80
        d.learn(&(50..80).collect::<Vec<_>>());
        let mut cursor = DraftCursor::new(0);
        // this record's context has no match of its own, but ends in 60 61 62
        let tokens: Vec<Token> = vec![1, 2, 3, 60, 61, 62];
        assert_eq!(d.source(&mut cursor, &tokens), DraftSource::Ngram);
        assert_eq!(d.peek(&cursor, &tokens), Some(63), "a peek foretells the cache's proposal");
        let mut t = tokens.clone();
        let req = DraftRequest { max: 4, params: &crate::sampling::SamplingParams::greedy(), keep_q: false, p_min: 0.0, key: None };
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        d.propose(&mut cursor, &mut t, &mut vec![], &req, &mut Scratch::new(), &mut rng).unwrap();
        assert_eq!(&t[6..], &[63, 64, 65, 66]);
        // a proposal stops at the end of an earlier output
        let mut t = vec![9, 77, 78, 79];
        let mut cursor = DraftCursor::new(1);
        d.source(&mut cursor, &t);
        assert_eq!(d.peek(&cursor, &t), None, "nothing to foretell at an output's end");
        d.propose(&mut cursor, &mut t, &mut vec![], &req, &mut Scratch::new(), &mut rng).unwrap();
        assert_eq!(t.len(), 4, "nothing after 79 in the cache: {t:?}");
        // without the cache nothing is proposed
        let plain = NgramDrafter::new(DEFAULT);
        assert_eq!(plain.source(&mut DraftCursor::new(2), &tokens), DraftSource::None);
    }
}
