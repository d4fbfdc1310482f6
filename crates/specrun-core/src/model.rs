//! The seam between the speculative algorithm and a language model.
//!
//! [`Model`] is the whole interface the core needs from an inference engine: decode a run of
//! tokens of one sequence at given positions, read back the logits rows that were asked for,
//! and cut a sequence's KV cache back to a length. It is implemented once over llama.cpp
//! (`crate::llama`) and once by the deterministic in-memory `mock::MockModel`.
//!
//! [`KvCursor`] is the per-sequence bookkeeping of what one model's cache holds. The core never
//! touches a cache except through a cursor, so "the cache holds exactly `tokens[..n_cached]`"
//! is kept in one place for the draft and the target alike.

use thiserror::Error;

/// A token id, as llama.cpp numbers them.
pub type Token = i32;

/// A sequence id inside a model context (llama.cpp's `llama_seq_id`).
pub type SeqId = i32;

/// Errors a [`Model`] can report. Callers tell these apart: a refused truncation means the
/// model cannot roll back (recurrent/hybrid memory) and speculation with it is impossible.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ModelError {
    /// The batch would exceed the context's `n_batch`; llama.cpp would abort the process.
    #[error("batch of {n_tokens} tokens exceeds n_batch {n_batch}")]
    BatchTooLarge { n_tokens: usize, n_batch: usize },
    /// The positions would run past the context size.
    #[error("position {end} exceeds the context size n_ctx {n_ctx}")]
    ContextFull { end: usize, n_ctx: usize },
    /// A decode did not continue the sequence's cache where it ended.
    #[error("decode at position {pos} but sequence {seq} holds {n_cached} tokens")]
    PositionMismatch { seq: SeqId, pos: usize, n_cached: usize },
    /// The model refused to remove part of a sequence (recurrent or hybrid memory).
    #[error("the model cannot remove positions >= {len} of sequence {seq} (recurrent or hybrid memory cannot roll back)")]
    TruncateRefused { seq: SeqId, len: usize },
    /// The engine failed to decode.
    #[error("decode failed: {0}")]
    Decode(String),
    /// A logits row holds NaN or infinity: the weights are corrupted (or the backend broken).
    #[error("the model produced non-finite logits (corrupted weights?)")]
    NonFinite,
    /// Cells copied out by [`Model::snapshot`] could not be put back.
    #[error("cannot restore cached cells: {0}")]
    Restore(String),
}

/// A sequence's cells copied out of a model into host memory ([`Model::snapshot`]). The core
/// sees only its size; the model that made it reads it back ([`Model::restore`]) into any of
/// its sequences.
pub struct Snapshot {
    bytes: usize,
    data: Box<dyn std::any::Any>,
}

impl Snapshot {
    /// Wrap a model's own copy of a sequence, `bytes` long in memory.
    pub fn new<T: std::any::Any>(data: T, bytes: usize) -> Self {
        Self { bytes, data: Box::new(data) }
    }

    /// Host memory it holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The model's own copy, when it is a `T`.
    pub fn data<T: std::any::Any>(&self) -> Option<&T> {
        self.data.downcast_ref()
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

/// One sequence's share of a decode that carries several sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodePart<'a> {
    pub seq: SeqId,
    /// Position of `tokens[0]` in the sequence.
    pub pos: usize,
    pub tokens: &'a [Token],
    /// Keep logits rows for `tokens[logits_from..]`.
    pub logits_from: usize,
    /// Of those rows (counted from `logits_from`), the ones nobody will read: the model may
    /// leave their logits uncomputed (a row the grammar allows one token in). Rows past its
    /// end are read.
    pub unread: &'a [bool],
}

impl<'a> DecodePart<'a> {
    /// This part with the rows marked in `unread` left unread.
    pub fn unread(self, unread: &'a [bool]) -> Self {
        Self { unread, ..self }
    }

    /// Whether row `row` (counted from `logits_from`) is read.
    pub fn reads(&self, row: usize) -> bool {
        !self.unread.get(row).copied().unwrap_or(false)
    }
}

/// What a model must offer the speculative core.
///
/// Architecture invariant: implementations never decide anything about speculation; they decode
/// what they are told and report errors instead of aborting.
pub trait Model {
    /// Number of logits in a row.
    fn n_vocab(&self) -> usize;
    /// Context size in tokens.
    fn n_ctx(&self) -> usize;
    /// Largest number of tokens one [`Model::decode`] call may take.
    fn n_batch(&self) -> usize;
    /// Whether `token` ends generation (EOS, EOT, ...).
    fn is_eog(&self, token: Token) -> bool;
    /// Decode `tokens` as positions `pos..pos + tokens.len()` of sequence `seq`, keeping logits
    /// rows for the tokens at index `logits_from..` of `tokens`.
    fn decode(&mut self, seq: SeqId, pos: usize, tokens: &[Token], logits_from: usize) -> Result<(), ModelError>;
    /// Logits row `row` of the last decode, counting only the rows that were kept (an unread
    /// row, [`DecodePart::unread`], counts but may have no logits: it must not be asked for).
    fn logits(&self, row: usize) -> &[f32];
    /// Remove every position `>= len` from sequence `seq`.
    fn truncate(&mut self, seq: SeqId, len: usize) -> Result<(), ModelError>;
    /// How many sequences (ids `0..n`) the model's context holds, each with `n_ctx` positions.
    fn n_seq_max(&self) -> usize {
        1
    }
    /// Copy sequence `seq`'s cells into host memory (`None`: this model cannot).
    fn snapshot(&mut self, _seq: SeqId) -> Option<Snapshot> {
        None
    }
    /// Replace sequence `seq`'s cells with a [`Model::snapshot`] of this model (taken from any
    /// of its sequences). On error the sequence's cells are unspecified: truncate it to 0.
    fn restore(&mut self, _seq: SeqId, _snapshot: &Snapshot) -> Result<(), ModelError> {
        Err(ModelError::Restore("this model keeps no snapshots".into()))
    }
    /// Make sequence `to` hold the cells of sequence `from`'s first `len` positions, its own
    /// cells removed first: one prompt read once for several sequences (llama.cpp's
    /// `llama_memory_seq_cp`: in a unified cache the cells are shared, not copied). On error
    /// `to`'s cells are unspecified: truncate it to 0.
    fn copy_cells(&mut self, _from: SeqId, _to: SeqId, _len: usize) -> Result<(), ModelError> {
        Err(ModelError::Restore("this model cannot share cells between sequences".into()))
    }
    /// Decode several sequences' tokens in one call (at most `n_batch` tokens in all, each
    /// sequence at most once). The rows kept are every part's, in part order: rows
    /// `0..r0` are the first part's, `r0..r0 + r1` the second's, and so on.
    fn decode_parts(&mut self, parts: &[DecodePart<'_>]) -> Result<(), ModelError> {
        match parts {
            [] => Ok(()),
            // every row computed: unread rows are a permission, not a duty
            [p] => self.decode(p.seq, p.pos, p.tokens, p.logits_from),
            _ => Err(ModelError::Decode("this model decodes one sequence per call".into())),
        }
    }
}

/// What one model's KV cache holds for one sequence: the first `n_cached` tokens of the
/// sequence's token list.
///
/// Architecture invariant: `n_cached` only grows through [`KvCursor::decode_tail`] (or a
/// multi-sequence decode of its [`KvCursor::part`], recorded by [`KvCursor::part_decoded`]) and only
/// shrinks through [`KvCursor::keep`], so it always equals the model's real cache length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCursor {
    pub seq: SeqId,
    pub n_cached: usize,
}

impl KvCursor {
    pub fn new(seq: SeqId) -> Self {
        Self { seq, n_cached: 0 }
    }

    /// Decode every token of `tokens` the cache has not seen, keeping logits rows for the last
    /// `n_rows` tokens (row 0 is `tokens[tokens.len() - n_rows]`). Runs longer than `n_batch` go in
    /// several calls; the last call holds all the rows asked for.
    ///
    /// Returns an error without decoding anything when the rows asked for cannot fit one batch.
    pub fn decode_tail<M: Model + ?Sized>(&mut self, model: &mut M, tokens: &[Token], n_rows: usize) -> Result<(), ModelError> {
        self.decode_rows(model, tokens, n_rows, &[])
    }

    /// [`KvCursor::decode_tail`], the rows marked in `unread` left unread
    /// ([`DecodePart::unread`]).
    pub fn decode_rows<M: Model + ?Sized>(
        &mut self,
        model: &mut M,
        tokens: &[Token],
        n_rows: usize,
        unread: &[bool],
    ) -> Result<(), ModelError> {
        debug_assert!(self.n_cached <= tokens.len());
        let tail = &tokens[self.n_cached..];
        assert!(n_rows <= tail.len(), "asked for {n_rows} rows of a {}-token tail", tail.len());
        let n_batch = model.n_batch();
        if n_rows > n_batch {
            return Err(ModelError::BatchTooLarge { n_tokens: n_rows, n_batch });
        }
        if tokens.len() > model.n_ctx() {
            return Err(ModelError::ContextFull { end: tokens.len(), n_ctx: model.n_ctx() });
        }
        for chunk in chunk_ends(tail.len(), n_batch) {
            let (start, end) = chunk;
            let last = end == tail.len();
            let logits_from = if last { (end - start) - n_rows } else { end - start };
            let part = DecodePart { seq: self.seq, pos: self.n_cached, tokens: &tail[start..end], logits_from, unread: &[] };
            model.decode_parts(&[if last { part.unread(unread) } else { part }])?;
            self.n_cached += end - start;
        }
        Ok(())
    }

    /// This cursor's share of a decode that carries several sequences: every token of
    /// `tokens` the cache has not seen, keeping rows for the last `n_rows` of them. Once that
    /// decode succeeded, [`KvCursor::part_decoded`] records it.
    pub fn part<'t>(&self, tokens: &'t [Token], n_rows: usize) -> DecodePart<'t> {
        self.part_upto(tokens, tokens.len(), n_rows)
    }

    /// [`KvCursor::part`] of `tokens[..end]`: the unseen tokens before `end` (a chunk of a
    /// prompt), keeping rows for the last `n_rows` of them (none: a chunk that is not the last).
    pub fn part_upto<'t>(&self, tokens: &'t [Token], end: usize, n_rows: usize) -> DecodePart<'t> {
        let tail = &tokens[self.n_cached..end];
        DecodePart { seq: self.seq, pos: self.n_cached, tokens: tail, logits_from: tail.len() - n_rows.min(tail.len()), unread: &[] }
    }

    /// The multi-sequence decode holding [`KvCursor::part`]'s `n_tokens` tokens succeeded.
    pub fn part_decoded(&mut self, n_tokens: usize) {
        self.n_cached += n_tokens;
    }

    /// Keep only the first `len` tokens in the cache (no-op when it holds fewer).
    pub fn keep<M: Model + ?Sized>(&mut self, model: &mut M, len: usize) -> Result<(), ModelError> {
        if self.n_cached > len {
            model.truncate(self.seq, len)?;
            self.n_cached = len;
        }
        Ok(())
    }
}

/// Split `len` tokens into chunks of at most `n_batch`, the *last* chunk as large as possible,
/// so that rows asked for at the end of a run always share one batch.
fn chunk_ends(len: usize, n_batch: usize) -> impl Iterator<Item = (usize, usize)> {
    let n_chunks = len.div_ceil(n_batch.max(1));
    let first = len - (n_chunks.saturating_sub(1)) * n_batch;
    (0..n_chunks).map(move |i| {
        if i == 0 {
            (0, first)
        } else {
            let start = first + (i - 1) * n_batch;
            (start, start + n_batch)
        }
    })
}

/// Tokens of `rendered`, in which `contents[i]` stands as `marker(i)`: the text around the
/// markers with control tokens parsed, each content as plain text. `tokenize(text, first,
/// special)` tokenizes one piece (`first`: BOS may go before it). None when a marker is
/// missing, repeated or out of order (a template that rewrites or drops contents).
pub fn tokens_with_text_holes(
    rendered: &str,
    contents: &[&str],
    marker: &dyn Fn(usize) -> String,
    tokenize: &mut dyn FnMut(&str, bool, bool) -> Vec<Token>,
) -> Option<Vec<Token>> {
    let mut cuts = Vec::with_capacity(contents.len());
    let mut from = 0;
    for i in 0..contents.len() {
        let m = marker(i);
        if rendered.matches(&m).count() != 1 {
            return None;
        }
        let at = from + rendered[from..].find(&m)?;
        cuts.push((at, at + m.len()));
        from = at + m.len();
    }
    let mut tokens = Vec::new();
    let mut rest = 0;
    for ((start, end), content) in cuts.into_iter().zip(contents) {
        let first = tokens.is_empty();
        tokens.extend(tokenize(&rendered[rest..start], first, true));
        let first = tokens.is_empty();
        tokens.extend(tokenize(content, first, false));
        rest = end;
    }
    let first = tokens.is_empty();
    tokens.extend(tokenize(&rendered[rest..], first, true));
    Some(tokens)
}

/// Text ↔ tokens for the model family a pair shares (the target's tokenizer).
pub trait TextCodec {
    /// Tokenize a prompt (adding BOS where the model wants it, parsing special tokens).
    fn tokenize(&self, text: &str) -> Vec<Token>;
    /// The bytes token `token` stands for (may be part of a UTF-8 character).
    fn piece(&self, token: Token) -> Vec<u8>;
    /// Wrap chat messages `(role, content)` in the model's chat template.
    fn chat(&self, messages: &[(String, String)]) -> Result<String, String>;
    /// Chat messages in the model's chat template, as tokens: the template's own markers are
    /// control tokens, the messages' contents are text — a `<|im_end|>` written in a message
    /// is those characters, never the control token (it cannot close a turn).
    fn chat_tokens(&self, messages: &[(String, String)]) -> Result<Vec<Token>, String> {
        Ok(self.tokenize(&self.chat(messages)?))
    }
    /// Tokenize text from someone other than the operator (a request's prompt): BOS where the
    /// model wants it, special-token spellings kept as text.
    fn tokenize_plain(&self, text: &str) -> Vec<Token> {
        self.tokenize(text)
    }
    /// The longest text one token stands for, in bytes: a text longer than `n × this` cannot
    /// fit `n` tokens, known before tokenizing it.
    fn longest_piece(&self) -> usize {
        64
    }
    /// Tokenize one piece of a longer text: BOS before it when `bos` and the model wants one,
    /// special-token spellings parsed when `special` (a template's markers) or kept as text.
    fn tokenize_part(&self, text: &str, _bos: bool, _special: bool) -> Vec<Token> {
        self.tokenize(text)
    }
    /// The model's own chat template (Jinja source), when it has one: what can render tool
    /// definitions and calls.
    fn chat_template(&self) -> Option<String> {
        None
    }
    /// The text of a control token (`<|im_end|>`), whose [`TextCodec::piece`] is empty;
    /// empty for every other token.
    fn special_piece(&self, _token: Token) -> Vec<u8> {
        Vec::new()
    }
}

impl<M: Model + ?Sized> Model for &mut M {
    fn n_vocab(&self) -> usize {
        (**self).n_vocab()
    }
    fn n_ctx(&self) -> usize {
        (**self).n_ctx()
    }
    fn n_batch(&self) -> usize {
        (**self).n_batch()
    }
    fn is_eog(&self, token: Token) -> bool {
        (**self).is_eog(token)
    }
    fn decode(&mut self, seq: SeqId, pos: usize, tokens: &[Token], logits_from: usize) -> Result<(), ModelError> {
        (**self).decode(seq, pos, tokens, logits_from)
    }
    fn logits(&self, row: usize) -> &[f32] {
        (**self).logits(row)
    }
    fn truncate(&mut self, seq: SeqId, len: usize) -> Result<(), ModelError> {
        (**self).truncate(seq, len)
    }
    fn n_seq_max(&self) -> usize {
        (**self).n_seq_max()
    }
    fn decode_parts(&mut self, parts: &[DecodePart<'_>]) -> Result<(), ModelError> {
        (**self).decode_parts(parts)
    }
    fn snapshot(&mut self, seq: SeqId) -> Option<Snapshot> {
        (**self).snapshot(seq)
    }
    fn restore(&mut self, seq: SeqId, snapshot: &Snapshot) -> Result<(), ModelError> {
        (**self).restore(seq, snapshot)
    }
    fn copy_cells(&mut self, from: SeqId, to: SeqId, len: usize) -> Result<(), ModelError> {
        (**self).copy_cells(from, to, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_run_with_the_largest_chunk_last() {
        let c: Vec<_> = chunk_ends(10, 4).collect();
        assert_eq!(c, vec![(0, 2), (2, 6), (6, 10)]);
        let c: Vec<_> = chunk_ends(8, 4).collect();
        assert_eq!(c, vec![(0, 4), (4, 8)]);
        let c: Vec<_> = chunk_ends(3, 4).collect();
        assert_eq!(c, vec![(0, 3)]);
        assert_eq!(chunk_ends(0, 4).count(), 0);
    }
}
