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

use crate::constraint::Guide;
use crate::model::{KvCursor, Model, ModelError, SeqId, Snapshot, Token};
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
    /// The first token a proposal after `tokens` would be, where knowing it costs nothing
    /// (an n-gram lookup; `None` for a draft model, or when there is nothing to propose).
    /// Asked after [`Drafter::source`], in rounds that draft nothing: the controller learns
    /// the source's acceptance from whether the target's own token agreed.
    fn peek(&self, _cursor: &DraftCursor, _tokens: &[Token]) -> Option<Token> {
        None
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
    /// A draft model's cells of sequence `seq` in host memory ([`Model::snapshot`]); `None`
    /// for drafters without a model.
    fn snapshot(&mut self, _seq: SeqId) -> Option<Snapshot> {
        None
    }
    /// Put a [`Drafter::snapshot`] back into sequence `seq` ([`Model::restore`]).
    fn restore(&mut self, _seq: SeqId, _snapshot: &Snapshot) -> Result<(), ModelError> {
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
    fn source(&self, cursor: &mut DraftCursor, tokens: &[Token]) -> DraftSource {
        (**self).source(cursor, tokens)
    }
    fn copy_run(&self, cursor: &DraftCursor, tokens: &[Token]) -> usize {
        (**self).copy_run(cursor, tokens)
    }
    fn peek(&self, cursor: &DraftCursor, tokens: &[Token]) -> Option<Token> {
        (**self).peek(cursor, tokens)
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

/// Draft one token from logits row `row` of the draft model's last decode (masked by the
/// sequence's constraint, when it has one): append it (and its q) unless the draft is too
/// unsure. Returns whether drafting may go on.
fn take_row<M: Model>(model: &M, row: usize, job: &mut ProposeJob<'_>, scratch: &mut Scratch) -> bool {
    let ProposeJob { tokens, q, req, rng, guide, .. } = job;
    let row = match guide.as_deref_mut().map(|g| g.masked_row(tokens, model.logits(row), &|t| model.is_eog(t))) {
        None => model.logits(row),
        Some(Ok(masked)) => masked,
        // the grammar broke: no draft (verification reports it)
        Some(Err(_)) => return false,
    };
    let (token, confidence, dist) = if let Some(seed) = req.key {
        let dist = scratch.warp(row, tokens, req.params);
        (dist.sample_keyed(seed, tokens.len()), dist.probs[0], None)
    } else if req.keep_q {
        let dist = scratch.warp(row, tokens, req.params);
        (dist.sample(rng), dist.probs[0], Some(dist))
    } else {
        let token = scratch.argmax(row, tokens, req.params);
        let confidence = if req.p_min > 0.0 { top_probability(row) } else { 1.0 };
        (token, confidence, None)
    };
    if confidence < req.p_min || !row.get(token as usize).is_some_and(|l| l.is_finite()) {
        return false;
    }
    tokens.push(token);
    q.extend(dist);
    !model.is_eog(token)
}

/// After a drafted token, the tokens the sequence's grammar forces (at most `max`): drafted
/// without a draft-model step each (the next step reads them in one batch). Returns whether
/// drafting may go on.
fn take_forced<M: Model>(model: &M, job: &mut ProposeJob<'_>, max: usize) -> bool {
    let Some(guide) = job.guide.as_deref_mut().filter(|_| max > 0) else { return true };
    let Ok(forced) = guide.forced_after(job.tokens, max, &|t| model.is_eog(t)) else { return false };
    if job.req.keep_q && job.req.key.is_none() {
        job.q.extend(forced.iter().map(|&t| Dist::one_hot(t)));
    }
    let ends = forced.last().is_some_and(|&t| model.is_eog(t));
    job.tokens.extend(forced);
    !ends
}

impl<M: Model> Drafter for ModelDrafter<M> {
    fn name(&self) -> &'static str {
        "model"
    }

    fn snapshot(&mut self, seq: SeqId) -> Option<Snapshot> {
        self.model.snapshot(seq)
    }

    fn restore(&mut self, seq: SeqId, snapshot: &Snapshot) -> Result<(), ModelError> {
        self.model.restore(seq, snapshot)
    }

    fn n_ctx(&self) -> usize {
        self.model.n_ctx()
    }

    fn begin(&mut self, cursor: &mut DraftCursor, prompt: &[Token]) -> Result<(), ModelError> {
        if prompt.len() >= self.model.n_ctx() {
            // The draft cannot hold this prompt; the engine drafts nothing for it.
            self.model.truncate(cursor.seq, 0)?;
            cursor.kv.n_cached = 0;
            return Ok(());
        }
        let mut keep = cursor.n_cached.min(prompt.len());
        // a cache that cannot be cut part way reads the prompt whole
        if keep > 0 && self.model.truncate(cursor.seq, keep).is_err() {
            keep = 0;
        }
        if keep == 0 {
            self.model.truncate(cursor.seq, 0)?;
        }
        cursor.kv.n_cached = keep;
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
        let mut job = ProposeJob { cursor, tokens, q, req: *req, rng, guide: None };
        for _ in 0..req.max {
            job.cursor.decode_tail(&mut self.model, job.tokens, 1)?;
            report.n_steps += 1;
            if !take_row(&self.model, 0, &mut job, scratch) {
                break;
            }
        }
        Ok(report)
    }

    fn propose_many(&mut self, jobs: &mut [ProposeJob<'_>], scratch: &mut Scratch) -> Result<Vec<DraftReport>, ModelError> {
        let mut reports = vec![DraftReport { n_steps: 0, source: DraftSource::Model }; jobs.len()];
        let starts: Vec<usize> = jobs.iter().map(|j| j.tokens.len()).collect();
        let mut live: Vec<bool> = jobs.iter().map(|j| j.req.max > 0).collect();
        // Catch-ups (what a cache missed while n-grams drafted or the draft sat out) go first,
        // each alone, when the first step would not fit one batch with them.
        let n_batch = self.model.n_batch();
        let first: usize = jobs.iter().zip(&live).filter(|(_, &l)| l).map(|(j, _)| j.tokens.len() - j.cursor.n_cached).sum();
        if first > n_batch {
            for (j, _) in jobs.iter_mut().zip(&live).filter(|(_, &l)| l) {
                let head = j.tokens.len() - 1;
                j.cursor.decode_tail(&mut self.model, &j.tokens[..head], 0)?;
            }
        }
        loop {
            let idx: Vec<usize> = (0..jobs.len()).filter(|&i| live[i]).collect();
            if idx.is_empty() {
                break;
            }
            let parts: Vec<_> = idx.iter().map(|&i| jobs[i].cursor.part(jobs[i].tokens, 1)).collect();
            let lens: Vec<usize> = parts.iter().map(|p| p.tokens.len()).collect();
            self.model.decode_parts(&parts)?;
            drop(parts);
            for (row, (&i, len)) in idx.iter().zip(lens).enumerate() {
                let j = &mut jobs[i];
                j.cursor.part_decoded(len);
                reports[i].n_steps += 1;
                let more = take_row(&self.model, row, j, scratch) && take_forced(&self.model, j, j.req.max - (j.tokens.len() - starts[i]));
                if !more || j.tokens.len() - starts[i] >= j.req.max {
                    live[i] = false;
                }
            }
        }
        Ok(reports)
    }

    fn rollback(&mut self, cursor: &mut DraftCursor, keep: usize) -> Result<(), ModelError> {
        cursor.keep(&mut self.model, keep)
    }
}
