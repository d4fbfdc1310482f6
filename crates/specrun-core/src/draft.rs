//! Drafters: what proposes the tokens the target then checks.
//!
//! A [`Drafter`] appends up to `max` proposed tokens to the sequence's token list and, when the
//! target verifies by rejection sampling, the distribution `q` each was drawn from. Its state
//! (a draft model's cache cursor, the n-gram index and copy pointer) is the sequence's
//! [`DraftCursor`], never the drafter's, so one drafter can serve several sequences.
//!
//! * [`NoDraft`]: proposes nothing; the engine then does plain target decoding.
//! * [`ModelDrafter`]: a small model with the same tokenizer.
//! * [`crate::ngram::NgramDrafter`], [`crate::ngram::HybridDrafter`]: prompt lookup, alone or
//!   in front of a draft model.

use crate::model::{KvCursor, Model, ModelError, SeqId, Token};
use crate::ngram::NgramState;
use crate::sampling::{Dist, SamplingParams, Scratch};
use rand_chacha::ChaCha8Rng;

/// What the engine asks of a drafter for one round.
#[derive(Debug, Clone, Copy)]
pub struct DraftRequest<'a> {
    /// Propose at most this many tokens.
    pub max: usize,
    /// The sampling settings (the draft warps its rows exactly as the target does).
    pub params: &'a SamplingParams,
    /// Sample each token from q and keep q (rejection sampling); otherwise take q's argmax.
    pub keep_q: bool,
    /// Stop drafting when the draft's top probability falls below this.
    pub p_min: f32,
}

/// Where a round's proposal comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DraftSource {
    /// Nothing to propose: plain decoding.
    #[default]
    None,
    /// A draft model.
    Model,
    /// An n-gram match in the context.
    Ngram,
}

/// Which drafter a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum DrafterKind {
    /// The pair's draft model.
    Model,
    /// Prompt lookup: continue the longest earlier n-gram match (no draft model).
    Ngram,
    /// N-gram proposals when the context has a match, the draft model otherwise.
    Hybrid,
}

impl DrafterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DrafterKind::Model => "model",
            DrafterKind::Ngram => "ngram",
            DrafterKind::Hybrid => "hybrid",
        }
    }

    /// Whether this drafter needs a draft model loaded.
    pub fn needs_model(self) -> bool {
        self != DrafterKind::Ngram
    }
}

/// What a drafter did in one round, for the statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DraftReport {
    /// Forward passes of a draft model.
    pub n_steps: usize,
    pub source: DraftSource,
}

/// One sequence's drafting state, kept by the sequence (never by the drafter, so that one
/// drafter serves several sequences): the draft model's cache cursor and the n-gram drafter's
/// index and copy pointer. Derefs to the cache cursor.
#[derive(Debug, Clone)]
pub struct DraftCursor {
    pub kv: KvCursor,
    pub ngram: NgramState,
}

impl DraftCursor {
    pub fn new(seq: SeqId) -> Self {
        Self { kv: KvCursor::new(seq), ngram: NgramState::default() }
    }
}

impl std::ops::Deref for DraftCursor {
    type Target = KvCursor;
    fn deref(&self) -> &KvCursor {
        &self.kv
    }
}

impl std::ops::DerefMut for DraftCursor {
    fn deref_mut(&mut self) -> &mut KvCursor {
        &mut self.kv
    }
}

pub trait Drafter {
    /// Short name for statistics ("model", "none", ...).
    fn name(&self) -> &'static str;
    /// Whether this drafter proposes anything at all.
    fn is_active(&self) -> bool {
        true
    }
    /// How many tokens (prompt included) its context can hold.
    fn n_ctx(&self) -> usize {
        usize::MAX
    }
    /// Which source would propose after `tokens` (`None`: nothing to propose).
    fn source(&self, _cursor: &mut DraftCursor, _tokens: &[Token]) -> DraftSource {
        if self.is_active() {
            DraftSource::Model
        } else {
            DraftSource::None
        }
    }
    /// Tokens the current copy run has been right for (the n-gram drafter's evidence for a
    /// long draft; 0 when there is none). Asked after [`Drafter::source`].
    fn copy_run(&self, _cursor: &DraftCursor, _tokens: &[Token]) -> usize {
        0
    }
    /// Forget the sequence and read its prompt (all tokens but the last).
    fn begin(&mut self, cursor: &mut DraftCursor, prompt: &[Token]) -> Result<(), ModelError>;
    /// Append up to `req.max` tokens to `tokens` and, with `req.keep_q`, their q to `q`.
    fn propose(
        &mut self,
        cursor: &mut DraftCursor,
        tokens: &mut Vec<Token>,
        q: &mut Vec<Dist>,
        req: &DraftRequest<'_>,
        scratch: &mut Scratch,
        rng: &mut ChaCha8Rng,
    ) -> Result<DraftReport, ModelError>;
    /// The sequence now agrees with what the drafter saw on its first `keep` tokens only.
    fn rollback(&mut self, cursor: &mut DraftCursor, keep: usize) -> Result<(), ModelError>;
    /// A finished sequence's output, for a drafter that learns across sequences (the n-gram
    /// draft cache); the default forgets it.
    fn learn(&mut self, _generated: &[Token]) {}
}

impl<D: Drafter + ?Sized> Drafter for Box<D> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn is_active(&self) -> bool {
        (**self).is_active()
    }
    fn n_ctx(&self) -> usize {
        (**self).n_ctx()
    }
    fn source(&self, cursor: &mut DraftCursor, tokens: &[Token]) -> DraftSource {
        (**self).source(cursor, tokens)
    }
    fn copy_run(&self, cursor: &DraftCursor, tokens: &[Token]) -> usize {
        (**self).copy_run(cursor, tokens)
    }
    fn begin(&mut self, cursor: &mut DraftCursor, prompt: &[Token]) -> Result<(), ModelError> {
        (**self).begin(cursor, prompt)
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
        (**self).propose(cursor, tokens, q, req, scratch, rng)
    }
    fn rollback(&mut self, cursor: &mut DraftCursor, keep: usize) -> Result<(), ModelError> {
        (**self).rollback(cursor, keep)
    }
    fn learn(&mut self, generated: &[Token]) {
        (**self).learn(generated)
    }
}

/// Proposes nothing: target-only decoding through the same engine.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDraft;

impl Drafter for NoDraft {
    fn name(&self) -> &'static str {
        "none"
    }
    fn is_active(&self) -> bool {
        false
    }
    fn begin(&mut self, _: &mut DraftCursor, _: &[Token]) -> Result<(), ModelError> {
        Ok(())
    }
    fn propose(
        &mut self,
        _: &mut DraftCursor,
        _: &mut Vec<Token>,
        _: &mut Vec<Dist>,
        _: &DraftRequest<'_>,
        _: &mut Scratch,
        _: &mut ChaCha8Rng,
    ) -> Result<DraftReport, ModelError> {
        Ok(DraftReport::default())
    }
    fn rollback(&mut self, _: &mut DraftCursor, _: usize) -> Result<(), ModelError> {
        Ok(())
    }
}

/// A draft model. Its cache holds a prefix of the sequence; each step catches up on whatever
/// it has not seen (after a fully accepted round that is its own last proposal plus the
/// target's bonus token) and decodes one more token.
#[derive(Debug)]
pub struct ModelDrafter<M> {
    pub model: M,
}

impl<M: Model> ModelDrafter<M> {
    pub fn new(model: M) -> Self {
        Self { model }
    }
}

/// Probability of the most likely token of a raw logits row (softmax at temperature 1).
fn top_probability(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = row.iter().map(|&l| (l - max).exp()).sum();
    1.0 / z
}

impl<M: Model> Drafter for ModelDrafter<M> {
    fn name(&self) -> &'static str {
        "model"
    }

    fn n_ctx(&self) -> usize {
        self.model.n_ctx()
    }

    fn begin(&mut self, cursor: &mut DraftCursor, prompt: &[Token]) -> Result<(), ModelError> {
        self.model.truncate(cursor.seq, 0)?;
        cursor.n_cached = 0;
        if prompt.len() >= self.model.n_ctx() {
            // The draft cannot hold this prompt; the engine drafts nothing for it.
            return Ok(());
        }
        cursor.decode_tail(&mut self.model, prompt, 0)
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
        let mut report = DraftReport { n_steps: 0, source: DraftSource::Model };
        for _ in 0..req.max {
            cursor.decode_tail(&mut self.model, tokens, 1)?;
            report.n_steps += 1;
            let row = self.model.logits(0);
            let (token, confidence, dist) = if req.keep_q {
                let dist = scratch.warp(row, tokens, req.params);
                (dist.sample(rng), dist.probs[0], Some(dist))
            } else {
                let token = scratch.argmax(row, tokens, req.params);
                let confidence = if req.p_min > 0.0 { top_probability(row) } else { 1.0 };
                (token, confidence, None)
            };
            if confidence < req.p_min {
                break;
            }
            tokens.push(token);
            q.extend(dist);
            if self.model.is_eog(token) {
                break;
            }
        }
        Ok(report)
    }

    fn rollback(&mut self, cursor: &mut DraftCursor, keep: usize) -> Result<(), ModelError> {
        cursor.keep(&mut self.model, keep)
    }
}
