//! Seeded sampling reproduces: with `VerifyMode::Seeded` the text for a prompt, its settings
//! and a seed is one text, whatever the draft lengths (fixed or chosen by `auto` from costs
//! that a mock clock varies), the draft model's quality, or the sequences sharing the decodes —
//! and it is the text of target-only decoding with that seed.

mod util;

use specrun_core::control::AdaptiveMode;
use specrun_core::draft::{ModelDrafter, NoDraft};
use specrun_core::engine::{Engine, GenConfig};
use specrun_core::mock::{MockClock, MockModel, MockSpec};
use specrun_core::model::Token;
use specrun_core::sampling::SamplingParams;
use specrun_core::verify::VerifyMode;
use std::time::Duration;
use util::{run_all, run_checked, ListJobs, Quality};

fn sampled(seed: u64) -> GenConfig {
    GenConfig {
        max_tokens: 50,
        params: SamplingParams { temp: 0.9, top_k: 20, ..SamplingParams::greedy() },
        verify: VerifyMode::Seeded,
        seed,
        ..GenConfig::default()
    }
}

#[test]
fn the_seeded_text_is_the_target_only_text_for_every_draft_length_and_draft() {
    let target = MockSpec::target(3);
    for seed in [1, 2, 3] {
        for prompt in [vec![5, 6, 7], (1..30).collect::<Vec<Token>>()] {
            let mut e = Engine::new(MockModel::new(target.clone()), NoDraft, sampled(seed));
            let expected = run_checked(&mut e, &prompt, |_, _| None);
            for k in [1, 2, 4, 8] {
                for q in Quality::ALL {
                    let config = GenConfig { draft_max: k, ..sampled(seed) };
                    let mut e = Engine::new(MockModel::new(target.clone()), ModelDrafter::new(MockModel::new(q.spec(&target))), config);
                    let got = run_checked(&mut e, &prompt, |d, s| Some(d.model.cached(s).to_vec()));
                    assert_eq!(got.tokens, expected.tokens, "seed {seed} K={k} {q:?}");
                }
            }
        }
        // another seed, another text
        let mut a = Engine::new(MockModel::new(target.clone()), NoDraft, sampled(seed));
        let mut b = Engine::new(MockModel::new(target.clone()), NoDraft, sampled(seed + 100));
        assert_ne!(run_checked(&mut a, &[1, 2], |_, _| None).tokens, run_checked(&mut b, &[1, 2], |_, _| None).tokens);
    }
}

#[test]
fn timing_that_changes_auto_draft_lengths_does_not_change_the_text() {
    let target = MockSpec::target(8);
    let mut texts = Vec::new();
    let mut schedules = Vec::new();
    for (per_call, per_token) in [(20, 2), (5, 9), (60, 1)] {
        let spec =
            MockSpec { cost_per_call: Duration::from_millis(per_call), cost_per_token: Duration::from_millis(per_token), ..target.clone() };
        let clock = MockClock::new();
        let config = GenConfig { adaptive: AdaptiveMode::Auto, draft_max: 8, ..sampled(7) };
        let draft = MockSpec { cost_per_call: Duration::from_millis(1), cost_per_token: Duration::ZERO, ..Quality::Agree(0.9).spec(&spec) };
        let mut e = Engine::new(
            MockModel::new(spec).with_clock(clock.clone()),
            ModelDrafter::new(MockModel::new(draft).with_clock(clock.clone())),
            config,
        );
        let mut seq = e.start(0, vec![1, 2, 3, 4], &clock).unwrap();
        e.generate(&mut seq, &clock, |_| {}).unwrap();
        texts.push(seq.generated().to_vec());
        schedules.push(seq.stats.k_planned.clone());
    }
    assert!(schedules.windows(2).any(|w| w[0] != w[1]), "the costs should change the draft lengths: {schedules:?}");
    assert!(texts.windows(2).all(|w| w[0] == w[1]), "{texts:?}");
}

#[test]
fn sequences_sharing_decodes_get_the_texts_they_get_alone() {
    let target = MockSpec::target(9);
    let jobs = || {
        (0..10)
            .map(|i| specrun_core::batching::BatchJob {
                tag: i,
                config: GenConfig {
                    adaptive: if i % 2 == 0 { AdaptiveMode::Auto } else { AdaptiveMode::Fixed },
                    draft_max: 1 + i % 5,
                    ..sampled(40 + i as u64)
                },
                prompt: vec![1 + i as Token, 2, 3],
            })
            .collect::<Vec<_>>()
    };
    let run = |slots: usize| {
        let clock = MockClock::new();
        let mut e = Engine::new(
            MockModel::new(target.clone()).with_clock(clock.clone()),
            ModelDrafter::new(MockModel::new(Quality::Agree(0.7).spec(&target)).with_clock(clock.clone())),
            GenConfig::default(),
        );
        run_all(&mut e, &mut ListJobs(jobs().into_iter()), 10, slots, &clock).0
    };
    let alone = run(1);
    assert_eq!(run(3), alone);
    assert_eq!(run(8), alone);
}
