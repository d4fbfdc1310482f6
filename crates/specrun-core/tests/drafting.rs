//! Every drafter (model, n-gram, hybrid) and every draft-length policy (fixed, step, auto,
//! confidence stop, minimum draft) keeps greedy output identical to target-only decoding; the
//! cost-aware policy falls back to plain decoding when the draft costs more than it gains.

mod util;

use rand_chacha::ChaCha8Rng;
use specrun_core::control::{AdaptiveMode, CostCurve};
use specrun_core::draft::{DraftCursor, DraftPlan, DraftReport, DraftRequest, DraftSource, Drafter, ModelDrafter, NoDraft};
use specrun_core::draft::{HybridDrafter, NgramDrafter};
use specrun_core::engine::GenConfig;
use specrun_core::mock::{MockClock, MockModel, MockSpec};
use specrun_core::model::{ModelError, Token};
use specrun_core::ngram::NgramConfig;
use specrun_core::sampling::{Dist, Scratch};
use std::sync::Arc;
use std::time::Duration;
use util::{run_boxed, Quality};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Model,
    Ngram,
    Hybrid,
}

fn drafter(kind: Kind, draft: &MockSpec, clock: &MockClock) -> Box<dyn Drafter> {
    let model = || ModelDrafter::new(MockModel::new(draft.clone()).with_clock(clock.clone()));
    let ngram = NgramDrafter::new(NgramConfig { n_min: 1, n_max: 3 });
    match kind {
        Kind::Model => Box::new(model()),
        Kind::Ngram => Box::new(ngram),
        Kind::Hybrid => Box::new(HybridDrafter { ngram, model: model() }),
    }
}

/// A prompt with repeats, so that n-grams match.
fn repetitive_prompt() -> Vec<Token> {
    [5, 6, 7, 8, 9].iter().cycle().take(23).copied().chain([5, 6]).collect()
}

#[test]
fn every_drafter_and_policy_keeps_greedy_output() {
    let target = MockSpec::target(3);
    let prompts = [repetitive_prompt(), vec![1, 2, 3]];
    let mut cases = 0;
    for prompt in &prompts {
        let base = GenConfig { max_tokens: 80, ..GenConfig::default() };
        let expected = run_boxed(target.clone(), Box::new(NoDraft), &base, prompt, &MockClock::new()).tokens;
        for kind in [Kind::Model, Kind::Ngram, Kind::Hybrid] {
            for adaptive in [AdaptiveMode::Fixed, AdaptiveMode::Step, AdaptiveMode::Auto] {
                for (draft_max, p_min, draft_min) in [(1, 0.0, 0), (4, 0.0, 0), (8, 0.0, 3), (5, 0.6, 0), (6, 0.3, 2)] {
                    for q in [Quality::Agree(0.9), Quality::Agree(0.2)] {
                        let clock = MockClock::new();
                        let config = GenConfig { draft_max, draft_p_min: p_min, draft_min, adaptive, ..base.clone() };
                        let out = run_boxed(target.clone(), drafter(kind, &q.spec(&target), &clock), &config, prompt, &clock);
                        assert_eq!(out.tokens, expected, "{kind:?} {adaptive:?} K={draft_max} p_min={p_min} min={draft_min} {q:?}");
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 2 * 3 * 3 * 5 * 2);
}

#[test]
fn ngram_drafting_pays_off_on_repetitive_text_and_counts_its_rounds() {
    let mut target = MockSpec::target(3);
    // a target that copies: it repeats the token 5 positions back, so n-grams are always right
    target.behaviour = specrun_core::mock::Behaviour::Target { seed: 3, eog_rate: 0.0 };
    let clock = MockClock::new();
    let config = GenConfig { max_tokens: 60, draft_max: 6, ..GenConfig::default() };
    let out = run_boxed(target.clone(), drafter(Kind::Ngram, &target, &clock), &config, &repetitive_prompt(), &clock);
    let s = &out.seq.stats;
    assert_eq!(s.n_rounds_model, 0);
    assert!(s.n_rounds_ngram > 0, "the prompt repeats: n-grams must match at first");
    assert_eq!(s.n_rounds_ngram + s.n_rounds_undrafted, s.n_rounds);
    assert_eq!(s.n_draft_steps, 0, "n-grams run no draft model");
}

/// Scripted costs: the draft model costs `draft_ms` per step, the target 100 ms per call plus
/// `per_token_ms` per token in the batch.
fn costed(draft_ms: u64, per_token_ms: u64) -> (MockSpec, MockSpec) {
    let mut target = MockSpec::target(4);
    target.behaviour = specrun_core::mock::Behaviour::Target { seed: 4, eog_rate: 0.0 };
    target.cost_per_call = Duration::from_millis(100 - per_token_ms);
    target.cost_per_token = Duration::from_millis(per_token_ms);
    let mut draft = Quality::Agree(0.8).spec(&target);
    draft.cost_per_call = Duration::from_millis(draft_ms);
    draft.cost_per_token = Duration::ZERO;
    (target, draft)
}

#[test]
fn auto_falls_back_to_plain_decoding_when_the_draft_is_too_slow() {
    // like this CPU: a draft step costs 0.6 of a target step, verifying 5 tokens 2.2x one;
    // with 80% acceptance no draft length beats plain decoding
    let (target, draft) = costed(60, 30);
    let clock = MockClock::new();
    let config = GenConfig { max_tokens: 200, draft_max: 4, adaptive: AdaptiveMode::Auto, ..GenConfig::default() };
    let auto = run_boxed(target.clone(), drafter(Kind::Model, &draft, &clock), &config, &[1, 2, 3], &clock);
    let plain_clock = MockClock::new();
    let plain = run_boxed(target.clone(), Box::new(NoDraft), &config, &[1, 2, 3], &plain_clock);
    assert_eq!(auto.tokens, plain.tokens);
    let s = &auto.seq.stats;
    assert!(s.n_rounds_undrafted as f64 > 0.7 * s.n_rounds as f64, "fallback rounds {} of {}", s.n_rounds_undrafted, s.n_rounds);
    // never meaningfully slower than plain decoding
    let ratio = auto.seq.stats.t_decode.as_secs_f64() / plain.seq.stats.t_decode.as_secs_f64();
    assert!(ratio < 1.1, "auto took {ratio:.2}x the plain time");
    let fixed_clock = MockClock::new();
    let fixed = GenConfig { adaptive: AdaptiveMode::Fixed, ..config.clone() };
    let fixed = run_boxed(target, drafter(Kind::Model, &draft, &fixed_clock), &fixed, &[1, 2, 3], &fixed_clock);
    assert!(fixed.seq.stats.t_decode > auto.seq.stats.t_decode, "fixed K=4 should be the slow one here");
}

#[test]
fn auto_keeps_drafting_when_the_draft_is_cheap() {
    // a GPU-like case: draft steps cost 5% of a target step, a batch costs little more than one token
    let (target, draft) = costed(5, 2);
    let clock = MockClock::new();
    let config = GenConfig { max_tokens: 200, draft_max: 8, adaptive: AdaptiveMode::Auto, ..GenConfig::default() };
    let auto = run_boxed(target.clone(), drafter(Kind::Model, &draft, &clock), &config, &[1, 2, 3], &clock);
    let s = &auto.seq.stats;
    assert!(s.n_rounds_model as f64 > 0.8 * s.n_rounds as f64, "model rounds {} of {}", s.n_rounds_model, s.n_rounds);
    let plain_clock = MockClock::new();
    let plain = run_boxed(target, Box::new(NoDraft), &config, &[1, 2, 3], &plain_clock);
    assert_eq!(auto.tokens, plain.tokens);
    assert!(s.t_decode.as_secs_f64() < 0.7 * plain.seq.stats.t_decode.as_secs_f64());
}

/// The controller's plans are checked against their rounds: on scripted (affine) costs the
/// cost model prices each round almost exactly once it has seen a few sizes, and with a
/// draft that agrees 80% of the time the tokens it expects are close to what the rounds emit
/// (measured: 0.87 of them; the estimate of α runs a little ahead of the draft's).
#[test]
fn plans_are_checked_against_what_their_rounds_did() {
    let (target, draft) = costed(5, 2);
    let clock = MockClock::new();
    let config = GenConfig { max_tokens: 300, draft_max: 8, adaptive: AdaptiveMode::Auto, ..GenConfig::default() };
    let out = run_boxed(target, drafter(Kind::Model, &draft, &clock), &config, &[1, 2, 3], &clock);
    let s = &out.seq.stats;
    let p = s.plan_check;
    assert!(p.n_rounds * 10 > s.n_rounds * 9, "{} of {} rounds planned with known costs", p.n_rounds, s.n_rounds);
    assert!(p.n_tokens < s.n_generated, "only the rounds' tokens count (the first comes with the prompt), planned ones only");
    assert!((0.95..1.05).contains(&p.time_ratio()), "time realised / expected {:.3}", p.time_ratio());
    assert!((0.8..1.2).contains(&p.tokens_ratio()), "tokens realised / expected {:.3}", p.tokens_ratio());
}

/// A drafter the test scripts: it claims an n-gram copy run of `run` tokens and proposes the
/// continuation of `oracle` (the target's own greedy text: always right) or, without one, the
/// last token again (the mock target's greedy choice never repeats its last token: always
/// wrong). With `peeks` it tells the engine its first token in rounds that draft nothing.
struct Scripted {
    run: usize,
    peeks: bool,
    oracle: Option<Vec<Token>>,
}

impl Scripted {
    fn next(&self, tokens: &[Token], max: usize) -> Vec<Token> {
        match &self.oracle {
            Some(o) => o.iter().skip(tokens.len()).take(max).copied().collect(),
            None => vec![*tokens.last().expect("a prompt"); max],
        }
    }
}

impl Drafter for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn plan(&self, _: &mut DraftCursor, tokens: &[Token]) -> DraftPlan {
        let first = self.peeks.then(|| self.next(tokens, 1).first().copied()).flatten();
        DraftPlan { source: DraftSource::Ngram, run: self.run, first, sure: 0 }
    }
    fn begin(&mut self, _: &mut DraftCursor, _: &[Token]) -> Result<(), ModelError> {
        Ok(())
    }
    fn propose(
        &mut self,
        _: &mut DraftCursor,
        tokens: &mut Vec<Token>,
        q: &mut Vec<Dist>,
        req: &DraftRequest<'_>,
        _: &mut Scratch,
        _: &mut ChaCha8Rng,
    ) -> Result<DraftReport, ModelError> {
        let next = self.next(tokens, req.max);
        if req.keep_q {
            q.extend(next.iter().map(|&t| Dist::one_hot(t)));
        }
        tokens.extend(next);
        Ok(DraftReport { n_steps: 0, source: DraftSource::Ngram })
    }
    fn rollback(&mut self, _: &mut DraftCursor, _: usize) -> Result<(), ModelError> {
        Ok(())
    }
}

/// Costs like this CPU's: a decode of two tokens costs 1.85 of one, of four 3.55 — a drafted
/// token pays only when it is accepted more than ~85% of the time — with the curve that
/// calibration would have measured.
fn cpu_like() -> (MockSpec, GenConfig) {
    let (target, _) = costed(0, 85);
    let ms = |rows: usize| (15.0 + 85.0 * rows as f64) / 1000.0;
    let curve = CostCurve::from_seconds([1, 2, 4, 8, 16, 32].iter().map(|&r| (r, ms(r))).collect()).expect("a curve");
    let config = GenConfig { draft_max: 8, adaptive: AdaptiveMode::Auto, cost_curve: Some(Arc::new(curve)), ..GenConfig::default() };
    (target, config)
}

/// Rounds that draft nothing still tell whether an n-gram draft would have been right: the
/// target's own token is compared with the drafter's first ([`Drafter::peek`]). A copy whose
/// short run the prior finds too uncertain to pay for is learned to be right from those
/// rounds and drafted after a few of them — without peeks only the first probe (after 16
/// plain rounds) finds out.
#[test]
fn plain_rounds_teach_the_controller_an_n_gram_source_it_did_not_draft_from() {
    let (target, config) = cpu_like();
    let config = GenConfig { max_tokens: 120, ..config };
    let prompt = [1, 2, 3];
    let plain = run_boxed(target.clone(), Box::new(NoDraft), &config, &prompt, &MockClock::new());
    let oracle: Vec<Token> = prompt.iter().chain(&plain.tokens).copied().collect();
    let run = |peeks: bool| {
        let clock = MockClock::new();
        run_boxed(target.clone(), Box::new(Scripted { run: 1, peeks, oracle: Some(oracle.clone()) }), &config, &prompt, &clock)
    };
    let (with, without) = (run(true), run(false));
    assert_eq!(with.tokens, plain.tokens);
    assert_eq!(without.tokens, plain.tokens);
    let (w, wo) = (&with.seq.stats, &without.seq.stats);
    assert!(w.n_rounds_undrafted < 10, "with peeks: {} plain rounds before drafting: {w:?}", w.n_rounds_undrafted);
    assert!(wo.n_rounds_undrafted >= 15, "without peeks drafting waits for the first probe: {wo:?}");
    assert!(w.t_decode < wo.t_decode, "{:?} vs {:?}", w.t_decode, wo.t_decode);
}

/// And a source that plain rounds show to be wrong is never probed: without peeks the
/// controller spends a short draft every 16, 32, 64, … plain rounds to see whether acceptance
/// went up; with them it already knows.
#[test]
fn an_n_gram_source_that_plain_rounds_show_wrong_is_never_probed() {
    let (target, config) = cpu_like();
    let config = GenConfig { max_tokens: 300, ..config };
    let prompt = [1, 2, 3];
    let plain = run_boxed(target.clone(), Box::new(NoDraft), &config, &prompt, &MockClock::new());
    let run =
        |peeks: bool| run_boxed(target.clone(), Box::new(Scripted { run: 3, peeks, oracle: None }), &config, &prompt, &MockClock::new());
    let (with, without) = (run(true), run(false));
    assert_eq!(with.tokens, plain.tokens);
    assert_eq!(without.tokens, plain.tokens);
    let (w, wo) = (&with.seq.stats, &without.seq.stats);
    assert!(wo.n_drafted > 0 && wo.n_accepted == 0, "without peeks, probes (all rejected): {wo:?}");
    assert_eq!(w.n_drafted, 0, "with peeks: {w:?}");
    assert!(w.t_decode < wo.t_decode);
}
