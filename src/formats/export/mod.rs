//! Bench exports, one file per format (as hyperfine's `src/export/`): each turns the same
//! `[BenchResult]` into text. Writing the text (a file, or stdout for `-`) is the command's job.

mod csv;
mod json;
mod markdown;
mod svg;
mod table;

pub use csv::csv;
pub use json::{json, parse as parse_json};
pub use markdown::{markdown, markdown_prompts};
pub use svg::svg_plot;
pub use table::{prompt_table, table};
