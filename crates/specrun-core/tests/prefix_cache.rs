//! The host-memory prefix cache ([`Slots::prefix_cache_bytes`]) in continuous batching, on the
//! mock (which computes logits from the whole cached prefix and checks positions like
//! llama.cpp): outputs equal reading every prompt whole, with or without slots keeping cells,
//! for every drafter; a prompt that begins like any earlier finished one restores it in
//! whichever slot it gets, in the target and the draft model; the budget is never exceeded;
//! prompts that begin alike and run at once share one reading of their common part.

mod util;

use specrun_core::batching::{run_continuous, BatchEnd, BatchJob, BatchStats, Callbacks, Prefill, SharedPolicy, Slots};
use specrun_core::draft::NgramDrafter;
use specrun_core::draft::{Drafter, ModelDrafter, NoDraft};
use specrun_core::engine::{Engine, GenConfig, Sequence};
use specrun_core::mock::{Behaviour, MockClock, MockModel, MockSpec, MOCK_CELL_BYTES};
use specrun_core::model::{Model, Token};

fn target_spec() -> MockSpec {
    MockSpec { n_seq: 4, n_batch: 64, behaviour: Behaviour::Target { seed: 29, eog_rate: 0.02 }, ..MockSpec::target(29) }
}

fn drafter(kind: &str, spec: &MockSpec, clock: &MockClock) -> Box<dyn Drafter> {
    match kind {
        "none" => Box::new(NoDraft),
        "model" => Box::new(ModelDrafter::new(MockModel::new(MockSpec::draft_of(spec, 0.7, 5)).with_clock(clock.clone()))),
        _ => Box::new(NgramDrafter::default()),
    }
}

/// One instruction of 40 tokens, then a document of 20 (one of three), then a question.
fn prompt(doc: usize, question: usize) -> Vec<Token> {
    let instruction = (0..40).map(|j| (j * 7 % 50 + 2) as Token);
    let document = (0..20).map(move |j| ((j + 11 * doc) % 60 + 3) as Token);
    let question = [(question % 40 + 4) as Token, (question * 3 % 40 + 4) as Token];
    instruction.chain(document).chain(question).collect()
}

/// Twelve records: three documents, four questions each, the documents interleaved, and the
/// first record again word for word at the end.
fn jobs() -> Vec<BatchJob<usize>> {
    let mut prompts: Vec<Vec<Token>> = (0..12).map(|i| prompt(i % 3, i)).collect();
    prompts.push(prompts[0].clone());
    prompts.into_iter().enumerate().map(|(i, p)| util::mixed_job(i, p, 6 + i % 4)).collect()
}

struct Outcome {
    out: Vec<Vec<Token>>,
    cached: Vec<usize>,
    restored: Vec<usize>,
    shared: Vec<usize>,
    stats: BatchStats,
}

fn run(kind: &str, slots: Slots) -> Outcome {
    let spec = target_spec();
    let clock = MockClock::new();
    let mut engine =
        Engine::new(MockModel::new(spec.clone()).with_clock(clock.clone()), drafter(kind, &spec, &clock), GenConfig::default());
    run_on(&mut engine, jobs(), slots, &clock)
}

/// Run `jobs` to the end on `engine`: each job's output and prompt counters, the run's.
fn run_on<T: Model, D: Drafter>(engine: &mut Engine<T, D>, jobs: Vec<BatchJob<usize>>, slots: Slots, clock: &MockClock) -> Outcome {
    let n = jobs.len();
    let (mut out, mut cached, mut restored, mut shared) = (vec![vec![]; n], vec![0; n], vec![0; n], vec![0; n]);
    let outcome = run_continuous(
        engine,
        jobs,
        slots,
        &mut SharedPolicy::default(),
        clock,
        &mut Callbacks::new(|tag, r: Result<Sequence, _>| {
            let seq = r.expect("job");
            out[tag] = seq.generated().to_vec();
            cached[tag] = seq.stats.n_prompt_cached;
            restored[tag] = seq.stats.n_prompt_restored;
            shared[tag] = seq.stats.n_prompt_shared;
        }),
    )
    .unwrap();
    assert_eq!(outcome.end, BatchEnd::Done);
    Outcome { out, cached, restored, shared, stats: outcome.stats }
}

fn slots(n_parallel: usize, prefill: Prefill, prompt_cache: bool, prefix_cache_bytes: usize) -> Slots {
    Slots { n_parallel, prefill, prompt_cache, prefix_cache_bytes }
}

#[test]
fn restored_prefixes_give_what_reading_prompts_whole_gives() {
    for kind in ["none", "ngram", "model"] {
        let alone = run(kind, 1.into());
        assert_eq!(alone.stats.n_prompt_cached, 0);
        for n_parallel in [1, 3, 4] {
            for prefill in [Prefill::Between, Prefill::Inside { chunk: 7 }] {
                for prompt_cache in [false, true] {
                    let case = format!("{kind}, {n_parallel} slots, {prefill:?}, prompt cache {prompt_cache}");
                    let run = run(kind, slots(n_parallel, prefill, prompt_cache, 1 << 30));
                    assert_eq!(run.out, alone.out, "{case}");
                    assert_eq!(run.stats.n_prompt_cached, run.cached.iter().sum::<usize>(), "{case}");
                    assert_eq!(run.stats.n_prompt_restored, run.restored.iter().sum::<usize>(), "{case}");
                    assert_eq!(run.stats.n_prompt_shared, run.shared.iter().sum::<usize>(), "{case}");
                    let jobs = jobs();
                    for (i, job) in jobs.iter().enumerate() {
                        assert!(run.cached[i] < job.prompt.len(), "{case}: job {i} did not read its last prompt token");
                    }
                    // every record but the first finds at least the instruction: from its slot, the
                    // cache, or a record in flight; the repeat finds all of its prompt
                    for i in 1..12 {
                        assert!(run.cached[i] >= 40, "{case}: job {i} kept {}", run.cached[i]);
                    }
                    assert_eq!(run.cached[0], 0, "{case}");
                    assert_eq!(run.cached[12], jobs[12].prompt.len() - 1, "{case}");
                    if !prompt_cache {
                        let taken: Vec<usize> = run.restored.iter().zip(&run.shared).map(|(r, s)| r + s).collect();
                        assert_eq!(taken, run.cached, "{case}: all of it restored or shared");
                    }
                    if n_parallel > 1 {
                        assert!(run.shared[1] >= 40, "{case}: the second record shares the first's instruction");
                    }
                    assert!(run.stats.prefix_cache.n_restores > 0, "{case}");
                }
            }
        }
    }
}

/// Prompt reads from position 0 in the target and in the draft model, for the jobs on
/// two slots with the prefix cache of `budget` bytes; and the outputs.
fn reads_from_start(budget: usize) -> (usize, usize, Vec<Vec<Token>>) {
    let spec = target_spec();
    let clock = MockClock::new();
    let draft = ModelDrafter::new(MockModel::new(MockSpec::draft_of(&spec, 0.7, 5)).with_clock(clock.clone()));
    let mut engine = Engine::new(MockModel::new(spec).with_clock(clock.clone()), draft, GenConfig::default());
    let mut out = vec![vec![]; jobs().len()];
    run_continuous(
        &mut engine,
        jobs(),
        slots(2, Prefill::Between, false, budget),
        &mut SharedPolicy::default(),
        &clock,
        &mut Callbacks::new(|tag, r: Result<Sequence, _>| out[tag] = r.expect("job").generated().to_vec()),
    )
    .map(|o| o.end)
    .unwrap();
    let starts = |log: &Vec<Vec<(i32, usize, usize)>>| log.iter().flatten().filter(|&&(_, pos, _)| pos == 0).count();
    (starts(&engine.target.decode_log), starts(&engine.drafter.model.decode_log), out)
}

#[test]
fn the_target_and_the_draft_model_both_restore() {
    let (t_with, d_with, with) = reads_from_start(1 << 30);
    let (t_without, d_without, without) = reads_from_start(0);
    assert_eq!(with, without);
    assert_eq!((t_without, d_without), (13, 13), "every prompt read from the start without the cache");
    // only the first record reads from the start: the second, started beside it, shares its
    // cells, and the later ones restore or share them
    assert_eq!(t_with, 1, "the target read from position 0 once");
    assert_eq!(d_with, 1, "the draft model read from position 0 once");
}

#[test]
fn a_tiny_budget_evicts_and_never_grows() {
    // room for about two sequences of ~70 cells
    let budget = 150 * MOCK_CELL_BYTES;
    for kind in ["none", "model"] {
        let alone = run(kind, 1.into());
        let run = run(kind, slots(2, Prefill::Between, false, budget));
        assert_eq!(run.out, alone.out, "{kind}");
        assert!(run.stats.prefix_cache.n_evicted > 0, "{kind}: {:?}", run.stats.prefix_cache);
        assert!(run.stats.prefix_cache_bytes <= budget, "{kind}");
    }
}

#[test]
fn no_budget_no_restores() {
    let run = run("ngram", slots(3, Prefill::Between, false, 0));
    assert_eq!(run.stats.n_prompt_cached, 0);
    assert_eq!(run.stats.prefix_cache.n_saved, 0);
}

/// Four questions about one 300-token document, all four in flight at once, on a model that
/// shares cells (or, `refuse_copies`, does not); the run's outcome and how many prompt tokens
/// the target and the draft model read.
fn document_wave(prefill: Prefill, refuse_copies: bool) -> (Outcome, usize, usize) {
    let document: Vec<Token> = (0..300).map(|j| (j * 13 % 57 + 3) as Token).collect();
    let jobs: Vec<BatchJob<usize>> =
        (0..4).map(|i| util::mixed_job(i, [document.clone(), vec![(i + 4) as Token, 9]].concat(), 8)).collect();
    let spec = MockSpec { refuse_copies, ..target_spec() };
    let clock = MockClock::new();
    let draft =
        ModelDrafter::new(MockModel::new(MockSpec { refuse_copies, ..MockSpec::draft_of(&spec, 0.7, 5) }).with_clock(clock.clone()));
    let mut engine = Engine::new(MockModel::new(spec).with_clock(clock.clone()), draft, GenConfig::default());
    let outcome = run_on(&mut engine, jobs, slots(4, prefill, true, 0), &clock);
    // prompt tokens read: positions of the 302-token prompts in every decode
    let read = |log: &Vec<Vec<(i32, usize, usize)>>| -> usize {
        log.iter().flatten().map(|&(_, pos, len)| len.min(302usize.saturating_sub(pos))).sum()
    };
    let (t, d) = (read(&engine.target.decode_log), read(&engine.drafter.model.decode_log));
    assert_eq!(engine.target.n_copied, outcome.stats.n_prompt_shared, "the target's cells shared are the ones counted");
    (outcome, t, d)
}

#[test]
fn a_document_several_requests_bring_at_once_is_read_once() {
    for prefill in [Prefill::Between, Prefill::Inside { chunk: 16 }, Prefill::Paced { round_secs: 0.05 }] {
        let (alone, t_alone, d_alone) = document_wave(prefill, true);
        let (wave, t_wave, d_wave) = document_wave(prefill, false);
        assert_eq!(wave.out, alone.out, "{prefill:?}: sharing changes no output");
        assert_eq!(alone.stats.n_prompt_shared, 0, "{prefill:?}");
        // the first request reads the document (and its question); the three others wait
        // for it or find it read, and share all 300 tokens of it in both models
        assert_eq!(wave.shared, vec![0, 300, 300, 300], "{prefill:?}");
        assert_eq!(wave.cached, wave.shared, "{prefill:?}");
        assert_eq!(wave.restored, vec![0; 4], "{prefill:?}");
        assert_eq!(wave.stats.n_prompt_shared, 900, "{prefill:?}");
        assert!(t_alone >= 4 * 300, "{prefill:?}: without sharing each reads the document ({t_alone})");
        assert!(t_wave <= 302 + 3 * 2, "{prefill:?}: the target read {t_wave} prompt tokens");
        assert!(d_alone >= 4 * 300 && d_wave <= 302 + 3 * 2, "{prefill:?}: the draft model read {d_alone} against {d_wave}");
    }
}

#[test]
fn nothing_is_shared_when_both_caches_are_off() {
    let run = run("model", slots(4, Prefill::Inside { chunk: 7 }, false, 0));
    assert_eq!(run.stats.n_prompt_shared, 0);
    assert_eq!(run.stats.n_prompt_cached, 0);
}
