//! Test support for the real-model tests (tests/real_models.rs, tests/deterministic.rs): where
//! the models are, and one token's logits decoded alone or as the last of a batch.
#![allow(dead_code)]

use specrun::backend::llama::LlamaRunner;
use specrun::core::model::{KvCursor, Model, Token};
use std::path::PathBuf;

/// A model in the cache; a missing one fails the test, which is `#[ignore]`d as needing
/// models (`scripts/test.sh` fetches them and runs ignored tests too).
pub fn model_path(file: &str) -> PathBuf {
    let p = specrun::formats::models_toml::models_cache().join(file);
    assert!(p.is_file(), "model {} is missing: run scripts/fetch_models.py all", p.display());
    p
}

/// Fail unless every model in `files` is in the cache (tests that run them through the CLI).
pub fn require_models(files: &[&str]) {
    for f in files {
        model_path(f);
    }
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
