//! Embedding the core: a target model behind the `Model` seam (here the deterministic mock),
//! a draft model, one prompt generated speculatively and checked against target-only
//! decoding, then several prompts through continuous batching with a run sink.
//!
//! `cargo run -p specrun-core --example embed --features mock`

use specrun_core::batching::{run_continuous, BatchJob, Callbacks, SharedPolicy};
use specrun_core::control::AdaptiveMode;
use specrun_core::draft::{ModelDrafter, NoDraft};
use specrun_core::engine::{Engine, GenConfig};
use specrun_core::mock::{MockClock, MockModel, MockSpec};
use specrun_core::model::Token;

fn main() {
    let clock = MockClock::new();
    let target_spec = MockSpec { n_seq: 4, ..MockSpec::target(7) };
    // a draft model that agrees with the target 80% of the time
    let draft_spec = MockSpec::draft_of(&target_spec, 0.8, 1);
    let config = GenConfig { max_tokens: 48, draft_max: 6, adaptive: AdaptiveMode::Auto, ..GenConfig::default() };
    let prompt: Vec<Token> = vec![1, 2, 3, 4, 5];

    // one prompt, speculatively
    let target = MockModel::new(target_spec.clone()).with_clock(clock.clone());
    let drafter = ModelDrafter::new(MockModel::new(draft_spec.clone()).with_clock(clock.clone()));
    let mut engine = Engine::new(target, drafter, config.clone());
    let mut seq = engine.start(0, prompt.clone(), &clock).expect("the prompt fits");
    engine.generate(&mut seq, &clock, |_| {}).expect("the mock does not fail");
    let s = &seq.stats;
    println!("speculative: {} tokens in {} rounds, {}/{} drafted tokens accepted", s.n_generated, s.n_rounds, s.n_accepted, s.n_drafted);

    // the same prompt, target only: the greedy output is the same
    let mut plain = Engine::new(MockModel::new(target_spec.clone()).with_clock(clock.clone()), NoDraft, config.clone());
    let mut alone = plain.start(0, prompt.clone(), &clock).expect("the prompt fits");
    plain.generate(&mut alone, &clock, |_| {}).expect("the mock does not fail");
    assert_eq!(seq.generated(), alone.generated(), "speculation changed the output");
    println!("target only: the same {} tokens", alone.generated().len());

    // eight prompts on four slots, one target decode per round for all in flight
    let jobs = (0..8).map(|i| BatchJob { tag: i, config: config.clone(), prompt: vec![1, 2, 3, i as Token + 10] });
    let mut outputs = vec![0; 8];
    let mut sink = Callbacks::new(|tag: usize, result| outputs[tag] = result.map(|s| s.generated().len()).unwrap_or(0));
    let mut policy = SharedPolicy::new(None);
    let outcome = run_continuous(&mut engine, jobs, 4, &mut policy, &clock, &mut sink).expect("no shared decode fails");
    drop(sink);
    println!(
        "batched: {:?} tokens per job, {} shared rounds, {:.2} jobs in flight on average",
        outputs,
        outcome.stats.n_rounds,
        outcome.stats.mean_active()
    );
}
