//! Bench results as CSV with a header line (`--export-csv`).

use crate::formats::bench::BenchResult;
use std::fmt::Write as _;

/// CSV with a header line.
pub fn csv(results: &[BenchResult]) -> String {
    let mut out = String::from(
        "pair,drafter,adaptive,draft_max,temp,parallel,repeats,spec_tok_s,base_tok_s,speedup,speedup_min,speedup_max,acceptance_rate,alpha,tokens_per_round,cost_ratio,verify_cost_ratio,predicted_speedup_ideal,predicted_speedup,planned_speedup,plan_tokens_ratio,plan_time_ratio,acceptance_by_position,placement\n",
    );
    for r in results {
        let by_pos: Vec<String> = r.acceptance_by_position.iter().map(|a| format!("{a:.4}")).collect();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{}",
            r.config.pair,
            r.config.drafter,
            r.config.adaptive,
            r.config.draft_max,
            r.config.temp,
            r.config.parallel,
            r.repeats,
            r.rates.spec_tok_s,
            r.rates.base_tok_s,
            r.rates.speedup,
            r.rates.speedup_min,
            r.rates.speedup_max,
            r.acceptance_rate,
            r.alpha,
            r.tokens_per_round,
            r.cost_ratio,
            r.verify_cost_ratio,
            r.predicted_speedup_ideal,
            r.predicted_speedup,
            r.planned_speedup,
            r.plan_tokens_ratio,
            r.plan_time_ratio,
            by_pos.join(" "),
            r.placement.as_ref().map_or(String::new(), |p| {
                let text = match &p.draft {
                    Some(d) => format!("target: {}; draft: {}", p.target.summary, d.summary),
                    None => format!("target: {}", p.target.summary),
                };
                format!("\"{}\"", text.replace('"', "\"\""))
            })
        );
    }
    out
}
