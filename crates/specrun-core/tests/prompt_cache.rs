//! A slot's prompt cache ([`Slots::prompt_cache`]) on the mock, which checks sequence ids and
//! positions as strictly as llama.cpp and computes logits from the whole cached prefix: every
//! job's output equals reading its prompt whole; a prompt that begins like the sequence before
//! it in a slot (a shared system prompt, a chat's next turn) reads only the rest; a new job
//! goes to the free slot it shares most with; a sequence its caller ended leaves its prompt.

mod util;

use specrun_core::batching::{
    run_continuous, run_continuous_from, BatchEnd, BatchJob, BatchStats, Callbacks, JobSource, NextJob, Prefill, SharedPolicy, Slots,
};
use specrun_core::draft::NgramDrafter;
use specrun_core::draft::{Drafter, ModelDrafter, NoDraft};
use specrun_core::engine::{Engine, GenConfig, Sequence};
use specrun_core::mock::{Behaviour, MockClock, MockModel, MockSpec};
use specrun_core::model::Token;

fn target_spec() -> MockSpec {
    MockSpec { n_seq: 4, n_batch: 64, behaviour: Behaviour::Target { seed: 23, eog_rate: 0.02 }, ..MockSpec::target(23) }
}

fn drafter(kind: &str, spec: &MockSpec, clock: &MockClock) -> Box<dyn Drafter> {
    match kind {
        "none" => Box::new(NoDraft),
        "model" => Box::new(ModelDrafter::new(MockModel::new(MockSpec::draft_of(spec, 0.7, 5)).with_clock(clock.clone()))),
        _ => Box::new(NgramDrafter::default()),
    }
}

fn engine(kind: &str, target: MockSpec) -> (Engine<MockModel, Box<dyn Drafter>>, MockClock) {
    let clock = MockClock::new();
    let model = MockModel::new(target.clone()).with_clock(clock.clone());
    (Engine::new(model, drafter(kind, &target, &clock), GenConfig::default()), clock)
}

/// A system prompt of 24 tokens, then a job's own tokens.
fn with_system(tail: &[Token]) -> Vec<Token> {
    (0..24).map(|j| (j * 3 % 40 + 2) as Token).chain(tail.iter().copied()).collect()
}

/// Nine jobs: a chat's first turn, its second (the first turn's prompt and output, then a new
/// question), the first prompt again word for word, four more with the same system prompt,
/// two without.
fn jobs(first_output: &[Token]) -> Vec<BatchJob<usize>> {
    let mut turn = with_system(&[7, 8, 9]);
    turn.extend_from_slice(first_output);
    turn.extend_from_slice(&[19, 20, 21]);
    let prompts = [
        with_system(&[7, 8, 9]),
        turn,
        with_system(&[7, 8, 9]),
        with_system(&[30, 31]),
        (1..30).collect(),
        with_system(&[12; 9]),
        vec![33, 34],
        with_system(&[5]),
        with_system(&[41, 42, 43, 44]),
    ];
    prompts.into_iter().enumerate().map(|(i, p)| util::mixed_job(i, p, 8 + 3 * i)).collect()
}

/// Every job of `jobs` to the end: generated tokens by tag, the prompt tokens each found kept,
/// the slot each ran in, and the target's cells at the end by slot.
type RunOutcome = (Vec<Vec<Token>>, Vec<usize>, Vec<i32>, Vec<Vec<Token>>, BatchStats);

fn run(kind: &str, jobs: Vec<BatchJob<usize>>, slots: Slots, target: MockSpec) -> RunOutcome {
    let n = jobs.len();
    let (mut engine, clock) = engine(kind, target);
    let (mut out, mut cached, mut ids) = (vec![vec![]; n], vec![0; n], vec![-1; n]);
    let mut stats = BatchStats::default();
    let end = run_continuous(
        &mut engine,
        jobs,
        slots,
        &mut SharedPolicy::default(),
        &clock,
        &mut Callbacks::new(|tag, r: Result<Sequence, _>| {
            let seq = r.expect("job");
            out[tag] = seq.generated().to_vec();
            cached[tag] = seq.stats.n_prompt_cached;
            ids[tag] = seq.id;
        }),
    )
    .map(|o| {
        stats = o.stats;
        o.end
    })
    .unwrap();
    assert_eq!(end, BatchEnd::Done);
    let cells = (0..slots.n_parallel as i32).map(|id| engine.target.cached(id).to_vec()).collect();
    (out, cached, ids, cells, stats)
}

fn first_output(kind: &str) -> Vec<Token> {
    run(kind, jobs(&[]), 1.into(), target_spec()).0[0].clone()
}

#[test]
fn a_prompt_reads_only_what_its_slot_did_not_keep_and_gives_what_reading_it_whole_gives() {
    for kind in ["none", "ngram", "model"] {
        let first = first_output(kind);
        let all = jobs(&first);
        let (alone, uncached, _, _, _) = run(kind, all.clone(), 1.into(), target_spec());
        assert!(uncached.iter().all(|&c| c == 0), "no cache, nothing kept");
        for n_parallel in 1..=3 {
            for prefill in [Prefill::Between, Prefill::Inside { chunk: 5 }] {
                let slots = Slots { n_parallel, prefill, prompt_cache: true, prefix_cache_bytes: 0 };
                let (out, cached, _, cells, stats) = run(kind, all.clone(), slots, target_spec());
                let case = format!("{kind}, {n_parallel} slots, {prefill:?}");
                assert_eq!(out, alone, "{case}");
                assert_eq!(stats.n_prompt_cached, cached.iter().sum::<usize>(), "{case}");
                for (i, job) in all.iter().enumerate() {
                    assert!(cached[i] < job.prompt.len(), "{case}: job {i} read its last prompt token");
                }
                // one slot: each prompt finds what the one before it left
                if n_parallel == 1 {
                    assert!(cached[1] >= all[0].prompt.len() + first.len() - 1, "{case}: the next turn kept {}", cached[1]);
                    assert_eq!(cached[2..], [26, 24, 0, 0, 0, 0, 24], "{case}");
                } else {
                    assert!(stats.n_prompt_cached > 0, "{case}");
                }
                // the finished sequences' cells stay in their slots (nothing else)
                assert!(cells.iter().any(|c| !c.is_empty()), "{case}");
            }
        }
    }
}

/// With two slots free, a job goes to the one that holds its system prompt.
#[test]
fn a_job_goes_to_the_free_slot_that_shares_most_with_its_prompt() {
    struct TwoWaves(Vec<BatchJob<usize>>, usize);
    impl JobSource<usize> for TwoWaves {
        fn next_job(&mut self, idle: bool) -> NextJob<usize> {
            // the second wave only once the first has finished
            if self.1 == 2 && !idle {
                return NextJob::Later;
            }
            if self.1 == self.0.len() {
                return NextJob::Closed;
            }
            self.1 += 1;
            NextJob::Job(self.0[self.1 - 1].clone())
        }
    }
    let a: Vec<Token> = (1..20).collect();
    let b: Vec<Token> = (30..50).collect();
    let with = |p: &[Token], t: Token| p.iter().copied().chain([t, t + 1]).collect::<Vec<_>>();
    let wave = [with(&a, 3), with(&b, 3), with(&b, 9), with(&a, 9)];
    let jobs: Vec<_> = wave.into_iter().enumerate().map(|(i, p)| util::mixed_job(i, p, 6)).collect();
    let spec = target_spec();
    let clock = MockClock::new();
    let draft = ModelDrafter::new(MockModel::new(MockSpec::draft_of(&spec, 0.7, 5)).with_clock(clock.clone()));
    let mut engine = Engine::new(MockModel::new(spec).with_clock(clock.clone()), draft, GenConfig::default());
    let mut ids = vec![-1; 4];
    let mut cached = vec![0; 4];
    run_continuous_from(
        &mut engine,
        &mut TwoWaves(jobs, 0),
        Slots { n_parallel: 2, prefill: Prefill::Between, prompt_cache: true, prefix_cache_bytes: 0 },
        &mut SharedPolicy::default(),
        &clock,
        &mut Callbacks::new(|tag, r: Result<Sequence, _>| {
            let seq = r.expect("job");
            ids[tag] = seq.id;
            cached[tag] = seq.stats.n_prompt_cached;
        }),
    )
    .map(|o| o.end)
    .unwrap();
    assert_eq!(ids, [0, 1, 1, 0], "the second wave went to the slots that hold their prompts");
    assert_eq!(cached, [0, 0, b.len(), a.len()]);
    // each slot's caches were read from position 0 once, by the first wave: the second wave
    // read only its prompts' last tokens, in the target and in the draft model alike
    for log in [&engine.target.decode_log, &engine.drafter.model.decode_log] {
        for id in 0..2 {
            let from_start = log.iter().flatten().filter(|&&(seq, pos, _)| seq == id && pos == 0).count();
            assert_eq!(from_start, 1, "slot {id}: {log:?}");
        }
    }
}

/// A sequence its caller ends (a stop string, a client gone) leaves its prompt's cells in
/// both caches and nothing it generated; one that finished keeps them all for the next prompt.
#[test]
fn a_sequence_the_caller_ended_leaves_only_its_prompt_behind() {
    let jobs: Vec<_> = (0..2).map(|i| util::mixed_job(i, with_system(&[i as Token + 3]), 12)).collect();
    let spec = target_spec();
    let clock = MockClock::new();
    let draft = ModelDrafter::new(MockModel::new(MockSpec::draft_of(&spec, 0.7, 5)).with_clock(clock.clone()));
    let mut engine = Engine::new(MockModel::new(spec).with_clock(clock.clone()), draft, GenConfig::default());
    run_continuous(
        &mut engine,
        jobs,
        Slots { n_parallel: 2, prefill: Prefill::Inside { chunk: 8 }, prompt_cache: true, prefix_cache_bytes: 0 },
        &mut SharedPolicy::default(),
        &clock,
        // job 0's client leaves after its first tokens
        &mut Callbacks::new(|_, r: Result<Sequence, _>| assert!(r.is_ok())).on_tokens(|&tag, seq, _| tag == 0 && seq.stats.n_generated > 0),
    )
    .map(|o| o.end)
    .unwrap();
    let prompt0 = with_system(&[3]);
    assert_eq!(engine.target.cached(0), &prompt0[..], "the ended sequence keeps exactly its prompt's target cells");
    assert!(
        engine.drafter.model.cached(0).len() <= prompt0.len() && prompt0.starts_with(engine.drafter.model.cached(0)),
        "and no generated draft cells"
    );
    assert!(engine.target.cached(1).len() > 25, "the finished one's stay for the next prompt");
    assert!(engine.drafter.model.cached(1).len() > 20);
}

/// A model that refuses to cut a sequence's cells part way reads every prompt whole.
#[test]
fn a_model_that_cannot_cut_cells_part_way_reads_prompts_whole() {
    let mut spec = target_spec();
    spec.refuse_partial_removal = true;
    let first = first_output("none");
    let all = jobs(&first);
    let (alone, _, _, _, _) = run("none", all.clone(), 1.into(), target_spec());
    let (out, cached, _, _, _) =
        run("none", all, Slots { n_parallel: 2, prefill: Prefill::Between, prompt_cache: true, prefix_cache_bytes: 0 }, spec);
    assert_eq!(out, alone);
    assert!(cached.iter().all(|&c| c == 0), "{cached:?}");
}

/// A draft model that cannot cut its cells part way reads the prompt whole; the target still
/// keeps what it shares.
#[test]
fn a_draft_model_that_cannot_cut_cells_part_way_reads_the_prompt_whole() {
    let spec = target_spec();
    let clock = MockClock::new();
    let mut draft_spec = MockSpec::draft_of(&spec, 0.7, 5);
    draft_spec.refuse_partial_removal = true;
    let mut engine = Engine::new(MockModel::new(spec), ModelDrafter::new(MockModel::new(draft_spec)), GenConfig::default());
    let prompt = with_system(&[7, 8, 9]);
    let first = engine.admit(0, prompt.clone(), &clock).expect("admit");
    let kept = first.kept_cells();
    assert!(kept.len() == prompt.len() - 1, "the draft model read the prompt's head");
    let second = engine.admit_after(0, prompt.clone(), engine.config.clone(), Some(&kept), &clock).expect("admit again");
    assert_eq!(second.draft.n_cached, prompt.len() - 1, "read whole again");
    assert_eq!(engine.drafter.model.decode_log.iter().flatten().filter(|&&(_, pos, _)| pos == 0).count(), 2);
    assert_eq!(second.stats.n_prompt_cached, 0, "the target had read nothing of it yet");
}
