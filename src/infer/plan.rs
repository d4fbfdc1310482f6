//! What to load and how to generate, resolved once: the models file (found by
//! [`crate::formats::models_toml::locate`]), the pair or the `-m`/`-md` files, load settings
//! (flags over the models file over built-in defaults) and generation settings through
//! [`crate::settings::resolve`].

use crate::formats::models_toml::{self, Config, ConfigSource, ModelEntry, ModelSettings};
use crate::settings::{self, FlashAttn, KvType, Origin, Overrides, Resolved, Setting, SettingError};
use anyhow::{bail, Result};
use specrun_core::draft::DrafterKind;
use specrun_core::engine::GenConfig;
use specrun_core::ngram::NgramConfig;
use std::path::{Path, PathBuf};

/// Largest context a flag or models file may ask for before the model is even looked at (the
/// model's own trained context and the memory the KV cache needs are checked at load time).
pub const MAX_N_CTX: u32 = 1 << 24;
pub const MAX_N_BATCH: u32 = 1 << 16;
pub const MAX_THREADS: u32 = 1024;
/// llama.cpp raises any smaller context to this; specrun refuses smaller values instead of
/// silently using another size.
pub const MIN_N_CTX: u32 = 256;

/// Which models a command uses, as the command line names them.
#[derive(Debug, Clone, Default)]
pub struct ModelSelection {
    /// `--config`.
    pub config: Option<PathBuf>,
    pub pair: Option<String>,
    /// `-m`: a target file instead of a pair.
    pub model: Option<PathBuf>,
    /// `-md`.
    pub model_draft: Option<PathBuf>,
    /// Where relative model paths point.
    pub models_dir: Option<PathBuf>,
    /// Flags for both models (`-t`, `-c`, `-b`, `-fa`, `--no-kv-offload`) and the target's
    /// own (`-ngl`, `-dev`, `-ctk`, `-ctv`).
    pub flags: ModelSettings,
    /// The draft's own flags (`-ngld`, `-devd`, `-ctkd`, `-ctvd`).
    pub draft_flags: ModelSettings,
    /// Deterministic mock models (tests).
    pub mock: bool,
    /// Test hook: the mock target sleeps this long in every decode.
    pub mock_delay: Option<std::time::Duration>,
}

/// One model to load, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPlan {
    pub name: String,
    pub path: PathBuf,
    pub n_gpu_layers: u32,
    pub n_ctx: u32,
    pub n_batch: u32,
    pub threads: u32,
    /// Sequences the context holds at once (`batch --parallel`), each with `n_ctx` cells.
    pub n_seq: u32,
    /// Where it runs: devices by llama.cpp's name (empty: llama.cpp's choice; `none`: CPU).
    pub devices: Vec<String>,
    pub flash_attn: FlashAttn,
    pub type_k: KvType,
    pub type_v: KvType,
    pub kv_offload: bool,
    /// Sequences in flight share one KV buffer (one ubatch per decode) instead of one stream each.
    pub kv_unified: bool,
    /// Batch-invariant decoding (`--deterministic`): plain CPU weights, flash attention, no
    /// batch-size-dependent kernels.
    pub batch_invariant: bool,
}

impl ModelPlan {
    /// Where the model runs, as fields and as one line.
    pub fn placement_fields(&self) -> crate::formats::report::ModelPlacement {
        crate::formats::report::ModelPlacement {
            devices: self.devices.clone(),
            gpu_layers: self.n_gpu_layers,
            cache_type_k: self.type_k.as_str().to_string(),
            cache_type_v: self.type_v.as_str().to_string(),
            kv_offload: self.kv_offload,
            kv_unified: self.kv_unified,
            flash_attn: self.flash_attn.as_str().to_string(),
            batch_invariant: self.batch_invariant,
            summary: self.placement(),
        }
    }

    /// One line: where the model runs (device, layers, KV types, flash attention).
    pub fn placement(&self) -> String {
        let devices = if self.devices.is_empty() { "default devices".to_string() } else { self.devices.join(",") };
        format!(
            "{devices}, {} GPU layers, KV {}/{}{}{}, flash attention {}{}",
            self.n_gpu_layers,
            self.type_k.as_str(),
            self.type_v.as_str(),
            if self.kv_offload { "" } else { " on the host" },
            if self.kv_unified { "" } else { " per sequence" },
            self.flash_attn.as_str(),
            if self.batch_invariant { ", batch-invariant" } else { "" }
        )
    }
}

/// Everything a generating command needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub target: ModelPlan,
    /// The draft model, when the drafter needs one.
    pub draft: Option<ModelPlan>,
    /// `None`: target-only.
    pub drafter: Option<DrafterKind>,
    pub ngram: NgramConfig,
    pub gen: GenConfig,
    /// The pair's name (`None` with `-m`).
    pub pair: Option<String>,
    /// The sources `gen` was resolved from (the pair, then the flags), so that a batch record
    /// or a request can be layered on top with [`Plan::resolve_with`].
    pub sources: Vec<Overrides>,
    /// The pair's `parallel` (sequences in flight), when it sets one.
    pub parallel: Option<crate::settings::Parallel>,
    /// Test hook, from [`ModelSelection::mock_delay`].
    pub mock_delay: Option<std::time::Duration>,
}

impl Plan {
    /// The settings for one record or request: this plan's sources, then `more`.
    pub fn resolve_with(&self, more: &Overrides) -> Result<Resolved, SettingError> {
        let mut all: Vec<&Overrides> = self.sources.iter().collect();
        all.push(more);
        let mut r = settings::resolve(&all)?;
        r.gen.cost_curve = self.gen.cost_curve.clone();
        Ok(r)
    }
}

/// Sequences in flight for `parallel` (`None`: `default`). With `auto`, the N in
/// {1, 2, 4, 8, 16} (within n_batch) that the calibration says decodes the most tokens per
/// second when every sequence adds one token to a round (N / cost of N sequences, as measured
/// with several sequences when the calibration has them); 4 without a calibration.
pub fn sequences_in_flight(parallel: Option<crate::settings::Parallel>, plan: &Plan, default: usize) -> usize {
    use crate::settings::Parallel;
    match parallel {
        Some(Parallel::N(n)) => n,
        Some(Parallel::Auto) => match &plan.gen.cost_curve {
            Some(curve) => [1usize, 2, 4, 8, 16]
                .into_iter()
                .filter(|&n| n <= plan.target.n_batch as usize)
                .max_by(|&a, &b| (a as f64 / curve.relative_seqs(a)).total_cmp(&(b as f64 / curve.relative_seqs(b))))
                .unwrap_or(1),
            None => {
                crate::io::note("note: --parallel auto: no calibration for this model (`specrun calibrate`); using 4");
                4
            }
        },
        None => default,
    }
}

/// The models file a selection reads, found in the documented order.
pub fn config_source(sel: &ModelSelection) -> ConfigSource {
    let env = std::env::var_os("SPECRUN_CONFIG").map(PathBuf::from);
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    models_toml::locate(sel.config.as_deref(), env.as_deref(), &cwd, models_toml::user_config_dir().as_deref())
}

/// Load the models file a selection reads.
pub fn load_config(sel: &ModelSelection) -> Result<Config> {
    Ok(match config_source(sel) {
        ConfigSource::File { path, .. } => Config::load(&path)?,
        ConfigSource::Builtin => Config::builtin(),
    })
}

fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u32)
}

/// The flag's value, else the file's, else `default`; checked against `[lo, hi]`.
fn pick(flag: &Option<Setting<u32>>, file: &Option<Setting<u32>>, default: u32, lo: u32, hi: u32) -> Result<u32, SettingError> {
    match flag.as_ref().or(file.as_ref()) {
        None => Ok(default),
        Some(s) if (lo..=hi).contains(&s.value) => Ok(s.value),
        Some(s) => Err(SettingError { origin: s.origin.clone(), message: format!("must be in [{lo}, {hi}], got {}", s.value) }),
    }
}

/// The flag's value, else the file's, else `default` (no range: the type checked it).
fn either<T: Clone>(flag: &Option<Setting<T>>, file: &Option<Setting<T>>, default: T) -> T {
    flag.as_ref().or(file.as_ref()).map_or(default, |s| s.value.clone())
}

/// Most devices one model may be split over (llama.cpp's limit).
pub const MAX_DEVICES: usize = 16;

fn model_plan(name: &str, path: &Path, file: &ModelSettings, cache: &Path, sel: &ModelSelection, own: &ModelSettings) -> Result<ModelPlan> {
    let devices = either(&own.devices, &file.devices, Vec::new());
    let origin = own.devices.as_ref().or(file.devices.as_ref()).map(|s| s.origin.clone());
    if devices.len() > MAX_DEVICES || devices.iter().any(|d| d.is_empty() || d.len() > 64 || d.chars().any(char::is_control)) {
        let at = origin.map_or(String::new(), |o| format!("{o}: "));
        bail!("{at}devices must be at most {MAX_DEVICES} names as `specrun devices` prints them (or none)");
    }
    let batch_invariant = either(&own.deterministic, &file.deterministic, false);
    let flash_attn = either(&sel.flags.flash_attn, &file.flash_attn, FlashAttn::Auto);
    if batch_invariant && flash_attn == FlashAttn::Off {
        let at = sel.flags.flash_attn.as_ref().or(file.flash_attn.as_ref()).map_or(String::new(), |s| format!("{}: ", s.origin));
        bail!("{at}flash attention off cannot be batch-invariant (--deterministic needs flash attention on or auto)");
    }
    // flash attention over an f16/f32 cache has batch-shaped paths (tiles of 64 query rows, a
    // single row's cells split over threads); over a quantized cache it has one
    let kv = |flag: &Option<Setting<KvType>>, file: &Option<Setting<KvType>>| -> Result<KvType> {
        let chosen = flag.as_ref().or(file.as_ref());
        match chosen {
            Some(s) if batch_invariant && matches!(s.value, KvType::F16 | KvType::F32) => {
                bail!(
                    "{}: a {} KV cache cannot be batch-invariant (--deterministic uses q8_0; give a quantized type)",
                    s.origin,
                    s.value.as_str()
                )
            }
            Some(s) => Ok(s.value),
            None if batch_invariant => Ok(KvType::Q8_0),
            None => Ok(KvType::F16),
        }
    };
    let (type_k, type_v) = (kv(&own.cache_type_k, &file.cache_type_k)?, kv(&own.cache_type_v, &file.cache_type_v)?);
    // attention sums a query's cells in cell order: in one buffer shared by several sequences a
    // sequence's cells can come out of position order after another's rollback
    let unified = sel.flags.kv_unified.as_ref().or(file.kv_unified.as_ref());
    if let Some(s) = unified.filter(|s| batch_invariant && s.value) {
        bail!("{}: one KV buffer for all sequences cannot be batch-invariant (--deterministic keeps one per sequence)", s.origin);
    }
    let kv_unified = !batch_invariant && unified.is_none_or(|s| s.value);
    let mut n_gpu_layers = pick(&own.n_gpu_layers, &file.n_gpu_layers, 0, 0, 100_000)?;
    if batch_invariant && n_gpu_layers > 0 {
        crate::io::note(format!("note: --deterministic: {name} runs on the CPU (its batch-invariant kernels are the CPU's)"));
        n_gpu_layers = 0;
    }
    Ok(ModelPlan {
        name: name.to_string(),
        path: models_toml::resolve(path, cache),
        n_gpu_layers,
        n_ctx: pick(&sel.flags.n_ctx, &file.n_ctx, 4096, MIN_N_CTX, MAX_N_CTX)?,
        n_batch: pick(&sel.flags.n_batch, &file.n_batch, 512, 1, MAX_N_BATCH)?,
        threads: pick(&sel.flags.threads, &file.threads, default_threads(), 1, MAX_THREADS)?,
        n_seq: 1,
        devices,
        flash_attn: if batch_invariant { FlashAttn::On } else { flash_attn },
        type_k,
        type_v,
        kv_offload: either(&sel.flags.kv_offload, &file.kv_offload, true),
        kv_unified,
        batch_invariant,
    })
}

/// A model path given on the command line, as every CLI reads one: relative to the working
/// directory. Only a bare file name that is not there is looked up in the models cache.
fn flag_path(path: &std::path::Path) -> std::path::PathBuf {
    let bare = path.parent().is_none_or(|d| d.as_os_str().is_empty());
    if path.is_absolute() || (bare && !path.exists()) {
        return path.to_path_buf();
    }
    std::env::current_dir().map_or_else(|_| path.to_path_buf(), |cwd| cwd.join(path))
}

/// Resolve a selection and the flags' generation overrides into a plan.
pub fn plan(sel: &ModelSelection, flags: &Overrides) -> Result<Plan> {
    let cache = sel.models_dir.clone().unwrap_or_else(models_toml::models_cache);
    let (target, draft, pair_name, pair_overrides, parallel) = if let Some(target_path) = &sel.model {
        if sel.pair.is_some() {
            bail!("--pair and -m/--model exclude each other");
        }
        let none = ModelSettings::default();
        let target = model_plan("target", &flag_path(target_path), &none, &cache, sel, &sel.flags)?;
        let draft =
            sel.model_draft.as_ref().map(|p| model_plan("draft", &flag_path(p), &none, &cache, sel, &sel.draft_flags)).transpose()?;
        (target, draft, None, Overrides::default(), None)
    } else {
        if sel.model_draft.is_some() {
            bail!("--model-draft needs -m/--model for the target");
        }
        let config = load_config(sel)?;
        let name = match (&sel.pair, &config.models.default_pair) {
            (Some(p), _) => p.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => bail!("{}: no default_pair; name one with --pair", config.file),
        };
        let pair = config.pair(&name)?;
        let (t, d) = (pair.target.get_ref(), pair.draft.get_ref());
        let entry = |n: &str| -> Result<(&ModelEntry, ModelSettings)> {
            let e = config.model(n)?;
            Ok((e, config.model_settings(e)))
        };
        let (te, ts) = entry(t)?;
        let (de, ds) = entry(d)?;
        let target = model_plan(t, &te.path, &ts, &cache, sel, &sel.flags)?;
        let draft = model_plan(d, &de.path, &ds, &cache, sel, &sel.draft_flags)?;
        (target, Some(draft), Some(name), config.pair_overrides(pair), pair.parallel.as_ref().map(|p| *p.get_ref()))
    };
    let sources = vec![pair_overrides, flags.clone()];
    let resolved = settings::resolve(&sources.iter().collect::<Vec<_>>())?;
    let drafter = resolved.drafter;
    if drafter.is_some_and(DrafterKind::needs_model) && draft.is_none() {
        let origin = flags.drafter.as_ref().map_or(Origin::Default, |s| s.origin.clone());
        bail!(
            "{} {} needs a draft model (-md or a pair); use --draft ngram or --no-draft",
            if origin == Origin::Default { "the default drafter".to_string() } else { origin.to_string() },
            drafter.map_or("", |d| d.as_str())
        );
    }
    let draft = if drafter.is_some_and(DrafterKind::needs_model) { draft } else { None };
    Ok(Plan {
        target,
        draft,
        drafter,
        ngram: resolved.ngram,
        gen: resolved.gen,
        pair: pair_name,
        sources,
        parallel,
        mock_delay: sel.mock_delay,
    })
}

/// Where new prompts are read with several sequences in flight: `--prefill-chunk N` reads at
/// most N prompt tokens a round inside the shared rounds, `auto` as many as fit a round of
/// [`PACED_ROUND_SECS`], 0 reads each prompt alone between rounds.
pub fn prefill(chunk: settings::PrefillChunk) -> specrun_core::batching::Prefill {
    use settings::PrefillChunk;
    use specrun_core::batching::Prefill;
    match chunk {
        PrefillChunk::Tokens(0) => Prefill::Between,
        PrefillChunk::Tokens(chunk) => Prefill::Inside { chunk },
        PrefillChunk::Auto => Prefill::Paced { round_secs: PACED_ROUND_SECS },
    }
}

/// How long a round that reads prompt tokens beside running streams may take with
/// `--prefill-chunk auto`: what a person reading a stream sees as a pause, not a property of
/// the machine (the chunk that fits it is measured).
pub const PACED_ROUND_SECS: f64 = 0.5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_settings_are_bounded_and_named() {
        let sel = ModelSelection {
            model: Some("/t.gguf".into()),
            flags: ModelSettings { n_ctx: Some(Setting::new(64, Origin::Flag("--ctx-size"))), ..Default::default() },
            ..Default::default()
        };
        let e =
            plan(&sel, &Overrides { no_draft: Some(Setting::new(true, Origin::Flag("--no-draft"))), ..Default::default() }).unwrap_err();
        assert_eq!(e.to_string(), format!("--ctx-size must be in [{MIN_N_CTX}, {MAX_N_CTX}], got 64"));
        let sel = ModelSelection {
            model: Some("/t.gguf".into()),
            flags: ModelSettings { threads: Some(Setting::new(0, Origin::Flag("--threads"))), ..Default::default() },
            ..Default::default()
        };
        assert!(plan(&sel, &Overrides::default()).unwrap_err().to_string().starts_with("--threads must be in [1, 1024], got 0"));
    }

    #[test]
    fn a_model_drafter_without_a_draft_model_is_refused() {
        let sel = ModelSelection { model: Some("/t.gguf".into()), ..Default::default() };
        let flags = Overrides { drafter: Some(Setting::new(DrafterKind::Model, Origin::Flag("--draft"))), ..Default::default() };
        assert_eq!(
            plan(&sel, &flags).unwrap_err().to_string(),
            "--draft model needs a draft model (-md or a pair); use --draft ngram or --no-draft"
        );
        let p = plan(&sel, &Overrides { drafter: Some(Setting::new(DrafterKind::Ngram, Origin::Flag("--draft"))), ..Default::default() })
            .unwrap();
        assert_eq!((p.drafter, p.draft), (Some(DrafterKind::Ngram), None));
    }
}
