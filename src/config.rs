//! `models.toml`: named models and draft/target pairs.
//!
//! Parsing is strict (`deny_unknown_fields`); every error names the file, the line and the key.
//! Model paths are relative to the models cache unless absolute. Command-line flags override
//! what a pair sets (that merging lives in `crate::app`).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;
use toml::Spanned;

/// A model entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// GGUF file, relative to the models cache or absolute.
    pub path: PathBuf,
    #[serde(default)]
    pub n_gpu_layers: u32,
    #[serde(default = "default_n_ctx")]
    pub n_ctx: u32,
    /// CPU threads (default: the machine's cores).
    pub threads: Option<u32>,
    /// Largest decode batch (default 512).
    pub n_batch: Option<u32>,
}

fn default_n_ctx() -> u32 {
    4096
}

/// A draft/target pair with optional generation defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairEntry {
    pub draft: Spanned<String>,
    pub target: Spanned<String>,
    #[serde(default = "default_draft_max")]
    pub draft_max: usize,
    pub draft_p_min: Option<f32>,
    pub max_tokens: Option<usize>,
    pub temp: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<u64>,
    /// "rejection" or "match" (used when temp > 0).
    pub verify: Option<crate::verify::VerifyMode>,
    /// "model", "ngram" or "hybrid".
    pub drafter: Option<crate::cli::DrafterKind>,
    /// "fixed", "step" or "auto".
    pub adaptive: Option<crate::control::AdaptiveMode>,
    pub draft_min: Option<usize>,
    pub ngram_min: Option<usize>,
    pub ngram_max: Option<usize>,
}

fn default_draft_max() -> usize {
    4
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsFile {
    /// The pair `specrun run` uses when none is named.
    pub default_pair: Option<String>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelEntry>,
    #[serde(default)]
    pub pairs: BTreeMap<String, PairEntry>,
}

/// A `models.toml` error, located.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid { file: String, line: usize, column: usize, message: String },
    #[error("{file}: no pair named '{name}' (known: {known})")]
    UnknownPair { file: String, name: String, known: String },
    #[error("{file}: no model named '{name}' (known: {known})")]
    UnknownModel { file: String, name: String, known: String },
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

/// A loaded and checked `models.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: String,
    pub models: ModelsFile,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read { file: file.clone(), reason: e.to_string() })?;
        Self::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let invalid = |offset: usize, message: String| {
            let (line, column) = line_col(text, offset);
            ConfigError::Invalid { file: file.to_string(), line, column, message }
        };
        let models: ModelsFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            invalid(offset, e.message().trim().to_string())
        })?;
        for (name, pair) in &models.pairs {
            for (role, model) in [("draft", &pair.draft), ("target", &pair.target)] {
                if !models.models.contains_key(model.get_ref()) {
                    return Err(invalid(
                        model.span().start,
                        format!("pair '{name}': {role} '{}' is not a model in [models]", model.get_ref()),
                    ));
                }
            }
        }
        if let Some(d) = &models.default_pair {
            if !models.pairs.contains_key(d) {
                let offset = text.find("default_pair").unwrap_or(0);
                return Err(invalid(offset, format!("default_pair '{d}' is not a pair in [pairs]")));
            }
        }
        Ok(Self { file: file.to_string(), models })
    }

    pub fn pair(&self, name: &str) -> Result<&PairEntry, ConfigError> {
        self.models.pairs.get(name).ok_or_else(|| ConfigError::UnknownPair {
            file: self.file.clone(),
            name: name.to_string(),
            known: self.models.pairs.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    pub fn model(&self, name: &str) -> Result<&ModelEntry, ConfigError> {
        self.models.models.get(name).ok_or_else(|| ConfigError::UnknownModel {
            file: self.file.clone(),
            name: name.to_string(),
            known: self.models.models.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

/// The models cache: `$SPECRUN_MODELS`, else `$XDG_CACHE_HOME/specrun/models`, else
/// `~/.cache/specrun/models` (the same rule as `scripts/fetch_models.py`).
pub fn models_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("SPECRUN_MODELS") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("specrun").join("models")
}

/// Resolve a model path against the cache.
pub fn resolve(path: &Path, cache: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        cache.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
default_pair = "p"

[models.small]
path = "small.gguf"

[models.big]
path = "/abs/big.gguf"
n_gpu_layers = 99
n_ctx = 2048
threads = 2

[pairs.p]
draft = "small"
target = "big"
draft_max = 6
temp = 0.8
"#;

    #[test]
    fn parses_models_and_pairs_with_defaults() {
        let c = Config::parse("models.toml", GOOD).unwrap();
        let small = c.model("small").unwrap();
        assert_eq!(small.n_ctx, 4096);
        assert_eq!(small.n_gpu_layers, 0);
        let p = c.pair("p").unwrap();
        assert_eq!(p.draft.get_ref(), "small");
        assert_eq!(p.draft_max, 6);
        assert_eq!(p.temp, Some(0.8));
        assert_eq!(resolve(&small.path, Path::new("/cache")), PathBuf::from("/cache/small.gguf"));
        assert_eq!(resolve(&c.model("big").unwrap().path, Path::new("/cache")), PathBuf::from("/abs/big.gguf"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("threads = 2", "threads = 2\nthread = 3");
        let e = Config::parse("models.toml", &text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("models.toml:12:1: unknown field `thread`"), "{msg}");
    }

    #[test]
    fn wrong_type_and_dangling_model_are_located() {
        let text = GOOD.replace("n_ctx = 2048", "n_ctx = \"big\"");
        let msg = Config::parse("m.toml", &text).unwrap_err().to_string();
        assert!(msg.starts_with("m.toml:10:9: invalid type"), "{msg}");
        let text = GOOD.replace("draft = \"small\"", "draft = \"tiny\"");
        let msg = Config::parse("m.toml", &text).unwrap_err().to_string();
        assert_eq!(msg, "m.toml:14:9: pair 'p': draft 'tiny' is not a model in [models]");
    }

    #[test]
    fn unknown_pair_lists_the_known_ones() {
        let c = Config::parse("models.toml", GOOD).unwrap();
        assert_eq!(c.pair("q").unwrap_err().to_string(), "models.toml: no pair named 'q' (known: p)");
    }
}
