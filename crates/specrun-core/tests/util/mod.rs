//! Test helpers shared by the integration tests: the [`SpecTester`], which runs one expectation
//! through every drafting mode, and small builders for mock engines.
#![allow(dead_code)]

use specrun_core::draft::{Drafter, ModelDrafter, NoDraft};
use specrun_core::engine::{Engine, GenConfig, Sequence};
use specrun_core::mock::{Behaviour, MockClock, MockModel, MockSpec};
use specrun_core::model::{Model, Token};
use specrun_core::stats::FinishReason;

/// A mock draft's quality.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quality {
    /// Agrees with the target's argmax at this rate.
    Agree(f64),
    /// Proposes EOG at this rate, otherwise agrees.
    EogEarly(f64),
}

impl Quality {
    pub const ALL: [Quality; 5] =
        [Quality::Agree(1.0), Quality::Agree(0.0), Quality::Agree(0.3), Quality::Agree(0.7), Quality::EogEarly(0.3)];

    pub fn spec(self, target: &MockSpec) -> MockSpec {
        let (target_seed, target_eog_rate) = target.target_params();
        match self {
            Quality::Agree(a) => MockSpec::draft_of(target, a, 11),
            Quality::EogEarly(r) => {
                MockSpec::draft_of(target, 1.0, 11).with_behaviour(Behaviour::DraftEogEarly { target_seed, target_eog_rate, eog_rate: r })
            }
        }
    }
}

/// The output of one generation.
#[derive(Debug, Clone)]
pub struct Output {
    pub tokens: Vec<Token>,
    pub finish: FinishReason,
    pub seq: Sequence,
}

/// Run a prompt to the end, checking the cache invariant after every round.
pub fn run_checked<D: Drafter>(
    engine: &mut Engine<MockModel, D>,
    prompt: &[Token],
    draft_cache: impl Fn(&D, i32) -> Option<Vec<Token>>,
) -> Output {
    let clock = MockClock::new();
    let mut seq = engine.start(3, prompt.to_vec(), &clock).expect("start");
    while seq.finish.is_none() {
        engine.step(&mut seq, &clock).expect("step");
        let t = engine.target.cached(seq.id);
        assert_eq!(t.len(), seq.target.n_cached, "target cursor disagrees with the target cache");
        assert_eq!(t, &seq.tokens[..t.len()], "target cache is not a prefix of the tokens");
        if seq.finish.is_none() {
            assert!(t.len() < seq.tokens.len(), "target cache holds the last token before it was decoded");
        }
        if let Some(d) = draft_cache(&engine.drafter, seq.id) {
            assert_eq!(d.len(), seq.draft.n_cached, "draft cursor disagrees with the draft cache");
            assert_eq!(&d[..], &seq.tokens[..d.len()], "draft cache is not a prefix of the tokens");
        }
    }
    Output { tokens: seq.generated().to_vec(), finish: seq.finish.unwrap(), seq }
}

pub fn target_only(target: MockSpec, config: &GenConfig, prompt: &[Token]) -> Output {
    let mut e = Engine::new(MockModel::new(target), NoDraft, config.clone());
    run_checked(&mut e, prompt, |_, _| None)
}

pub fn speculative(target: MockSpec, draft: MockSpec, config: &GenConfig, prompt: &[Token]) -> Output {
    let mut e = Engine::new(MockModel::new(target), ModelDrafter::new(MockModel::new(draft)), config.clone());
    run_checked(&mut e, prompt, |d, seq| Some(d.model.cached(seq).to_vec()))
}

/// Runs one expectation — speculative output equals target-only output — through every mode:
/// draft lengths, draft qualities and prompts.
pub struct SpecTester {
    pub target: MockSpec,
    pub config: GenConfig,
    pub prompts: Vec<Vec<Token>>,
    pub draft_max: Vec<usize>,
    pub qualities: Vec<Quality>,
    /// Adjust the draft spec (e.g. a smaller context).
    pub draft_tweak: fn(&mut MockSpec),
}

impl SpecTester {
    pub fn new(target: MockSpec) -> Self {
        Self {
            target,
            config: GenConfig { max_tokens: 60, ..GenConfig::default() },
            prompts: vec![vec![5, 6, 7], vec![9], (1..40).collect()],
            draft_max: (0..=8).collect(),
            qualities: Quality::ALL.to_vec(),
            draft_tweak: |_| {},
        }
    }

    /// Every mode produces the target-only tokens and finish reason. Returns how many
    /// (mode, prompt) cases ran.
    pub fn assert_matches_target_only(&self) -> usize {
        let mut cases = 0;
        for prompt in &self.prompts {
            let expected = target_only(self.target.clone(), &self.config, prompt);
            for &k in &self.draft_max {
                for &q in &self.qualities {
                    let mut draft = q.spec(&self.target);
                    (self.draft_tweak)(&mut draft);
                    let config = GenConfig { draft_max: k, ..self.config.clone() };
                    let draft_room = draft.n_ctx.saturating_sub(prompt.len());
                    let got = speculative(self.target.clone(), draft, &config, prompt);
                    assert_eq!(got.tokens, expected.tokens, "K={k} quality={q:?} prompt={prompt:?}");
                    assert_eq!(got.finish, expected.finish, "K={k} quality={q:?}");
                    if k > 0 && q == Quality::Agree(1.0) && got.tokens.len() > 8 && draft_room > 8 {
                        assert!(got.seq.stats.n_accepted > 0, "a perfect draft had nothing accepted (K={k})");
                    }
                    cases += 1;
                }
            }
        }
        cases
    }
}

/// The mock target a model's logits come from, as used across tests.
pub fn target_spec(seed: u64) -> MockSpec {
    MockSpec::target(seed)
}

pub fn n_vocab<M: Model>(m: &M) -> usize {
    m.n_vocab()
}

/// Run a prompt with any drafter over mock models sharing `clock` (so costs are scripted).
pub fn run_boxed(target: MockSpec, drafter: Box<dyn Drafter>, config: &GenConfig, prompt: &[Token], clock: &MockClock) -> Output {
    let mut e = Engine::new(MockModel::new(target).with_clock(clock.clone()), drafter, config.clone());
    let mut seq = e.start(3, prompt.to_vec(), clock).expect("start");
    while seq.finish.is_none() {
        e.step(&mut seq, clock).expect("step");
        let t = e.target.cached(seq.id);
        assert_eq!(t, &seq.tokens[..seq.target.n_cached], "target cache is not the cursor's prefix");
        if seq.finish.is_none() {
            assert!(t.len() < seq.tokens.len());
        }
    }
    Output { tokens: seq.generated().to_vec(), finish: seq.finish.unwrap(), seq }
}

/// Job `i` of a mixed list for continuous batching: every third sampled (its own seed, a fixed
/// draft length: with rejection sampling the draws a job consumes depend on its draft lengths,
/// and `auto` chooses those from costs that the other jobs in the batch change, so only
/// fixed-length sampled jobs are independent of the slot count), the even greedy ones `auto`.
pub fn mixed_job(i: usize, prompt: Vec<Token>, max_tokens: usize) -> specrun_core::batching::BatchJob<usize> {
    use specrun_core::control::AdaptiveMode;
    use specrun_core::sampling::SamplingParams;
    use specrun_core::verify::VerifyMode;
    let sampled = i % 3 == 2;
    let config = GenConfig {
        max_tokens,
        draft_max: 2 + i % 5,
        adaptive: if i.is_multiple_of(2) && !sampled { AdaptiveMode::Auto } else { AdaptiveMode::Fixed },
        params: if sampled { SamplingParams { temp: 0.9, top_k: 20, ..SamplingParams::greedy() } } else { SamplingParams::greedy() },
        verify: if sampled { VerifyMode::Rejection } else { VerifyMode::Greedy },
        seed: 100 + i as u64,
        ..GenConfig::default()
    };
    specrun_core::batching::BatchJob { tag: i, config, prompt }
}

/// Run every job of `source` (tags `0..n_jobs`) to the end: each job's generated tokens, by
/// tag, and the run's counters. A fixed list goes in as `&mut ListJobs(list.into_iter())`.
pub fn run_all<D: Drafter>(
    engine: &mut Engine<MockModel, D>,
    source: &mut dyn specrun_core::batching::JobSource<usize>,
    n_jobs: usize,
    slots: impl Into<specrun_core::batching::Slots>,
    clock: &MockClock,
) -> (Vec<Vec<Token>>, specrun_core::batching::BatchStats) {
    run_all_with(engine, source, n_jobs, slots, clock, specrun_core::control::VerifyCosts::default())
}

/// [`run_all`] with the run's decode costs starting from `costs` (a calibrated curve, say).
pub fn run_all_with<D: Drafter>(
    engine: &mut Engine<MockModel, D>,
    source: &mut dyn specrun_core::batching::JobSource<usize>,
    n_jobs: usize,
    slots: impl Into<specrun_core::batching::Slots>,
    clock: &MockClock,
    costs: specrun_core::control::VerifyCosts,
) -> (Vec<Vec<Token>>, specrun_core::batching::BatchStats) {
    use specrun_core::batching::{run_continuous_from, BatchEnd, Callbacks, SharedPolicy};
    let mut out: Vec<Vec<Token>> = vec![vec![]; n_jobs];
    let outcome = run_continuous_from(
        engine,
        source,
        slots,
        &mut SharedPolicy::with_costs(costs),
        clock,
        &mut Callbacks::new(|tag, r: Result<Sequence, _>| out[tag] = r.expect("job").generated().to_vec()),
    )
    .unwrap();
    assert_eq!(outcome.end, BatchEnd::Done);
    let stats = outcome.stats;
    (out, stats)
}

/// A fixed list as a [`specrun_core::batching::JobSource`] (that says what is queued, as
/// `run_continuous`'s own does).
pub struct ListJobs<I>(pub I);

impl<I: ExactSizeIterator<Item = specrun_core::batching::BatchJob<usize>> + Clone> specrun_core::batching::JobSource<usize>
    for ListJobs<I>
{
    fn next_job(&mut self, _idle: bool) -> specrun_core::batching::NextJob<usize> {
        self.0.next().map_or(specrun_core::batching::NextJob::Closed, specrun_core::batching::NextJob::Job)
    }
    fn exhausted(&mut self) -> bool {
        self.0.len() == 0
    }
    fn upcoming(&mut self, n: usize) -> Option<Vec<specrun_core::engine::GenConfig>> {
        Some(self.0.clone().take(n).map(|j| j.config).collect())
    }
}
