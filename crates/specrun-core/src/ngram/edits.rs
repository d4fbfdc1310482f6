//! Edits replayed: a substitution the output made in what it copied (a rename) is
//! remembered, and later copies of the old tokens draft the new ones.

use super::NgramState;
use crate::model::Token;

/// Only a copy run at least this long is assumed to go on past one substituted token.
pub(crate) const MIN_RUN_FOR_EDIT: usize = 6;

/// Longest stretch (source or output) that counts as one edit to replay.
pub(crate) const EDIT_MAX: usize = 8;
/// Edits remembered per sequence (the most recent replace the oldest).
pub(crate) const EDITS_MAX: usize = 8;

/// A substitution the output made in what it copied: where the source had `old`, it wrote
/// `new` (a rename, a changed literal). Later copies of `old` are drafted as `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edit {
    pub(crate) old: Vec<Token>,
    pub(crate) new: Vec<Token>,
}

/// Where the last draft replayed an edit: output `start..end` is the edit's `new`, and the
/// source goes on at `source_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replay {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) source_end: usize,
    pub(crate) edit: usize,
}

/// The most recent edit whose `old` starts at `tokens[i]`, with its index: what a copy
/// through position `i` replays.
pub(crate) fn edit_at<'a>(edits: &'a [Edit], tokens: &[Token], i: usize) -> Option<(usize, &'a Edit)> {
    edits.iter().enumerate().rev().find(|(_, e)| tokens.get(i..i + e.old.len()) == Some(&e.old[..]))
}

impl NgramState {
    /// Settle the last draft's replayed edits against `tokens`: one the target rejected is
    /// forgotten; after one it accepted, the source goes on past the edit's `old` — where,
    /// returned.
    pub(crate) fn settle_replays(&mut self, tokens: &[Token]) -> Option<usize> {
        let n = tokens.len();
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
        resumed
    }

    /// With the pointer at `p`: if the output ends with an edit's `new` (not empty) and the
    /// source, `p` moved past the edit's `old`, ends with `old`, the pointer past it.
    pub(crate) fn through_edit(&self, tokens: &[Token], p: usize) -> Option<usize> {
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
    pub(crate) fn learn_edit(&mut self, tokens: &[Token], from: usize, matched: usize) {
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
}
