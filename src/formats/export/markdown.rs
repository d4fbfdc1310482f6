//! Bench results as a GitHub-flavoured Markdown table (`--export-markdown`).

use super::table::{row, COLUMNS};
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
