//! Constrained decoding on mock models: speculative output under a grammar is target-only
//! constrained output (token for token when greedy, in distribution when sampling), forced
//! tokens are drafted ahead of the drafter's and accepted, every output follows the grammar,
//! and shared rounds carry one matcher per sequence.

mod util;

use specrun_core::constraint::{Constraint, ConstraintSpec};
use specrun_core::control::AdaptiveMode;
use specrun_core::draft::{Drafter, ModelDrafter, NoDraft};
use specrun_core::draft::{HybridDrafter, NgramDrafter};
use specrun_core::engine::{Engine, GenConfig};
use specrun_core::mock::{Behaviour, MockClock, MockGrammar, MockModel, MockSegment, MockSpec};
use specrun_core::model::{KvCursor, Model, Token};
use specrun_core::ngram::NgramConfig;
use specrun_core::sampling::{SamplingParams, Scratch};
use specrun_core::stats::FinishReason;
use specrun_core::verify::VerifyMode;
use std::collections::HashMap;
use util::{run_all, run_checked, ListJobs, Output, Quality};

/// A record-like grammar: keys and punctuation forced, values free within a range.
fn record_grammar(n_vocab: usize) -> MockGrammar {
    MockGrammar::new(record_pieces(None), 0, n_vocab)
}

/// The same with a forced text of two spellings after the second key (`likely`, `other`).
fn record_grammar_spelled(n_vocab: usize, likely: Token, other: Token) -> MockGrammar {
    MockGrammar::new(record_pieces(Some(MockSegment::Either { likely, other })), 0, n_vocab)
}

fn record_pieces(spelled: Option<MockSegment>) -> Vec<MockSegment> {
    use MockSegment::{Choice, Literal};
    let head = [Literal(vec![10, 11, 12]), Choice { allowed: (20..40).collect(), min: 1, max: 6 }, Literal(vec![13, 14, 15, 16])];
    let tail = [
        Choice { allowed: (40..60).collect(), min: 0, max: 8 },
        Literal(vec![17]),
        Choice { allowed: (20..30).collect(), min: 2, max: 3 },
        Literal(vec![18, 19]),
    ];
    head.into_iter().chain(spelled).chain(tail).collect()
}

fn spec_of(g: &MockGrammar) -> ConstraintSpec {
    let g = g.clone();
    ConstraintSpec::new("mock", move || Box::new(g.clone()))
}

/// The output follows the grammar: every token allowed in turn, and a stop only where the
/// grammar is complete.
fn assert_follows(g: &MockGrammar, out: &Output) {
    let mut m = g.clone();
    let body = match out.finish {
        FinishReason::Stop => &out.tokens[..out.tokens.len() - 1],
        _ => &out.tokens[..],
    };
    assert_eq!(m.validate(body), body.len(), "output leaves the grammar: {:?}", out.tokens);
    m.consume(body).unwrap();
    if out.finish == FinishReason::Stop {
        assert!(m.is_accepting(), "stopped before the grammar was complete: {:?}", out.tokens);
    }
}

fn constrained(config: &GenConfig, g: &MockGrammar) -> GenConfig {
    GenConfig { constraint: Some(spec_of(g)), ..config.clone() }
}

#[test]
fn greedy_constrained_speculation_equals_constrained_target_only() {
    let target = MockSpec::target(7);
    let g = record_grammar_spelled(target.n_vocab, 61, 62);
    let base = GenConfig { max_tokens: 40, ..GenConfig::default() };
    let mut cases = 0;
    for prompt in [vec![5, 6, 7], vec![9], (1..30).collect::<Vec<Token>>()] {
        let config = constrained(&base, &g);
        let mut e = Engine::new(MockModel::new(target.clone()), NoDraft, config.clone());
        let expected = run_checked(&mut e, &prompt, |_, _| None);
        assert_follows(&g, &expected);
        assert_eq!(expected.seq.stats.n_forced, 0, "target-only decoding forces nothing");
        for k in [0, 1, 2, 4, 8] {
            for q in Quality::ALL {
                let config = GenConfig { draft_max: k, ..config.clone() };
                let mut e = Engine::new(MockModel::new(target.clone()), ModelDrafter::new(MockModel::new(q.spec(&target))), config);
                let got = run_checked(&mut e, &prompt, |d, seq| Some(d.model.cached(seq).to_vec()));
                assert_eq!(got.tokens, expected.tokens, "K={k} quality={q:?} prompt={prompt:?}");
                assert_eq!(got.finish, expected.finish);
                if k > 0 {
                    assert!(got.seq.stats.n_forced > 0, "no forced tokens drafted (K={k})");
                    assert_eq!(got.seq.stats.n_forced_accepted, got.seq.stats.n_forced, "a forced token was rejected");
                }
                cases += 1;
            }
            // n-gram and hybrid drafters: drafts cut where the grammar refuses them
            let config = GenConfig { draft_max: k, ..config.clone() };
            let drafters: Vec<Box<dyn Drafter>> = vec![
                Box::new(NgramDrafter::new(NgramConfig::default())),
                Box::new(HybridDrafter {
                    ngram: NgramDrafter::new(NgramConfig::default()),
                    model: ModelDrafter::new(MockModel::new(Quality::Agree(0.7).spec(&target))),
                }),
            ];
            for d in drafters {
                let mut e = Engine::new(MockModel::new(target.clone()), d, config.clone());
                let got = run_checked(&mut e, &prompt, |_, _| None);
                assert_eq!(got.tokens, expected.tokens, "K={k} n-gram prompt={prompt:?}");
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 3 * 5 * 7);
}

#[test]
fn forced_spans_make_few_decodes_and_are_not_a_drafters_misses() {
    let target = MockSpec::target(3);
    let g = record_grammar(target.n_vocab);
    let config = constrained(&GenConfig { max_tokens: 40, draft_max: 4, adaptive: AdaptiveMode::Auto, ..GenConfig::default() }, &g);
    let mut plain = Engine::new(MockModel::new(target.clone()), NoDraft, config.clone());
    let expected = run_checked(&mut plain, &[1, 2, 3], |_, _| None);
    // a draft model that never agrees: only the forced tokens are accepted
    let mut e = Engine::new(MockModel::new(target.clone()), ModelDrafter::new(MockModel::new(Quality::Agree(0.0).spec(&target))), config);
    let got = run_checked(&mut e, &[1, 2, 3], |d, seq| Some(d.model.cached(seq).to_vec()));
    assert_eq!(got.tokens, expected.tokens);
    let s = &got.seq.stats;
    // 10 literal tokens, each forced once its piece begins
    assert!(s.n_forced >= 8, "forced {}", s.n_forced);
    assert!(s.n_rounds < expected.seq.stats.n_rounds, "{} rounds against {} plain", s.n_rounds, expected.seq.stats.n_rounds);
    assert!(s.n_masks > 0);
}

#[test]
fn the_likely_spelling_of_forced_text_is_drafted_and_checked() {
    // the same grammar with the two spellings swapped: the target writes one of them, so the
    // likely token is accepted under one grammar and rejected under the other, and the output
    // is target-only constrained decoding's under both
    let mut accepted = Vec::new();
    for seed in 1..=8 {
        let target = MockSpec::target(seed);
        for (likely, other) in [(61, 62), (62, 61)] {
            let g = record_grammar_spelled(target.n_vocab, likely, other);
            let config = constrained(&GenConfig { max_tokens: 40, draft_max: 4, ..GenConfig::default() }, &g);
            let expected = run_checked(&mut Engine::new(MockModel::new(target.clone()), NoDraft, config.clone()), &[1, 2, 3], |_, _| None);
            let mut e = Engine::new(MockModel::new(target.clone()), NgramDrafter::new(NgramConfig::default()), config);
            let got = run_checked(&mut e, &[1, 2, 3], |_, _| None);
            assert_eq!(got.tokens, expected.tokens, "seed {seed} likely {likely}");
            assert_follows(&g, &got);
            let s = &got.seq.stats;
            if !expected.tokens.contains(&61) && !expected.tokens.contains(&62) {
                continue; // the output ended before the spelled text
            }
            assert_eq!(s.n_likely, 1, "seed {seed}: the spelled text is drafted once");
            assert_eq!(s.n_forced_accepted, s.n_forced, "forced tokens stay certain");
            accepted.push((s.n_likely_accepted == 1) == expected.tokens.contains(&likely));
        }
    }
    assert!(accepted.len() >= 8, "too few outputs reached the spelled text: {}", accepted.len());
    assert!(accepted.iter().all(|&a| a), "a likely token accepted where the target wrote the other: {accepted:?}");
}

#[test]
fn rows_where_the_grammar_allows_one_token_are_left_unread_and_change_nothing() {
    // greedy, seeded and rejection sampling: the same text with every row read (log-
    // probabilities kept) and with the certain rows left unread; the mock model panics if an
    // unread row is ever read
    let target = MockSpec::target(5);
    let g = record_grammar_spelled(target.n_vocab, 61, 62);
    let sampled = SamplingParams { temp: 0.9, ..SamplingParams::greedy() };
    let modes = [(VerifyMode::Greedy, SamplingParams::greedy()), (VerifyMode::Seeded, sampled.clone()), (VerifyMode::Rejection, sampled)];
    for (verify, params) in modes {
        for seed in 1..=6u64 {
            let base = GenConfig { max_tokens: 40, draft_max: 6, verify, params: params.clone(), seed, ..GenConfig::default() };
            let run = |logprobs: Option<usize>| {
                let config = constrained(&GenConfig { logprobs, ..base.clone() }, &g);
                let draft = ModelDrafter::new(MockModel::new(Quality::Agree(0.7).spec(&target)));
                let mut e = Engine::new(MockModel::new(target.clone()), draft, config);
                let out = run_checked(&mut e, &[1, 2, 3], |_, _| None);
                (out, e.target.n_unread)
            };
            let ((read, n_read_unread), (unread, n_unread)) = (run(Some(0)), run(None));
            assert_eq!(n_read_unread, 0, "rows left unread where log-probabilities are kept");
            assert!(n_unread >= 5, "{verify:?} seed {seed}: only {n_unread} rows left unread");
            assert_eq!(unread.tokens, read.tokens, "{verify:?} seed {seed}");
            assert_follows(&g, &unread);
        }
    }
}

#[test]
fn a_grammar_that_does_not_end_is_cut_by_max_tokens_and_ends_when_complete() {
    use MockSegment::{Choice, Literal};
    let target = MockSpec { behaviour: Behaviour::Target { seed: 4, eog_rate: 0.0 }, ..MockSpec::target(4) };
    let long = MockGrammar::new(vec![Literal(vec![3]), Choice { allowed: (20..40).collect(), min: 0, max: 1000 }], 0, target.n_vocab);
    let config = constrained(&GenConfig { max_tokens: 25, draft_max: 4, ..GenConfig::default() }, &long);
    let mut e = Engine::new(MockModel::new(target.clone()), ModelDrafter::new(MockModel::new(Quality::Agree(0.7).spec(&target))), config);
    let out = run_checked(&mut e, &[1, 2], |_, _| None);
    assert_eq!(out.finish, FinishReason::Length);
    assert_eq!(out.tokens.len(), 25);
    assert_follows(&long, &out);
    // a target that never chooses EOG on its own still ends where the grammar does, even
    // with ignore_eos (the grammar's end is the output's end)
    let short = MockGrammar::new(vec![Literal(vec![3, 4, 5])], 0, target.n_vocab);
    let config = constrained(&GenConfig { max_tokens: 25, draft_max: 4, ignore_eos: true, ..GenConfig::default() }, &short);
    let mut e = Engine::new(MockModel::new(target.clone()), ModelDrafter::new(MockModel::new(Quality::Agree(0.7).spec(&target))), config);
    let out = run_checked(&mut e, &[1, 2], |_, _| None);
    assert_eq!(out.tokens, vec![3, 4, 5, 0]);
    assert_eq!(out.finish, FinishReason::Stop);
}

#[test]
fn shared_rounds_carry_one_matcher_per_sequence() {
    let target = MockSpec::target(9);
    let g = record_grammar(target.n_vocab);
    let jobs = |n: usize| {
        (0..n)
            .map(|i| {
                let mut job = util::mixed_job(i, vec![1 + i as Token, 2, 3], 30);
                if i % 4 != 3 {
                    job.config.constraint = Some(spec_of(&g));
                }
                job
            })
            .collect::<Vec<_>>()
    };
    let run = |slots: usize, with_draft: bool| {
        let clock = MockClock::new();
        let config = GenConfig::default();
        if with_draft {
            let mut e = Engine::new(
                MockModel::new(target.clone()).with_clock(clock.clone()),
                ModelDrafter::new(MockModel::new(Quality::Agree(0.7).spec(&target)).with_clock(clock.clone())),
                config,
            );
            run_all(&mut e, &mut ListJobs(jobs(12).into_iter()), 12, slots, &clock).0
        } else {
            let mut e = Engine::new(MockModel::new(target.clone()).with_clock(clock.clone()), NoDraft, config);
            run_all(&mut e, &mut ListJobs(jobs(12).into_iter()), 12, slots, &clock).0
        }
    };
    let alone = run(1, false);
    for (i, out) in alone.iter().enumerate() {
        if i % 4 != 3 {
            let mut m = g.clone();
            let body: Vec<Token> = out.iter().copied().take_while(|&t| t != 0).collect();
            assert_eq!(m.validate(&body), body.len(), "job {i} leaves the grammar");
        }
    }
    // greedy jobs give the target-only text at any slot count with drafting; sampled jobs
    // (every third, fixed draft lengths) the same text at any slot count
    let drafted_alone = run(1, true);
    for slots in [1, 4] {
        let got = run(slots, true);
        for i in 0..12 {
            if i % 3 == 2 {
                assert_eq!(got[i], drafted_alone[i], "sampled job {i} at {slots} slots");
            } else {
                assert_eq!(got[i], alone[i], "greedy job {i} at {slots} slots with drafting");
            }
        }
    }
}

const PROMPT: [Token; 3] = [3, 1, 4];

fn sampling_target() -> MockSpec {
    MockSpec { n_vocab: 12, scale: 5.0, eog: -1, behaviour: Behaviour::Target { seed: 21, eog_rate: 0.0 }, ..MockSpec::target(21) }
}

/// Three tokens: a free one from {1..6}, then `middle` (a forced 7, or 7 or 10 with 7 the
/// likely one), a free one from {2..9} (never 7: its literal comes first).
fn sampling_grammar(middle: MockSegment) -> MockGrammar {
    use MockSegment::Choice;
    MockGrammar::new(
        vec![Choice { allowed: (1..6).collect(), min: 1, max: 1 }, middle, Choice { allowed: vec![2, 3, 5, 8, 9], min: 1, max: 1 }],
        11,
        12,
    )
}

/// The exact constrained target-only distribution of the three tokens: each row masked by
/// the grammar, then warped.
fn exact(target: &MockSpec, g: &MockGrammar, params: &SamplingParams) -> HashMap<[Token; 3], f64> {
    let mut m = MockModel::new(target.clone());
    let mut scratch = Scratch::new();
    let mut masked_dist = |ctx: &[Token], m: &mut MockModel| {
        m.truncate(0, 0).unwrap();
        let mut c = KvCursor::new(0);
        c.decode_tail(m, ctx, 1).unwrap();
        let mut row = m.logits(0).to_vec();
        let mut gm = g.clone();
        gm.consume(&ctx[PROMPT.len()..]).unwrap();
        gm.mask().unwrap().apply(&mut row);
        scratch.warp(&row, ctx, params)
    };
    let mut out = HashMap::new();
    let d1 = masked_dist(&PROMPT, &mut m);
    for (&t1, &p1) in d1.ids.iter().zip(&d1.probs) {
        let d2 = masked_dist(&[&PROMPT[..], &[t1]].concat(), &mut m);
        for (&t2, &p2) in d2.ids.iter().zip(&d2.probs) {
            let d3 = masked_dist(&[&PROMPT[..], &[t1, t2]].concat(), &mut m);
            for (&t3, &p3) in d3.ids.iter().zip(&d3.probs) {
                *out.entry([t1, t2, t3]).or_insert(0.0) += f64::from(p1) * f64::from(p2) * f64::from(p3);
            }
        }
    }
    out
}

#[test]
fn rejection_sampling_under_a_grammar_keeps_the_constrained_distribution() {
    // a forced token, and forced text with two spellings (the likely one drafted)
    for middle in [MockSegment::Literal(vec![7]), MockSegment::Either { likely: 7, other: 10 }] {
        rejection_sampling_keeps(sampling_grammar(middle));
    }
}

fn rejection_sampling_keeps(g: MockGrammar) {
    const N: u64 = 100_000;
    let target = sampling_target();
    let params = SamplingParams { temp: 1.0, ..SamplingParams::greedy() };
    let ex = exact(&target, &g, &params);
    assert!(ex.len() > 10, "the test needs a spread-out distribution: {ex:?}");
    let spelled = ex.keys().any(|k| k[1] == 10);
    let (target_seed, target_eog_rate) = target.target_params();
    let drafts = [
        (
            "good",
            MockSpec::draft_of(&target, 1.0, 5).with_behaviour(Behaviour::Draft {
                target_seed,
                target_eog_rate,
                agree: 1.0,
                noise: 0.5,
                salt: 5,
            }),
        ),
        ("disjoint", MockSpec::draft_of(&target, 0.0, 7).with_behaviour(Behaviour::Anti { target_seed, target_eog_rate })),
    ];
    for (name, draft) in drafts {
        let config = GenConfig {
            max_tokens: 3,
            draft_max: 3,
            params: params.clone(),
            verify: VerifyMode::Rejection,
            constraint: Some(spec_of(&g)),
            ..GenConfig::default()
        };
        let mut e = Engine::new(MockModel::new(target.clone()), ModelDrafter::new(MockModel::new(draft)), config);
        let clock = MockClock::new();
        let mut counts: HashMap<[Token; 3], u64> = HashMap::new();
        let (mut likely, mut likely_accepted) = (0, 0);
        for seed in 0..N {
            e.config.seed = seed;
            let mut seq = e.start(0, PROMPT.to_vec(), &clock).unwrap();
            e.generate(&mut seq, &clock, |_| {}).unwrap();
            let out = seq.generated();
            assert!(spelled || out[1] == 7, "the forced token");
            (likely, likely_accepted) = (likely + seq.stats.n_likely, likely_accepted + seq.stats.n_likely_accepted);
            *counts.entry([out[0], out[1], out[2]]).or_insert(0) += 1;
        }
        if spelled {
            // the likely spelling was drafted in most runs, and both accepted and rejected
            assert!(
                likely > N as usize / 2 && likely_accepted > 0 && likely_accepted < likely,
                "{name}: likely {likely_accepted} / {likely}"
            );
        }
        let mut tv = 0.0;
        for (k, &p) in &ex {
            tv += (p - *counts.get(k).unwrap_or(&0) as f64 / N as f64).abs();
        }
        tv += counts.iter().filter(|(k, _)| !ex.contains_key(*k)).map(|(_, &c)| c as f64 / N as f64).sum::<f64>();
        tv /= 2.0;
        eprintln!("{name} draft under a grammar (spelled: {spelled}): TV {tv:.4}");
        assert!(tv < 0.01, "{name}: total variation {tv}");
    }
}

#[test]
fn where_the_grammar_cuts_a_copy_the_closing_token_is_drafted_and_the_output_is_unchanged() {
    use MockSegment::{Choice, Literal};
    // six records `10 11 value 12`: values of one to four tokens from 20..24
    let record = [Literal(vec![10, 11]), Choice { allowed: (20..24).collect(), min: 1, max: 4 }, Literal(vec![12])];
    let g = MockGrammar::new(record.iter().cycle().take(18).cloned().collect(), 0, MockSpec::target(1).n_vocab);
    // the prompt holds the keys followed by values that run on into tokens the grammar
    // refuses, so that copies are cut where a value must end
    let prompt: Vec<Token> = (0..6).flat_map(|i| [10, 11, 20 + i % 4, 21, 5, 6, 7]).collect();
    let (mut closing, mut cases) = (0, 0);
    for seed in 1..=12 {
        let target = MockSpec::target(seed);
        for verify in [VerifyMode::Greedy, VerifyMode::Seeded] {
            let temp = if verify == VerifyMode::Greedy { 0.0 } else { 0.8 };
            let base = GenConfig { max_tokens: 40, draft_max: 8, verify, seed, ..GenConfig::default() };
            let base = GenConfig { params: SamplingParams { temp, ..base.params }, ..base };
            let config = constrained(&base, &g);
            let expected = run_checked(&mut Engine::new(MockModel::new(target.clone()), NoDraft, config.clone()), &prompt, |_, _| None);
            let mut e = Engine::new(MockModel::new(target.clone()), NgramDrafter::new(NgramConfig { n_min: 1, n_max: 3 }), config);
            let got = run_checked(&mut e, &prompt, |_, _| None);
            assert_eq!(got.tokens, expected.tokens, "seed {seed} {verify:?}");
            assert_follows(&g, &got);
            let s = &got.seq.stats;
            assert!(s.n_closing_accepted <= s.n_closing);
            closing += s.n_closing;
            cases += 1;
        }
    }
    assert_eq!(cases, 24);
    assert!(closing > 0, "no closing token was ever drafted");
}

#[test]
fn a_closer_learned_in_one_sequence_is_drafted_in_the_next() {
    use MockSegment::{Choice, Literal};
    // the records of the test above: the first sequence drafts no closer at its first cut (it
    // has learned none yet), the next one on the same engine starts knowing it; both give
    // target-only output
    let record = [Literal(vec![10, 11]), Choice { allowed: (20..24).collect(), min: 1, max: 4 }, Literal(vec![12])];
    let g = MockGrammar::new(record.iter().cycle().take(18).cloned().collect(), 0, MockSpec::target(1).n_vocab);
    let prompt: Vec<Token> = (0..6).flat_map(|i| [10, 11, 20 + i % 4, 21, 5, 6, 7]).collect();
    for seed in 1..=12 {
        let target = MockSpec::target(seed);
        let config = constrained(&GenConfig { max_tokens: 40, draft_max: 8, ..GenConfig::default() }, &g);
        let expected = run_checked(&mut Engine::new(MockModel::new(target.clone()), NoDraft, config.clone()), &prompt, |_, _| None);
        let mut e = Engine::new(MockModel::new(target), NgramDrafter::new(NgramConfig { n_min: 1, n_max: 3 }), config);
        let first = run_checked(&mut e, &prompt, |_, _| None);
        let next = run_checked(&mut e, &prompt, |_, _| None);
        for out in [&first, &next] {
            assert_eq!(out.tokens, expected.tokens, "seed {seed}");
        }
        let (n_first, n_next) = (first.seq.stats.n_closing, next.seq.stats.n_closing);
        assert!(n_next > n_first, "seed {seed}: {n_next} closing tokens drafted in the next sequence, {n_first} in the first");
    }
}

#[test]
fn text_a_value_goes_on_with_is_never_drafted_as_its_closer() {
    use MockSegment::{Choice, Literal};
    // records `10 11 text 12` of free text (any length, tokens 20..40): copies from the prompt
    // are cut where it has a token the grammar refuses (5), and where the target writes more
    // text there, that text is no closer; a closing draft begins with what closes a value (12)
    let record = [Literal(vec![10, 11]), Choice { allowed: (20..40).collect(), min: 1, max: 1000 }, Literal(vec![12])];
    let g = MockGrammar::new(record.iter().cycle().take(9).cloned().collect(), 0, MockSpec::target(1).n_vocab);
    let prompt: Vec<Token> = (0..48).map(|i| if i % 4 == 3 { 5 } else { 20 + (i * 7) % 20 }).collect();
    let mut closing = 0;
    for seed in 1..=16 {
        let target = MockSpec::target(seed);
        let config = constrained(&GenConfig { max_tokens: 60, draft_max: 8, ..GenConfig::default() }, &g);
        let expected = run_checked(&mut Engine::new(MockModel::new(target.clone()), NoDraft, config.clone()), &prompt, |_, _| None);
        let mut e = Engine::new(MockModel::new(target), NgramDrafter::new(NgramConfig { n_min: 1, n_max: 3 }), config);
        let clock = MockClock::new();
        for _ in 0..2 {
            let mut seq = e.start(0, prompt.clone(), &clock).unwrap();
            seq.trace_rounds = true;
            while seq.finish.is_none() {
                e.step(&mut seq, &clock).unwrap();
                let Some(r) = seq.last_round.take() else { continue };
                let own = r.drafted.len() - r.n_closing;
                if let Some(&first) = r.drafted.get(own).filter(|_| r.n_closing > 0) {
                    assert_eq!(first, 12, "seed {seed}: a closing draft began with text: {r:?}");
                    closing += 1;
                }
            }
            assert_eq!(seq.generated(), &expected.tokens[..], "seed {seed}");
        }
    }
    assert!(closing > 0, "no closing draft at all");
}

#[test]
fn the_structure_after_a_closer_is_drafted_past_the_copys_length() {
    use specrun_core::batching::SharedPolicy;
    use MockSegment::{Choice, Literal};
    // the records of the test above, copies of at most two tokens: a cut leaves room for the
    // closer alone, yet the key the grammar forces after it is as sure as the closer; alone,
    // and in shared rounds of three sequences whose decode must stay within n_batch
    let record = [Literal(vec![10, 11]), Choice { allowed: (20..24).collect(), min: 1, max: 4 }, Literal(vec![12])];
    let g = MockGrammar::new(record.iter().cycle().take(18).cloned().collect(), 0, MockSpec::target(1).n_vocab);
    let prompt: Vec<Token> = (0..6).flat_map(|i| [10, 11, 20 + i % 4, 21, 5, 6, 7]).collect();
    let n_batch = 15;
    for shared in [false, true] {
        let mut longest = 0;
        for seed in 1..=12 {
            let target = MockSpec { n_batch, n_seq: 4, ..MockSpec::target(seed) };
            let config =
                constrained(&GenConfig { max_tokens: 40, draft_max: 2, adaptive: AdaptiveMode::Fixed, ..GenConfig::default() }, &g);
            let expected = run_checked(&mut Engine::new(MockModel::new(target.clone()), NoDraft, config.clone()), &prompt, |_, _| None);
            let mut e = Engine::new(MockModel::new(target), NgramDrafter::new(NgramConfig { n_min: 1, n_max: 3 }), config);
            let clock = MockClock::new();
            let n_seqs = if shared { 3 } else { 1 };
            let mut seqs: Vec<_> = (0..n_seqs).map(|id| e.start(id, prompt.clone(), &clock).unwrap()).collect();
            let mut policy = SharedPolicy::default();
            seqs.iter_mut().for_each(|s| s.trace_rounds = true);
            while seqs.iter().any(|s| s.finish.is_none()) {
                if shared {
                    e.step_many(&mut seqs.iter_mut().collect::<Vec<_>>(), &mut policy, &clock).unwrap();
                } else {
                    e.step(&mut seqs[0], &clock).unwrap();
                }
                for r in seqs.iter_mut().filter_map(|s| s.last_round.take()) {
                    assert!(r.drafted.len() <= 2 + r.n_forced + r.n_closing, "seed {seed}: only closing drafts pass draft_max: {r:?}");
                    longest = longest.max(r.n_closing);
                }
            }
            for seq in &seqs {
                assert_eq!(seq.generated(), &expected.tokens[..], "seed {seed}, shared {shared}");
            }
            assert!(e.target.max_batch_seen <= n_batch, "a decode of {} rows", e.target.max_batch_seen);
        }
        assert!(longest >= 3, "no closing draft carried the forced key after its closer (longest {longest}, shared {shared})");
    }
}

#[test]
fn an_ending_seen_in_one_sequence_is_drafted_with_the_end_in_the_next() {
    use MockSegment::{Choice, Literal};
    // a key, a value, then one token of a state of its own that completes the output (a list's
    // `]}`); and the same where the completing token is a value's last, whose state looks like
    // every state inside the value: no ending is drafted there
    let n_vocab = MockSpec::target(1).n_vocab;
    let closing = MockGrammar::new(
        vec![
            Literal(vec![10, 11]),
            Choice { allowed: (20..30).collect(), min: 1, max: 1 },
            Choice { allowed: (40..44).collect(), min: 1, max: 1 },
        ],
        0,
        n_vocab,
    );
    let inside = MockGrammar::new(vec![Literal(vec![10, 11]), Choice { allowed: (20..30).collect(), min: 3, max: 3 }], 0, n_vocab);
    for (g, drafted) in [(closing, true), (inside, false)] {
        let (mut first_rounds, mut second_rounds, mut ends) = (0, 0, 0);
        for seed in 1..=8 {
            let target = MockSpec::target(seed);
            let config = constrained(&GenConfig { max_tokens: 20, draft_max: 4, ..GenConfig::default() }, &g);
            let prompt = [3, 1, 4, 1, 5];
            let expected = run_checked(&mut Engine::new(MockModel::new(target.clone()), NoDraft, config.clone()), &prompt, |_, _| None);
            assert_eq!(expected.finish, FinishReason::Stop);
            let mut e = Engine::new(MockModel::new(target), NgramDrafter::new(NgramConfig::default()), config);
            let first = run_checked(&mut e, &prompt, |_, _| None);
            let second = run_checked(&mut e, &prompt, |_, _| None);
            for out in [&first, &second] {
                assert_eq!(out.tokens, expected.tokens, "seed {seed}");
                assert_eq!(out.finish, FinishReason::Stop);
            }
            first_rounds += first.seq.stats.n_rounds;
            second_rounds += second.seq.stats.n_rounds;
            ends += second.seq.stats.n_likely;
            assert_eq!(second.seq.stats.n_likely_accepted, second.seq.stats.n_likely, "seed {seed}");
        }
        if drafted {
            // the second sequence drafted the ending and the end, in one round fewer
            assert_eq!(ends, 2 * 8, "ending and end drafted in every second sequence");
            assert_eq!(second_rounds + 8, first_rounds, "{second_rounds} rounds against {first_rounds}");
        } else {
            assert_eq!(ends, 0, "an ending drafted inside a value");
            assert_eq!(second_rounds, first_rounds);
        }
    }
}

/// A grammar whose matcher fails once `after` tokens were consumed (as llguidance's lexer does
/// past its limits): every call after that point errs.
#[derive(Clone)]
struct FailsAfter {
    grammar: MockGrammar,
    after: usize,
    consumed: usize,
}

impl FailsAfter {
    fn check(&self) -> Result<(), specrun_core::constraint::ConstraintError> {
        match self.consumed >= self.after {
            true => Err(specrun_core::constraint::ConstraintError("too many expressions".into())),
            false => Ok(()),
        }
    }
}

impl Constraint for FailsAfter {
    fn mask(&mut self) -> Result<specrun_core::constraint::TokenMask, specrun_core::constraint::ConstraintError> {
        self.check()?;
        self.grammar.mask()
    }
    fn forced(&mut self) -> Vec<Token> {
        self.grammar.forced()
    }
    fn validate(&mut self, tokens: &[Token]) -> usize {
        self.grammar.validate(tokens)
    }
    fn consume(&mut self, tokens: &[Token]) -> Result<(), specrun_core::constraint::ConstraintError> {
        self.check()?;
        self.grammar.consume(tokens)?;
        self.consumed += tokens.len();
        Ok(())
    }
    fn rollback(&mut self, n: usize) -> Result<(), specrun_core::constraint::ConstraintError> {
        self.grammar.rollback(n)?;
        self.consumed -= n;
        Ok(())
    }
    fn is_accepting(&mut self) -> bool {
        self.grammar.is_accepting()
    }
    fn boxed_clone(&self) -> Box<dyn Constraint> {
        Box::new(self.clone())
    }
}

#[test]
fn a_grammar_that_fails_mid_output_ends_its_own_sequence_and_no_other() {
    use specrun_core::batching::{run_continuous_from, BatchEnd, Callbacks, SharedPolicy};
    use specrun_core::engine::EngineError;
    let target = MockSpec::target(9);
    let g = record_grammar(target.n_vocab);
    let failing = FailsAfter { grammar: g.clone(), after: 6, consumed: 0 };
    let run = |fail: bool| {
        let clock = MockClock::new();
        let mut e = Engine::new(
            MockModel::new(target.clone()).with_clock(clock.clone()),
            ModelDrafter::new(MockModel::new(Quality::Agree(0.7).spec(&target)).with_clock(clock.clone())),
            GenConfig::default(),
        );
        let jobs: Vec<_> = (0..6)
            .map(|i| {
                let mut job = util::mixed_job(i, vec![1 + i as Token, 2, 3], 30);
                job.config.constraint = Some(match (fail, i) {
                    (true, 1) => {
                        let f = failing.clone();
                        ConstraintSpec::new("failing", move || Box::new(f.clone()))
                    }
                    _ => spec_of(&g),
                });
                job
            })
            .collect();
        let mut out: Vec<Option<Result<Vec<Token>, EngineError>>> = vec![None; 6];
        let outcome = run_continuous_from(
            &mut e,
            &mut ListJobs(jobs.into_iter()),
            4,
            &mut SharedPolicy::default(),
            &clock,
            &mut Callbacks::new(|tag, r: Result<specrun_core::engine::Sequence, EngineError>| {
                out[tag] = Some(r.map(|s| s.generated().to_vec()))
            }),
        )
        .expect("a failing grammar is not the run's error");
        assert_eq!(outcome.end, BatchEnd::Done);
        out.into_iter().map(|o| o.expect("every job is answered")).collect::<Vec<_>>()
    };
    let healthy = run(false);
    let with_failure = run(true);
    assert!(matches!(&with_failure[1], Err(EngineError::Constraint(e)) if e.0 == "too many expressions"), "{:?}", with_failure[1]);
    for i in [0, 2, 3, 4, 5] {
        assert_eq!(with_failure[i].as_ref().ok(), healthy[i].as_ref().ok(), "job {i}");
        assert!(healthy[i].as_ref().is_ok_and(|t| !t.is_empty()), "job {i}");
    }
}
