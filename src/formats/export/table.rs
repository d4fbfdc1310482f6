//! The plain-text table `bench` prints, and the columns the Markdown export shares.

use crate::formats::bench::BenchResult;
use std::fmt::Write as _;

pub(super) const COLUMNS: [&str; 15] = [
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
];

pub(super) fn row(r: &BenchResult) -> [String; 15] {
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
        format!("{:.2}", r.spec_tok_s),
        format!("{:.2}", r.base_tok_s),
        format!("{:.2}x", r.speedup),
        format!("{:.2}-{:.2}", r.speedup_min, r.speedup_max),
        format!("{:.1}% (α {:.2})", 100.0 * r.acceptance_rate, r.alpha),
        format!("{:.2}", r.tokens_per_round),
        per_round(format!("{:.2}", r.cost_ratio)),
        per_round(format!("{:.2}", r.verify_cost_ratio)),
        per_round(format!("{:.2}x / {:.2}x", r.predicted_speedup_ideal, r.predicted_speedup)),
    ]
}

/// An aligned plain-text table for the terminal.
pub fn table(results: &[BenchResult]) -> String {
    let rows: Vec<[String; 15]> = results.iter().map(row).collect();
    let widths: Vec<usize> =
        (0..COLUMNS.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).chain([COLUMNS[i].len()]).max().unwrap_or(0)).collect();
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(COLUMNS.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}
