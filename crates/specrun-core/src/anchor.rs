//! Text-anchored copying: where the output's last bytes occur earlier in the context when its
//! tokens do not show it.
//!
//! The same text is often tokenized differently in the prompt and in the output. A value
//! copied into a JSON string loses its leading space (` INV` in the document, `INV` after the
//! quote); a word after a quote splits differently (` Nord` `licht` against `N` `ord` `licht`).
//! A token-level n-gram lookup finds nothing until the tokens realign, a few plain rounds
//! later. Comparing bytes instead, and anchoring where a context token ends, finds the source
//! at once: the tokens after that boundary are the ones the output goes on with.
//!
//! An anchor is only taken where the tokenizations differ inside the match: where the tokens
//! agree, the token lookup already decided (and its evidence rules stay in force).

use crate::model::Token;
use std::collections::HashMap;

/// The text of every token id (what the model's detokenizer writes for it), and the token
/// that stands for a text.
#[derive(Debug, Clone, Default)]
pub struct TokenTexts {
    texts: Vec<Vec<u8>>,
    by_text: HashMap<Vec<u8>, Token>,
}

impl TokenTexts {
    pub fn new(texts: Vec<Vec<u8>>) -> Self {
        let mut by_text = HashMap::with_capacity(texts.len());
        for (t, text) in texts.iter().enumerate().rev() {
            if !text.is_empty() {
                by_text.insert(text.clone(), t as Token);
            }
        }
        Self { texts, by_text }
    }

    /// The bytes of `token` (empty for ids outside the vocabulary).
    pub fn text(&self, token: Token) -> &[u8] {
        usize::try_from(token).ok().and_then(|t| self.texts.get(t)).map_or(&[], |t| t.as_slice())
    }

    /// The token whose text is exactly `text` (the lowest id, if several are).
    pub fn token(&self, text: &[u8]) -> Option<Token> {
        self.by_text.get(text).copied()
    }
}

/// Shortest byte match that anchors (two bytes match too often to mean a copy).
pub const MIN_BYTES: usize = 3;
/// Most bytes of the output's end compared.
const MAX_BYTES: usize = 48;
/// Context tokens examined, the most recent first.
const MAX_SCAN: usize = 1 << 15;
/// Context tokens on either side of the last copy's source searched for a word the output
/// just began.
pub const WORD_AROUND: usize = 32;

/// Where a copy goes on: draft `head` (the rest of a context token the output's text ends
/// inside of), then `tokens[from..]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub from: usize,
    pub head: Option<Token>,
    /// Bytes the output's end and the context agree on.
    pub bytes: usize,
}

/// The output's last bytes and where its tokens start in them.
struct Tail {
    /// The texts of the last tokens, in order.
    bytes: Vec<u8>,
    /// `starts[i]`: the byte offset from the end at which the `i + 1`-th last token starts.
    starts: Vec<usize>,
}

impl Tail {
    fn of(tokens: &[Token], texts: &TokenTexts) -> Self {
        let mut starts = Vec::new();
        let mut len = 0;
        for &t in tokens.iter().rev() {
            if len >= MAX_BYTES {
                break;
            }
            len += texts.text(t).len();
            starts.push(len);
        }
        let m = starts.len();
        let bytes = tokens[tokens.len() - m..].iter().flat_map(|&t| texts.text(t).iter().copied()).collect();
        Self { bytes, starts }
    }

    /// How many of the last tokens lie wholly within the last `len` bytes.
    fn covered(&self, len: usize) -> usize {
        self.starts.iter().take_while(|&&s| s <= len).count()
    }
}

/// Bytes that the text of `tokens[..i]` followed by `part` and `tail` share at their ends, and
/// the context's byte before them (`None` at the context's start).
fn byte_agreement(tokens: &[Token], i: usize, part: &[u8], texts: &TokenTexts, tail: &[u8]) -> (usize, Option<u8>) {
    let mut n = 0;
    let before = tokens[..i].iter().rev().map(|&t| texts.text(t));
    for text in std::iter::once(part).chain(before) {
        for &b in text.iter().rev() {
            if n == tail.len() || tail[tail.len() - 1 - n] != b {
                return (n, Some(b));
            }
            n += 1;
        }
    }
    (n, None)
}

/// Whether the last `len` bytes of `tail` begin a word where the output and the context have
/// them (`context_before`: the context's byte before them): a match that begins inside a word
/// on either side (`rap` of `wrap` in `paragraph`) is a coincidence of letters, not a copy.
fn begins_word(tail: &[u8], len: usize, context_before: Option<u8>) -> bool {
    let first = tail[tail.len() - len];
    let output_before = tail.len().checked_sub(len + 1).map(|i| tail[i]);
    !wordlike(first) || [output_before, context_before].iter().all(|b| b.is_none_or(|b| !wordlike(b)))
}

/// Tokens that `tokens[..a]` and `tokens[..b]` share at their ends, at most `max`.
fn token_agreement(tokens: &[Token], a: usize, b: usize, max: usize) -> usize {
    (0..max.min(a).min(b)).take_while(|&i| tokens[a - 1 - i] == tokens[b - 1 - i]).count()
}

/// Where an earlier stretch of the context ends with the same bytes as `tokens` does (at
/// least [`MIN_BYTES`], tokenized differently, beginning a word on both sides): at the end of
/// a context token (the copy goes on with the tokens after it) or inside one whose rest is a
/// token of its own (drafted first). The longest match wins; among equals the first at or
/// after `after` (a copy goes through its source in order), else the most recent. Copies
/// start before `sources`.
///
/// Where the tokens agree over the whole match, the token lookup decides: anchoring on any
/// word there copies earlier output (keys, punctuation) more often than values
/// (docs/benchmarks.md, "Design measurements").
pub fn text_anchor(tokens: &[Token], texts: &TokenTexts, after: Option<usize>, sources: usize) -> Option<Anchor> {
    let n = tokens.len();
    if n < 2 {
        return None;
    }
    let tail = Tail::of(tokens, texts);
    let last = *tail.bytes.last()?;
    let mut best: Option<Anchor> = None;
    let better = |len: usize, from: usize, best: Option<Anchor>| match best {
        None => true,
        Some(b) if len != b.bytes => len > b.bytes,
        // equal lengths: the first after `after`, else the most recent (scanned first)
        Some(b) => after.is_some_and(|a| from >= a && (b.from < a || from < b.from)),
    };
    // the source token `tokens[i]`, its text matched up to byte `o`
    for i in (n.saturating_sub(MAX_SCAN)..(n - 1).min(sources.saturating_sub(1))).rev() {
        let text = texts.text(tokens[i]);
        for o in (1..=text.len()).filter(|&o| text[o - 1] == last) {
            let (len, context_before) = byte_agreement(tokens, i, &text[..o], texts, &tail.bytes);
            if len < MIN_BYTES || !better(len, i + 1, best) || !begins_word(&tail.bytes, len, context_before) {
                continue;
            }
            let head = if o == text.len() {
                // where the tokens agree over the whole match, the token lookup decides
                let covered = tail.covered(len);
                if covered == 0 || token_agreement(tokens, i + 1, n, covered) >= covered {
                    continue;
                }
                None
            } else {
                match texts.token(&text[o..]) {
                    Some(h) => Some(h),
                    None => continue,
                }
            };
            best = Some(Anchor { from: i + 1, head, bytes: len });
        }
    }
    best
}

/// Whether `b` can continue a word.
fn wordlike(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

/// Whether the output's last token begins a word right after punctuation (`Val` after a
/// quote, a digit after `: `): a value's start, where a word the context has whole is being
/// copied — unlike a word of prose after a space, which is often complete (` to` against the
/// context's ` topic`).
pub fn begins_after_mark(tokens: &[Token], texts: &TokenTexts) -> bool {
    let n = tokens.len();
    n >= 2
        && texts.text(tokens[n - 1]).first().is_some_and(|&b| wordlike(b))
        && texts.text(tokens[n - 2]).last().is_some_and(|&b| !wordlike(b))
}

/// Where the output has just begun a word after punctuation with a token too short for
/// [`text_anchor`] (`n` after a quote, a digit after `: `): the word nearest to `near` (where
/// the last copy came from), within [`WORD_AROUND`] context tokens, that begins with the same
/// bytes (the nearest after it among equals). Values extracted from a text sit close to one
/// another in it, if not always in the schema's order; a longer match anywhere is
/// [`text_anchor`]'s. Copies start before `sources`.
pub fn word_anchor(tokens: &[Token], texts: &TokenTexts, near: usize, sources: usize) -> Option<Anchor> {
    let n = tokens.len();
    if n < 2 {
        return None;
    }
    if !begins_after_mark(tokens, texts) {
        return None;
    }
    let word = texts.text(tokens[n - 1]);
    // nearest first, after before behind among equals
    let around = (0..WORD_AROUND).flat_map(|d| [Some(near + d), near.checked_sub(d).filter(|_| d > 0)]);
    for i in around.flatten().filter(|&i| i < n - 1 && i + 1 < sources) {
        let text = texts.text(tokens[i]);
        let rest = match text.strip_prefix(b" ") {
            Some(rest) => rest,
            None if i == 0 || texts.text(tokens[i - 1]).last().is_none_or(|&b| !wordlike(b)) => text,
            None => continue,
        };
        let Some(tail) = rest.strip_prefix(word) else { continue };
        let head = match tail {
            [] => None,
            _ => match texts.token(tail) {
                Some(h) => Some(h),
                None => continue,
            },
        };
        return Some(Anchor { from: i + 1, head, bytes: word.len() });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of the given words, token `i` is `words[i]`.
    fn vocab(words: &[&str]) -> TokenTexts {
        TokenTexts::new(words.iter().map(|w| w.as_bytes().to_vec()).collect())
    }

    #[test]
    fn a_value_without_its_leading_space_finds_its_source() {
        let t = vocab(&["No.", " INV", "-", "20", "\n", " \"", "INV", "Date:"]);
        // document "No. INV-20\nDate:", output ` "INV`
        let tokens = [0, 1, 2, 3, 4, 7, 5, 6];
        assert_eq!(text_anchor(&tokens, &t, None, usize::MAX), Some(Anchor { from: 2, head: None, bytes: 3 }));
    }

    #[test]
    fn a_word_split_differently_finds_its_source_once_the_bytes_agree() {
        let t = vocab(&["From:", " Nord", "licht", " Printing", " \"", "N", "ord"]);
        let doc = [0, 1, 2, 3];
        let out_n = [4, 5];
        let tokens: Vec<Token> = doc.iter().chain(&out_n).copied().collect();
        assert_eq!(text_anchor(&tokens, &t, None, usize::MAX), None, "one byte is too little");
        let tokens: Vec<Token> = doc.iter().chain(&[4, 5, 6]).copied().collect();
        // ` Nord` ends at 2: the copy goes on with `licht`
        assert_eq!(text_anchor(&tokens, &t, None, usize::MAX), Some(Anchor { from: 2, head: None, bytes: 4 }));
    }

    #[test]
    fn tokens_that_agree_are_left_to_the_token_lookup() {
        let t = vocab(&[" the", " cat", " sat", "."]);
        let tokens = [0, 1, 2, 3, 0];
        assert_eq!(text_anchor(&tokens, &t, None, usize::MAX), None);
    }

    #[test]
    fn among_equal_matches_the_first_after_the_last_copy_wins() {
        let t = vocab(&[" abc", "x", "y", "z", "\"", "abc"]);
        // ` abc` at 0, 4 and 8; the output ends `"abc`
        let tokens = [0, 1, 2, 3, 0, 2, 1, 3, 0, 3, 4, 5];
        let at = |from| Some(Anchor { from, head: None, bytes: 3 });
        assert_eq!(text_anchor(&tokens, &t, None, usize::MAX), at(9), "most recent without a copy");
        assert_eq!(text_anchor(&tokens, &t, Some(3), usize::MAX), at(5));
        assert_eq!(text_anchor(&tokens, &t, Some(0), usize::MAX), at(1));
        // sources end at 6: the match at 8 is not one
        assert_eq!(text_anchor(&tokens, &t, None, 6), at(5));
        assert_eq!(text_anchor(&tokens, &t, None, 5), at(1));
    }

    #[test]
    fn the_longest_byte_match_wins() {
        let t = vocab(&[" ab", "c", " xbc", "\"", "a", "bc"]);
        // ` abc` ends at 2, ` xbc` at 3; the output `"abc` shares 3 bytes with the first
        let tokens = [0, 1, 2, 3, 4, 5];
        assert_eq!(text_anchor(&tokens, &t, None, usize::MAX), Some(Anchor { from: 2, head: None, bytes: 3 }));
    }

    #[test]
    fn a_match_inside_a_longer_token_drafts_the_rest_of_it_first() {
        let t = vocab(&["|", " Portugal", " |", " Lisbon", "\"", "Port", "ugal"]);
        // the table cell ` Portugal`, the output `"Port`
        let tokens = [0, 1, 2, 3, 2, 4, 5];
        assert_eq!(text_anchor(&tokens, &t, None, usize::MAX), Some(Anchor { from: 2, head: Some(6), bytes: 4 }));
        // no token stands for the rest: no anchor
        let t = vocab(&["|", " Portugal", " |", " Lisbon", "\"", "Port", "uga"]);
        assert_eq!(text_anchor(&tokens, &t, None, usize::MAX), None);
    }

    #[test]
    fn a_match_that_begins_inside_a_word_is_no_anchor() {
        let t = vocab(&[" para", "graph", " plastic", " wrap", " \"", "rap", "h", "wrap"]);
        // the context's ` paragraph`: the output's ` wrap` shares `rap` with it, inside words
        // on both sides
        assert_eq!(text_anchor(&[0, 1, 2, 3], &t, None, usize::MAX), None);
        // the output's `"rap` begins a word, but in the context `rap` is inside one
        assert_eq!(text_anchor(&[0, 1, 4, 5], &t, None, usize::MAX), None);
        // a context word that begins with the output's word: an anchor
        let t = vocab(&[" wraph", "ic", " \"", "wrap", "h"]);
        assert_eq!(text_anchor(&[0, 1, 2, 3], &t, None, usize::MAX), Some(Anchor { from: 1, head: Some(4), bytes: 4 }));
    }

    #[test]
    fn a_short_word_start_anchors_on_the_next_word_after_the_last_copy() {
        let t = vocab(&[" Maria", " Lopez", ",", " a", " nurse", " in", " Valencia", "\"", "n", "urse", " night"]);
        // "Maria Lopez, a night nurse in Valencia", the output has copied the name and now
        // writes `"n`
        let doc = [0, 1, 2, 3, 10, 4, 5, 6];
        let tokens: Vec<Token> = doc.iter().chain(&[7, 8]).copied().collect();
        assert_eq!(text_anchor(&tokens, &t, Some(1), usize::MAX), None, "one byte is too little for a text anchor");
        // ` night` comes first after the last copy, but no token stands for its rest
        assert_eq!(word_anchor(&tokens, &t, 1, usize::MAX), Some(Anchor { from: 6, head: Some(9), bytes: 1 }));
        // the nearest such word, behind the copy's source too; inside a word, nothing
        assert_eq!(word_anchor(&tokens, &t, 7, usize::MAX), Some(Anchor { from: 6, head: Some(9), bytes: 1 }));
        let mid_word: Vec<Token> = doc.iter().chain(&[0, 8]).copied().collect();
        assert_eq!(word_anchor(&mid_word, &t, 1, usize::MAX), None, "`Maria` then `n` continues a word");
        // only the first 5 tokens are sources: the word at 5 is past them
        assert_eq!(word_anchor(&tokens, &t, 1, 5), None);
    }

    #[test]
    fn a_digit_after_a_colon_anchors_on_the_number_in_the_source() {
        let t = vocab(&["Port", ":", " ", "8", "0", "\n", "\"", "port", "\":", "x"]);
        // "Port: 80\n", the output `"port": 8`
        let tokens = [0, 1, 2, 3, 4, 5, 6, 7, 8, 2, 3];
        assert_eq!(word_anchor(&tokens, &t, 0, usize::MAX), Some(Anchor { from: 4, head: None, bytes: 1 }));
    }
}
