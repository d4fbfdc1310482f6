//! `models.toml`: named models and draft/target pairs.
//!
//! Parsing is strict (`deny_unknown_fields`); every error names the file, the line and the key.
//! Model paths are relative to the models cache unless absolute. A pair's generation settings
//! become [`Overrides`] located in the file; merging them with flags and records happens in
//! [`crate::settings`] (one settings path).
//!
//! Which file is read ([`locate`]): `--config`, then `$SPECRUN_CONFIG`, `./models.toml`, the
//! user's config directory (`~/.config/specrun/models.toml` on Linux), and finally the defaults
//! compiled into the binary ([`BUILTIN`], this repository's `models.toml`).

use crate::formats::bench::BenchResult;
use crate::io::{read_text, ReadError};
use crate::settings::{Origin, Overrides, Setting};
use serde::Deserialize;
use specrun_core::control::AdaptiveMode;
use specrun_core::draft::DrafterKind;
use specrun_core::verify::VerifyMode;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;
use toml::Spanned;

/// The models file shipped with specrun, compiled in: used when no file is found.
pub const BUILTIN: &str = include_str!("../../models.toml");
/// The name [`BUILTIN`] is reported under.
pub const BUILTIN_NAME: &str = "<built-in models.toml>";
/// A models file larger than this is refused (the shipped one is under 2 KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A model entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// GGUF file, relative to the models cache or absolute.
    pub path: PathBuf,
    /// Layers offloaded to the GPU (default 0).
    pub n_gpu_layers: Option<Spanned<u32>>,
    /// Context size (default 4096).
    pub n_ctx: Option<Spanned<u32>>,
    /// CPU threads (default: the machine's cores).
    pub threads: Option<Spanned<u32>>,
    /// Largest decode batch (default 512).
    pub n_batch: Option<Spanned<u32>>,
    /// Devices to offload to, by llama.cpp's names (`specrun devices`), or `["none"]`.
    pub devices: Option<Spanned<Vec<String>>>,
    /// Flash attention: "on", "off" or "auto" (default).
    pub flash_attn: Option<Spanned<crate::settings::FlashAttn>>,
    /// KV cache types (default "f16"): f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1.
    pub cache_type_k: Option<Spanned<crate::settings::KvType>>,
    pub cache_type_v: Option<Spanned<crate::settings::KvType>>,
    /// Keep the KV cache on the offload device (default true).
    pub kv_offload: Option<Spanned<bool>>,
    /// One KV buffer for all sequences in flight (default true) or one per sequence.
    pub kv_unified: Option<Spanned<bool>>,
    /// Batch-invariant decoding (default false): a token's logits do not depend on what else
    /// is in the decode. Applies to the target; runs it on the CPU.
    pub deterministic: Option<Spanned<bool>>,
}

/// A draft/target pair with optional generation defaults. Every value keeps its location in
/// the file, so that a bad one is reported there ([`Config::pair_overrides`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairEntry {
    pub draft: Spanned<String>,
    pub target: Spanned<String>,
    pub draft_max: Option<Spanned<usize>>,
    pub draft_p_min: Option<Spanned<f32>>,
    pub max_tokens: Option<Spanned<usize>>,
    pub temp: Option<Spanned<f32>>,
    pub top_k: Option<Spanned<usize>>,
    pub top_p: Option<Spanned<f32>>,
    pub min_p: Option<Spanned<f32>>,
    pub repeat_penalty: Option<Spanned<f32>>,
    pub frequency_penalty: Option<Spanned<f32>>,
    pub presence_penalty: Option<Spanned<f32>>,
    pub seed: Option<Spanned<u64>>,
    /// "rejection" or "match" (used when temp > 0).
    pub verify: Option<Spanned<VerifyMode>>,
    /// "model", "ngram" or "hybrid".
    pub drafter: Option<Spanned<DrafterKind>>,
    /// "fixed", "step" or "auto".
    pub adaptive: Option<Spanned<AdaptiveMode>>,
    pub draft_min: Option<Spanned<usize>>,
    pub ngram_min: Option<Spanned<usize>>,
    pub ngram_max: Option<Spanned<usize>>,
    /// Sequences in flight in `batch` and `serve` (a number or "auto"); `--parallel` wins.
    pub parallel: Option<Spanned<crate::settings::Parallel>>,
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
    #[error(transparent)]
    Read(#[from] ReadError),
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
    /// The text, for locating values.
    pub text: String,
    pub models: ModelsFile,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path, MAX_CONFIG_BYTES)?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The defaults compiled into the binary.
    pub fn builtin() -> Self {
        Self::parse(BUILTIN_NAME, BUILTIN).expect("the shipped models.toml parses")
    }

    /// Where `offset` is, for an [`Origin`].
    fn origin(&self, offset: usize, key: &'static str) -> Origin {
        let (line, column) = line_col(&self.text, offset);
        Origin::File { file: self.file.clone(), line, column, key }
    }

    fn setting<T: Clone>(&self, v: &Option<Spanned<T>>, key: &'static str) -> Option<Setting<T>> {
        v.as_ref().map(|s| Setting::new(s.get_ref().clone(), self.origin(s.span().start, key)))
    }

    /// A pair's generation settings, each located in the file.
    pub fn pair_overrides(&self, pair: &PairEntry) -> Overrides {
        Overrides {
            max_tokens: self.setting(&pair.max_tokens, "max_tokens"),
            draft_max: self.setting(&pair.draft_max, "draft_max"),
            draft_p_min: self.setting(&pair.draft_p_min, "draft_p_min"),
            draft_min: self.setting(&pair.draft_min, "draft_min"),
            drafter: self.setting(&pair.drafter, "drafter"),
            adaptive: self.setting(&pair.adaptive, "adaptive"),
            ngram_min: self.setting(&pair.ngram_min, "ngram_min"),
            ngram_max: self.setting(&pair.ngram_max, "ngram_max"),
            temp: self.setting(&pair.temp, "temp"),
            top_k: self.setting(&pair.top_k, "top_k"),
            top_p: self.setting(&pair.top_p, "top_p"),
            min_p: self.setting(&pair.min_p, "min_p"),
            repeat_penalty: self.setting(&pair.repeat_penalty, "repeat_penalty"),
            frequency_penalty: self.setting(&pair.frequency_penalty, "frequency_penalty"),
            presence_penalty: self.setting(&pair.presence_penalty, "presence_penalty"),
            logit_bias: None,
            seed: self.setting(&pair.seed, "seed"),
            verify: self.setting(&pair.verify, "verify"),
            no_draft: None,
            ignore_eos: None,
        }
    }

    /// A model's load settings, each located in the file.
    pub fn model_settings(&self, m: &ModelEntry) -> ModelSettings {
        ModelSettings {
            n_gpu_layers: self.setting(&m.n_gpu_layers, "n_gpu_layers"),
            n_ctx: self.setting(&m.n_ctx, "n_ctx"),
            threads: self.setting(&m.threads, "threads"),
            n_batch: self.setting(&m.n_batch, "n_batch"),
            devices: self.setting(&m.devices, "devices"),
            flash_attn: self.setting(&m.flash_attn, "flash_attn"),
            cache_type_k: self.setting(&m.cache_type_k, "cache_type_k"),
            cache_type_v: self.setting(&m.cache_type_v, "cache_type_v"),
            kv_offload: self.setting(&m.kv_offload, "kv_offload"),
            kv_unified: self.setting(&m.kv_unified, "kv_unified"),
            deterministic: self.setting(&m.deterministic, "deterministic"),
        }
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let invalid = |offset: usize, message: String| {
            let (line, column) = line_col(text, offset);
            ConfigError::Invalid { file: file.to_string(), line, column, message }
        };
        let models: ModelsFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            // one line: toml's messages can span several ("duplicate key" quotes both tables)
            let message = e.message().trim().lines().next().unwrap_or("invalid TOML").escape_debug().to_string();
            invalid(offset, message)
        })?;
        for (name, pair) in &models.pairs {
            for (role, model) in [("draft", &pair.draft), ("target", &pair.target)] {
                if !models.models.contains_key(model.get_ref()) {
                    return Err(invalid(
                        model.span().start,
                        format!("pair '{}': {role} '{}' is not a model in [models]", name.escape_debug(), model.get_ref().escape_debug()),
                    ));
                }
            }
        }
        if let Some(d) = &models.default_pair {
            if !models.pairs.contains_key(d) {
                let offset = text.find("default_pair").unwrap_or(0);
                return Err(invalid(offset, format!("default_pair '{}' is not a pair in [pairs]", d.escape_debug())));
            }
        }
        Ok(Self { file: file.to_string(), text: text.to_string(), models })
    }

    pub fn pair(&self, name: &str) -> Result<&PairEntry, ConfigError> {
        self.models.pairs.get(name).ok_or_else(|| ConfigError::UnknownPair {
            file: self.file.clone(),
            name: name.escape_debug().to_string(),
            known: self.models.pairs.keys().map(|k| k.escape_debug().to_string()).collect::<Vec<_>>().join(", "),
        })
    }

    pub fn model(&self, name: &str) -> Result<&ModelEntry, ConfigError> {
        self.models.models.get(name).ok_or_else(|| ConfigError::UnknownModel {
            file: self.file.clone(),
            name: name.escape_debug().to_string(),
            known: self.models.models.keys().map(|k| k.escape_debug().to_string()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// Model load settings one source sets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelSettings {
    pub n_gpu_layers: Option<Setting<u32>>,
    pub n_ctx: Option<Setting<u32>>,
    pub threads: Option<Setting<u32>>,
    pub n_batch: Option<Setting<u32>>,
    pub devices: Option<Setting<Vec<String>>>,
    pub flash_attn: Option<Setting<crate::settings::FlashAttn>>,
    pub cache_type_k: Option<Setting<crate::settings::KvType>>,
    pub cache_type_v: Option<Setting<crate::settings::KvType>>,
    pub kv_offload: Option<Setting<bool>>,
    pub kv_unified: Option<Setting<bool>>,
    pub deterministic: Option<Setting<bool>>,
}

/// Where the models file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file (and the rule that chose it: `--config`, `$SPECRUN_CONFIG`, ...).
    File { path: PathBuf, rule: &'static str },
    /// The defaults compiled into the binary.
    Builtin,
}

/// The places a models file is looked for, in order, given what the caller knows: the
/// `--config` flag, `$SPECRUN_CONFIG`, the working directory and the user's config directory.
/// An explicitly named file (flag or variable) is used even if it does not exist, so that a
/// typo is an error rather than a silent fallback.
pub fn locate(flag: Option<&Path>, env: Option<&Path>, cwd: &Path, user_dir: Option<&Path>) -> ConfigSource {
    if let Some(p) = flag {
        return ConfigSource::File { path: p.to_path_buf(), rule: "--config" };
    }
    if let Some(p) = env.filter(|p| !p.as_os_str().is_empty()) {
        return ConfigSource::File { path: p.to_path_buf(), rule: "$SPECRUN_CONFIG" };
    }
    let here = cwd.join("models.toml");
    if here.is_file() {
        return ConfigSource::File { path: PathBuf::from("models.toml"), rule: "working directory" };
    }
    if let Some(dir) = user_dir {
        let p = dir.join("models.toml");
        if p.is_file() {
            return ConfigSource::File { path: p, rule: "user config directory" };
        }
    }
    ConfigSource::Builtin
}

/// The user's specrun config directory (`~/.config/specrun` on Linux).
pub fn user_config_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "specrun").map(|d| d.config_dir().to_path_buf())
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

/// The best configuration per pair (highest median speed-up; one sequence at a time when the
/// sweep measured that).
pub fn best_per_pair(results: &[BenchResult]) -> Vec<&BenchResult> {
    let mut best: Vec<&BenchResult> = Vec::new();
    let single =
        |r: &&BenchResult| r.config.parallel == 1 || !results.iter().any(|o| o.config.pair == r.config.pair && o.config.parallel == 1);
    for r in results.iter().filter(single) {
        match best.iter_mut().find(|b| b.config.pair == r.config.pair) {
            Some(b) if r.rates.speedup > b.rates.speedup => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    best
}

/// Write the best settings of each pair into a `models.toml` text, keeping its comments and
/// layout. A pair whose best measured speed-up is below 1 gets `adaptive = "auto"`, so that it
/// falls back to plain decoding where speculation does not pay. `note` becomes a comment
/// above the pair (date and machine).
pub fn write_best(models_toml: &str, results: &[BenchResult], note: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = models_toml.parse().map_err(|e: toml_edit::TomlError| e.to_string())?;
    for best in best_per_pair(results) {
        let pairs = doc.get_mut("pairs").and_then(|p| p.as_table_like_mut()).ok_or("no [pairs] table")?;
        let pair = pairs
            .get_mut(&best.config.pair)
            .and_then(|p| p.as_table_like_mut())
            .ok_or_else(|| format!("no pair '{}' in the models file", best.config.pair))?;
        let pays = best.rates.speedup >= 1.0;
        pair.insert("draft_max", toml_edit::value(best.config.draft_max as i64));
        pair.insert("drafter", toml_edit::value(best.config.drafter.clone()));
        pair.insert("adaptive", toml_edit::value(if pays { best.config.adaptive.clone() } else { "auto".to_string() }));
        // with a --parallel sweep: the N of the highest aggregate rate, drafting as chosen above
        let same = |r: &&BenchResult| {
            let (a, b) = (&r.config, &best.config);
            (&a.pair, &a.drafter, &a.adaptive, a.draft_max, a.temp) == (&b.pair, &b.drafter, &b.adaptive, b.draft_max, b.temp)
        };
        let by_n: Vec<&BenchResult> = results.iter().filter(same).collect();
        if by_n.iter().any(|r| r.config.parallel > 1) {
            if let Some(top) = by_n.iter().max_by(|a, b| a.rates.spec_tok_s.total_cmp(&b.rates.spec_tok_s)) {
                pair.insert("parallel", toml_edit::value(top.config.parallel as i64));
            }
        }
        let comment = format!(
            "# tuned by specrun bench ({note}): best {} at {:.2}x target-only{}\n",
            best.config.label(),
            best.rates.speedup,
            if pays { "" } else { "; nothing beat plain decoding, so adaptive = \"auto\" falls back to it" }
        );
        if let Some(t) = doc.get_mut("pairs").and_then(|p| p.get_mut(&best.config.pair)).and_then(|p| p.as_table_mut()) {
            let decor = t.decor_mut();
            let prefix = decor.prefix().and_then(|p| p.as_str()).unwrap_or("").to_string();
            let kept: String = prefix.lines().filter(|l| !l.starts_with("# tuned by specrun bench")).map(|l| format!("{l}\n")).collect();
            decor.set_prefix(format!("{kept}{comment}"));
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::bench::{BenchConfig, RepeatSample};

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
        assert_eq!(c.model_settings(small), ModelSettings::default());
        let big = c.model_settings(c.model("big").unwrap());
        assert_eq!(big.n_ctx.unwrap(), Setting::new(2048, Origin::File { file: "models.toml".into(), line: 10, column: 9, key: "n_ctx" }));
        let p = c.pair("p").unwrap();
        assert_eq!(p.draft.get_ref(), "small");
        let o = c.pair_overrides(p);
        assert_eq!(o.draft_max.unwrap().value, 6);
        let temp = o.temp.unwrap();
        assert_eq!((temp.value, temp.origin.to_string()), (0.8, "models.toml:17:8: temp".to_string()));
        assert_eq!(resolve(&small.path, Path::new("/cache")), PathBuf::from("/cache/small.gguf"));
        assert_eq!(resolve(&c.model("big").unwrap().path, Path::new("/cache")), PathBuf::from("/abs/big.gguf"));
    }

    #[test]
    fn parallel_is_a_number_or_auto_and_bad_values_are_located() {
        use crate::settings::Parallel;
        let at = |v: &str| Config::parse("m.toml", &GOOD.replace("temp = 0.8", &format!("temp = 0.8\nparallel = {v}")));
        let par = |c: Config| c.pair("p").unwrap().parallel.as_ref().map(|p| *p.get_ref());
        assert_eq!(par(at("4").unwrap()), Some(Parallel::N(4)));
        assert_eq!(par(at("\"auto\"").unwrap()), Some(Parallel::Auto));
        assert_eq!(par(Config::parse("m.toml", GOOD).unwrap()), None);
        for bad in ["0", "65", "-1", "\"many\""] {
            let msg = at(bad).unwrap_err().to_string();
            assert!(msg.starts_with("m.toml:18:12: expected a number of sequences in [1, 64] or auto"), "{bad}: {msg}");
        }
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
    fn names_with_control_characters_stay_on_one_line() {
        let text = GOOD.replace("draft = \"small\"", "draft = \"sm\\nall\"");
        let msg = Config::parse("m.toml", &text).unwrap_err().to_string();
        assert_eq!(msg, "m.toml:14:9: pair 'p': draft 'sm\\nall' is not a model in [models]");
    }

    #[test]
    fn a_duplicate_table_is_one_line() {
        let text = format!("{GOOD}\n[pairs.p]\ndraft = \"small\"\ntarget = \"big\"\n");
        let msg = Config::parse("m.toml", &text).unwrap_err().to_string();
        assert!(msg.starts_with("m.toml:") && !msg.contains('\n'), "{msg}");
    }

    #[test]
    fn the_builtin_file_parses_and_names_a_default_pair() {
        let c = Config::builtin();
        let name = c.models.default_pair.clone().unwrap();
        assert!(c.pair(&name).is_ok());
    }

    #[test]
    fn lookup_order_is_flag_env_cwd_user_builtin() {
        let tmp = std::env::temp_dir().join(format!("specrun-locate-{}", std::process::id()));
        let (cwd, user) = (tmp.join("cwd"), tmp.join("user"));
        std::fs::create_dir_all(&cwd).unwrap();
        std::fs::create_dir_all(&user).unwrap();
        let flag = Path::new("/x/flag.toml");
        let env = Path::new("/x/env.toml");
        let file = |path: PathBuf, rule| ConfigSource::File { path, rule };
        assert_eq!(locate(Some(flag), Some(env), &cwd, Some(&user)), file(flag.into(), "--config"));
        assert_eq!(locate(None, Some(env), &cwd, Some(&user)), file(env.into(), "$SPECRUN_CONFIG"));
        assert_eq!(locate(None, Some(Path::new("")), &cwd, Some(&user)), ConfigSource::Builtin);
        std::fs::write(user.join("models.toml"), "").unwrap();
        assert_eq!(locate(None, None, &cwd, Some(&user)), file(user.join("models.toml"), "user config directory"));
        std::fs::write(cwd.join("models.toml"), "").unwrap();
        assert_eq!(locate(None, None, &cwd, Some(&user)), file("models.toml".into(), "working directory"));
        std::fs::remove_dir_all(&tmp).unwrap();
        assert_eq!(locate(None, None, &cwd, None), ConfigSource::Builtin);
    }

    #[test]
    fn unknown_pair_lists_the_known_ones() {
        let c = Config::parse("models.toml", GOOD).unwrap();
        assert_eq!(c.pair("q").unwrap_err().to_string(), "models.toml: no pair named 'q' (known: p)");
    }

    #[test]
    fn write_best_keeps_comments_and_marks_the_pair() {
        let toml = "# top comment\n\n[models.a]\npath = \"a.gguf\" # the file\n\n# the pair\n[pairs.p]\ndraft = \"a\"\ntarget = \"a\"\ndraft_max = 4\n";
        let mk = |k, s: f64| {
            let c =
                BenchConfig { pair: "p".into(), drafter: "ngram".into(), adaptive: "fixed".into(), draft_max: k, temp: 0.0, parallel: 1 };
            let mut r = BenchResult::summarise(c, &[RepeatSample::default()], &[]);
            r.rates.speedup = s;
            r
        };
        let out = write_best(toml, &[mk(2, 1.1), mk(6, 1.4)], "2026-11-26, 2 cores").unwrap();
        assert!(out.starts_with("# top comment\n"), "{out}");
        assert!(out.contains("path = \"a.gguf\" # the file"), "{out}");
        assert!(out.contains("# the pair\n# tuned by specrun bench (2026-11-26, 2 cores): best p ngram fixed K=6 T=0 at 1.40x"), "{out}");
        assert!(out.contains("draft_max = 6"), "{out}");
        assert!(out.contains("drafter = \"ngram\""), "{out}");
        // tuning again replaces the note instead of piling them up
        let again = write_best(&out, &[mk(3, 0.9)], "later").unwrap();
        assert_eq!(again.matches("# tuned by specrun bench").count(), 1, "{again}");
        assert!(again.contains("adaptive = \"auto\""), "{again}");
        assert!(!again.contains("parallel"), "no --parallel sweep, no parallel key: {again}");
        // a --parallel sweep: the drafting of the best N = 1 row, the N of the best aggregate rate
        let mut rows = vec![mk(2, 1.1), mk(6, 1.4)];
        for (n, rate) in [(2, 30.0), (4, 45.0), (8, 41.0)] {
            let mut r = mk(6, 1.0);
            r.config.parallel = n;
            r.rates.spec_tok_s = rate;
            rows.push(r);
        }
        let out = write_best(toml, &rows, "x").unwrap();
        assert!(out.contains("draft_max = 6") && out.contains("parallel = 4"), "{out}");
        let parsed = Config::parse("models.toml", &again).unwrap();
        assert_eq!(parsed.pair("p").unwrap().draft_max.as_ref().map(|s| *s.get_ref()), Some(3));
    }
}
