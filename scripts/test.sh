#!/usr/bin/env bash
# README command 2: set up on a bare machine and run the whole test suite: the pure core without
# llama.cpp, then everything (mock and real models) on the optimized build.
source "$(dirname "$0")/common.sh"
ensure_system_packages
fetch_models all
say "pure core, without the llama.cpp backend"
cargo test --release --locked --no-default-features
say "full suite, real models required"
SPECRUN_REQUIRE_MODELS=1 cargo test --release --locked "$@"
