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
