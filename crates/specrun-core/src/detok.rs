//! Incremental UTF-8 assembly of token pieces.
//!
//! A token's bytes need not be a whole character: byte-fallback tokens split multi-byte
//! characters across tokens. [`Utf8Stream`] emits text as soon as it is complete, holds back an
//! unfinished character, and replaces bytes that can never be valid with U+FFFD.
//! [`TextStream`] is a generation's text on top of it: cut at the first stop string, and
//! shown only as far as it cannot be the start of one (the one place `run`, `batch` and
//! `serve` turn tokens into text).

/// Turns a stream of byte pieces into valid UTF-8 text.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `bytes`; return the text completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).expect("valid prefix"));
                    match e.error_len() {
                        // an unfinished character at the end: wait for more bytes
                        None => {
                            rest = bad;
                            break;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }

    /// End of stream: whatever is held back can no longer complete.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// A generation's text as its tokens come: pieces joined across UTF-8 boundaries, the text
/// cut where a stop string begins, and what may be shown so far — all of it once stopped or
/// finished, else up to any suffix that could begin a stop string.
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    utf8: Utf8Stream,
    stops: Vec<String>,
    text: String,
    /// How much of `text` was taken ([`TextStream::take_ready`]).
    taken: usize,
    stopped: bool,
    finished: bool,
}

impl TextStream {
    /// A stream that stops at the first of `stops` (empty strings never match).
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), ..Self::default() }
    }

    /// Add a token's bytes. True once a stop string was found: the text ends before it, and
    /// what comes after is ignored.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if !self.stopped && !self.finished {
            let before = self.text.len();
            let piece = self.utf8.push(bytes);
            self.text.push_str(&piece);
            self.cut_from(before);
        }
        self.stopped
    }

    /// The end of generation: an unfinished character is flushed (lossily) unless the text
    /// was stopped, and everything becomes ready.
    pub fn finish(&mut self) {
        if !self.stopped && !self.finished {
            let before = self.text.len();
            let tail = self.utf8.finish();
            self.text.push_str(&tail);
            self.cut_from(before);
        }
        self.finished = true;
    }

    /// Whether a stop string ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The text so far (a held-back stop-string prefix included).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// How far the text may be shown now.
    pub fn ready_len(&self) -> usize {
        if self.stopped || self.finished {
            self.text.len()
        } else {
            self.text.len() - self.longest_stop_prefix()
        }
    }

    /// How much of the text was taken.
    pub fn taken(&self) -> usize {
        self.taken
    }

    /// The text ready and not taken yet, marked taken.
    pub fn take_ready(&mut self) -> &str {
        let (from, to) = (self.taken, self.ready_len().max(self.taken));
        self.taken = to;
        &self.text[from..to]
    }

    /// The whole text (ends the stream).
    pub fn into_text(mut self) -> String {
        self.finish();
        self.text
    }

    /// Cut at the first stop string that ends in the text added from `before` on.
    fn cut_from(&mut self, before: usize) {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = before.saturating_sub(longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let first = self.stops.iter().filter_map(|s| self.text[from..].find(s.as_str())).min();
        if let Some(i) = first {
            self.text.truncate(from + i);
            self.stopped = true;
        }
    }

    /// The longest suffix of the text that is a proper prefix of a stop string.
    fn longest_stop_prefix(&self) -> usize {
        let mut held = 0;
        for s in &self.stops {
            for n in (held + 1..s.len().min(self.text.len() + 1)).rev() {
                if s.is_char_boundary(n) && self.text.ends_with(&s[..n]) {
                    held = n;
                    break;
                }
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_are_held_until_complete() {
        let mut s = Utf8Stream::new();
        let euro = "€".as_bytes(); // e2 82 ac
        assert_eq!(s.push(b"a"), "a");
        assert_eq!(s.push(&euro[..1]), "");
        assert_eq!(s.push(&euro[1..2]), "");
        assert_eq!(s.push(&[euro[2], b'b']), "€b");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(&[b'x', 0xff, b'y']), "x\u{FFFD}y");
        // a truncated character at the very end is flushed lossily
        assert_eq!(s.push(&[0xe2, 0x82]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }

    #[test]
    fn any_split_of_valid_text_reassembles_exactly() {
        let text = "héllo wörld — 你好 🦀!";
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let mut s = Utf8Stream::new();
            let mut out = s.push(&bytes[..cut]);
            out += &s.push(&bytes[cut..]);
            out += &s.finish();
            assert_eq!(out, text);
        }
    }

    fn stream(stops: &[&str], pieces: &[&[u8]]) -> (String, Vec<String>, bool) {
        let mut t = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut shown = Vec::new();
        for p in pieces {
            t.push(p);
            shown.push(t.take_ready().to_string());
        }
        t.finish();
        shown.push(t.take_ready().to_string());
        let stopped = t.stopped();
        (t.into_text(), shown, stopped)
    }

    #[test]
    fn the_text_ends_where_a_stop_string_begins_even_across_tokens() {
        let (text, shown, stopped) = stream(&["END"], &[b"abc E", b"N", b"D and more", b"ignored"]);
        assert_eq!(text, "abc ");
        assert!(stopped);
        // " E" and "EN" may begin the stop string: held back until they cannot
        assert_eq!(shown, vec!["abc ", "", "", "", ""]);
        // of several stop strings, the one that begins first
        let (text, _, _) = stream(&["END", "\n\n"], &[b"abc\n\nxyzEND"]);
        assert_eq!(text, "abc");
    }

    #[test]
    fn a_held_back_prefix_is_shown_once_it_cannot_begin_a_stop_string() {
        let (text, shown, stopped) = stream(&["</s>", "STOP"], &[b"x <", b"/t", b" S", b"T"]);
        assert_eq!(text, "x </t ST");
        assert!(!stopped);
        assert_eq!(shown, vec!["x ", "</t", " ", "", "ST"]);
        assert_eq!(shown.concat(), text, "everything shown once, in order");
    }

    #[test]
    fn split_characters_and_stops_together() {
        let euro = "€".as_bytes();
        let (text, shown, _) = stream(&["€!"], &[b"a", &euro[..2], &euro[2..], b"b"]);
        assert_eq!(text, "a€b");
        assert_eq!(shown.concat(), "a€b");
        let (text, _, stopped) = stream(&["€!"], &[b"a", &euro[..2], &euro[2..], b"!x"]);
        assert_eq!((text.as_str(), stopped), ("a", true));
        // no stops: everything is shown at once, an unfinished character at the end lossily
        let (text, shown, stopped) = stream(&[""], &[b"hi", &euro[..1]]);
        assert_eq!((text.as_str(), stopped), ("hi\u{FFFD}", false));
        assert_eq!(shown, vec!["hi", "", "\u{FFFD}"]);
    }
}
