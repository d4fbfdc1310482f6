//! A draft model with the same tokenizer: one decode per draft step for every sequence that
//! drafts from it, tokens a grammar forces appended without a step.

use super::{DraftCursor, DraftReport, DraftRequest, DraftSource, Drafter, ProposeJob};
use crate::model::{Model, ModelError, SeqId, Snapshot, Token};
use crate::sampling::{Dist, Scratch};
use rand_chacha::ChaCha8Rng;

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

    fn copy_cells(&mut self, from: SeqId, to: SeqId, len: usize) -> Result<(), ModelError> {
        self.model.copy_cells(from, to, len)
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
