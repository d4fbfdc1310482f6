//! Bench results as a GitHub-flavoured Markdown table (`--export-markdown`).

use super::table::{prompt_rows, row, COLUMNS, PROMPT_COLUMNS};
use crate::formats::bench::BenchResult;
use std::fmt::Write as _;

/// A GitHub-flavoured Markdown table.
pub fn markdown(results: &[BenchResult]) -> String {
    let mut out = format!("| {} |\n|{}|\n", COLUMNS.join(" | "), vec!["---"; COLUMNS.len()].join("|"));
    for r in results {
        let _ = writeln!(out, "| {} |", row(r).join(" | "));
    }
    out
}

/// Each prompt's own result as a Markdown table (`--per-prompt`).
pub fn markdown_prompts(results: &[BenchResult]) -> String {
    let mut out = format!("| {} |\n|{}|\n", PROMPT_COLUMNS.join(" | "), vec!["---"; PROMPT_COLUMNS.len()].join("|"));
    for r in prompt_rows(results) {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out
}
