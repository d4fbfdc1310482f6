//! Bench results as pretty-printed JSON (`--export-json`), readable back by `--from-json`.

use crate::formats::bench::BenchResult;

/// The results as a JSON array, one object per configuration.
pub fn json(results: &[BenchResult]) -> Result<String, serde_json::Error> {
    Ok(serde_json::to_string_pretty(results)? + "\n")
}

/// Results saved by [`json`].
pub fn parse(text: &str) -> Result<Vec<BenchResult>, serde_json::Error> {
    serde_json::from_str(text)
}
