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

/// The text of every token id (what the model's detokenizer writes for it).
#[derive(Debug, Clone, Default)]
pub struct TokenTexts {
    texts: Vec<Vec<u8>>,
}

impl TokenTexts {
    pub fn new(texts: Vec<Vec<u8>>) -> Self {
        Self { texts }
    }

    /// The bytes of `token` (empty for ids outside the vocabulary).
    pub fn text(&self, token: Token) -> &[u8] {
        usize::try_from(token).ok().and_then(|t| self.texts.get(t)).map_or(&[], |t| t.as_slice())
    }
}

/// Shortest byte match that anchors (two bytes match too often to mean a copy).
pub const MIN_BYTES: usize = 3;
/// Most bytes of the output's end compared.
const MAX_BYTES: usize = 48;
/// Context boundaries examined, the most recent first.
const MAX_SCAN: usize = 1 << 15;

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

/// Bytes that the text of `tokens[..j]` and `tail` share at their ends.
fn byte_agreement(tokens: &[Token], j: usize, texts: &TokenTexts, tail: &[u8]) -> usize {
    let mut n = 0;
    for &t in tokens[..j].iter().rev() {
        for &b in texts.text(t).iter().rev() {
            if n == tail.len() || tail[tail.len() - 1 - n] != b {
                return n;
            }
            n += 1;
        }
    }
    n
}

/// Tokens that `tokens[..a]` and `tokens[..b]` share at their ends, at most `max`.
fn token_agreement(tokens: &[Token], a: usize, b: usize, max: usize) -> usize {
    (0..max.min(a).min(b)).take_while(|&i| tokens[a - 1 - i] == tokens[b - 1 - i]).count()
}

/// A position `j < tokens.len()` where an earlier stretch of the context ends with the same
/// bytes as `tokens` does (at least [`MIN_BYTES`], tokenized differently), so that
/// `tokens[j..]` is what a copy goes on with; with the bytes matched. The longest match wins;
/// among equals the first at or after `after` (a copy goes through its source in order), else
/// the most recent.
pub fn text_anchor(tokens: &[Token], texts: &TokenTexts, after: Option<usize>) -> Option<(usize, usize)> {
    let n = tokens.len();
    if n < 2 {
        return None;
    }
    let tail = Tail::of(tokens, texts);
    let last = *tail.bytes.last()?;
    let mut best: Option<(usize, usize)> = None; // (bytes, position)
    let better = |len: usize, j: usize, best: Option<(usize, usize)>| match best {
        None => true,
        Some((l, _)) if len != l => len > l,
        // equal lengths: the first after `after`, else the most recent (scanned first)
        Some((_, b)) => after.is_some_and(|a| j >= a && (b < a || j < b)),
    };
    for j in (n.saturating_sub(MAX_SCAN).max(1)..n).rev() {
        if texts.text(tokens[j - 1]).last() != Some(&last) {
            continue;
        }
        let len = byte_agreement(tokens, j, texts, &tail.bytes);
        if len < MIN_BYTES || !better(len, j, best) {
            continue;
        }
        // where the tokens agree over the whole match, the token lookup decides
        let covered = tail.covered(len);
        if covered == 0 || token_agreement(tokens, j, n, covered) >= covered {
            continue;
        }
        best = Some((len, j));
    }
    best.map(|(len, j)| (j, len))
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
        assert_eq!(text_anchor(&tokens, &t, None), Some((2, 3)));
    }

    #[test]
    fn a_word_split_differently_finds_its_source_once_the_bytes_agree() {
        let t = vocab(&["From:", " Nord", "licht", " Printing", " \"", "N", "ord"]);
        let doc = [0, 1, 2, 3];
        let out_n = [4, 5];
        let tokens: Vec<Token> = doc.iter().chain(&out_n).copied().collect();
        assert_eq!(text_anchor(&tokens, &t, None), None, "one byte is too little");
        let tokens: Vec<Token> = doc.iter().chain(&[4, 5, 6]).copied().collect();
        // ` Nord` ends at 2: the copy goes on with `licht`
        assert_eq!(text_anchor(&tokens, &t, None), Some((2, 4)));
    }

    #[test]
    fn tokens_that_agree_are_left_to_the_token_lookup() {
        let t = vocab(&[" the", " cat", " sat", "."]);
        let tokens = [0, 1, 2, 3, 0];
        assert_eq!(text_anchor(&tokens, &t, None), None);
    }

    #[test]
    fn among_equal_matches_the_first_after_the_last_copy_wins() {
        let t = vocab(&[" abc", "x", "y", "z", "\"", "abc"]);
        // ` abc` at 0, 4 and 8; the output ends `"abc`
        let tokens = [0, 1, 2, 3, 0, 2, 1, 3, 0, 3, 4, 5];
        assert_eq!(text_anchor(&tokens, &t, None), Some((9, 3)), "most recent without a copy");
        assert_eq!(text_anchor(&tokens, &t, Some(3)), Some((5, 3)));
        assert_eq!(text_anchor(&tokens, &t, Some(0)), Some((1, 3)));
    }

    #[test]
    fn the_longest_byte_match_wins() {
        let t = vocab(&[" ab", "c", " xbc", "\"", "a", "bc"]);
        // ` abc` ends at 2, ` xbc` at 3; the output `"abc` shares 3 bytes with the first
        let tokens = [0, 1, 2, 3, 4, 5];
        assert_eq!(text_anchor(&tokens, &t, None), Some((2, 3)));
    }
}
