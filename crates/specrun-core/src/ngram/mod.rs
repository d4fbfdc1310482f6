//! N-gram (prompt-lookup) drafting: propose what followed the last time the sequence's most
//! recent tokens appeared.
//!
//! No model, no cache, almost no cost: for input-grounded generation (editing given code,
//! quoting a given text) the continuation is often already in the context. The proposal is
//! deterministic, so for rejection sampling its `q` is one-hot: the target accepts `x` with
//! probability `p(x)` and otherwise samples from `p` without `x`.
//!
//! The mechanics live here, apart from the drafter that uses them
//! ([`crate::draft::NgramDrafter`]): the index (`index`), the copy pointer (`pointer`),
//! edit replay (`edits`) and the draft cache across sequences ([`NgramCorpus`]).

mod corpus;
mod edits;
mod index;
mod pointer;

pub use corpus::NgramCorpus;
pub use pointer::NgramState;

use crate::model::Token;

/// Settings of the n-gram lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramConfig {
    /// Shortest suffix that counts as a match.
    pub n_min: usize,
    /// Longest suffix tried first.
    pub n_max: usize,
}

impl Default for NgramConfig {
    fn default() -> Self {
        Self { n_min: 3, n_max: 5 }
    }
}

/// The continuation of the longest earlier occurrence of a suffix of `tokens` (lengths `n_max`
/// down to `n_min`), at most `max` tokens; empty if there is none. Among occurrences of the
/// same suffix the most recent one with `max` tokens after it wins.
pub fn lookup(tokens: &[Token], config: NgramConfig, max: usize) -> &[Token] {
    let len = tokens.len();
    if max == 0 {
        return &[];
    }
    for n in (config.n_min.max(1)..=config.n_max).rev() {
        if n >= len {
            continue;
        }
        let suffix = &tokens[len - n..];
        // The most recent earlier occurrence with a full continuation of `max` tokens; failing
        // that, the earliest one (whose continuation is the longest there is).
        let mut earliest = None;
        for start in (0..len - n).rev() {
            if &tokens[start..start + n] == suffix {
                let from = start + n;
                if len - from >= max {
                    return &tokens[from..from + max];
                }
                earliest = Some(from);
            }
        }
        if let Some(from) = earliest {
            return &tokens[from..];
        }
    }
    &[]
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: NgramConfig = NgramConfig { n_min: 1, n_max: 3 };

    #[test]
    fn the_longest_suffix_wins_over_a_more_recent_shorter_one() {
        // suffix [1,2,3] occurred at 0 (followed by 9 8); suffix [3] alone occurs later (followed by 7)
        let t = [1, 2, 3, 9, 8, 3, 7, 5, 1, 2, 3];
        assert_eq!(lookup(&t, C, 2), &[9, 8]);
        assert_eq!(lookup(&t, C, 10), &[9, 8, 3, 7, 5, 1, 2, 3]);
    }

    #[test]
    fn the_most_recent_occurrence_wins_among_equal_lengths() {
        let t = [4, 5, 1, 4, 5, 2, 4, 5];
        assert_eq!(lookup(&t, NgramConfig { n_min: 2, n_max: 2 }, 1), &[2]);
    }

    #[test]
    fn no_match_gives_an_empty_proposal() {
        assert!(lookup(&[1, 2, 3, 4], C, 4).is_empty());
        assert!(lookup(&[], C, 4).is_empty());
        assert!(lookup(&[1, 2, 1], NgramConfig { n_min: 2, n_max: 3 }, 4).is_empty());
        assert!(lookup(&[1, 2, 1, 2], C, 0).is_empty());
    }

    #[test]
    fn repetitive_input_proposes_the_repetition() {
        let t = [7; 10];
        assert_eq!(lookup(&t, C, 4), &[7, 7, 7, 7]);
        let t = [1, 2, 1, 2, 1, 2, 1];
        assert_eq!(lookup(&t, C, 3), &[2, 1, 2]);
    }

    /// `source` (100..100+len), a separator, then `out`: what an edit-and-return prompt looks
    /// like after the model has written `out`.
    fn history(len: i32, out: &[Token]) -> Vec<Token> {
        let mut t: Vec<Token> = (100..100 + len).collect();
        t.extend([1, 2]);
        t.extend_from_slice(out);
        t
    }

    /// What the drafter proposes after `tokens`; every proposal also checks that
    /// [`NgramState::peek`] foretold its first token (what rounds that draft nothing learn from).
    fn propose(state: &mut NgramState, tokens: &[Token], config: NgramConfig, k: usize) -> Vec<Token> {
        let mut t = tokens.to_vec();
        match state.plan(&t, config) {
            Some(from) => {
                let peeked = state.peek(&t);
                let mut first = t.clone();
                state.clone().copy(&mut first, from, 1);
                assert_eq!(peeked, first.get(tokens.len()).copied(), "the peek is the proposal's first token");
                state.copy(&mut t, from, k);
                t[tokens.len()..].to_vec()
            }
            None => {
                assert_eq!(state.peek(&t), None, "no plan, nothing to peek");
                vec![]
            }
        }
    }

    const DEFAULT: NgramConfig = NgramConfig { n_min: 3, n_max: 5 };

    #[test]
    fn after_a_substituted_token_the_copy_goes_on_where_it_was() {
        let mut st = NgramState::default();
        // copying 100..: the model wrote 100..110, then 999 instead of 110
        let mut out: Vec<Token> = (100..110).collect();
        let t = history(40, &out);
        assert_eq!(propose(&mut st, &t, DEFAULT, 4), vec![110, 111, 112, 113], "the run is found");
        out.push(999);
        let t = history(40, &out);
        assert_eq!(propose(&mut st, &t, DEFAULT, 4), vec![111, 112, 113, 114], "the pointer skips the edited token");
        // the old scan needs three tokens after the edit before it matches again
        assert!(lookup(&t, DEFAULT, 4).is_empty());
    }

    #[test]
    fn after_a_deletion_it_re_anchors_near_the_pointer() {
        let mut st = NgramState::default();
        let mut out: Vec<Token> = (100..110).collect();
        assert_eq!(propose(&mut st, &history(40, &out), DEFAULT, 3), vec![110, 111, 112]);
        // the model skipped 110..112 and wrote 113: one token is too little to re-anchor on, so
        // the long run is taken to go on past a substituted token...
        out.push(113);
        assert_eq!(propose(&mut st, &history(40, &out), DEFAULT, 3), vec![111, 112, 113]);
        // ...until the next token shows the deletion: two tokens agree near the pointer
        out.push(114);
        assert_eq!(propose(&mut st, &history(40, &out), DEFAULT, 3), vec![115, 116, 117]);
        // and an insertion: a new token, then the source again
        out.extend([115, 777, 116, 117]);
        assert_eq!(propose(&mut st, &history(40, &out), DEFAULT, 2), vec![118, 119]);
    }

    /// A source in which token 50 (a name) occurs three times among distinct tokens.
    fn named_source() -> Vec<Token> {
        let mut t: Vec<Token> = (10..18).collect();
        t.extend([50, 18, 19, 20, 21, 22, 23, 50, 24, 25, 26, 50, 27, 28, 29]);
        t.extend([1, 2]); // the output starts after this
        t
    }

    /// The output has copied `named_source` up to the first 50, and the drafter proposes it.
    fn copying_up_to_the_name() -> (NgramState, Vec<Token>) {
        let mut st = NgramState::default();
        let mut t = named_source();
        t.extend(10..18);
        assert_eq!(propose(&mut st, &t, DEFAULT, 4), vec![50, 18, 19, 20]);
        (st, t)
    }

    #[test]
    fn a_peek_foretells_a_replayed_edit() {
        let (mut st, mut t) = copying_up_to_the_name();
        t.push(60);
        propose(&mut st, &t, DEFAULT, 4);
        t.extend([18, 19, 20, 21, 22, 23]);
        assert!(st.plan(&t, DEFAULT).is_some());
        assert_eq!(st.peek(&t), Some(60), "the source has 50 next; the edit says 60");
        t.push(60);
        assert_eq!(st.peek(&t), None, "a peek is of the tokens the plan was made for");
    }

    #[test]
    fn a_rename_is_replayed_in_later_copies() {
        let (mut st, mut t) = copying_up_to_the_name();
        // the target renames 50 to 60; the run is taken to go on past a substituted token
        t.push(60);
        assert_eq!(propose(&mut st, &t, DEFAULT, 4), vec![18, 19, 20, 21]);
        // the copy resumes: 50 -> 60 is an edit, replayed at the next 50
        t.extend([18, 19, 20]);
        assert_eq!(propose(&mut st, &t, DEFAULT, 6), vec![21, 22, 23, 60, 24, 25]);
        let run = st.run(&t);
        // accepted, and the target's own token is the next renamed 50: the run goes on
        t.extend([21, 22, 23, 60, 24, 25, 26, 60]);
        assert_eq!(propose(&mut st, &t, DEFAULT, 3), vec![27, 28, 29]);
        assert_eq!(st.run(&t), run + 8, "the replayed edit kept the copy run");
    }

    #[test]
    fn a_rename_of_another_length_is_replayed_and_the_pointer_follows() {
        let (mut st, mut t) = copying_up_to_the_name();
        // 50 becomes three tokens, one round each (every draft rejected); then two tokens
        // agreeing near the pointer re-anchor the copy
        for x in [60, 61, 62, 18] {
            t.push(x);
            let _ = propose(&mut st, &t, DEFAULT, 4);
        }
        t.push(19);
        assert_eq!(propose(&mut st, &t, DEFAULT, 8), vec![20, 21, 22, 23, 60, 61, 62, 24]);
        let run = st.run(&t);
        // all accepted and the target's own token follows the source: the pointer is past 50
        t.extend([20, 21, 22, 23, 60, 61, 62, 24, 25]);
        assert_eq!(propose(&mut st, &t, DEFAULT, 5), vec![26, 60, 61, 62, 27]);
        assert_eq!(st.run(&t), run + 9);
    }

    #[test]
    fn an_edit_whose_replay_is_rejected_is_forgotten() {
        let (mut st, mut t) = copying_up_to_the_name();
        t.push(60);
        let _ = propose(&mut st, &t, DEFAULT, 4);
        t.extend([18, 19]);
        assert_eq!(propose(&mut st, &t, DEFAULT, 6), vec![20, 21, 22, 23, 60, 24]);
        // the target keeps 50 this time: the replay was wrong
        t.extend([20, 21, 22, 23, 50]);
        assert_eq!(propose(&mut st, &t, DEFAULT, 5), vec![24, 25, 26, 50, 27], "the source is copied as it is again");
    }

    #[test]
    fn the_copy_pointer_keeps_its_place_in_repetitive_text() {
        // the source repeats "5 6 7" with different continuations; the model is copying the
        // first occurrence, so the pointer must not jump to the more recent one
        let source = [5, 6, 7, 10, 11, 12, 5, 6, 7, 20, 21, 22];
        let mut t: Vec<Token> = source.to_vec();
        t.extend([1, 2, 5, 6, 7]);
        let mut st = NgramState::default();
        assert_eq!(propose(&mut st, &t, DEFAULT, 2), vec![20, 21], "first match: the most recent occurrence");
        // the target disagreed: it wrote 10 (the other occurrence); the pointer re-anchors there
        t.push(10);
        assert_eq!(propose(&mut st, &t, DEFAULT, 2), vec![11, 12]);
        t.extend([11, 12, 5, 6, 7]);
        // the run continues in the first occurrence, even though "5 6 7" last occurred later
        assert_eq!(propose(&mut st, &t, DEFAULT, 2), vec![20, 21]);
        assert_eq!(st.run(&t), 5 + 4, "five tokens since the re-anchoring on four agreeing ones");
    }

    #[test]
    fn a_closed_value_ends_the_copy_run() {
        // a long copy, then a token of the output's own (a closer): the run is taken to go on
        // past a substituted token...
        let out: Vec<Token> = (100..110).chain([900]).collect();
        let mut st = NgramState::default();
        let _ = propose(&mut st, &history(40, &out[..10]), DEFAULT, 4);
        let mut closed = st.clone();
        assert_eq!(propose(&mut st, &history(40, &out), DEFAULT, 2), vec![111, 112]);
        // ...unless the value was closed: then only a new match anchors a copy
        closed.end_run();
        assert_eq!(propose(&mut closed, &history(40, &out), DEFAULT, 2), Vec::<Token>::new());
        let mut t = history(40, &out);
        t.extend([120, 121, 122]);
        assert_eq!(propose(&mut closed, &t, DEFAULT, 2), vec![123, 124]);
        assert_eq!(closed.run(&t), 3, "the new run starts at its match");
    }

    #[test]
    fn structured_output_copies_from_the_prompt_only() {
        // the prompt holds 100..110; the output's first record was `7 8 9 100 101 102 5`, and
        // the second begins `7 8 9` as well
        let prompt: Vec<Token> = (100..110).chain([1, 2]).collect();
        let mut t = prompt.clone();
        t.extend([7, 8, 9, 100, 101, 102, 5, 7, 8, 9]);
        assert_eq!(propose(&mut NgramState::default(), &t, DEFAULT, 3), vec![100, 101, 102], "free text copies the earlier record");
        let mut structured = NgramState::default();
        structured.set_structured(true, prompt.len());
        assert_eq!(propose(&mut structured, &t, DEFAULT, 3), Vec::<Token>::new(), "a grammar's output does not copy itself");
        // once the record's value matches the prompt, the prompt is copied
        t.extend([104, 105, 106]);
        assert_eq!(propose(&mut structured, &t, DEFAULT, 3), vec![107, 108, 109]);
    }

    #[test]
    fn the_run_length_is_the_evidence_for_long_drafts() {
        let mut st = NgramState::default();
        let mut out: Vec<Token> = (100..104).collect();
        let _ = propose(&mut st, &history(60, &out), DEFAULT, 4);
        assert_eq!(st.run(&history(60, &out)), 4, "anchored on a 4-token match");
        out.extend(104..130);
        let t = history(60, &out);
        assert_eq!(propose(&mut st, &t, DEFAULT, 4), vec![130, 131, 132, 133]);
        assert_eq!(st.run(&t), 30);
    }

    #[test]
    fn the_index_agrees_with_the_scan_on_random_text() {
        use super::index::common_suffix;
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            let len = rng.gen_range(1..60);
            let t: Vec<Token> = (0..len).map(|_| rng.gen_range(0..4)).collect();
            let config = NgramConfig { n_min: rng.gen_range(1..3), n_max: rng.gen_range(3..6) };
            let mut st = NgramState::default();
            let from = st.plan(&t, config);
            // same longest suffix as the scan (the continuation may differ only in which of
            // several equally long matches is taken: both take the most recent)
            let scan = lookup(&t, config, 1);
            assert_eq!(from.is_some(), !scan.is_empty(), "{t:?} {config:?}");
            if let Some(from) = from {
                let len_idx = common_suffix(&t, from, t.len(), config.n_max);
                let mut best = 0;
                for p in 1..t.len() {
                    best = best.max(common_suffix(&t, p, t.len(), config.n_max));
                }
                assert_eq!(len_idx, best, "{t:?} {config:?}");
            }
        }
    }
}
