//! The binary's tests on the mock backend (no model files): one test binary for every
//! command's behaviour, bad input, exports, the README's claims and the tree's layering, so
//! that llama.cpp is linked once for all of them. The server's tests, the real-model tests and
//! `--deterministic` (which needs a process of its own) are test binaries of their own.

mod batch;
mod bench;
mod commands;
mod constraints;
mod fuzz_parsers;
mod hostile;
mod layers;
mod readme;
mod setup_scripts;
