#!/usr/bin/env bash
# README command 2: set up on a bare machine and run the whole test suite: formatting, lints
# and API docs, the toolchain floor (the workspace without llama.cpp), then every test (mock backend,
# real models, the openai client) on the optimized build, and last the GPU code path: the
# greedy fidelity test with every layer on Mesa's lavapipe, a software Vulkan device.
#
# llama.cpp is compiled once, with its Vulkan backend (minutes; the longest step of a cold
# run). The CPU suite runs on that build unchanged: ggml-vulkan skips lavapipe, a CPU-type
# device, unless it is named, so every test but the last sees the CPU alone — as a CPU build
# does. SPECRUN_SKIP_VULKAN=1 builds llama.cpp for the CPU instead and skips the last step.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/vulkan.sh"
ensure_system_packages
ensure_rust_components
ensure_python_tools
fetch_models all
fetch_llama_grammars
features=()
if [ "${SPECRUN_SKIP_VULKAN:-0}" != 1 ]; then
    vulkan_toolchain
    features=(--features vulkan)
fi
say "formatting (cargo fmt --check)"
cargo fmt --all -- --check
say "lints (cargo clippy -D warnings)${features:+ (llama.cpp built for Vulkan: long on a cold machine)}"
cargo clippy --release --locked --workspace --all-targets "${features[@]}" -- -D warnings
say "API docs (cargo doc, warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --release --locked --no-deps --workspace "${features[@]}"
say "toolchain floor: the workspace without llama.cpp checks, warnings denied, with the rust-version it declares"
msrv="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
rustup toolchain install "$msrv" --profile minimal >/dev/null
RUSTFLAGS="-D warnings" cargo +"$msrv" check --locked --workspace --all-targets --no-default-features
say "every test, with those that need models or the openai client (ignored by a plain cargo test)"
cargo test --release --locked --workspace "${features[@]}" "$@" -- --include-ignored
if [ "${SPECRUN_SKIP_VULKAN:-0}" = 1 ]; then
    say "skipping the Vulkan check (SPECRUN_SKIP_VULKAN=1)"
    exit 0
fi
say "GPU code path: greedy fidelity with every layer on lavapipe"
use_lavapipe
"$CARGO_TARGET_DIR/release/specrun" devices | tee "$CARGO_TARGET_DIR/devices.txt"
grep -q '^Vulkan0 ' "$CARGO_TARGET_DIR/devices.txt" || { echo "error: the Vulkan build sees no Vulkan device" >&2; exit 1; }
SPECRUN_TEST_GPU_LAYERS=99 \
    cargo test --release --locked --features vulkan --test real_models -- greedy_fidelity_on_the_offload_path --include-ignored --nocapture
