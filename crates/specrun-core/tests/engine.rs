//! The greedy engine on mock models: speculative output is target-only output, token for
//! token, in every mode, and the caches stay consistent after every round.

mod util;

use specrun_core::draft::ModelDrafter;
use specrun_core::engine::{Engine, EngineError, GenConfig};
use specrun_core::mock::{MockClock, MockModel, MockSpec};
use specrun_core::model::ModelError;
use specrun_core::stats::FinishReason;
use util::{speculative, target_only, Quality, SpecTester};

#[test]
fn greedy_speculation_equals_target_only_for_every_k_and_draft_quality() {
    let tester = SpecTester::new(MockSpec::target(1));
    assert_eq!(tester.assert_matches_target_only(), 3 * 9 * 5);
}

#[test]
fn equality_holds_for_other_targets_and_longer_runs() {
    for seed in [2, 3, 4] {
        let mut tester = SpecTester::new(MockSpec::target(seed));
        tester.config.max_tokens = 150;
        tester.draft_max = vec![1, 3, 8];
        tester.prompts = vec![vec![1, 2, 3, 4]];
        tester.assert_matches_target_only();
    }
}

#[test]
fn equality_holds_with_repetition_penalty() {
    let mut tester = SpecTester::new(MockSpec::target(5));
    tester.config.params.repeat_penalty = 1.5;
    tester.config.params.repeat_last_n = 8;
    tester.draft_max = vec![2, 5];
    tester.assert_matches_target_only();
}

#[test]
fn equality_holds_with_frequency_and_presence_penalties_and_logit_bias() {
    let mut tester = SpecTester::new(MockSpec::target(6));
    tester.config.params.frequency_penalty = 0.7;
    tester.config.params.presence_penalty = -0.3;
    tester.config.params.logit_bias = vec![(5, 2.0), (9, specrun_core::sampling::BAN_BIAS)];
    tester.config.params.repeat_last_n = 16;
    tester.draft_max = vec![2, 5];
    tester.assert_matches_target_only();
}

#[test]
fn logprobs_are_the_target_only_ones_one_per_generated_token() {
    let target = MockSpec::target(8);
    let config = GenConfig { max_tokens: 30, draft_max: 4, logprobs: Some(3), ..GenConfig::default() };
    let plain = speculative(target.clone(), Quality::Agree(0.0).spec(&target), &GenConfig { draft_max: 0, ..config.clone() }, &[1, 2, 3]);
    let spec = speculative(target.clone(), Quality::Agree(0.9).spec(&target), &config, &[1, 2, 3]);
    assert_eq!(spec.tokens, plain.tokens);
    assert!(spec.seq.stats.n_accepted > 0, "nothing was drafted and accepted");
    assert_eq!(spec.seq.logprobs.len(), spec.seq.generated().len());
    assert_eq!(spec.seq.logprobs.iter().map(|l| l.token).collect::<Vec<_>>(), spec.seq.generated());
    for (a, b) in spec.seq.logprobs.iter().zip(&plain.seq.logprobs) {
        assert_eq!((a.token, a.top.len()), (b.token, 3));
        assert!((a.logprob - b.logprob).abs() < 1e-5, "{a:?} {b:?}");
        // greedy: the chosen token is the most likely one
        assert_eq!(a.top[0].0, a.token);
    }
}

#[test]
fn a_small_batch_caps_the_draft_and_chunks_the_prompt() {
    let mut target = MockSpec::target(1);
    target.n_batch = 3;
    let mut tester = SpecTester::new(target.clone());
    tester.draft_tweak = |d| d.n_batch = 3;
    tester.assert_matches_target_only();
    let config = GenConfig { draft_max: 8, max_tokens: 40, ..GenConfig::default() };
    let out = speculative(target.clone(), Quality::Agree(1.0).spec(&target), &config, &(1..30).collect::<Vec<_>>());
    // K + 1 = 3 tokens per round at most
    assert!(out.seq.stats.drafted_at.len() <= 2, "{:?}", out.seq.stats.drafted_at);
}

#[test]
fn generation_stops_cleanly_at_the_context_size() {
    let mut target = MockSpec::target(1);
    target.n_ctx = 50;
    target.behaviour = specrun_core::mock::Behaviour::Target { seed: 1, eog_rate: 0.0 };
    let mut tester = SpecTester::new(target.clone());
    tester.config.max_tokens = 500;
    tester.prompts = vec![vec![1, 2, 3]];
    tester.assert_matches_target_only();
    let out = target_only(target, &tester.config, &[1, 2, 3]);
    assert_eq!(out.finish, FinishReason::Context);
    assert_eq!(out.seq.tokens.len(), 51, "the last context slot is used, one token is generated from it");
}

#[test]
fn a_draft_with_a_smaller_context_drafts_less_but_changes_nothing() {
    let mut target = MockSpec::target(1);
    target.behaviour = specrun_core::mock::Behaviour::Target { seed: 1, eog_rate: 0.0 };
    let mut tester = SpecTester::new(target);
    tester.config.max_tokens = 100;
    tester.draft_tweak = |d| d.n_ctx = 30;
    tester.draft_max = vec![4];
    tester.assert_matches_target_only();
}

#[test]
fn max_tokens_is_exact_and_eog_stops() {
    let target = MockSpec::target(1);
    let config = GenConfig { max_tokens: 7, draft_max: 4, ..GenConfig::default() };
    let out = speculative(target.clone(), Quality::Agree(1.0).spec(&target), &config, &[1, 2, 3]);
    if out.finish == FinishReason::Length {
        assert_eq!(out.tokens.len(), 7);
    }
    // a target that ends often: every run ends with EOG when it stops
    let mut eog_target = MockSpec::target(9);
    eog_target.behaviour = specrun_core::mock::Behaviour::Target { seed: 9, eog_rate: 0.2 };
    let config = GenConfig { max_tokens: 200, draft_max: 4, ..GenConfig::default() };
    let mut stops = 0;
    for p in 1..20 {
        let out = speculative(eog_target.clone(), Quality::Agree(0.7).spec(&eog_target), &config, &[p]);
        if out.finish == FinishReason::Stop {
            stops += 1;
            assert_eq!(*out.tokens.last().unwrap(), eog_target.eog);
            assert_eq!(out.tokens.iter().filter(|&&t| t == eog_target.eog).count(), 1);
        }
    }
    assert!(stops > 10, "only {stops} of 19 runs ended with EOG");
}

#[test]
fn statistics_count_rounds_drafts_and_acceptances() {
    let target = MockSpec::target(1);
    let config = GenConfig { max_tokens: 50, draft_max: 4, ..GenConfig::default() };
    let out = speculative(target.clone(), Quality::Agree(1.0).spec(&target), &config, &[1, 2, 3]);
    let s = &out.seq.stats;
    assert_eq!(s.n_generated, out.tokens.len());
    // a perfect draft: every drafted token accepted, K+1 tokens per round until the end
    assert_eq!(s.n_accepted, s.n_drafted);
    assert_eq!(s.n_generated, s.n_accepted + s.n_rounds);
    assert!(s.tokens_per_round() > 4.0, "{}", s.tokens_per_round());
    let out = speculative(target.clone(), Quality::Agree(0.0).spec(&target), &config, &[1, 2, 3]);
    assert_eq!(out.seq.stats.n_accepted, 0);
    assert_eq!(out.seq.stats.n_rounds, out.tokens.len());
}

#[test]
fn a_model_that_cannot_roll_back_is_a_clear_error() {
    let target = MockSpec::target(1);
    let mut draft = Quality::Agree(0.3).spec(&target);
    draft.refuse_partial_removal = true;
    let config = GenConfig { max_tokens: 50, draft_max: 4, ..GenConfig::default() };
    let mut e = Engine::new(MockModel::new(target), ModelDrafter::new(MockModel::new(draft)), config);
    let clock = MockClock::new();
    let mut seq = e.start(0, vec![1, 2, 3], &clock).unwrap();
    let err = e.generate(&mut seq, &clock, |_| {}).unwrap_err();
    assert!(matches!(err, EngineError::Draft(ModelError::TruncateRefused { .. })), "{err:?}");
    assert!(err.to_string().contains("cannot remove positions"), "{err}");
}

#[test]
fn prompts_that_do_not_fit_are_refused_before_decoding() {
    let mut target = MockSpec::target(1);
    target.n_ctx = 8;
    let mut e = Engine::new(MockModel::new(target), specrun_core::draft::NoDraft, GenConfig::default());
    let clock = MockClock::new();
    assert_eq!(e.start(0, vec![1; 9], &clock).unwrap_err(), EngineError::PromptTooLong { n_prompt: 9, n_ctx: 8 });
    assert_eq!(e.start(0, vec![], &clock).unwrap_err(), EngineError::EmptyPrompt);
    assert_eq!(e.target.n_decode_calls, 0);
}
