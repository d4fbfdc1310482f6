//! Criterion benches of the pure core on a 151,936-token vocabulary (Qwen2.5's): one verified
//! round's CPU work outside the models — warp, verification, bookkeeping —, n-gram lookups,
//! and one shared round's outlook (what the continuous-batching runner adds to a round).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use specrun_core::model::Token;
use specrun_core::sampling::{SamplingParams, Scratch};
use specrun_core::stats::GenStats;
use specrun_core::verify::{verify, RowFn, VerifyMode, VerifyRule};

const N_VOCAB: usize = 151_936;
const K: usize = 4;

fn rows(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| (0..N_VOCAB).map(|_| rng.gen::<f32>() * 20.0 - 10.0).collect()).collect()
}

fn sampling() -> SamplingParams {
    SamplingParams { temp: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.1, repeat_last_n: 64, ..SamplingParams::greedy() }
}

fn bench(c: &mut Criterion) {
    let target = rows(K + 1, 1);
    let draft = rows(K, 2);
    let history: Vec<Token> = (0..500).map(|i| (i * 7919 % N_VOCAB) as Token).collect();
    let mut scratch = Scratch::new();
    let mut rng = ChaCha8Rng::seed_from_u64(3);

    c.bench_function("greedy round K=4 (verify + bookkeeping)", |b| {
        let greedy = SamplingParams::greedy();
        b.iter(|| {
            let mut hist = history.clone();
            let draft_tokens: Vec<Token> = draft.iter().map(|r| scratch.argmax(r, &hist, &greedy)).collect();
            hist.extend(&draft_tokens);
            let v = verify(
                &VerifyRule { mode: VerifyMode::Greedy, seed: 0, params: &greedy },
                &mut RowFn(&|i| &target[i]),
                &hist,
                &draft_tokens,
                &[],
                &mut scratch,
                &mut rng,
            );
            let mut stats = GenStats::default();
            stats.record_round(K, v.n_accepted);
            black_box((v, stats))
        })
    });

    c.bench_function("rejection round K=4 (warp q and p + verify)", |b| {
        let params = sampling();
        b.iter(|| {
            let mut hist = history.clone();
            let mut q = Vec::with_capacity(K);
            let mut draft_tokens = Vec::with_capacity(K);
            for r in &draft {
                let d = scratch.warp(r, &hist, &params);
                let x = d.sample(&mut rng);
                hist.push(x);
                draft_tokens.push(x);
                q.push(d);
            }
            black_box(verify(
                &VerifyRule { mode: VerifyMode::Rejection, seed: 0, params: &params },
                &mut RowFn(&|i| &target[i]),
                &hist,
                &draft_tokens,
                &q,
                &mut scratch,
                &mut rng,
            ))
        })
    });

    c.bench_function("warp one row, temperature only (full vocabulary)", |b| {
        let params = SamplingParams { temp: 0.8, ..SamplingParams::greedy() };
        b.iter(|| black_box(scratch.warp(&target[0], &history, &params)))
    });
}

/// N-gram lookups on a 32k-token context: the hashed index (incremental, one round's worth of
/// new tokens per lookup) against a scan of the whole context.
fn ngram(c: &mut Criterion) {
    use specrun_core::ngram::{lookup, NgramConfig, NgramState};
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // text-like: a Zipf-ish vocabulary of 8,000 tokens, with copied passages
    let mut tokens: Vec<i32> = Vec::with_capacity(65_536);
    while tokens.len() < 65_536 {
        if tokens.len() > 1000 && rng.gen_bool(0.1) {
            let from = rng.gen_range(0..tokens.len() - 200);
            let run: Vec<i32> = tokens[from..from + rng.gen_range(20..200)].to_vec();
            tokens.extend(run);
        } else {
            let r: f64 = rng.gen();
            tokens.push((8000.0 * r * r * r) as i32);
        }
    }
    tokens.truncate(65_536);
    let config = NgramConfig::default();
    c.bench_function("ngram lookup, 32k-64k context, hashed index (per round)", |b| {
        let mut state = NgramState::default();
        let mut n = 32_768;
        let _ = state.plan(&tokens[..n], config);
        b.iter(|| {
            // each round appends a few tokens, as generation does (the rare wrap-around
            // rebuilds the index: amortised over 8,000 rounds)
            n = if n + 4 >= tokens.len() { 32_768 } else { n + 4 };
            black_box(state.plan(&tokens[..n], config))
        })
    });
    c.bench_function("ngram lookup, 32k context, scan (per round)", |b| b.iter(|| black_box(lookup(&tokens[..32_768], config, 8).len())));
}

/// One shared round's outlook at N = 16 as the runner calls it: 16 sequences in flight, 8
/// queued jobs per slot, paces drawn from 32 sequences so far, the decode cost from the run's
/// `VerifyCosts` (a calibrated CPU curve, corrected by 64 measured shapes).
fn outlook(c: &mut Criterion) {
    use specrun_core::control::{CostCurve, VerifyCosts};
    use specrun_core::outlook::{Outlook, Pace};
    use std::sync::Arc;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let pace = |rng: &mut ChaCha8Rng| {
        let k = rng.gen_range(0..=8) as f64;
        Pace { tokens: 1.0 + 0.6 * k, rows: 1.0 + k, draft_secs: 0.0 }
    };
    let in_flight: Vec<(f64, Pace)> = (0..16).map(|i| (8.0 + 4.0 * i as f64, pace(&mut rng))).collect();
    let paces: Vec<Pace> = (0..32).map(|_| pace(&mut rng)).collect();
    let outlook = Outlook { slots: 16, in_flight, queued: vec![64.0; 128], paces };
    // seconds of a decode by rows: llama-bench's steps on 2 cores, 90 ms a token
    let steps = [(1, 1.0), (2, 1.5), (4, 2.7), (8, 6.2), (12, 8.1), (16, 8.4), (32, 16.7)];
    let curve = CostCurve::from_seconds(steps.iter().map(|&(r, c)| (r, 0.09 * c)).collect()).expect("a curve");
    let mut costs = VerifyCosts::with_curve(Arc::new(curve));
    for _ in 0..64 {
        let seqs = rng.gen_range(1..=16);
        let rows = seqs + rng.gen_range(0..=3 * seqs);
        costs.observe_shared(rows, seqs, 0.09 * rows as f64 * rng.gen_range(0.4..0.8));
    }
    c.bench_function("outlook of one shared round, 16 in flight + 128 queued (32 plays)", |b| {
        b.iter(|| black_box(outlook.drafting_pays(&|rows, seqs| costs.estimate_shared(rows, seqs))))
    });
}

criterion_group!(benches, bench, ngram, outlook);
criterion_main!(benches);
