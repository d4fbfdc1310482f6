#!/usr/bin/env bash
# README command 2: set up on a bare machine and run the whole test suite: formatting and lints,
# the pure core and the binary without llama.cpp, then everything (mock and real models) on the
# optimized build, then the GPU code path: a Vulkan build running the greedy fidelity test on
# Mesa's lavapipe (SPECRUN_SKIP_VULKAN=1 skips it).
source "$(dirname "$0")/common.sh"
ensure_system_packages
ensure_rust_components
ensure_python_tools
fetch_models all
say "formatting (cargo fmt --check)"
cargo fmt --all -- --check
say "lints (cargo clippy -D warnings), with and without the llama.cpp backend"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo clippy --release --locked --workspace --all-targets --no-default-features -- -D warnings
say "API docs (cargo doc, warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --release --locked --no-deps --workspace
say "toolchain floor: the workspace without llama.cpp checks with the rust-version it declares"
msrv="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
rustup toolchain install "$msrv" --profile minimal >/dev/null
cargo +"$msrv" check --locked --workspace --all-targets --no-default-features
say "pure core and mock backend, without llama.cpp"
cargo test --release --locked --workspace --no-default-features
say "full suite, with the tests that need models or the openai client (ignored by a plain cargo test)"
cargo test --release --locked --workspace "$@" -- --include-ignored
if [ "${SPECRUN_SKIP_VULKAN:-0}" = 1 ]; then
    say "skipping the Vulkan check (SPECRUN_SKIP_VULKAN=1)"
else
    say "GPU code path: the Vulkan build, greedy fidelity with every layer on lavapipe"
    bash scripts/build-vulkan.sh check
fi
