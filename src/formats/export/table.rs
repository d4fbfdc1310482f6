//! The plain-text table `bench` prints, and the columns the Markdown export shares.

use crate::formats::bench::BenchResult;
use std::fmt::Write as _;

pub(super) const COLUMNS: [&str; 16] = [
    "pair",
    "drafter",
    "adaptive",
    "K",
    "temp",
    "N",
    "tok/s",
    "base tok/s",
    "speed-up",
    "min-max",
    "acceptance",
    "tokens/round",
    "c",
    "verify cost",
    "predicted (ideal / measured verify)",
    "planned (tokens / time realised)",
];

pub(super) fn row(r: &BenchResult) -> [String; 16] {
    // with several sequences a decode is shared: per-round cost ratios do not apply
    let shared = r.config.parallel > 1;
    let per_round = |s: String| if shared { "-".to_string() } else { s };
    [
        r.config.pair.clone(),
        r.config.drafter.clone(),
        r.config.adaptive.clone(),
        r.config.draft_max.to_string(),
        format!("{}", r.config.temp),
        r.config.parallel.to_string(),
        format!("{:.2}", r.rates.spec_tok_s),
        format!("{:.2}", r.rates.base_tok_s),
        format!("{:.2}x", r.rates.speedup),
        format!("{:.2}-{:.2}", r.rates.speedup_min, r.rates.speedup_max),
        format!("{:.1}% (α {:.2})", 100.0 * r.acceptance_rate, r.alpha),
        format!("{:.2}", r.tokens_per_round),
        per_round(format!("{:.2}", r.cost_ratio)),
        per_round(format!("{:.2}", r.verify_cost_ratio)),
        per_round(format!("{:.2}x / {:.2}x", r.predicted_speedup_ideal, r.predicted_speedup)),
        if r.planned_speedup > 0.0 {
            format!("{:.2}x ({:.2} / {:.2})", r.planned_speedup, r.plan_tokens_ratio, r.plan_time_ratio)
        } else {
            "-".to_string()
        },
    ]
}

pub(super) const PROMPT_COLUMNS: [&str; 7] =
    ["configuration", "prompt", "tok/s", "base tok/s", "speed-up", "min-max", "acceptance / tokens per round"];

/// One row per prompt of every configuration that measured its prompts one at a time.
pub(super) fn prompt_rows(results: &[BenchResult]) -> Vec<[String; 7]> {
    results
        .iter()
        .flat_map(|r| {
            r.prompts.iter().map(|p| {
                [
                    r.config.label(),
                    p.id.clone(),
                    format!("{:.2}", p.rates.spec_tok_s),
                    format!("{:.2}", p.rates.base_tok_s),
                    format!("{:.2}x", p.rates.speedup),
                    format!("{:.2}-{:.2}", p.rates.speedup_min, p.rates.speedup_max),
                    format!("{:.1}% / {:.2}", 100.0 * p.acceptance_rate, p.tokens_per_round),
                ]
            })
        })
        .collect()
}

/// Aligned columns: a header, then the rows.
fn aligned<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let widths: Vec<usize> =
        (0..N).map(|i| rows.iter().map(|r| r[i].chars().count()).chain([header[i].chars().count()]).max().unwrap_or(0)).collect();
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// An aligned plain-text table for the terminal.
pub fn table(results: &[BenchResult]) -> String {
    aligned(COLUMNS, &results.iter().map(row).collect::<Vec<_>>())
}

/// Each prompt's own result, aligned for the terminal (`--per-prompt`).
pub fn prompt_table(results: &[BenchResult]) -> String {
    aligned(PROMPT_COLUMNS, &prompt_rows(results))
}
