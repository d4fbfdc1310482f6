//! Bench results as a GitHub-flavoured Markdown table (`--export-markdown`).

use super::table::{prompt_rows, row, COLUMNS, PROMPT_COLUMNS};
use crate::formats::bench::BenchResult;
use std::fmt::Write as _;

/// A header row, its separator, then the rows.
fn md_table<const N: usize>(header: [&str; N], rows: impl IntoIterator<Item = [String; N]>) -> String {
    let mut out = format!("| {} |\n|{}|\n", header.join(" | "), vec!["---"; N].join("|"));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out
}

/// A GitHub-flavoured Markdown table.
pub fn markdown(results: &[BenchResult]) -> String {
    md_table(COLUMNS, results.iter().map(row))
}

/// Each prompt's own result as a Markdown table (`--per-prompt`).
pub fn markdown_prompts(results: &[BenchResult]) -> String {
    md_table(PROMPT_COLUMNS, prompt_rows(results))
}
