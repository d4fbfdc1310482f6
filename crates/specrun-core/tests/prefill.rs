//! Prompts read inside the shared rounds ([`Prefill::Inside`]) on the mock, which checks
//! sequence ids, positions and `n_batch` as strictly as llama.cpp: every job's output equals
//! reading its prompt alone, a long prompt is read a chunk a round while the running sequences
//! go on generating in the same decodes, and a sequence ended while its prompt is read leaves
//! no cells behind.

mod util;

use specrun_core::batching::{run_continuous, BatchJob, BatchStats, Callbacks, Prefill, PromptPacer, SharedPolicy, Slots};
use specrun_core::control::AdaptiveMode;
use specrun_core::draft::NgramDrafter;
use specrun_core::draft::{Drafter, ModelDrafter, NoDraft};
use specrun_core::engine::{Engine, GenConfig, Sequence};
use specrun_core::mock::{Behaviour, MockClock, MockModel, MockSpec};
use specrun_core::model::Token;
use specrun_core::stats::FinishReason;

/// The mock's record of decodes: per decode, each part's sequence, position and token count.
type DecodeLog = Vec<Vec<(i32, usize, usize)>>;

fn target_spec(n_seq: usize, n_batch: usize) -> MockSpec {
    MockSpec { n_seq, n_batch, behaviour: Behaviour::Target { seed: 11, eog_rate: 0.02 }, ..MockSpec::target(11) }
}

/// Jobs with prompts from 2 to 61 tokens, greedy and sampled, auto and fixed drafting
/// ([`util::mixed_job`]).
fn jobs() -> Vec<BatchJob<usize>> {
    (0..8)
        .map(|i| {
            let n_prompt = [2, 61, 9, 33, 17, 4, 48, 25][i];
            util::mixed_job(i, (0..n_prompt).map(|j| ((i * 5 + j * 7) % 50 + 1) as Token).collect(), 6 + 5 * i)
        })
        .collect()
}

fn drafter(kind: &str, spec: &MockSpec, clock: &MockClock) -> Box<dyn Drafter> {
    match kind {
        "none" => Box::new(NoDraft),
        "model" => Box::new(ModelDrafter::new(MockModel::new(MockSpec::draft_of(spec, 0.7, 5)).with_clock(clock.clone()))),
        _ => Box::new(NgramDrafter::default()),
    }
}

/// Every job to the end: its generated tokens by tag, the target, the run's counters.
fn run(kind: &str, slots: Slots, n_batch: usize) -> (Vec<Vec<Token>>, MockModel, BatchStats) {
    let spec = target_spec(4, n_batch);
    let clock = MockClock::new();
    let target = MockModel::new(spec.clone()).with_clock(clock.clone());
    let mut engine = Engine::new(target, drafter(kind, &spec, &clock), GenConfig::default());
    let (out, stats) = util::run_all(&mut engine, &mut util::ListJobs(jobs().into_iter()), jobs().len(), slots, &clock);
    (out, engine.target, stats)
}

#[test]
fn prompts_read_inside_the_rounds_give_what_reading_them_alone_gives() {
    for kind in ["none", "ngram", "model"] {
        let (alone, _, _) = run(kind, 1.into(), 64);
        assert!(alone.iter().all(|t| !t.is_empty()));
        for n_parallel in 1..=4 {
            let paced = Prefill::Paced { round_secs: 0.08 };
            for prefill in [Prefill::Inside { chunk: 1 }, Prefill::Inside { chunk: 5 }, Prefill::Inside { chunk: 64 }, paced] {
                let (out, target, stats) = run(kind, Slots { n_parallel, prefill, prompt_cache: false, prefix_cache_bytes: 0 }, 64);
                assert_eq!(out, alone, "{kind}, {n_parallel} slots, {prefill:?}");
                let n_prompt: usize = jobs().iter().map(|j| j.prompt.len()).sum();
                assert_eq!(stats.n_prompt_in_rounds, n_prompt, "every prompt token was read inside a round");
                assert!(stats.n_prompt_rounds > 0, "{stats:?}");
                for id in 0..4 {
                    assert!(target.cached(id).is_empty(), "slot {id} freed");
                }
            }
        }
    }
}

/// A 61-token prompt that arrives while another job generates (as a request joins a server's
/// running batch) is read in chunks of at most 5 tokens, each in the same decode as the
/// running job's token and draft, so the running job gets tokens every round while the
/// prompt is read; no decode exceeds `n_batch`; both outputs equal running each job alone.
#[test]
fn a_long_prompt_is_read_a_chunk_a_round_while_the_others_go_on() {
    let (log, stats) = long_prompt_beside_a_running_job(61, 8, Prefill::Inside { chunk: 5 });
    let reading: Vec<&Vec<(i32, usize, usize)>> = log.iter().filter(|c| c.iter().any(|&(seq, pos, _)| seq == 1 && pos < 61)).collect();
    assert_eq!(reading.len(), 61_usize.div_ceil(5), "chunks of 5: {log:?}");
    for call in &reading {
        assert_eq!(call.len(), 2, "each chunk rides beside job 0's rows: {call:?}");
        assert!(call.iter().find(|p| p.0 == 1).expect("job 1").2 <= 5);
    }
    assert_eq!(stats.n_prompt_rounds, reading.len() + 1, "job 0's own prompt, then job 1's chunks");
}

/// Paced chunks: each round that reads the long prompt beside the running job is sized by
/// what the earlier prompt rounds cost on the mock (20 ms a decode and 2 ms a token: 40 rows
/// make the 0.1 s asked for). The first measurement, job 0's 3-token prompt, is mostly the
/// decode's fixed cost, so the chunks start small and grow to the round time, never past it.
#[test]
fn paced_chunks_fit_the_round_time_by_the_measured_cost() {
    let (log, _) = long_prompt_beside_a_running_job(300, 512, Prefill::Paced { round_secs: 0.1 });
    let reading: Vec<usize> = log
        .iter()
        .filter(|c| c.len() == 2 && c.iter().any(|&(seq, pos, _)| seq == 1 && pos < 300))
        .map(|c| c.iter().map(|p| p.2).sum())
        .collect();
    let ms = |rows: usize| 20 + 2 * rows;
    assert!(reading.len() >= 6, "{log:?}");
    assert!(reading.iter().all(|&rows| ms(rows) <= 120), "no paced round past the time asked for: {reading:?}");
    let settled = &reading[reading.len() - 4..reading.len() - 1];
    assert!(settled.iter().all(|&rows| (80..=120).contains(&ms(rows))), "the chunks grew to the round time: {reading:?}");
    let mut pacer = PromptPacer::default();
    assert_eq!(pacer.chunk(0.5, 4), PromptPacer::FIRST_CHUNK, "nothing measured yet");
    pacer.observe(100, 1.0);
    assert_eq!(pacer.chunk(0.5, 4), 46, "0.01 s a row: 50 rows, 4 of them the others'");
    pacer.observe(50, 1.0);
    assert_eq!(pacer.chunk(0.5, 4), 29, "0.015 s a row (the latest weighs half)");
    assert_eq!(pacer.chunk(0.001, 4), 1, "at least one token a round");
}

/// Job 0 (3 prompt tokens, 40 to generate) starts alone; job 1 (`n_prompt` tokens, 5 to
/// generate) arrives after its first round; both outputs equal running each alone and no
/// decode exceeds `n_batch`. Returns the target's decode log and the run's counters; job 0
/// generated in every round until it finished.
fn long_prompt_beside_a_running_job(n_prompt: usize, n_batch: usize, prefill: Prefill) -> (DecodeLog, BatchStats) {
    use specrun_core::batching::{run_continuous_from, JobSource, NextJob};
    struct Arrivals(Vec<Option<BatchJob<usize>>>, usize);
    impl JobSource<usize> for Arrivals {
        // job 0 at once, job 1 after the first round, then closed
        fn next_job(&mut self, _idle: bool) -> NextJob<usize> {
            self.1 += 1;
            match self.1 {
                1 => NextJob::Job(self.0[0].take().expect("job 0")),
                2 => NextJob::Later,
                3 => NextJob::Job(self.0[1].take().expect("job 1")),
                _ => NextJob::Closed,
            }
        }
    }
    let greedy = |max_tokens| GenConfig { max_tokens, draft_max: 4, adaptive: AdaptiveMode::Auto, ..GenConfig::default() };
    let running = BatchJob { tag: 0, config: greedy(40), prompt: vec![3, 4, 5] };
    let long = BatchJob { tag: 1, config: greedy(5), prompt: (0..n_prompt).map(|j| (j * 7 % 50 + 1) as Token).collect() };
    let spec = MockSpec { n_ctx: 512, ..target_spec(2, n_batch) };
    let clock = MockClock::new();
    let run_one = |job: &BatchJob<usize>| {
        let mut engine = Engine::new(MockModel::new(spec.clone()).with_clock(clock.clone()), NgramDrafter::default(), job.config.clone());
        let mut seq = engine.start(0, job.prompt.clone(), &clock).unwrap();
        engine.generate(&mut seq, &clock, |_| {}).unwrap();
        seq.generated().to_vec()
    };
    let alone = [run_one(&running), run_one(&long)];
    let mut engine = Engine::new(MockModel::new(spec.clone()).with_clock(clock.clone()), NgramDrafter::default(), GenConfig::default());
    let mut out: Vec<Vec<Token>> = vec![vec![]; 2];
    // job 0's tokens in each round that read a chunk of job 1's prompt
    let mut per_round: Vec<usize> = Vec::new();
    let mut stats = BatchStats::default();
    run_continuous_from(
        &mut engine,
        &mut Arrivals(vec![Some(running), Some(long)], 0),
        Slots { n_parallel: 2, prefill, prompt_cache: false, prefix_cache_bytes: 0 },
        &mut SharedPolicy::default(),
        &clock,
        &mut Callbacks::new(|tag, r: Result<Sequence, _>| out[tag] = r.expect("job").generated().to_vec()).on_tokens(|&tag, _, added| {
            if tag == 0 {
                per_round.push(added.len());
            }
            false
        }),
    )
    .map(|o| {
        stats = o.stats;
        o.end
    })
    .unwrap();
    assert_eq!(out, alone);
    let target = engine.target;
    assert!(target.max_batch_seen <= n_batch);
    // job 0 generated in every round until it finished
    assert!(per_round.len() >= 2 && per_round[..per_round.len() - 1].iter().all(|&n| n >= 1), "{per_round:?}");
    (target.decode_log, stats)
}

/// A caller that ends a sequence while its prompt is read (a client gone) frees its cells at
/// once; the others finish as before.
#[test]
fn a_sequence_ended_while_its_prompt_is_read_is_freed() {
    let spec = target_spec(3, 64);
    let clock = MockClock::new();
    let mut engine = Engine::new(MockModel::new(spec).with_clock(clock.clone()), NgramDrafter::default(), GenConfig::default());
    let mut results: Vec<Option<(usize, Option<FinishReason>)>> = vec![None; jobs().len()];
    run_continuous(
        &mut engine,
        jobs(),
        Slots { n_parallel: 3, prefill: Prefill::Inside { chunk: 4 }, prompt_cache: false, prefix_cache_bytes: 0 },
        &mut SharedPolicy::default(),
        &clock,
        &mut Callbacks::new(|tag, r| {
            let seq = r.expect("job");
            results[tag] = Some((seq.generated().len(), seq.finish));
        })
        .on_tokens(|&tag, seq, _| tag == 3 && seq.reading_prompt()),
    )
    .map(|o| o.end)
    .unwrap();
    assert_eq!(results[3], Some((0, Some(FinishReason::Stop))), "job 3 ended before its first token");
    let (alone, _, _) = run("ngram", 1.into(), 64);
    for (i, r) in results.iter().enumerate().filter(|(i, _)| *i != 3) {
        assert_eq!(r.map(|r| r.0), Some(alone[i].len()), "job {i}");
    }
    for id in 0..3 {
        assert!(engine.target.cached(id).is_empty(), "slot {id} freed");
    }
}

/// Prompts read in the same round share its budget evenly, and one that needs less than its
/// share leaves the rest to the longer ones (a 3- and a 4-token prompt are read whole beside
/// 5 tokens of a 60-token one in a 12-token batch); the long one goes on a chunk every round.
#[test]
fn prompts_read_together_share_the_round_evenly() {
    let spec = MockSpec { n_ctx: 256, ..target_spec(3, 12) };
    let clock = MockClock::new();
    let mut engine = Engine::new(MockModel::new(spec).with_clock(clock.clone()), NoDraft, GenConfig::default());
    let job = |tag: usize, n: usize| BatchJob {
        tag,
        config: GenConfig { max_tokens: 20, ignore_eos: true, ..GenConfig::default() },
        prompt: (0..n).map(|j| ((tag * 13 + j * 5) % 40 + 1) as Token).collect(),
    };
    run_continuous(
        &mut engine,
        vec![job(0, 3), job(1, 60), job(2, 4)],
        Slots { n_parallel: 3, prefill: Prefill::Inside { chunk: 64 }, prompt_cache: false, prefix_cache_bytes: 0 },
        &mut SharedPolicy::default(),
        &clock,
        &mut Callbacks::new(|_, r: Result<Sequence, _>| assert_eq!(r.expect("job").generated().len(), 20)),
    )
    .map(|o| o.end)
    .unwrap();
    let log = &engine.target.decode_log;
    assert_eq!(log[0], vec![(0, 0, 3), (1, 0, 5), (2, 0, 4)], "{log:?}");
    // then jobs 0 and 2 generate (a row each) and job 1 reads 10 tokens a round
    assert_eq!(log[1], vec![(0, 3, 1), (1, 5, 10), (2, 4, 1)], "{log:?}");
}
