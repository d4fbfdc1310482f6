//! Backends: implementations of the core's `Model` seam.
//!
//! - [`llama`] — llama.cpp through `llama-cpp-2` (feature `llama`, on by default); the only
//!   module in the workspace that imports `llama_cpp_2`.
//! - [`fit`] — the device-memory estimate checked before offloading (pure arithmetic).
//! - [`mock`] — the deterministic mock from the core (`--mock` on the command line, tests).

pub mod fit;
#[cfg(feature = "llama")]
pub mod llama;

pub use specrun_core::mock;

/// Bytes of memory the system can still give (Linux `MemAvailable`), if known.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The prefix cache's budget in bytes for `--cache-ram MIB`: at most half the memory
/// available now (said in a note when that cuts it).
pub fn prefix_cache_bytes(mib: u64) -> usize {
    let asked = mib.saturating_mul(1 << 20);
    let budget = match mem_available() {
        Some(avail) if asked > avail / 2 => {
            let half = avail / 2;
            if mib > 0 {
                crate::io::note(format!(
                    "note: --cache-ram {mib} MiB: {} MiB of memory is available; the prefix cache keeps at most {} MiB",
                    avail >> 20,
                    half >> 20
                ));
            }
            half
        }
        _ => asked,
    };
    usize::try_from(budget).unwrap_or(usize::MAX)
}
