//! What restoring a cached prefix costs against reading it: for prefixes of 128 to 2,048
//! tokens, the time to prefill them (in `n_batch` chunks), to snapshot the sequence's cells to
//! host memory and to restore them, per token, beside one one-token decode. A measurement for
//! the prefix cache (docs/benchmarks.md#prefix-cache), run by hand:
//!
//! ```sh
//! cargo run --release --example restore_cost -- [--threads N] [--model FILE.gguf]
//! ```

#[path = "support/target.rs"]
mod target;

use specrun::backend::llama::ContextSettings;
use specrun::core::model::{KvCursor, Model};
use std::time::Instant;

fn main() {
    let (file, threads, model) = target::from_args();
    let mut target = model.context(ContextSettings::new(4096, 512, threads, 1)).unwrap();
    let text = "The quick brown fox jumps over the lazy dog while the committee debates the budget. ".repeat(200);
    let all = model.tokenize(&text);
    // one one-token decode, the unit of the cost curve (median of 9, after a warm-up)
    let mut one = Vec::new();
    for i in 0..10 {
        target.truncate(0, 0).unwrap();
        let mut c = KvCursor::new(0);
        c.decode_tail(&mut target, &all[..64], 1).unwrap();
        let t = Instant::now();
        c.decode_tail(&mut target, &all[..65], 1).unwrap();
        if i > 0 {
            one.push(t.elapsed().as_secs_f64());
        }
    }
    one.sort_by(f64::total_cmp);
    let decode = one[one.len() / 2];
    println!("{file}, {threads} threads: one-token decode {:.1} ms", decode * 1e3);
    println!("| prefix tokens | prefill ms/token | snapshot µs/token | restore µs/token | prefill ÷ restore | one-token decode ÷ restore per token | snapshot MiB |");
    println!("|---|---|---|---|---|---|---|");
    for n in [128usize, 512, 1024, 2048] {
        target.truncate(0, 0).unwrap();
        let mut c = KvCursor::new(0);
        let t = Instant::now();
        c.decode_tail(&mut target, &all[..n], 1).unwrap();
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let snap = target.snapshot(0).expect("snapshot");
        let snapshot = t.elapsed().as_secs_f64();
        let mut restores = Vec::new();
        for _ in 0..5 {
            target.truncate(0, 0).unwrap();
            let t = Instant::now();
            target.restore(0, &snap).unwrap();
            restores.push(t.elapsed().as_secs_f64());
        }
        restores.sort_by(f64::total_cmp);
        let restore = restores[restores.len() / 2];
        let per = |s: f64| s / n as f64;
        println!(
            "| {n} | {:.2} | {:.1} | {:.1} | {:.0}× | {:.0}× | {:.1} |",
            per(prefill) * 1e3,
            per(snapshot) * 1e6,
            per(restore) * 1e6,
            prefill / restore,
            decode / per(restore),
            snap.bytes() as f64 / (1 << 20) as f64
        );
    }
}
