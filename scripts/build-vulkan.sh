#!/usr/bin/env bash
# Build specrun with llama.cpp's Vulkan backend and run it on Mesa's lavapipe (a software
# Vulkan device), so that the GPU offload path — device buffers, the KV cache on the device,
# rollback of a device cache — runs on a machine without a GPU.
#
# Usage: scripts/build-vulkan.sh [check]
#   check: after building, run `specrun devices` and a greedy fidelity check on lavapipe
#          (plain vs speculative text, SmolLM2 drafting for itself, every layer offloaded)
# Output: the binary in $SPECRUN_VULKAN_TARGET_DIR (default ~/.cache/specrun/target-vulkan).
#
# Debian 12's Vulkan headers (1.3.239) are older than llama.cpp's Vulkan code wants (measured:
# ggml-vulkan.cpp fails on `vk::LayerSettingEXT`, VK_EXT_layer_settings); when the system's
# headers are older than 1.3.275 (or VULKAN_HEADERS=newer), the next Debian release's
# libvulkan-dev (1.4.309) is unpacked — not installed — into a prefix in the cache and put
# first on the include path. Its glslc and loader stay the system's.
source "$(dirname "$0")/common.sh"
ensure_system_packages

CACHE="${SPECRUN_CACHE:-$HOME/.cache/specrun}"
export CARGO_TARGET_DIR="${SPECRUN_VULKAN_TARGET_DIR:-$CACHE/target-vulkan}"
PREFIX="$CACHE/vulkan-headers"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

pkgs=(libvulkan-dev glslc spirv-headers mesa-vulkan-drivers vulkan-tools)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
say "Vulkan headers: $(grep -m1 '#define VK_HEADER_VERSION ' /usr/include/vulkan/vulkan_core.h | awk '{print $3}') (system), glslc $(glslc --version | head -1)"

newer_headers() {
    # the next Debian release's headers, unpacked (not installed) into $PREFIX
    [ -e "$PREFIX/usr/include/vulkan/vulkan_core.h" ] && return 0
    local apt_dir="$CACHE/apt-newer"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$PREFIX"
    echo "deb http://deb.debian.org/debian trixie main" >"$apt_dir/sources.list"
    local opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "APT::Get::List-Cleanup=0")
    $sudo apt-get "${opts[@]}" update -qq
    (cd "$apt_dir" && apt-get "${opts[@]}" download libvulkan-dev)
    for deb in "$apt_dir"/*.deb; do dpkg -x "$deb" "$PREFIX"; done
    say "newer Vulkan headers: $(grep -m1 '#define VK_HEADER_VERSION ' "$PREFIX/usr/include/vulkan/vulkan_core.h" | awk '{print $3}') in $PREFIX"
}

build() {
    say "building specrun --features vulkan into $CARGO_TARGET_DIR (long: llama.cpp's Vulkan shaders are generated and compiled)"
    local start secs
    start=$(date +%s)
    cargo build --release --locked --features vulkan
    secs=$(( $(date +%s) - start ))
    echo "built in ${secs} s: $CARGO_TARGET_DIR/release/specrun ($(du -h "$CARGO_TARGET_DIR/release/specrun" | cut -f1))"
}

system_headers="$(grep -m1 '#define VK_HEADER_VERSION ' /usr/include/vulkan/vulkan_core.h | awk '{print $3}')"
if [ "${VULKAN_HEADERS:-auto}" = newer ] || { [ "${VULKAN_HEADERS:-auto}" = auto ] && [ "$system_headers" -lt 275 ]; }; then
    newer_headers
    export CPATH="$PREFIX/usr/include${CPATH:+:$CPATH}" CXXFLAGS="-I$PREFIX/usr/include ${CXXFLAGS:-}"
fi
build

if [ "${1:-}" = check ]; then
    BIN="$CARGO_TARGET_DIR/release/specrun"
    export VK_ICD_FILENAMES="${VK_ICD_FILENAMES:-$(ls /usr/share/vulkan/icd.d/lvp_icd*.json | head -1)}"
    # lavapipe is a CPU-type Vulkan device, which ggml-vulkan skips unless it is named
    export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}"
    say "devices (lavapipe: $VK_ICD_FILENAMES)"
    "$BIN" devices
    fetch_models smollm2-135m
    # greedy fidelity on the device: speculative text = plain text, every layer offloaded
    # (lavapipe decodes SmolLM2 at ~2 tok/s here, so a few prompts only; the Qwen pair would
    # take hours)
    fail=0
    while IFS= read -r prompt; do
        plain="$("$BIN" run --pair smollm2-self -ngl 99 -t 2 -n 32 --chat --no-draft --prompt "$prompt" 2>/dev/null)"
        spec="$("$BIN" run --pair smollm2-self -ngl 99 -ngld 99 -t 2 -n 32 --chat --prompt "$prompt" 2>/dev/null)"
        if [ "$plain" = "$spec" ]; then echo "same: $prompt"; else echo "DIFFERENT: $prompt"; fail=1; fi
    done <<'PROMPTS'
Write a Python function that returns the square of a number.
Name three primary colors.
Rename the variable x to count: for x in range(3): print(x)
PROMPTS
    exit $fail
fi
