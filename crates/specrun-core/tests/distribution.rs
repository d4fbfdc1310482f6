//! Speculative sampling keeps the target's distribution: on mock models, the empirical
//! distribution of the first two generated tokens matches the exact target-only distribution
//! (total variation < 0.01 and a chi-square test at 1%) for several warps and draft qualities.

use specrun_core::draft::{Drafter, ModelDrafter, NoDraft};
use specrun_core::engine::{Engine, GenConfig};
use specrun_core::mock::{Behaviour, MockClock, MockModel, MockSpec};
use specrun_core::model::{KvCursor, Model, Token};
use specrun_core::sampling::{SamplingParams, Scratch};
use specrun_core::verify::VerifyMode;
use std::collections::HashMap;

const N_SAMPLES: u64 = 200_000;
const PROMPT: [Token; 3] = [3, 1, 4];

fn target_spec() -> MockSpec {
    let mut t = MockSpec::target(21);
    t.n_vocab = 12;
    t.scale = 5.0;
    t.behaviour = Behaviour::Target { seed: 21, eog_rate: 0.0 };
    t.eog = -1; // never ends: every run yields two tokens
    t
}

fn drafts(target: &MockSpec) -> Vec<(&'static str, MockSpec)> {
    let (target_seed, target_eog_rate) = target.target_params();
    let good = MockSpec::draft_of(target, 1.0, 5).with_behaviour(Behaviour::Draft {
        target_seed,
        target_eog_rate,
        agree: 1.0,
        noise: 0.5,
        salt: 5,
    });
    let poor = MockSpec::draft_of(target, 0.0, 6).with_behaviour(Behaviour::Draft {
        target_seed,
        target_eog_rate,
        agree: 0.0,
        noise: 3.0,
        salt: 6,
    });
    let disjoint = MockSpec::draft_of(target, 0.0, 7).with_behaviour(Behaviour::Anti { target_seed, target_eog_rate });
    vec![("good", good), ("poor", poor), ("disjoint", disjoint)]
}

fn settings() -> Vec<SamplingParams> {
    let base = SamplingParams::greedy();
    vec![
        SamplingParams { temp: 1.0, ..base.clone() },
        SamplingParams { temp: 0.7, top_k: 3, ..base.clone() },
        SamplingParams { temp: 1.2, top_p: 0.8, ..base.clone() },
        SamplingParams { temp: 0.9, top_k: 6, min_p: 0.1, repeat_penalty: 1.3, ..base.clone() },
        SamplingParams { temp: 0.8, frequency_penalty: 0.6, presence_penalty: 0.2, logit_bias: vec![(2, 1.5)], ..base },
    ]
}

/// The exact target-only distribution of (t1, t2), from the warp of the mock target's rows.
fn exact(target: &MockSpec, params: &SamplingParams) -> HashMap<(Token, Token), f64> {
    let mut m = MockModel::new(target.clone());
    let mut scratch = Scratch::new();
    let row_after = |m: &mut MockModel, tokens: &[Token]| {
        m.truncate(0, 0).unwrap();
        let mut c = KvCursor::new(0);
        c.decode_tail(m, tokens, 1).unwrap();
        m.logits(0).to_vec()
    };
    let mut out = HashMap::new();
    let r1 = row_after(&mut m, &PROMPT);
    let d1 = scratch.warp(&r1, &PROMPT, params);
    for (&t1, &p1) in d1.ids.iter().zip(&d1.probs) {
        let ctx = [&PROMPT[..], &[t1]].concat();
        let r2 = row_after(&mut m, &ctx);
        let d2 = scratch.warp(&r2, &ctx, params);
        for (&t2, &p2) in d2.ids.iter().zip(&d2.probs) {
            *out.entry((t1, t2)).or_insert(0.0) += f64::from(p1) * f64::from(p2);
        }
    }
    out
}

fn empirical<D: Drafter>(engine: &mut Engine<MockModel, D>) -> HashMap<(Token, Token), u64> {
    let clock = MockClock::new();
    let mut counts = HashMap::new();
    for seed in 0..N_SAMPLES {
        engine.config.seed = seed;
        let mut seq = engine.start(0, PROMPT.to_vec(), &clock).unwrap();
        engine.generate(&mut seq, &clock, |_| {}).unwrap();
        let g = seq.generated();
        *counts.entry((g[0], g[1])).or_insert(0) += 1;
    }
    counts
}

/// Total variation distance and whether a chi-square test rejects at 1%.
fn compare(exact: &HashMap<(Token, Token), f64>, counts: &HashMap<(Token, Token), u64>) -> (f64, f64, f64) {
    let n = N_SAMPLES as f64;
    let mut tv = 0.0;
    for (k, &p) in exact {
        tv += (p - *counts.get(k).unwrap_or(&0) as f64 / n).abs();
    }
    for (k, &c) in counts {
        if !exact.contains_key(k) {
            tv += c as f64 / n; // a pair the target can never produce
        }
    }
    tv /= 2.0;
    // chi-square over cells with expected count >= 5; the rest pooled
    let (mut chi2, mut cells, mut pooled_e, mut pooled_o) = (0.0, 0usize, 0.0, 0.0);
    for (k, &p) in exact {
        let (e, o) = (p * n, *counts.get(k).unwrap_or(&0) as f64);
        if e >= 5.0 {
            chi2 += (o - e).powi(2) / e;
            cells += 1;
        } else {
            pooled_e += e;
            pooled_o += o;
        }
    }
    pooled_o += counts.iter().filter(|(k, _)| !exact.contains_key(k)).map(|(_, &c)| c as f64).sum::<f64>();
    if pooled_e >= 5.0 {
        chi2 += (pooled_o - pooled_e).powi(2) / pooled_e;
        cells += 1;
    } else if pooled_o > 0.0 && pooled_e < 1e-9 {
        chi2 = f64::INFINITY;
    }
    let df = (cells.max(2) - 1) as f64;
    // Wilson–Hilferty: the chi-square quantile at 99% (z = 2.3263)
    let crit = df * (1.0 - 2.0 / (9.0 * df) + 2.3263 * (2.0 / (9.0 * df)).sqrt()).powi(3);
    (tv, chi2, crit)
}

fn check(name: &str, exact: &HashMap<(Token, Token), f64>, counts: &HashMap<(Token, Token), u64>) {
    let (tv, chi2, crit) = compare(exact, counts);
    eprintln!("{name}: TV {tv:.4}, chi2 {chi2:.1} (critical {crit:.1})");
    assert!(tv < 0.01, "{name}: total variation {tv}");
    assert!(chi2 < crit, "{name}: chi-square {chi2} >= {crit} rejects at 1%");
}

#[test]
fn target_only_sampling_matches_the_exact_distribution() {
    let target = target_spec();
    for params in settings() {
        let config = GenConfig { max_tokens: 2, draft_max: 0, params: params.clone(), ..GenConfig::default() };
        let mut e = Engine::new(MockModel::new(target.clone()), NoDraft, config);
        check(&format!("target-only {params:?}"), &exact(&target, &params), &empirical(&mut e));
    }
}

#[test]
fn rejection_sampling_keeps_the_target_distribution() {
    let target = target_spec();
    for params in settings() {
        let ex = exact(&target, &params);
        for (quality, draft) in drafts(&target) {
            let config =
                GenConfig { max_tokens: 2, draft_max: 3, params: params.clone(), verify: VerifyMode::Rejection, ..GenConfig::default() };
            let mut e = Engine::new(MockModel::new(target.clone()), ModelDrafter::new(MockModel::new(draft)), config);
            check(&format!("rejection, {quality} draft, {params:?}"), &ex, &empirical(&mut e));
        }
    }
}

#[test]
fn seeded_verification_keeps_the_target_distribution() {
    let target = target_spec();
    for params in [settings()[0].clone(), settings()[2].clone()] {
        let ex = exact(&target, &params);
        for (quality, draft) in drafts(&target) {
            let config =
                GenConfig { max_tokens: 2, draft_max: 3, params: params.clone(), verify: VerifyMode::Seeded, ..GenConfig::default() };
            let mut e = Engine::new(MockModel::new(target.clone()), ModelDrafter::new(MockModel::new(draft)), config);
            check(&format!("seeded, {quality} draft, {params:?}"), &ex, &empirical(&mut e));
        }
    }
}

#[test]
fn match_verification_keeps_the_target_distribution() {
    let target = target_spec();
    let params = settings()[1].clone();
    let ex = exact(&target, &params);
    for (quality, draft) in drafts(&target) {
        let config = GenConfig { max_tokens: 2, draft_max: 3, params: params.clone(), verify: VerifyMode::Match, ..GenConfig::default() };
        let mut e = Engine::new(MockModel::new(target.clone()), ModelDrafter::new(MockModel::new(draft)), config);
        check(&format!("match, {quality} draft"), &ex, &empirical(&mut e));
    }
}

#[test]
fn the_same_seed_reproduces_and_another_seed_differs() {
    let target = target_spec();
    let draft = drafts(&target).remove(0).1;
    let config = GenConfig {
        max_tokens: 40,
        draft_max: 4,
        params: settings()[0].clone(),
        verify: VerifyMode::Rejection,
        seed: 42,
        ..GenConfig::default()
    };
    let run = |seed: u64| {
        let mut e = Engine::new(
            MockModel::new(target.clone()),
            ModelDrafter::new(MockModel::new(draft.clone())),
            GenConfig { seed, ..config.clone() },
        );
        let clock = MockClock::new();
        let mut seq = e.start(0, PROMPT.to_vec(), &clock).unwrap();
        e.generate(&mut seq, &clock, |_| {}).unwrap();
        seq.generated().to_vec()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}
