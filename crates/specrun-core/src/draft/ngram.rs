//! The n-gram drafter: copy-aware prompt lookup over the sequence's n-gram state, and
//! optionally a draft cache of earlier outputs.

use super::{DraftCursor, DraftPlan, DraftReport, DraftRequest, DraftSource, Drafter};
use crate::anchor::{begins_after_mark, TokenTexts};
use crate::model::{ModelError, Token};
use crate::ngram::{NgramConfig, NgramCorpus};
use crate::sampling::{Dist, Scratch};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

/// The n-gram drafter: copy-aware prompt lookup over the sequence's [`crate::ngram::NgramState`], and
/// optionally a draft cache of earlier outputs ([`NgramCorpus`]).
#[derive(Debug, Clone, Default)]
pub struct NgramDrafter {
    pub config: NgramConfig,
    /// `Some`: learn from every finished sequence and propose from earlier outputs.
    pub corpus: Option<NgramCorpus>,
    /// The tokens' texts: where no tokens match, the bytes may ([`crate::anchor`]).
    pub texts: Option<Arc<TokenTexts>>,
}

impl NgramDrafter {
    pub fn new(config: NgramConfig) -> Self {
        Self { config, corpus: None, texts: None }
    }

    /// With a draft cache across sequences.
    pub fn with_cache(config: NgramConfig) -> Self {
        Self { config, corpus: Some(NgramCorpus::default()), texts: None }
    }

    /// Anchoring copies on text as well as on tokens.
    pub fn with_texts(self, texts: Arc<TokenTexts>) -> Self {
        Self { texts: Some(texts), ..self }
    }
}

impl Drafter for NgramDrafter {
    fn name(&self) -> &'static str {
        "ngram"
    }

    fn texts(&self) -> Option<&TokenTexts> {
        self.texts.as_deref()
    }

    fn plan(&self, cursor: &mut DraftCursor, tokens: &[Token]) -> DraftPlan {
        let own = cursor.ngram.plan_anchored(tokens, self.config, self.texts.as_deref()).is_some();
        // the sequence's own copy first, else the draft cache
        let first = if own {
            cursor.ngram.peek(tokens)
        } else {
            match self.corpus.as_ref().and_then(|c| c.lookup(tokens).map(|pos| c.tokens[pos])) {
                Some(t) => Some(t),
                None => return DraftPlan::NONE,
            }
        };
        let structured = own && cursor.ngram.is_structured();
        let head = cursor.ngram.head_for(tokens).is_some();
        let sure = match (structured, self.texts.as_deref(), cursor.ngram.planned_from(tokens)) {
            (true, Some(texts), Some(from)) if !head => number_rest(texts, tokens, from),
            (true, Some(texts), _) => usize::from(head && begins_after_mark(tokens, texts)),
            _ => 0,
        };
        DraftPlan { source: DraftSource::Ngram, run: cursor.ngram.run(tokens), first, sure }
    }

    fn learn(&mut self, generated: &[Token]) {
        if let Some(c) = &mut self.corpus {
            c.add(generated);
        }
    }

    fn begin(&mut self, cursor: &mut DraftCursor, _: &[Token]) -> Result<(), ModelError> {
        cursor.ngram.reset();
        Ok(())
    }

    fn propose(
        &mut self,
        cursor: &mut DraftCursor,
        tokens: &mut Vec<Token>,
        q: &mut Vec<Dist>,
        req: &DraftRequest<'_>,
        _: &mut Scratch,
        _: &mut ChaCha8Rng,
    ) -> Result<DraftReport, ModelError> {
        let start = tokens.len();
        match cursor.ngram.plan_anchored(tokens, self.config, self.texts.as_deref()) {
            Some(from) => {
                cursor.ngram.copy(tokens, from, req.max);
            }
            None => {
                if let Some((c, pos)) = self.corpus.as_ref().and_then(|c| c.lookup(tokens).map(|p| (c, p))) {
                    c.copy(pos, tokens, req.max);
                }
            }
        }
        if req.keep_q {
            q.extend(tokens[start..].iter().map(|&t| Dist::one_hot(t)));
        }
        Ok(DraftReport { n_steps: 0, source: DraftSource::Ngram })
    }

    fn rollback(&mut self, _: &mut DraftCursor, _: usize) -> Result<(), ModelError> {
        Ok(())
    }
}

/// Most tokens of a number's rest drafted as sure.
const NUMBER_REST_MAX: usize = 16;

/// In structured output, the rest of a number the output began, where the copy's source has
/// it: how many of the source's tokens from `from` continue the number (digits, and a single
/// `.` `,` `-` `/` `:` between digits: amounts, dates, ids, phone numbers), and the source's
/// token after it (a closer's place), when the output's last token is the source's token
/// before `from` and part of a number. A tokenizer that writes a digit per token gives a
/// number many tokens, and acceptance learned over copies of text too planned them a few
/// tokens at a time, while copies inside numbers were nearly always right
/// (docs/benchmarks.md#structured-output).
fn number_rest(texts: &TokenTexts, tokens: &[Token], from: usize) -> usize {
    let digits = |t: Token| {
        let b = texts.text(t);
        !b.is_empty() && b.iter().all(u8::is_ascii_digit)
    };
    let joins = |t: Token| matches!(texts.text(t), b"." | b"," | b"-" | b"/" | b":");
    let n = tokens.len();
    let begun = (1..=n).contains(&from) && tokens[from - 1] == tokens[n - 1] && (digits(tokens[n - 1]) || joins(tokens[n - 1]));
    if !begun {
        return 0;
    }
    let mut count = 0;
    let mut i = from;
    while i < n && count < NUMBER_REST_MAX {
        let t = tokens[i];
        if digits(t) || (joins(t) && i + 1 < n && digits(tokens[i + 1])) {
            count += 1;
            i += 1;
        } else {
            break;
        }
    }
    // and the source's token after the number, where a closer takes its place
    // ([`crate::closing`]) when one is known there
    if count > 0 && i < n {
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;

    const DEFAULT: NgramConfig = NgramConfig { n_min: 3, n_max: 5 };

    #[test]
    fn the_draft_cache_proposes_from_earlier_outputs_only_when_the_context_has_nothing() {
        let mut d = NgramDrafter::with_cache(DEFAULT);
        // an earlier record wrote 50..80
        d.learn(&(50..80).collect::<Vec<_>>());
        let mut cursor = DraftCursor::new(0);
        // this record's context has no match of its own, but ends in 60 61 62
        let tokens: Vec<Token> = vec![1, 2, 3, 60, 61, 62];
        let plan = d.plan(&mut cursor, &tokens);
        assert_eq!(plan.source, DraftSource::Ngram);
        assert_eq!(plan.first, Some(63), "the plan foretells the cache's proposal");
        let mut t = tokens.clone();
        let req = DraftRequest { max: 4, params: &crate::sampling::SamplingParams::greedy(), keep_q: false, p_min: 0.0, key: None };
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        d.propose(&mut cursor, &mut t, &mut vec![], &req, &mut Scratch::new(), &mut rng).unwrap();
        assert_eq!(&t[6..], &[63, 64, 65, 66]);
        // a proposal stops at the end of an earlier output
        let mut t = vec![9, 77, 78, 79];
        let mut cursor = DraftCursor::new(1);
        assert_eq!(d.plan(&mut cursor, &t), DraftPlan::NONE, "nothing to foretell at an output's end");
        d.propose(&mut cursor, &mut t, &mut vec![], &req, &mut Scratch::new(), &mut rng).unwrap();
        assert_eq!(t.len(), 4, "nothing after 79 in the cache: {t:?}");
        // without the cache nothing is proposed
        let plain = NgramDrafter::new(DEFAULT);
        assert_eq!(plain.plan(&mut DraftCursor::new(2), &tokens), DraftPlan::NONE);
    }

    #[test]
    fn the_rest_of_a_number_the_output_began_is_a_sure_draft() {
        let words = ["Total", " ", "2", "4", "0", ".", "5", " EUR", "\n", "Due", ":", "-"];
        let texts = TokenTexts::new(words.iter().map(|w| w.as_bytes().to_vec()).collect());
        let d = NgramDrafter::new(DEFAULT).with_texts(Arc::new(texts));
        // the document `Total 2400.50 EUR\nDue`, the output `Total 2`: the number's rest, and
        // the source's token after it (a closer's place), are sure in structured output
        let document = [0, 1, 2, 3, 4, 4, 5, 6, 4, 7, 8, 9];
        let tokens: Vec<Token> = document.iter().copied().chain([0, 1, 2]).collect();
        let mut structured = DraftCursor::new(0);
        structured.ngram.set_structured(true, document.len());
        let plan = d.plan(&mut structured, &tokens);
        assert_eq!((plan.source, plan.first, plan.sure), (DraftSource::Ngram, Some(3), 7), "`400.50` and ` EUR`");
        // free text leaves it to the learned acceptance
        assert_eq!(d.plan(&mut DraftCursor::new(1), &tokens).sure, 0);
        // a copy that does not continue a number the output began is not sure
        let after_word: Vec<Token> = document.iter().copied().chain([6, 4, 7]).collect();
        let mut structured = DraftCursor::new(2);
        structured.ngram.set_structured(true, document.len());
        let plan = d.plan(&mut structured, &after_word);
        assert_eq!((plan.first, plan.sure), (Some(8), 0));
        // a join ends the number unless a digit follows it: `2-` then ` EUR`
        let dash = [0, 1, 2, 11, 7, 8];
        let tokens: Vec<Token> = dash.iter().copied().chain([0, 1, 2]).collect();
        let mut structured = DraftCursor::new(3);
        structured.ngram.set_structured(true, dash.len());
        assert_eq!(d.plan(&mut structured, &tokens).sure, 0, "nothing of the number left: {tokens:?}");
    }

    #[test]
    fn the_rest_of_a_word_the_output_began_is_a_sure_draft() {
        let words = ["|", " Portugal", " |", " Lisbon", "\"", "Port", "ugal", " Spain"];
        let texts = TokenTexts::new(words.iter().map(|w| w.as_bytes().to_vec()).collect());
        let d = NgramDrafter::new(DEFAULT).with_texts(Arc::new(texts));
        // the table cell ` Portugal`, the output `"Port`: the rest of the word is sure in
        // structured output, left to the learned acceptance in free text
        let tokens = [0, 1, 2, 3, 2, 4, 5];
        let mut structured = DraftCursor::new(0);
        structured.ngram.set_structured(true, usize::MAX);
        let plan = d.plan(&mut structured, &tokens);
        assert_eq!((plan.source, plan.first, plan.sure), (DraftSource::Ngram, Some(6), 1));
        let plan = d.plan(&mut DraftCursor::new(3), &tokens);
        assert_eq!((plan.first, plan.sure), (Some(6), 0));
        // a copy found by its tokens is left to the learned acceptance
        let plan = d.plan(&mut DraftCursor::new(1), &[0, 1, 2, 3, 7, 0, 1, 2]);
        assert_eq!((plan.source, plan.first, plan.sure), (DraftSource::Ngram, Some(3), 0));
    }

    #[test]
    fn a_word_of_prose_the_context_has_longer_is_not_sure() {
        let words = ["Answer", " with", " a", " topic", " and", " due", " to", "pic", "\"", "top", "ic"];
        let texts = TokenTexts::new(words.iter().map(|w| w.as_bytes().to_vec()).collect());
        let d = NgramDrafter::new(DEFAULT).with_texts(Arc::new(texts));
        let prompt = [0, 1, 2, 3, 4];
        let plan = |output: [Token; 2]| {
            let mut cursor = DraftCursor::new(0);
            cursor.ngram.set_structured(true, prompt.len());
            let tokens: Vec<Token> = prompt.iter().copied().chain(output).collect();
            let plan = d.plan(&mut cursor, &tokens);
            (plan.first, plan.sure)
        };
        // `… due to` in a string value against the context's ` topic`: ` to` is likely a word
        // of its own, so `pic` is left to the learned acceptance
        assert_eq!(plan([5, 6]), (Some(7), 0));
        // `"top` just after a quote begins a value the context may have whole: sure
        assert_eq!(plan([8, 9]), (Some(10), 1));
    }
}
