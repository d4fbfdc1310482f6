#!/usr/bin/env bash
# Build specrun with llama.cpp's Vulkan backend and run it on Mesa's lavapipe (a software
# Vulkan device), so that the GPU offload path — device buffers, the KV cache on the device,
# rollback of a device cache — runs on a machine without a GPU.
#
# Usage: scripts/build-vulkan.sh [check]
#   check: after building, list the devices (a Vulkan device must be there) and run the greedy
#          fidelity test `greedy_fidelity_on_the_offload_path` on lavapipe with every layer of
#          both models offloaded (SmolLM2 drafting for itself): CI runs this
# Output: the binary in $SPECRUN_VULKAN_TARGET_DIR (default ~/.cache/specrun/target-vulkan).
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/vulkan.sh"
ensure_system_packages
export CARGO_TARGET_DIR="${SPECRUN_VULKAN_TARGET_DIR:-$CACHE/target-vulkan}"

build() {
    say "building specrun --features vulkan into $CARGO_TARGET_DIR (long: llama.cpp's Vulkan shaders are generated and compiled)"
    local start secs
    start=$(date +%s)
    cargo build --release --locked --features vulkan
    secs=$(( $(date +%s) - start ))
    echo "built in ${secs} s: $CARGO_TARGET_DIR/release/specrun ($(du -h "$CARGO_TARGET_DIR/release/specrun" | cut -f1))"
}

vulkan_toolchain
build

if [ "${1:-}" = check ]; then
    BIN="$CARGO_TARGET_DIR/release/specrun"
    use_lavapipe
    say "devices"
    "$BIN" devices | tee "$CARGO_TARGET_DIR/devices.txt"
    grep -q '^Vulkan0 ' "$CARGO_TARGET_DIR/devices.txt" || { echo "error: the Vulkan build sees no Vulkan device" >&2; exit 1; }
    fetch_models smollm2-135m
    # greedy fidelity on the device: every token of a speculative run is the target's greedy
    # choice up to measured near-ties, both models offloaded (lavapipe decodes at a token or
    # two a second here: short generations)
    say "greedy fidelity on the Vulkan device (all layers offloaded)"
    SPECRUN_TEST_GPU_LAYERS=99 \
        cargo test --release --locked --features vulkan --test real_models -- greedy_fidelity_on_the_offload_path --include-ignored --nocapture
fi
