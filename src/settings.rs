//! One settings path (a base layer: pure data and rules, used by the formats and the
//! inference layer): generation overrides from every source, merged in one function and
//! validated once.
//!
//! A value comes from the built-in defaults, a pair in `models.toml`, a command-line flag or a
//! batch record. Each carries its [`Origin`], so that a bad value is reported where it was
//! written (`models.toml:14:9: top_p must be in (0, 1], got 0`, `--top-p must be …`,
//! `line 4: temperature must be …`). Sources are layered with [`resolve`]: built-in defaults,
//! then the pair, then flags, then a batch record (the most specific wins).

use specrun_core::control::AdaptiveMode;
use specrun_core::draft::DrafterKind;
use specrun_core::engine::GenConfig;
use specrun_core::ngram::NgramConfig;
use specrun_core::sampling::SamplingParams;
use specrun_core::verify::VerifyMode;
use std::fmt;
use thiserror::Error;

/// Upper bounds on numeric settings, so that no value can make a round or a lookup run for
/// ever (the context size bounds generation further at run time).
pub const MAX_DRAFT_MAX: usize = 1024;
pub const MAX_NGRAM: usize = 64;
pub const MAX_TOKENS_LIMIT: usize = 10_000_000;
pub const MAX_TOP_K: usize = 1 << 24;

/// Most sequences in flight (`--parallel`, a pair's `parallel`, the server's slots).
pub const MAX_PARALLEL: usize = 64;

/// Sequences in flight at once: a number, or `auto` (chosen from the calibrated cost curve).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallel {
    N(usize),
    Auto,
}

impl std::str::FromStr for Parallel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Parallel::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PARALLEL).contains(&n) => Ok(Parallel::N(n)),
            _ => Err(format!("expected a number of sequences in [1, {MAX_PARALLEL}] or auto, got {s:?}")),
        }
    }
}

/// `--prefill-chunk`: how many prompt tokens a shared round reads beside the running
/// sequences' rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillChunk {
    /// As many as fit a round of a set time, by the measured cost of prompt rounds.
    Auto,
    /// At most this many a round (0: each prompt read alone, between rounds).
    Tokens(usize),
}

impl std::fmt::Display for PrefillChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Tokens(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for PrefillChunk {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            _ => s.parse().map(Self::Tokens).map_err(|_| format!("expected a number of tokens or auto, got {s:?}")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Parallel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => n.to_string().parse().map_err(serde::de::Error::custom),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Flash attention (`-fa`): llama.cpp decides (`auto`, its default), or forced on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlashAttn {
    #[default]
    Auto,
    On,
    Off,
}

impl FlashAttn {
    pub fn as_str(self) -> &'static str {
        match self {
            FlashAttn::Auto => "auto",
            FlashAttn::On => "on",
            FlashAttn::Off => "off",
        }
    }
}

impl std::str::FromStr for FlashAttn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(FlashAttn::Auto),
            "on" | "enabled" | "1" => Ok(FlashAttn::On),
            "off" | "disabled" | "0" => Ok(FlashAttn::Off),
            _ => Err(format!("expected on, off or auto, got {s:?}")),
        }
    }
}

/// A KV cache element type (`-ctk`, `-ctv`), as llama.cpp spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum KvType {
    #[serde(rename = "f32")]
    F32,
    #[default]
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "bf16")]
    Bf16,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "q4_1")]
    Q4_1,
    #[serde(rename = "iq4_nl")]
    Iq4Nl,
    #[serde(rename = "q5_0")]
    Q5_0,
    #[serde(rename = "q5_1")]
    Q5_1,
}

impl KvType {
    pub const ALL: [KvType; 9] =
        [KvType::F32, KvType::F16, KvType::Bf16, KvType::Q8_0, KvType::Q4_0, KvType::Q4_1, KvType::Iq4Nl, KvType::Q5_0, KvType::Q5_1];

    pub fn as_str(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Bf16 => "bf16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
            KvType::Q4_1 => "q4_1",
            KvType::Iq4Nl => "iq4_nl",
            KvType::Q5_0 => "q5_0",
            KvType::Q5_1 => "q5_1",
        }
    }

    /// Bytes per block and elements per block (ggml's block layouts).
    pub fn block(self) -> (u64, u64) {
        match self {
            KvType::F32 => (4, 1),
            KvType::F16 | KvType::Bf16 => (2, 1),
            KvType::Q8_0 => (34, 32),
            KvType::Q4_0 | KvType::Iq4Nl => (18, 32),
            KvType::Q4_1 => (20, 32),
            KvType::Q5_0 => (22, 32),
            KvType::Q5_1 => (24, 32),
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KvType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("expected a KV cache type ({}), got {s:?}", KvType::ALL.map(KvType::as_str).join(", ")))
    }
}

/// Deserialize through `FromStr`, so that a models file and a flag give the same message.
macro_rules! deserialize_from_str {
    ($t:ty) => {
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
deserialize_from_str!(FlashAttn);
deserialize_from_str!(KvType);

/// Where a value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// specrun's own default.
    Default,
    /// A key in a models file, located.
    File { file: String, line: usize, column: usize, key: &'static str },
    /// A command-line flag, as spelled (`--top-p`).
    Flag(&'static str),
    /// A field of a batch record.
    Record { line: usize, key: &'static str },
    /// A field of a request (the server).
    Request { key: &'static str },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "built-in default"),
            Origin::File { file, line, column, key } => write!(f, "{file}:{line}:{column}: {key}"),
            Origin::Flag(flag) => write!(f, "{flag}"),
            Origin::Record { line, key } => write!(f, "line {line}: {key}"),
            Origin::Request { key } => write!(f, "{key}"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Setting<T> {
    pub fn new(value: T, origin: Origin) -> Self {
        Self { value, origin }
    }
}

/// A bad setting, reported at its origin.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{origin} {message}")]
pub struct SettingError {
    pub origin: Origin,
    pub message: String,
}

/// Generation settings one source sets (every field optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub max_tokens: Option<Setting<usize>>,
    pub draft_max: Option<Setting<usize>>,
    pub draft_p_min: Option<Setting<f32>>,
    pub draft_min: Option<Setting<usize>>,
    pub drafter: Option<Setting<DrafterKind>>,
    pub adaptive: Option<Setting<AdaptiveMode>>,
    pub ngram_min: Option<Setting<usize>>,
    pub ngram_max: Option<Setting<usize>>,
    pub temp: Option<Setting<f32>>,
    pub top_k: Option<Setting<usize>>,
    pub top_p: Option<Setting<f32>>,
    pub min_p: Option<Setting<f32>>,
    pub repeat_penalty: Option<Setting<f32>>,
    pub frequency_penalty: Option<Setting<f32>>,
    pub presence_penalty: Option<Setting<f32>>,
    /// Token id and bias pairs (a flag or request only).
    pub logit_bias: Option<Setting<LogitBias>>,
    pub seed: Option<Setting<u64>>,
    pub verify: Option<Setting<VerifyMode>>,
    /// Plain decoding: no drafter (a flag or request only).
    pub no_draft: Option<Setting<bool>>,
    /// Generate past end-of-generation tokens (a flag or request only).
    pub ignore_eos: Option<Setting<bool>>,
}

/// OpenAI's `logit_bias` / llama.cpp's `--logit-bias`: token ids and the bias added to each.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogitBias(pub Vec<(specrun_core::model::Token, f32)>);

impl fmt::Display for LogitBias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(t, b)| format!("{t}{b:+}")).collect();
        write!(f, "{}", parts.join(","))
    }
}

macro_rules! each_field {
    ($m:ident) => {
        $m!(
            max_tokens,
            draft_max,
            draft_p_min,
            draft_min,
            drafter,
            adaptive,
            ngram_min,
            ngram_max,
            temp,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            frequency_penalty,
            presence_penalty,
            logit_bias,
            seed,
            verify,
            no_draft,
            ignore_eos
        )
    };
}

impl Overrides {
    /// `self` with every value a request set located at `line` of a batch file instead (an
    /// OpenAI batch line's `body`).
    pub fn at_line(mut self, line: usize) -> Overrides {
        macro_rules! relocate {
            ($($f:ident),*) => {$(
                if let Some(s) = &mut self.$f {
                    if let Origin::Request { key } = s.origin {
                        s.origin = Origin::Record { line, key };
                    }
                }
            )*};
        }
        each_field!(relocate);
        self
    }

    /// `self` with every value `later` sets replaced by `later`'s.
    pub fn then(mut self, later: &Overrides) -> Overrides {
        macro_rules! take {
            ($($f:ident),*) => {$(
                if later.$f.is_some() {
                    self.$f = later.$f.clone();
                }
            )*};
        }
        each_field!(take);
        self
    }
}

/// Fully resolved generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub gen: GenConfig,
    /// `None`: plain decoding.
    pub drafter: Option<DrafterKind>,
    pub ngram: NgramConfig,
}

/// The built-in defaults: greedy, hybrid drafting, cost-aware draft length, 128 tokens.
pub fn builtin() -> Resolved {
    Resolved {
        gen: GenConfig { adaptive: AdaptiveMode::Auto, ..GenConfig::default() },
        drafter: Some(DrafterKind::Hybrid),
        ngram: NgramConfig::default(),
    }
}

fn check<T: fmt::Display + Copy>(s: &Option<Setting<T>>, ok: impl Fn(T) -> bool, rule: &str) -> Result<(), SettingError> {
    match s {
        Some(s) if !ok(s.value) => Err(SettingError { origin: s.origin.clone(), message: format!("{rule}, got {}", s.value) }),
        _ => Ok(()),
    }
}

/// Check every value one source sets against its range, naming the source.
pub fn validate(o: &Overrides) -> Result<(), SettingError> {
    check(&o.max_tokens, |v| v <= MAX_TOKENS_LIMIT, &format!("must be at most {MAX_TOKENS_LIMIT}"))?;
    check(&o.draft_max, |v| v <= MAX_DRAFT_MAX, &format!("must be at most {MAX_DRAFT_MAX}"))?;
    check(&o.draft_min, |v| v <= MAX_DRAFT_MAX, &format!("must be at most {MAX_DRAFT_MAX}"))?;
    check(&o.draft_p_min, |v: f32| (0.0..=1.0).contains(&v), "must be in [0, 1]")?;
    check(&o.ngram_min, |v| (1..=MAX_NGRAM).contains(&v), &format!("must be in [1, {MAX_NGRAM}]"))?;
    check(&o.ngram_max, |v| (1..=MAX_NGRAM).contains(&v), &format!("must be in [1, {MAX_NGRAM}]"))?;
    check(&o.temp, |v: f32| v.is_finite() && v >= 0.0, "must be a number >= 0")?;
    check(&o.top_k, |v| v <= MAX_TOP_K, &format!("must be at most {MAX_TOP_K}"))?;
    check(&o.top_p, |v: f32| v > 0.0 && v <= 1.0, "must be in (0, 1]")?;
    check(&o.min_p, |v: f32| (0.0..=1.0).contains(&v), "must be in [0, 1]")?;
    check(&o.repeat_penalty, |v: f32| v.is_finite() && v > 0.0, "must be a number > 0")?;
    check(&o.frequency_penalty, |v: f32| (-2.0..=2.0).contains(&v), "must be in [-2, 2]")?;
    check(&o.presence_penalty, |v: f32| (-2.0..=2.0).contains(&v), "must be in [-2, 2]")?;
    if let Some(s) = &o.logit_bias {
        if let Some((t, b)) = s.value.0.iter().find(|(_, b)| !(-100.0..=100.0).contains(b)) {
            return Err(SettingError { origin: s.origin.clone(), message: format!("must be in [-100, 100], got {b} for token {t}") });
        }
    }
    Ok(())
}

/// Merge the sources in order (later wins) over the built-in defaults and validate once.
pub fn resolve(sources: &[&Overrides]) -> Result<Resolved, SettingError> {
    let mut merged = Overrides::default();
    for s in sources {
        validate(s)?;
        merged = merged.then(s);
    }
    let mut r = builtin();
    let g = &mut r.gen;
    macro_rules! set {
        ($dst:expr, $src:ident) => {
            if let Some(s) = &merged.$src {
                $dst = s.value;
            }
        };
    }
    set!(g.max_tokens, max_tokens);
    set!(g.ignore_eos, ignore_eos);
    set!(g.draft_max, draft_max);
    set!(g.draft_p_min, draft_p_min);
    set!(g.draft_min, draft_min);
    set!(g.adaptive, adaptive);
    set!(g.seed, seed);
    set!(g.verify, verify);
    set!(g.params.temp, temp);
    set!(g.params.top_k, top_k);
    set!(g.params.top_p, top_p);
    set!(g.params.min_p, min_p);
    set!(g.params.repeat_penalty, repeat_penalty);
    set!(g.params.frequency_penalty, frequency_penalty);
    set!(g.params.presence_penalty, presence_penalty);
    if let Some(s) = &merged.logit_bias {
        g.params.logit_bias = s.value.0.clone();
    }
    set!(r.ngram.n_min, ngram_min);
    set!(r.ngram.n_max, ngram_max);
    if let Some(d) = &merged.drafter {
        r.drafter = Some(d.value);
    }
    if merged.no_draft.as_ref().is_some_and(|s| s.value) {
        r.drafter = None;
    }
    if r.ngram.n_min > r.ngram.n_max {
        let origin = merged.ngram_min.as_ref().or(merged.ngram_max.as_ref()).map_or(Origin::Default, |s| s.origin.clone());
        return Err(SettingError {
            origin,
            message: format!("must be <= ngram_max, got ngram_min {} and ngram_max {}", r.ngram.n_min, r.ngram.n_max),
        });
    }
    // the one place the greedy → stochastic verification upgrade happens
    r.gen.verify = effective_verify(&r.gen.params, r.gen.verify);
    Ok(r)
}

/// Greedy verification at temperature 0; otherwise the requested stochastic mode (seeded,
/// whose text a seed reproduces, unless `rejection` or `match` was asked for).
pub fn effective_verify(params: &SamplingParams, asked: VerifyMode) -> VerifyMode {
    match (params.is_greedy(), asked) {
        (true, _) => VerifyMode::Greedy,
        (false, VerifyMode::Greedy) => VerifyMode::Seeded,
        (false, m) => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: &'static str, line: usize) -> Origin {
        Origin::File { file: "models.toml".into(), line, column: 9, key }
    }

    #[test]
    fn later_sources_win_and_defaults_fill_the_rest() {
        let pair = Overrides {
            temp: Some(Setting::new(0.8, file("temp", 3))),
            draft_max: Some(Setting::new(6, file("draft_max", 4))),
            ..Default::default()
        };
        let flags = Overrides { temp: Some(Setting::new(0.2, Origin::Flag("--temp"))), ..Default::default() };
        let record = Overrides { max_tokens: Some(Setting::new(9, Origin::Record { line: 2, key: "max_tokens" })), ..Default::default() };
        let r = resolve(&[&pair, &flags, &record]).unwrap();
        assert_eq!(r.gen.params.temp, 0.2);
        assert_eq!(r.gen.draft_max, 6);
        assert_eq!(r.gen.max_tokens, 9);
        assert_eq!(r.gen.adaptive, AdaptiveMode::Auto);
        assert_eq!(r.drafter, Some(DrafterKind::Hybrid));
        // sampling upgrades greedy verification to seeded sampling, in this one place
        assert_eq!(r.gen.verify, VerifyMode::Seeded);
        let greedy =
            resolve(&[&Overrides { verify: Some(Setting::new(VerifyMode::Match, Origin::Flag("--verify"))), ..Default::default() }])
                .unwrap();
        assert_eq!(greedy.gen.verify, VerifyMode::Greedy);
    }

    #[test]
    fn errors_name_the_source_of_the_bad_value() {
        let pair = Overrides { top_p: Some(Setting::new(0.0, file("top_p", 14))), ..Default::default() };
        assert_eq!(resolve(&[&pair]).unwrap_err().to_string(), "models.toml:14:9: top_p must be in (0, 1], got 0");
        let flags = Overrides { temp: Some(Setting::new(f32::NAN, Origin::Flag("--temp"))), ..Default::default() };
        assert_eq!(resolve(&[&flags]).unwrap_err().to_string(), "--temp must be a number >= 0, got NaN");
        let rec = Overrides { temp: Some(Setting::new(-1.0, Origin::Record { line: 4, key: "temperature" })), ..Default::default() };
        assert_eq!(resolve(&[&rec]).unwrap_err().to_string(), "line 4: temperature must be a number >= 0, got -1");
        let huge = Overrides { ngram_max: Some(Setting::new(usize::MAX, Origin::Flag("--ngram-max"))), ..Default::default() };
        assert!(resolve(&[&huge]).unwrap_err().to_string().starts_with("--ngram-max must be in [1, 64], got 18446744073709551615"));
        let crossed = Overrides { ngram_min: Some(Setting::new(6, Origin::Flag("--ngram-min"))), ..Default::default() };
        assert_eq!(resolve(&[&crossed]).unwrap_err().to_string(), "--ngram-min must be <= ngram_max, got ngram_min 6 and ngram_max 5");
    }

    #[test]
    fn a_bad_value_is_reported_even_when_a_later_source_replaces_it() {
        let pair = Overrides { min_p: Some(Setting::new(2.0, file("min_p", 7))), ..Default::default() };
        let flags = Overrides { min_p: Some(Setting::new(0.1, Origin::Flag("--min-p"))), ..Default::default() };
        assert_eq!(resolve(&[&pair, &flags]).unwrap_err().to_string(), "models.toml:7:9: min_p must be in [0, 1], got 2");
    }

    #[test]
    fn every_field_is_merged() {
        // a field missing from the merge list would silently keep its default
        let all = Overrides {
            max_tokens: Some(Setting::new(7, Origin::Flag("a"))),
            draft_max: Some(Setting::new(9, Origin::Flag("a"))),
            draft_p_min: Some(Setting::new(0.5, Origin::Flag("a"))),
            draft_min: Some(Setting::new(2, Origin::Flag("a"))),
            drafter: Some(Setting::new(DrafterKind::Ngram, Origin::Flag("a"))),
            adaptive: Some(Setting::new(AdaptiveMode::Step, Origin::Flag("a"))),
            ngram_min: Some(Setting::new(2, Origin::Flag("a"))),
            ngram_max: Some(Setting::new(7, Origin::Flag("a"))),
            temp: Some(Setting::new(0.5, Origin::Flag("a"))),
            top_k: Some(Setting::new(5, Origin::Flag("a"))),
            top_p: Some(Setting::new(0.5, Origin::Flag("a"))),
            min_p: Some(Setting::new(0.1, Origin::Flag("a"))),
            repeat_penalty: Some(Setting::new(1.2, Origin::Flag("a"))),
            frequency_penalty: Some(Setting::new(0.3, Origin::Flag("a"))),
            presence_penalty: Some(Setting::new(-0.4, Origin::Flag("a"))),
            logit_bias: Some(Setting::new(LogitBias(vec![(3, -1.5)]), Origin::Flag("a"))),
            seed: Some(Setting::new(11, Origin::Flag("a"))),
            verify: Some(Setting::new(VerifyMode::Match, Origin::Flag("a"))),
            no_draft: Some(Setting::new(false, Origin::Flag("a"))),
            ignore_eos: Some(Setting::new(true, Origin::Flag("a"))),
        };
        assert_eq!(Overrides::default().then(&all), all);
        let r = resolve(&[&Overrides::default(), &all]).unwrap();
        let g = &r.gen;
        assert_eq!((g.max_tokens, g.draft_max, g.draft_p_min, g.draft_min, g.adaptive, g.seed), (7, 9, 0.5, 2, AdaptiveMode::Step, 11));
        assert_eq!((g.params.temp, g.params.top_k, g.params.top_p, g.params.min_p, g.params.repeat_penalty), (0.5, 5, 0.5, 0.1, 1.2));
        assert_eq!((g.verify, r.drafter, r.ngram.n_min, r.ngram.n_max), (VerifyMode::Match, Some(DrafterKind::Ngram), 2, 7));
        assert_eq!((g.params.frequency_penalty, g.params.presence_penalty, g.params.logit_bias.as_slice()), (0.3, -0.4, &[(3, -1.5)][..]));
        assert!(g.ignore_eos);
    }

    #[test]
    fn no_draft_wins_over_a_drafter() {
        let pair = Overrides { drafter: Some(Setting::new(DrafterKind::Model, file("drafter", 2))), ..Default::default() };
        let flags = Overrides { no_draft: Some(Setting::new(true, Origin::Flag("--no-draft"))), ..Default::default() };
        assert_eq!(resolve(&[&pair, &flags]).unwrap().drafter, None);
    }
}
