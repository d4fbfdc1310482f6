//! What a row's logits cost in a target decode: rows decoded after a 400-token context with
//! logits kept for every row and for the last row only (llama.cpp skips the output layer for
//! rows without an output), interleaved, medians of 12 after two warm-ups. A measurement for
//! the rows a grammar decides (docs/benchmarks.md#structured-output), run by hand:
//!
//! ```sh
//! cargo run --release --example row_logits_cost -- [--threads N] [--model FILE.gguf]
//! ```

#[path = "support/target.rs"]
mod target;

use specrun::backend::llama::ContextSettings;
use specrun::core::model::Model;
use std::time::Instant;

fn main() {
    let (file, threads, model) = target::from_args();
    let mut target = model.context(ContextSettings::new(4096, 512, threads, 1)).unwrap();
    let text = "The quick brown fox jumps over the lazy dog while the committee debates the budget. ".repeat(30);
    let all = model.tokenize(&text);
    let context = 400;
    target.decode(0, 0, &all[..context], context - 1).unwrap();
    println!("{file}, {threads} threads, {context}-token context");
    println!("| rows | every row's logits, ms | the last row's only, ms | per row left unread, ms |");
    println!("|---|---|---|---|");
    for rows in [1usize, 2, 4, 8, 12, 16] {
        let (mut every, mut last) = (Vec::new(), Vec::new());
        for i in 0..14 {
            for keep_every in [true, false] {
                target.truncate(0, context).unwrap();
                let t = Instant::now();
                target.decode(0, context, &all[context..context + rows], if keep_every { 0 } else { rows - 1 }).unwrap();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                if i >= 2 {
                    if keep_every {
                        every.push(ms)
                    } else {
                        last.push(ms)
                    }
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (e, l) = (median(&mut every), median(&mut last));
        let per_row = if rows > 1 { format!("{:.1}", (e - l) / (rows - 1) as f64) } else { "—".into() };
        println!("| {rows} | {e:.1} | {l:.1} | {per_row} |");
    }
}
