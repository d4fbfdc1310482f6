//! Test support for the real-model tests (tests/real_models.rs, tests/deterministic.rs): where
//! the models are, and one token's logits decoded alone or as the last of a batch.
#![allow(dead_code)]

use specrun::backend::llama::LlamaRunner;
use specrun::core::model::{KvCursor, Model, Token};
use std::path::PathBuf;

/// A model in the cache. Missing: `None` and a note, unless `SPECRUN_REQUIRE_MODELS=1` (set by
/// `scripts/test.sh` and CI), which makes it a failure.
pub fn model_path(file: &str) -> Option<PathBuf> {
    let p = specrun::formats::models_toml::models_cache().join(file);
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("SPECRUN_REQUIRE_MODELS").as_deref() == Ok("1") {
        panic!("model {} is missing: run scripts/fetch_models.py all", p.display());
    }
    eprintln!("skipping: model {} is missing (run scripts/fetch_models.py all)", p.display());
    None
}

/// The last logits row after `tokens`, its last `tail` tokens decoded in one batch
/// (`batched`) or one at a time.
pub fn last_row(target: &mut LlamaRunner<'_>, tokens: &[Token], tail: usize, batched: bool) -> Vec<f32> {
    target.truncate(0, 0).unwrap();
    let mut cursor = KvCursor::new(0);
    let head = tokens.len() - tail;
    cursor.decode_tail(target, &tokens[..head], 0).unwrap();
    if batched {
        cursor.decode_tail(target, tokens, 1).unwrap();
    } else {
        for end in head + 1..=tokens.len() {
            cursor.decode_tail(target, &tokens[..end], 1).unwrap();
        }
    }
    target.logits(0).to_vec()
}
