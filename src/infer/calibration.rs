//! Calibrated cost curves: what a target decode of `b` tokens costs on this machine, stored in
//! the cache and found again by what determines it (model file, threads, batch size, GPU
//! layers, backend, specrun version).
//!
//! `specrun calibrate` measures and stores ([`measure`], [`store`]); every generating command
//! attaches a stored curve that matches its plan ([`attach`]). Without one, `auto` learns costs
//! online from the batch sizes it tries (the cost of that: a few rounds at a length the curve
//! would not have chosen), so calibration is never forced on a first run.

use super::Plan;
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use specrun_core::clock::Clock;
use specrun_core::control::CostCurve;
use specrun_core::model::{KvCursor, Model, Token};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a stored curve is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurveKey {
    /// Model file name, size and modification time (`mock` for the mock backend).
    pub model: String,
    pub threads: u32,
    pub n_batch: u32,
    pub n_gpu_layers: u32,
    /// Backend and build (cargo features).
    pub backend: String,
    pub specrun: String,
    /// Devices, KV cache types and flash attention when not llama.cpp's defaults (empty
    /// otherwise, which keeps the keys of earlier calibrations).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub offload: String,
}

/// A stored calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub key: CurveKey,
    /// Median seconds of a target decode of each measured batch size.
    pub target_secs: Vec<(usize, f64)>,
    /// Median seconds of one draft-model step, when a draft model was measured.
    pub draft_step_secs: Option<f64>,
    /// Median seconds of a target decode of one token for each of `s` sequences (each after
    /// the same context), by `s`; empty in calibrations made before it was measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seq_secs: Vec<(usize, f64)>,
}

impl Calibration {
    pub fn curve(&self) -> Option<CostCurve> {
        CostCurve::from_seconds_with_seqs(self.target_secs.clone(), self.seq_secs.clone())
    }
}

fn backend_name() -> String {
    let mut features = vec!["cpu"];
    if cfg!(feature = "cuda") {
        features.push("cuda");
    }
    if cfg!(feature = "metal") {
        features.push("metal");
    }
    if cfg!(feature = "vulkan") {
        features.push("vulkan");
    }
    format!("llama.cpp {}", features.join("+"))
}

fn file_identity(path: &Path) -> String {
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta.and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    format!("{name} {size} bytes {mtime}")
}

/// The key of a plan's target.
pub fn key(plan: &Plan, mock: bool) -> CurveKey {
    let t = &plan.target;
    CurveKey {
        model: if mock { "mock".to_string() } else { file_identity(&t.path) },
        threads: t.threads,
        n_batch: t.n_batch,
        n_gpu_layers: t.n_gpu_layers,
        backend: if mock { "mock".to_string() } else { backend_name() },
        specrun: env!("CARGO_PKG_VERSION").to_string(),
        offload: {
            let default = t.devices.is_empty()
                && t.flash_attn == crate::settings::FlashAttn::Auto
                && (t.type_k, t.type_v) == (crate::settings::KvType::F16, crate::settings::KvType::F16)
                && t.kv_offload
                && t.kv_unified;
            if default {
                String::new()
            } else {
                t.placement()
            }
        },
    }
}

/// Where calibrations live: `$SPECRUN_CACHE/calibration`, else the user's cache directory.
pub fn dir() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os("SPECRUN_CACHE") {
        return Some(PathBuf::from(c).join("calibration"));
    }
    directories::ProjectDirs::from("", "", "specrun").map(|d| d.cache_dir().join("calibration"))
}

fn file_for(key: &CurveKey) -> Option<PathBuf> {
    let json = serde_json::to_string(key).ok()?;
    let digest = format!("{:x}", Sha256::digest(json.as_bytes()));
    Some(dir()?.join(format!("{}.json", &digest[..16])))
}

/// The stored calibration for `key`, if any (a damaged file counts as none).
pub fn load(key: &CurveKey) -> Option<Calibration> {
    load_checked(key).ok().flatten()
}

/// [`load`], telling "none stored" (`Ok(None)`) from a stored file that cannot be read or
/// is corrupt (the error names the file).
pub fn load_checked(key: &CurveKey) -> Result<Option<Calibration>> {
    let Some(path) = file_for(key) else { return Ok(None) };
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::io::read_text(&path, 1 << 20)?;
    let c: Calibration = serde_json::from_str(&text)
        .with_context(|| format!("{}: the stored calibration is corrupt (run `specrun calibrate` again)", path.display()))?;
    Ok((c.key == *key).then_some(c))
}

/// Whether a calibration could be stored, checked before one is measured (a read-only cache
/// should not be found out after a minute of measuring).
pub fn check_writable() -> Result<()> {
    let dir = dir().context("no cache directory (is $HOME set?)")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create the calibration cache", dir.display()))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("{}: cannot write the calibration cache", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Store a calibration; returns the file.
pub fn store(c: &Calibration) -> Result<PathBuf> {
    let path = file_for(&c.key).context("no cache directory (is $HOME set?)")?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("{}: cannot create", d.display()))?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(c)? + "\n").with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(path)
}

/// Give the plan's generation settings the stored curve that matches it, if any. Returns
/// whether one was found.
pub fn attach(plan: &mut Plan, mock: bool) -> bool {
    match load(&key(plan, mock)).and_then(|c| c.curve()) {
        Some(curve) => {
            plan.gen.cost_curve = Some(Arc::new(curve));
            true
        }
        None => false,
    }
}

/// Batch sizes measured by default: every size up to 10 and dense to 16, sparse beyond, and
/// one row past 16 and past 32, where CPU matrix kernels change path (measured on a 2-core
/// CPU, two calibrations: 17 rows cost 26–29% more than 16, 33 rows 15–21% more than 32 —
/// interpolating from 16 to 20 hid that step, and plans of 16 drafted tokens paid it).
pub fn default_sizes(n_batch: usize) -> Vec<usize> {
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 17, 20, 24, 32, 33, 48, 64].into_iter().filter(|&b| b <= n_batch).collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median seconds of decoding `b` tokens (all rows kept, as a verification does) after a
/// `context`-token prefix, for each size, `repeat` times each, interleaved across sizes so
/// that drift spreads evenly.
pub fn measure(model: &mut dyn Model, clock: &dyn Clock, sizes: &[usize], repeat: usize, context: &[Token]) -> Result<Vec<(usize, f64)>> {
    let mut cursor = KvCursor::new(0);
    model.truncate(0, 0)?;
    cursor.decode_tail(model, context, 0)?;
    let n = context.len();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); sizes.len()];
    // one warm-up pass, then the measured ones
    for pass in 0..=repeat {
        for (i, &b) in sizes.iter().enumerate() {
            // Ctrl-C ends a calibration between decodes: nothing is stored
            if crate::io::interrupted() {
                return Err(crate::infer::Interrupted.into());
            }
            let tokens: Vec<Token> = context.iter().copied().chain(context.iter().copied().cycle().take(b)).collect();
            let t0 = clock.now();
            cursor.decode_tail(model, &tokens, b)?;
            let secs = (clock.now() - t0).as_secs_f64();
            cursor.keep(model, n)?;
            if pass > 0 {
                samples[i].push(secs);
            }
        }
    }
    Ok(sizes.iter().copied().zip(samples.into_iter().map(median)).collect())
}

/// Sequence counts measured by default (a decode of one token for each).
pub fn default_seq_counts(n_batch: usize) -> Vec<usize> {
    [2, 4, 8, 16].into_iter().filter(|&s| s <= n_batch).collect()
}

/// Median seconds of one decode carrying one token for each of `s` sequences (ids `0..s`,
/// each holding the same `context`), for each count, `repeat` times each, interleaved. The
/// model must hold the largest count of sequences.
pub fn measure_seqs(
    model: &mut dyn Model,
    clock: &dyn Clock,
    counts: &[usize],
    repeat: usize,
    context: &[Token],
) -> Result<Vec<(usize, f64)>> {
    let max = counts.iter().copied().max().unwrap_or(0);
    let mut cursors: Vec<KvCursor> = (0..max).map(|i| KvCursor::new(i as i32)).collect();
    for c in &mut cursors {
        model.truncate(c.seq, 0)?;
        c.decode_tail(model, context, 0)?;
    }
    let n = context.len();
    let tokens: Vec<Token> = context.iter().copied().chain(context.first().copied()).collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
    for pass in 0..=repeat {
        for (i, &s) in counts.iter().enumerate() {
            if crate::io::interrupted() {
                return Err(crate::infer::Interrupted.into());
            }
            let parts: Vec<_> = cursors[..s].iter().map(|c| c.part(&tokens, 1)).collect();
            let t0 = clock.now();
            model.decode_parts(&parts)?;
            let secs = (clock.now() - t0).as_secs_f64();
            for c in &mut cursors[..s] {
                c.part_decoded(1);
                c.keep(model, n)?;
            }
            if pass > 0 {
                samples[i].push(secs);
            }
        }
    }
    for c in &mut cursors {
        c.keep(model, 0)?;
    }
    Ok(counts.iter().copied().zip(samples.into_iter().map(median)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use specrun_core::mock::{MockClock, MockModel, MockSpec};

    #[test]
    fn the_mock_curve_is_its_cost_model() {
        let clock = MockClock::new();
        let mut m = MockModel::new(MockSpec::target(1)).with_clock(clock.clone());
        let secs = measure(&mut m, &clock, &[1, 2, 8], 2, &[3, 4, 5, 6]).unwrap();
        // 20 ms a call + 2 ms a token
        assert_eq!(secs, vec![(1, 0.022), (2, 0.024), (8, 0.036)]);
        let curve = CostCurve::from_seconds(secs).unwrap();
        assert!((curve.relative(8) - 36.0 / 22.0).abs() < 1e-9);
    }

    #[test]
    fn sequences_are_measured_in_one_decode_each() {
        let clock = MockClock::new();
        let mut m = MockModel::new(MockSpec::target(1)).with_clock(clock.clone());
        let secs = measure_seqs(&mut m, &clock, &[2, 4], 2, &[3, 4, 5, 6]).unwrap();
        // 20 ms a call + 2 ms a token: the mock charges sequences like rows
        assert_eq!(secs, vec![(2, 0.024), (4, 0.028)]);
        let multi = m.decode_log.iter().filter(|c| c.len() > 1).count();
        assert_eq!(multi, 3 * 2, "one decode per count per pass (warm-up included)");
        assert!(m.decode_log.iter().filter(|c| c.len() > 1).all(|c| c.iter().all(|p| p.1 == 4 && p.2 == 1)));
        for id in 0..4 {
            assert!(m.cached(id).is_empty(), "sequence {id} left cells behind");
        }
    }

    #[test]
    fn default_sizes_respect_n_batch() {
        assert_eq!(default_sizes(4), vec![1, 2, 3, 4]);
        assert_eq!(*default_sizes(512).last().unwrap(), 64);
    }
}
