//! Drafters: what proposes the tokens the target then checks.
//!
//! A [`Drafter`] appends up to `max` proposed tokens to the sequence's token list and, when the
//! target verifies by rejection sampling, the distribution `q` each was drawn from. Its state
//! (a draft model's cache cursor, the n-gram index and copy pointer) is the sequence's
//! [`DraftCursor`], never the drafter's, so one drafter can serve several sequences.
//!
//! * [`NoDraft`]: proposes nothing; the engine then does plain target decoding.
//! * [`ModelDrafter`]: a small model with the same tokenizer.
//! * [`NgramDrafter`], [`HybridDrafter`]: prompt lookup ([`crate::ngram`]), alone or in
//!   front of a draft model.

mod hybrid;
mod model;
mod ngram;

pub use hybrid::HybridDrafter;
pub use model::ModelDrafter;
pub use ngram::NgramDrafter;

use crate::constraint::Guide;
use crate::model::{KvCursor, ModelError, SeqId, Snapshot, Token};
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
    /// Draw each token with the target's keyed noise for its position
    /// ([`crate::sampling::Dist::sample_keyed`], seeded verification): the seed.
    pub key: Option<u64>,
}

/// One sequence's share of a [`Drafter::propose_many`] call: what [`Drafter::propose`] takes
/// for one sequence.
pub struct ProposeJob<'a> {
    pub cursor: &'a mut DraftCursor,
    pub tokens: &'a mut Vec<Token>,
    pub q: &'a mut Vec<Dist>,
    pub req: DraftRequest<'a>,
    pub rng: &'a mut ChaCha8Rng,
    /// The sequence's constraint: a draft model samples from its masked rows (the guide
    /// follows the draft; the engine brings it back after).
    pub guide: Option<&'a mut Guide>,
}

impl ProposeJob<'_> {
    /// The same job, borrowed again (to hand a subset of jobs on).
    pub fn reborrow(&mut self) -> ProposeJob<'_> {
        ProposeJob {
            cursor: &mut *self.cursor,
            tokens: &mut *self.tokens,
            q: &mut *self.q,
            req: self.req,
            rng: &mut *self.rng,
            guide: self.guide.as_deref_mut(),
        }
    }
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

/// What a drafter would propose after a sequence's tokens: the source, how many tokens the
/// current copy run has been right for (the n-gram drafter's evidence for a long draft; 0
/// otherwise), and the first token where knowing it costs nothing (an n-gram lookup; `None`
/// for a draft model): a round that drafts nothing still learns from whether the target's
/// token agreed with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DraftPlan {
    pub source: DraftSource,
    pub run: usize,
    pub first: Option<Token>,
    /// Leading tokens worth drafting whatever the learned acceptance says: in structured
    /// output, the rest of a word the output has begun, where the source has it whole
    /// ([`crate::anchor`]), or the rest of a number and the token after it.
    pub sure: usize,
}

impl DraftPlan {
    /// Nothing to propose.
    pub const NONE: Self = Self { source: DraftSource::None, run: 0, first: None, sure: 0 };
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
    /// The tokens' texts, when the drafter knows them ([`crate::closing`] reads where a copy's
    /// source breaks a clause).
    fn texts(&self) -> Option<&crate::anchor::TokenTexts> {
        None
    }
    /// What a proposal after `tokens` would be, planned once per round (it may move the
    /// n-gram copy pointer, so the round's proposal follows this plan).
    fn plan(&self, _cursor: &mut DraftCursor, _tokens: &[Token]) -> DraftPlan {
        if self.is_active() {
            DraftPlan { source: DraftSource::Model, ..DraftPlan::NONE }
        } else {
            DraftPlan::NONE
        }
    }
    /// Forget the sequence and read its prompt (all tokens but the last). The cursor's
    /// `n_cached` cells are the prompt's first tokens, kept from the sequence before in this
    /// slot (0: none); a draft model removes its cells after them and reads the rest.
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
    /// Draft for several sequences (distinct ids) in one go: the same proposals as
    /// [`Drafter::propose`] for each, up to batch-shape effects on a model's logits. The
    /// default drafts one sequence after another; a draft model decodes each draft step of
    /// every sequence in **one** batch.
    fn propose_many(&mut self, jobs: &mut [ProposeJob<'_>], scratch: &mut Scratch) -> Result<Vec<DraftReport>, ModelError> {
        jobs.iter_mut().map(|j| self.propose(j.cursor, j.tokens, j.q, &j.req, scratch, j.rng)).collect()
    }
    /// The sequence now agrees with what the drafter saw on its first `keep` tokens only.
    fn rollback(&mut self, cursor: &mut DraftCursor, keep: usize) -> Result<(), ModelError>;
    /// A finished sequence's output, for a drafter that learns across sequences (the n-gram
    /// draft cache); the default forgets it.
    fn learn(&mut self, _generated: &[Token]) {}
    /// A draft model's cells of sequence `seq` in host memory ([`crate::model::Model::snapshot`]); `None`
    /// for drafters without a model.
    fn snapshot(&mut self, _seq: SeqId) -> Option<Snapshot> {
        None
    }
    /// Put a [`Drafter::snapshot`] back into sequence `seq` ([`crate::model::Model::restore`]).
    fn restore(&mut self, _seq: SeqId, _snapshot: &Snapshot) -> Result<(), ModelError> {
        Err(ModelError::Restore("this drafter has no model".into()))
    }
    /// Give sequence `to` the draft model's cells of `from`'s first `len` positions
    /// ([`crate::model::Model::copy_cells`]); an error for drafters without a model.
    fn copy_cells(&mut self, _from: SeqId, _to: SeqId, _len: usize) -> Result<(), ModelError> {
        Err(ModelError::Restore("this drafter has no model".into()))
    }
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
    fn texts(&self) -> Option<&crate::anchor::TokenTexts> {
        (**self).texts()
    }
    fn plan(&self, cursor: &mut DraftCursor, tokens: &[Token]) -> DraftPlan {
        (**self).plan(cursor, tokens)
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
    fn propose_many(&mut self, jobs: &mut [ProposeJob<'_>], scratch: &mut Scratch) -> Result<Vec<DraftReport>, ModelError> {
        (**self).propose_many(jobs, scratch)
    }
    fn rollback(&mut self, cursor: &mut DraftCursor, keep: usize) -> Result<(), ModelError> {
        (**self).rollback(cursor, keep)
    }
    fn learn(&mut self, generated: &[Token]) {
        (**self).learn(generated)
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
