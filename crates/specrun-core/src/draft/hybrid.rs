//! N-gram proposals where the context has a match, the draft model's otherwise.

use super::{DraftCursor, DraftPlan, DraftReport, DraftRequest, DraftSource, Drafter, NgramDrafter, ProposeJob};
use crate::model::{ModelError, Token};
use crate::sampling::{Dist, Scratch};
use rand_chacha::ChaCha8Rng;

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

    fn texts(&self) -> Option<&crate::anchor::TokenTexts> {
        self.ngram.texts()
    }

    fn plan(&self, cursor: &mut DraftCursor, tokens: &[Token]) -> DraftPlan {
        let ngram = self.ngram.plan(cursor, tokens);
        if ngram.source == DraftSource::Ngram {
            return ngram;
        }
        DraftPlan { run: cursor.ngram.run(tokens), first: None, ..self.model.plan(cursor, tokens) }
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

    fn copy_cells(&mut self, from: crate::model::SeqId, to: crate::model::SeqId, len: usize) -> Result<(), ModelError> {
        self.model.copy_cells(from, to, len)
    }
}
