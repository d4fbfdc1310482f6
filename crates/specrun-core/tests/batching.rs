//! Continuous batching on the mock (which checks sequence ids and positions as strictly as
//! llama.cpp): for every number of slots, each job's output equals running it alone, each
//! round is one target decode over every sequence in flight, finished sequences leave no
//! cells behind and their slots are reused.

mod util;

use specrun_core::batching::{run_continuous, BatchEnd, BatchJob, BatchStats, Callbacks, RunSink, SharedPolicy};
use specrun_core::control::{AdaptiveMode, VerifyCosts};
use specrun_core::draft::{DraftPlan, Drafter, ModelDrafter, NoDraft};
use specrun_core::draft::{HybridDrafter, NgramDrafter};
use specrun_core::engine::{Engine, GenConfig, Sequence};
use specrun_core::mock::{Behaviour, MockClock, MockModel, MockSpec};
use specrun_core::model::{Model, Token};

fn target_spec(n_seq: usize) -> MockSpec {
    MockSpec { n_seq, behaviour: Behaviour::Target { seed: 7, eog_rate: 0.02 }, ..MockSpec::target(7) }
}

/// Mixed jobs: lengths, prompts, greedy and sampled (own seeds), auto and fixed drafting
/// ([`util::mixed_job`]).
fn jobs() -> Vec<BatchJob<usize>> {
    (0..9)
        .map(|i| {
            let prompt: Vec<Token> = (0..(3 + i % 4)).map(|j| ((i * 7 + j * 3) % 60 + 1) as Token).chain([5, 6, 7, 5, 6]).collect();
            util::mixed_job(i, prompt, 10 + 7 * i)
        })
        .collect()
}

fn drafter(kind: &str, spec: &MockSpec, clock: &MockClock) -> Box<dyn Drafter> {
    let draft = || ModelDrafter::new(MockModel::new(MockSpec::draft_of(spec, 0.7, 3)).with_clock(clock.clone()));
    match kind {
        "none" => Box::new(NoDraft),
        "model" => Box::new(draft()),
        "ngram" => Box::new(NgramDrafter::default()),
        _ => Box::new(HybridDrafter { ngram: NgramDrafter::default(), model: draft() }),
    }
}

/// Run all jobs with `n` slots; returns each job's generated tokens (by tag) and the target.
fn run(kind: &str, n: usize) -> (Vec<Vec<Token>>, MockModel, BatchStats) {
    let spec = target_spec(4);
    let clock = MockClock::new();
    let target = MockModel::new(spec.clone()).with_clock(clock.clone());
    let mut engine = Engine::new(target, drafter(kind, &spec, &clock), GenConfig::default());
    let (out, stats) = run_jobs(&mut engine, jobs(), n, &clock);
    (out, engine.target, stats)
}

/// Run `jobs` (tags 0..len) to the end with `n` slots: each job's generated tokens, by tag.
fn run_jobs<D: Drafter>(
    engine: &mut Engine<MockModel, D>,
    jobs: Vec<BatchJob<usize>>,
    n: usize,
    clock: &MockClock,
) -> (Vec<Vec<Token>>, BatchStats) {
    let n_jobs = jobs.len();
    util::run_all(engine, &mut util::ListJobs(jobs.into_iter()), n_jobs, n, clock)
}

#[test]
fn every_job_gives_the_same_output_with_any_number_of_slots() {
    for kind in ["none", "ngram", "model", "hybrid"] {
        let (one, _, _) = run(kind, 1);
        assert!(one.iter().all(|t| !t.is_empty()));
        for n in 2..=4 {
            let (many, target, stats) = run(kind, n);
            assert_eq!(many, one, "{kind} with {n} slots");
            // a finished sequence leaves no cells behind
            for id in 0..4 {
                assert!(target.cached(id).is_empty(), "{kind}/{n}: slot {id} still holds {:?}", target.cached(id));
            }
            assert!(stats.active_sum as f64 / stats.n_rounds as f64 > 1.5, "{kind}/{n}: slots were kept busy: {stats:?}");
        }
    }
}

#[test]
fn each_round_is_one_target_decode_over_every_sequence_in_flight() {
    let (_, target, stats) = run("ngram", 3);
    let n_jobs = jobs().len();
    // prefills: one sequence from position 0; shared rounds: every part continues a sequence
    let prefills = target.decode_log.iter().filter(|c| c.len() == 1 && c[0].1 == 0).count();
    let shared: Vec<&Vec<(i32, usize, usize)>> = target.decode_log.iter().filter(|c| c.iter().all(|p| p.1 > 0)).collect();
    assert_eq!(prefills, n_jobs, "one prefill per job");
    assert_eq!(prefills + shared.len(), target.decode_log.len());
    // at most one target decode per round (a round whose sequences are all in their first
    // round with nothing drafted decodes nothing: their first rows came from the prompt)
    assert!(
        shared.len() <= stats.n_rounds && shared.len() + n_jobs >= stats.n_rounds,
        "{} decodes, {} rounds",
        shared.len(),
        stats.n_rounds
    );
    let multi = shared.iter().filter(|c| c.len() > 1).count();
    assert!(multi * 2 > shared.len(), "most rounds carry several sequences: {multi} of {}", shared.len());
    for call in &shared {
        let mut ids: Vec<i32> = call.iter().map(|p| p.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), call.len(), "a sequence appears once per decode");
        assert!(ids.iter().all(|&i| (0..3).contains(&i)), "slots are ids 0..3: {ids:?}");
    }
    // the parts of a round cover every sequence in flight that had something to decode
    let parts: usize = shared.iter().map(|c| c.len()).sum();
    assert!(parts + n_jobs >= stats.active_sum && parts <= stats.active_sum, "{parts} parts, {} sequence-rounds", stats.active_sum);
}

#[test]
fn a_job_that_does_not_fit_fails_alone() {
    let spec = MockSpec { n_ctx: 40, ..target_spec(2) };
    let clock = MockClock::new();
    let mut engine = Engine::new(MockModel::new(spec.clone()).with_clock(clock.clone()), NoDraft, GenConfig::default());
    let mut jobs = jobs();
    jobs[1].prompt = (0..60).map(|t| t % 50 + 1).collect();
    for j in &mut jobs {
        j.config.max_tokens = 10;
    }
    let mut results = vec![None; jobs.len()];
    run_continuous(
        &mut engine,
        jobs,
        2,
        &mut SharedPolicy::default(),
        &clock,
        &mut Callbacks::new(|tag, r| results[tag] = Some(r.map(|s| s.generated().len()))),
    )
    .map(|o| o.end)
    .unwrap();
    assert!(results[1].as_ref().unwrap().is_err(), "the long prompt fails");
    assert!(results.iter().enumerate().filter(|(i, _)| *i != 1).all(|(_, r)| matches!(r, Some(Ok(10)))), "{results:?}");
}

#[test]
fn a_stop_from_the_caller_ends_that_sequence_only_and_cancel_stops_all() {
    let spec = target_spec(3);
    let clock = MockClock::new();
    let mut engine = Engine::new(MockModel::new(spec).with_clock(clock.clone()), NgramDrafter::default(), GenConfig::default());
    let mut lens = vec![0; jobs().len()];
    run_continuous(
        &mut engine,
        jobs(),
        3,
        &mut SharedPolicy::default(),
        &clock,
        &mut Callbacks::new(|tag, r| lens[tag] = r.unwrap().generated().len())
            .on_tokens(|tag, seq, _| *tag == 0 && seq.generated().len() >= 3),
    )
    .map(|o| o.end)
    .unwrap();
    assert!((3..=3 + 6).contains(&lens[0]), "job 0 stopped by its caller after 3+ tokens: {}", lens[0]);
    /// Counts what a cancelled run hands over: jobs finished, and jobs dropped in flight.
    struct Counts {
        rounds: usize,
        finished: Vec<usize>,
        cancelled: Vec<usize>,
    }
    impl RunSink<usize> for Counts {
        fn finished(&mut self, tag: usize, _: Result<Sequence, specrun_core::engine::EngineError>) {
            self.finished.push(tag);
        }
        fn cancel(&mut self) -> bool {
            self.rounds += 1;
            self.rounds > 4
        }
        fn cancelled(&mut self, tag: usize) {
            self.cancelled.push(tag);
        }
    }
    let mut sink = Counts { rounds: 0, finished: vec![], cancelled: vec![] };
    let end = run_continuous(&mut engine, jobs(), 3, &mut SharedPolicy::default(), &clock, &mut sink).map(|o| o.end).unwrap();
    assert_eq!(end, BatchEnd::Cancelled);
    assert!(sink.finished.len() < jobs().len());
    assert_eq!(sink.cancelled.len(), 3, "the three jobs in flight are handed back as cancelled: {:?}", sink.cancelled);
    let mut handed: Vec<usize> = sink.finished.iter().chain(&sink.cancelled).copied().collect();
    handed.sort_unstable();
    handed.dedup();
    assert_eq!(handed.len(), sink.finished.len() + sink.cancelled.len(), "each job is handed over once");
    for id in 0..3 {
        assert!(engine.target.cached(id).is_empty(), "cancelled sequences are freed");
    }
}

#[test]
fn shared_rounds_draft_only_what_pays_for_the_whole_batch() {
    use specrun_core::control::{allocate_drafts, geometric_reach, CostCurve, DraftAsk};
    // a CPU-like curve: 16 tokens cost 8.4 of one
    let cpu = CostCurve::from_seconds(vec![(1, 1.0), (2, 1.5), (4, 2.7), (8, 6.2), (12, 8.1), (16, 8.4), (32, 16.7)]).unwrap();
    let mut costs = VerifyCosts::with_curve(std::sync::Arc::new(cpu));
    costs.observe(1, 0.05);
    let ask = |alpha, cap| DraftAsk { reach: geometric_reach(alpha, cap), cap, min: 0, draft_cost: 0.0 };
    let ks = allocate_drafts(&[ask(0.95, 8), ask(0.2, 8), ask(0.9, 8), ask(0.1, 0)], &costs, 512, 1.0).unwrap();
    assert_eq!(ks[3], 0, "nothing to draft from");
    assert!(ks[0] >= ks[2] && ks[2] >= ks[1], "better acceptance drafts more: {ks:?}");
    assert_eq!(ks[1], 0, "a poor draft drafts nothing while others do: {ks:?}");
    // gains scaled by a run whose drafts realised a quarter of what was expected: the same
    // asks draft less
    let scaled = allocate_drafts(&[ask(0.95, 8), ask(0.2, 8), ask(0.9, 8), ask(0.1, 0)], &costs, 512, 0.25).unwrap();
    assert!(scaled.iter().zip(&ks).all(|(s, k)| s <= k) && scaled.iter().sum::<usize>() < ks.iter().sum::<usize>(), "{scaled:?} vs {ks:?}");
    // on a flat (GPU-like) curve everyone drafts long
    let flat = CostCurve { points: vec![(1, 1.0), (64, 1.3)], seq_points: vec![] };
    let mut costs = VerifyCosts::with_curve(std::sync::Arc::new(flat));
    costs.observe(1, 0.05);
    let ks = allocate_drafts(&[ask(0.8, 8), ask(0.6, 8)], &costs, 512, 1.0).unwrap();
    assert!(ks.iter().all(|&k| k >= 6), "{ks:?}");
    // never past n_batch
    let ks = allocate_drafts(&[ask(0.99, 16), ask(0.99, 16)], &costs, 10, 1.0).unwrap();
    assert!(ks.iter().sum::<usize>() + 2 <= 10, "{ks:?}");
    // exploration minimums are kept
    let ks = allocate_drafts(&[DraftAsk { reach: geometric_reach(0.0, 8), cap: 8, min: 3, draft_cost: 0.0 }], &costs, 512, 1.0).unwrap();
    assert_eq!(ks, vec![3]);
    assert_eq!(MockModel::new(target_spec(4)).n_seq_max(), 4);
}

/// A queue that grows while the run goes on (as a server's does): jobs arrive every few
/// rounds, `Later` in between; every job's output still equals running it alone, and the
/// run ends only when the source is closed and the last job finished.
#[test]
fn jobs_arriving_during_the_run_join_free_slots() {
    use specrun_core::batching::{JobSource, NextJob};
    struct Trickle {
        jobs: std::collections::VecDeque<BatchJob<usize>>,
        calls: usize,
        idle_waits: usize,
    }
    impl JobSource<usize> for Trickle {
        fn next_job(&mut self, idle: bool) -> NextJob<usize> {
            self.calls += 1;
            if idle {
                self.idle_waits += 1;
            }
            if self.jobs.is_empty() {
                return NextJob::Closed;
            }
            // one job every third call (a waiting server would block when idle instead)
            if self.calls.is_multiple_of(3) {
                NextJob::Job(self.jobs.pop_front().expect("non-empty"))
            } else {
                NextJob::Later
            }
        }
    }
    let (alone, _, _) = run("ngram", 1);
    let spec = target_spec(4);
    let clock = MockClock::new();
    let mut engine =
        Engine::new(MockModel::new(spec.clone()).with_clock(clock.clone()), drafter("ngram", &spec, &clock), GenConfig::default());
    let mut source = Trickle { jobs: jobs().into(), calls: 0, idle_waits: 0 };
    let (out, _) = util::run_all(&mut engine, &mut source, jobs().len(), 3, &clock);
    assert!(source.jobs.is_empty());
    assert!(source.idle_waits > 0, "the source was told when nothing was in flight");
    for (i, (a, b)) in alone.iter().zip(&out).enumerate() {
        assert_eq!(a, b, "job {i}");
    }
    for id in 0..3 {
        assert!(engine.target.cached(id).is_empty(), "every slot is freed at the end");
    }
}

/// The per-run counters add up: target-only, every round decodes one token per sequence in
/// flight, and each sequence's first token comes from its prompt batch, taken right after
/// the prompt (no round, no decode).
#[test]
fn batch_stats_count_rounds_tokens_and_time() {
    let (out, _, stats) = run("none", 3);
    let n_generated: usize = out.iter().map(Vec::len).sum();
    assert_eq!(stats.n_generated, n_generated);
    assert_eq!(stats.n_generated, stats.active_sum + out.len(), "the first token at once, then one per sequence per round");
    assert_eq!(stats.n_decoded, stats.active_sum, "every round decodes each sequence's last token");
    assert!(stats.mean_active() > 1.0 && stats.mean_active() <= 3.0);
    assert!(stats.t_prefill > std::time::Duration::ZERO && stats.t_decode > stats.t_prefill);
    assert!((stats.tokens_per_decode() - stats.mean_active()).abs() < 1e-12, "target-only: one token per sequence per decode");
}

#[test]
fn a_draft_model_drafts_every_sequence_in_one_decode_per_step() {
    let spec = target_spec(4);
    let clock = MockClock::new();
    let target = MockModel::new(spec.clone()).with_clock(clock.clone());
    let draft = ModelDrafter::new(MockModel::new(MockSpec::draft_of(&spec, 0.7, 3)).with_clock(clock.clone()));
    let mut engine = Engine::new(target, draft, GenConfig::default());
    let fixed: Vec<BatchJob<usize>> = jobs()
        .into_iter()
        .map(|mut j| {
            j.config.adaptive = AdaptiveMode::Fixed;
            j
        })
        .collect();
    let mut steps = 0;
    let mut stats = BatchStats::default();
    run_continuous(
        &mut engine,
        fixed,
        3,
        &mut SharedPolicy::default(),
        &clock,
        &mut Callbacks::new(|_, r: Result<Sequence, _>| steps += r.expect("job").stats.n_draft_steps),
    )
    .map(|o| {
        stats = o.stats;
        o.end
    })
    .unwrap();
    // the draft model's decodes after each prompt was read: one per draft step of the round,
    // carrying every sequence still drafting
    let log = &engine.drafter.model.decode_log;
    let step_calls: Vec<&Vec<(i32, usize, usize)>> = log.iter().filter(|c| c.iter().all(|p| p.1 > 0)).collect();
    let parts: usize = step_calls.iter().map(|c| c.len()).sum();
    assert_eq!(parts, steps, "every draft step of every sequence is one part of a draft decode");
    let multi = step_calls.iter().filter(|c| c.len() > 1).count();
    assert!(multi * 2 > step_calls.len(), "most draft decodes carry several sequences: {multi} of {}", step_calls.len());
    assert!(step_calls.len() < steps * 2 / 3, "{} draft decodes for {steps} sequence-steps", step_calls.len());
    for call in &step_calls {
        let mut ids: Vec<i32> = call.iter().map(|p| p.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), call.len(), "a sequence appears once per draft decode");
    }
}

/// A drafter that claims a long verbatim copy run (so its drafts are planned as near-certain)
/// and proposes tokens the mock target never picks, and whose rounds are reported as another
/// source's, so that the controller's per-source learning never sees its failures: plans
/// that expect to gain, rounds that lose, and only the measured rounds to tell.
struct Overconfident;

impl Drafter for Overconfident {
    fn name(&self) -> &'static str {
        "overconfident"
    }
    fn plan(&self, _: &mut specrun_core::draft::DraftCursor, _: &[Token]) -> DraftPlan {
        DraftPlan { source: specrun_core::draft::DraftSource::Ngram, run: 1000, first: None, sure: 0 }
    }
    fn begin(&mut self, _: &mut specrun_core::draft::DraftCursor, _: &[Token]) -> Result<(), specrun_core::model::ModelError> {
        Ok(())
    }
    fn propose(
        &mut self,
        _: &mut specrun_core::draft::DraftCursor,
        tokens: &mut Vec<Token>,
        _: &mut Vec<specrun_core::sampling::Dist>,
        req: &specrun_core::draft::DraftRequest<'_>,
        _: &mut specrun_core::sampling::Scratch,
        _: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<specrun_core::draft::DraftReport, specrun_core::model::ModelError> {
        // the mock target's greedy choice is never the token it just emitted again
        let last = *tokens.last().expect("a prompt");
        tokens.extend(std::iter::repeat_n(last, req.max));
        Ok(specrun_core::draft::DraftReport { n_steps: 0, source: specrun_core::draft::DraftSource::Model })
    }
    fn rollback(&mut self, _: &mut specrun_core::draft::DraftCursor, _: usize) -> Result<(), specrun_core::model::ModelError> {
        Ok(())
    }
}

/// Drafting that does not pay in what the rounds measured stops, and is tried again less and
/// less often: the shared rounds' drafts emit far fewer tokens than planned, which scales the
/// plans' gains down ([`specrun_core::control::DraftYield`]); drafted rounds slower than plain
/// ones pause drafting ([`specrun_core::control::DraftGuard`]). The run costs far less than
/// drafting every round would (about 3 plain rounds' time per drafted round here), and the
/// greedy output is unchanged.
#[test]
fn drafting_that_does_not_pay_in_the_measured_rounds_stops() {
    let spec = MockSpec { behaviour: Behaviour::Target { seed: 7, eog_rate: 0.0 }, ..MockSpec::target(7) };
    let jobs = || {
        (0..4)
            .map(|i| BatchJob {
                tag: i,
                config: GenConfig { max_tokens: 300, draft_max: 8, adaptive: AdaptiveMode::Auto, ..GenConfig::default() },
                prompt: vec![1 + i as Token, 9, 4, 9],
            })
            .collect::<Vec<_>>()
    };
    let run = |drafter: Box<dyn Drafter>| {
        let clock = MockClock::new();
        let target = MockModel::new(MockSpec { n_seq: 4, ..spec.clone() }).with_clock(clock.clone());
        let mut engine = Engine::new(target, drafter, GenConfig::default());
        let t0 = specrun_core::clock::Clock::now(&clock);
        let (out, stats) = run_jobs(&mut engine, jobs(), 4, &clock);
        (out, specrun_core::clock::Clock::now(&clock) - t0, stats)
    };
    let (plain, t_plain, _) = run(Box::new(NoDraft));
    let (drafted, t_drafted, stats) = run(Box::new(Overconfident));
    assert_eq!(drafted, plain);
    // few draft rows in all: 4 sequences drafting 8 tokens every round would add 8 per row
    let draft_rows = stats.n_decoded - stats.active_sum;
    assert!(draft_rows * 3 < stats.active_sum, "{draft_rows} draft rows for {} sequence rows: {stats:?}", stats.active_sum);
    // the plans' own check shows why: they expected more than the rounds gave
    assert!(stats.plan_check.expected_tokens > stats.plan_check.n_tokens as f64 + 10.0, "{:?}", stats.plan_check);
    let ratio = t_drafted.as_secs_f64() / t_plain.as_secs_f64();
    assert!(ratio < 1.6, "drafting every round would take about 3x as long; the guarded run took {ratio:.2}x");
}

/// Drafts the target's own greedy text (from a plain run) for the jobs it knows, by their
/// first prompt token, with every 8th position wrong (copy runs of 7).
struct Oracle {
    texts: std::collections::HashMap<Token, Vec<Token>>,
}

impl Oracle {
    fn next(&self, tokens: &[Token], max: usize) -> Vec<Token> {
        let Some(text) = self.texts.get(&tokens[0]) else { return vec![] };
        let at = |p: usize| if p.is_multiple_of(8) { (text[p] + 1) % 64 } else { text[p] };
        (tokens.len()..text.len()).take(max).map(at).collect()
    }
}

impl Drafter for Oracle {
    fn name(&self) -> &'static str {
        "oracle"
    }
    fn plan(&self, _: &mut specrun_core::draft::DraftCursor, tokens: &[Token]) -> DraftPlan {
        if !self.texts.contains_key(&tokens[0]) {
            return DraftPlan::NONE;
        }
        DraftPlan { source: specrun_core::draft::DraftSource::Ngram, run: 8, first: self.next(tokens, 1).first().copied(), sure: 0 }
    }
    fn begin(&mut self, _: &mut specrun_core::draft::DraftCursor, _: &[Token]) -> Result<(), specrun_core::model::ModelError> {
        Ok(())
    }
    fn propose(
        &mut self,
        _: &mut specrun_core::draft::DraftCursor,
        tokens: &mut Vec<Token>,
        q: &mut Vec<specrun_core::sampling::Dist>,
        req: &specrun_core::draft::DraftRequest<'_>,
        _: &mut specrun_core::sampling::Scratch,
        _: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<specrun_core::draft::DraftReport, specrun_core::model::ModelError> {
        let next = self.next(tokens, req.max);
        if req.keep_q {
            q.extend(next.iter().map(|&t| specrun_core::sampling::Dist::one_hot(t)));
        }
        tokens.extend(next);
        Ok(specrun_core::draft::DraftReport { n_steps: 0, source: specrun_core::draft::DraftSource::Ngram })
    }
    fn rollback(&mut self, _: &mut specrun_core::draft::DraftCursor, _: usize) -> Result<(), specrun_core::model::ModelError> {
        Ok(())
    }
}

/// This CPU's cost curve (one-token decodes of 40 ms, in seconds by tokens in the decode: 16
/// cost about what 12 do), as the mock's decode cost and as the calibrated curve the run
/// plans with.
fn cpu_curve() -> Vec<(usize, f64)> {
    [(1, 1.0), (2, 1.6), (4, 2.6), (8, 6.9), (12, 9.0), (16, 9.3), (20, 12.5), (32, 17.0), (64, 30.0)]
        .iter()
        .map(|&(n, c)| (n, 0.04 * c))
        .collect()
}

/// Every decode's parts: sequence id, position, tokens.
type DecodeLog = Vec<Vec<(i32, usize, usize)>>;

/// `n_jobs` fixed-length jobs (64 tokens, `auto` drafts up to 16) on 16 slots with the CPU
/// curve: each job's tokens, the run's counters and every decode's parts.
fn run_on_cpu_curve(n_jobs: usize, drafter: Box<dyn Drafter>) -> (Vec<Vec<Token>>, BatchStats, DecodeLog) {
    let curve = std::sync::Arc::new(specrun_core::control::CostCurve::from_seconds(cpu_curve()).expect("a curve"));
    let spec =
        MockSpec { n_seq: 16, cost_curve: cpu_curve(), behaviour: Behaviour::Target { seed: 7, eog_rate: 0.0 }, ..MockSpec::target(7) };
    let config =
        GenConfig { max_tokens: 64, draft_max: 16, adaptive: AdaptiveMode::Auto, cost_curve: Some(curve.clone()), ..GenConfig::default() };
    let jobs: Vec<BatchJob<usize>> =
        (0..n_jobs).map(|i| BatchJob { tag: i, config: config.clone(), prompt: vec![1 + i as Token, 9, 4, 9] }).collect();
    let clock = MockClock::new();
    let target = MockModel::new(spec).with_clock(clock.clone());
    let mut engine = Engine::new(target, drafter, GenConfig::default());
    let (out, stats) =
        util::run_all_with(&mut engine, &mut util::ListJobs(jobs.into_iter()), n_jobs, 16, &clock, VerifyCosts::with_curve(curve));
    (out, stats, engine.target.decode_log.clone())
}

/// An oracle for the jobs of a plain run's output (prompts as [`run_on_cpu_curve`] makes them).
fn oracle_for(plain: &[Vec<Token>]) -> Oracle {
    let texts = (0..plain.len()).map(|i| (1 + i as Token, [1 + i as Token, 9, 4, 9].iter().chain(&plain[i]).copied().collect())).collect();
    Oracle { texts }
}

/// Before any shared decode was measured, sequences sharing one decode draft nothing: the
/// first round measures a plain decode of them all (16 sequences each drafting what its own
/// controller would explore with made a decode of ~4 plain ones); the rounds after it draft
/// where the costs say it pays.
#[test]
fn the_first_shared_round_decodes_plainly_and_measures_the_cost() {
    let (plain, _, _) = run_on_cpu_curve(16, Box::new(NoDraft));
    let (out, stats, log) = run_on_cpu_curve(16, Box::new(oracle_for(&plain)));
    assert_eq!(out, plain);
    let rows: Vec<usize> = log.iter().map(|parts| parts.iter().map(|p| p.2).sum()).collect();
    // 16 prompts read alone, then the shared rounds
    assert!(rows[..16].iter().all(|&r| r == 4), "{rows:?}");
    assert_eq!(rows[16], 16, "the first shared decode carries one row a sequence: {rows:?}");
    assert!(stats.n_decoded > stats.active_sum, "later rounds draft: {stats:?}");
    // no job waits at any time: every round is in the run's tail
    assert_eq!(stats.n_tail_rounds, stats.n_rounds);
}

/// `n_jobs` jobs of 64 tokens on `slots` slots along the CPU curve, where every fourth job
/// copies well (the oracle drafts it) and the rest have nothing to draft from: each job's
/// tokens, the run's counters and the seconds the run took on the mock clock.
fn run_mix(n_jobs: usize, slots: usize, drafts: bool) -> (Vec<Vec<Token>>, BatchStats, f64) {
    let curve = std::sync::Arc::new(specrun_core::control::CostCurve::from_seconds(cpu_curve()).expect("a curve"));
    let spec =
        MockSpec { n_seq: slots, cost_curve: cpu_curve(), behaviour: Behaviour::Target { seed: 7, eog_rate: 0.0 }, ..MockSpec::target(7) };
    let config =
        GenConfig { max_tokens: 64, draft_max: 16, adaptive: AdaptiveMode::Auto, cost_curve: Some(curve.clone()), ..GenConfig::default() };
    let jobs: Vec<BatchJob<usize>> =
        (0..n_jobs).map(|i| BatchJob { tag: i, config: config.clone(), prompt: vec![1 + i as Token, 9, 4, 9] }).collect();
    let drafter: Box<dyn Drafter> = if drafts {
        let (plain, _, _) = run_mix(n_jobs, slots, false);
        let mut oracle = oracle_for(&plain);
        oracle.texts.retain(|&first, _| (first - 1) % 4 == 0);
        Box::new(oracle)
    } else {
        Box::new(NoDraft)
    };
    let clock = MockClock::new();
    let target = MockModel::new(spec).with_clock(clock.clone());
    let mut engine = Engine::new(target, drafter, GenConfig::default());
    let (out, stats) =
        util::run_all_with(&mut engine, &mut util::ListJobs(jobs.into_iter()), n_jobs, slots, &clock, VerifyCosts::with_curve(curve));
    (out, stats, specrun_core::clock::Clock::now(&clock).as_secs_f64())
}

/// With one job per slot waiting, a run lasts as long as its slowest slot's chain of jobs, and
/// here most jobs draft nothing: drafts for the few that copy would end those early, thin the
/// last rounds and make the first ones dearer. The run's outlook holds them, and the run is not
/// slower than plain decoding. With four jobs per slot waiting, the same mix drafts and is
/// faster.
#[test]
fn drafts_are_held_when_the_work_left_ends_sooner_plainly() {
    let (plain, _, t_plain) = run_mix(32, 16, false);
    let (out, stats, t_drafting) = run_mix(32, 16, true);
    assert_eq!(out, plain);
    assert!(stats.n_held_rounds > 0, "{stats:?}");
    assert!(t_drafting <= t_plain * 1.001, "drafting {t_drafting} s, plain {t_plain} s: {stats:?}");

    // (the mock's prompts tell jobs apart by their first token: at most 63 jobs)
    let (plain, _, t_plain) = run_mix(12 * 5, 12, false);
    let (out, stats, t_drafting) = run_mix(12 * 5, 12, true);
    assert_eq!(out, plain);
    assert!(stats.n_decoded > stats.active_sum, "it drafts: {stats:?}");
    assert!(t_drafting < t_plain, "drafting {t_drafting} s, plain {t_plain} s: {stats:?}");
}

/// A drafter that remembers what it was taught (what the n-gram draft cache learns from).
#[derive(Default)]
struct Learner(Vec<Vec<Token>>);

impl Drafter for Learner {
    fn name(&self) -> &'static str {
        "learner"
    }
    fn is_active(&self) -> bool {
        false
    }
    fn begin(&mut self, _: &mut specrun_core::draft::DraftCursor, _: &[Token]) -> Result<(), specrun_core::model::ModelError> {
        Ok(())
    }
    fn propose(
        &mut self,
        _: &mut specrun_core::draft::DraftCursor,
        _: &mut Vec<Token>,
        _: &mut Vec<specrun_core::sampling::Dist>,
        _: &specrun_core::draft::DraftRequest<'_>,
        _: &mut specrun_core::sampling::Scratch,
        _: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<specrun_core::draft::DraftReport, specrun_core::model::ModelError> {
        Ok(specrun_core::draft::DraftReport::default())
    }
    fn rollback(&mut self, _: &mut specrun_core::draft::DraftCursor, _: usize) -> Result<(), specrun_core::model::ModelError> {
        Ok(())
    }
    fn learn(&mut self, generated: &[Token]) {
        self.0.push(generated.to_vec());
    }
}

#[test]
fn a_drafter_learns_every_finished_output_of_a_continuous_run() {
    let clock = MockClock::new();
    let mut e = Engine::new(MockModel::new(MockSpec::target(4)).with_clock(clock.clone()), Learner::default(), GenConfig::default());
    let jobs: Vec<BatchJob<usize>> = (0..7)
        .map(|i| BatchJob { tag: i, config: GenConfig { max_tokens: 5 + i, ..GenConfig::default() }, prompt: vec![1 + i as Token, 2] })
        .collect();
    let mut outputs = vec![Vec::new(); 7];
    let end = run_continuous(
        &mut e,
        jobs,
        3,
        &mut SharedPolicy::default(),
        &clock,
        &mut Callbacks::new(|tag, r: Result<Sequence, _>| outputs[tag] = r.unwrap().generated().to_vec()),
    )
    .map(|o| o.end)
    .unwrap();
    assert_eq!(end, BatchEnd::Done);
    let mut learned = e.drafter.0.clone();
    learned.sort();
    outputs.sort();
    assert_eq!(learned, outputs);
}
