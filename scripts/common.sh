# Shared setup for specrun's scripts: system packages, the cargo target dir, the models.
# Source it; it changes to the repository root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# One target dir outside the clone, reused by every checkout, script and CI run when it exists
# (llama.cpp takes minutes to compile per profile).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SPECRUN_TARGET_DIR:-$HOME/.cache/specrun/target}}"
# SPECRUN_BIN names a binary built before (a copy, so that a long benchmark does not run what a
# later build replaces): then build_release builds nothing.
SPECRUN_BIN_GIVEN="${SPECRUN_BIN:-}"
SPECRUN_BIN="${SPECRUN_BIN:-$CARGO_TARGET_DIR/release/specrun}"

say() { printf '==> %s\n' "$*" >&2; }

# have_libclang [DIR ...]: does a directory hold the library bindgen loads? bindgen (clang-sys)
# looks for `libclang.so`, `libclang-<version>.so` and `libclang.so.<version>` — never
# `libclang-cpp.so*`, the C++ interface that Debian installs with the base system. With no
# arguments it looks where clang-sys looks: $LIBCLANG_PATH, then the LLVM and system lib dirs.
have_libclang() {
    local dirs=("$@")
    if [ ${#dirs[@]} -eq 0 ]; then
        [ -n "${LIBCLANG_PATH:-}" ] && dirs+=("$LIBCLANG_PATH")
        dirs+=(/usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib)
    fi
    local d f name
    for d in "${dirs[@]}"; do
        [ -d "$d" ] || continue
        for f in "$d"/libclang*.so*; do
            [ -e "$f" ] || continue
            name="${f##*/}"
            case "$name" in
                libclang-cpp*) ;;                                  # C++ API, not what bindgen loads
                libclang.so | libclang.so.* | libclang-[0-9]*.so | libclang-[0-9]*.so.*) return 0 ;;
            esac
        done
    done
    return 1
}

# have_cxx_compiler: a C++ compiler that can build a program (not just a `c++` name on PATH).
have_cxx_compiler() {
    local tmp rc
    command -v c++ >/dev/null 2>&1 || return 1
    command -v make >/dev/null 2>&1 || return 1
    tmp="$(mktemp -d)"
    printf '#include <vector>\nint main() { std::vector<int> v{1}; return v[0] - 1; }\n' >"$tmp/t.cpp"
    c++ -std=c++17 "$tmp/t.cpp" -o "$tmp/t" >/dev/null 2>&1 && "$tmp/t"
    rc=$?
    rm -rf "$tmp"
    return $rc
}

# have_cmake: cmake new enough for llama.cpp (3.14).
have_cmake() {
    local v
    v="$(cmake --version 2>/dev/null | head -n1 | sed -n 's/^cmake version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
    [ -n "$v" ] || return 1
    set -- $v
    [ "$1" -gt 3 ] || { [ "$1" -eq 3 ] && [ "$2" -ge 14 ]; }
}

# Build tools llama-cpp-2 needs: cmake, libclang (bindgen), a working C/C++ toolchain; python3
# with pip to fetch the models. Each check looks for the thing the build uses.
missing_system_packages() {
    local missing=()
    have_cmake || missing+=(cmake)
    have_cxx_compiler || missing+=(build-essential)
    have_libclang || missing+=(libclang-dev)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    echo "${missing[*]}"
}

ensure_system_packages() {
    local missing
    read -r -a missing <<<"$(missing_system_packages)"
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
        read -r -a missing <<<"$(missing_system_packages)"
        if [ ${#missing[@]} -gt 0 ]; then
            echo "error: still missing after apt-get install: ${missing[*]}" >&2
            exit 1
        fi
    fi
    command -v cargo >/dev/null || { echo "error: cargo is not installed (https://rustup.rs)" >&2; exit 1; }
}

# rustfmt and clippy, which a minimal rustup profile lacks.
ensure_rust_components() {
    local c
    for c in rustfmt clippy; do
        if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
            say "installing the rust component $c"
            rustup component add "$c"
        fi
    done
}

# fetch_models [NAME ...]: sha256-checked, never downloaded twice.
fetch_models() {
    python3 "$ROOT/scripts/fetch_models.py" "$@"
}

# ensure_python_tools: a virtual environment in the cache with the official `openai` client
# (PyPI), which tests/serve.rs drives against `specrun serve`, and `jsonschema`, the
# independent validator of structured output; exports SPECRUN_PYTHON.
ensure_python_tools() {
    local venv="${SPECRUN_VENV:-$HOME/.cache/specrun/venv}"
    if ! "$venv/bin/python" -c "import openai, jsonschema" >/dev/null 2>&1; then
        say "installing the openai Python client and jsonschema into $venv"
        python3 -m venv "$venv" 2>/dev/null || {
            local sudo=""
            [ "$(id -u)" -eq 0 ] || sudo="sudo"
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$venv"
        }
        "$venv/bin/pip" install -q "openai>=1.40,<3" "jsonschema>=4,<5"
    fi
    export SPECRUN_PYTHON="$venv/bin/python"
}

# llama_cpp_sdist: the llama-cpp-python source distribution on PyPI whose vendored llama.cpp
# the reference tools are built from (scripts/llama_cpp_reference.sh) and whose grammar files
# the tests read; downloaded into the cache once, its path printed.
LLAMA_CPP_PYTHON_VERSION=0.3.36
llama_cpp_sdist() {
    local cache="${SPECRUN_CACHE:-$HOME/.cache/specrun}/llama.cpp-ref"
    local tarball="$cache/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
    if [ ! -f "$tarball" ]; then
        say "fetching llama.cpp (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION source distribution)"
        mkdir -p "$cache"
        python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$cache"
    fi
    echo "$tarball"
}

# fetch_llama_grammars: llama.cpp's grammars/*.gbnf from that source distribution (only the
# grammar files are unpacked); exports SPECRUN_LLAMA_GRAMMARS for tests/cli/constraints.rs.
fetch_llama_grammars() {
    local v=$LLAMA_CPP_PYTHON_VERSION
    local dir="${SPECRUN_CACHE:-$HOME/.cache/specrun}/llama.cpp-ref/grammars-$v"
    if ! ls "$dir"/*.gbnf >/dev/null 2>&1; then
        local tarball
        tarball="$(llama_cpp_sdist)"
        mkdir -p "$dir"
        tar -xzf "$tarball" -C "$dir" --strip-components=4 --wildcards "llama_cpp_python-$v/vendor/llama.cpp/grammars/*.gbnf"
    fi
    export SPECRUN_LLAMA_GRAMMARS="$dir"
}

build_release() {
    if [ -n "$SPECRUN_BIN_GIVEN" ]; then
        say "using $SPECRUN_BIN_GIVEN"
        return
    fi
    say "building specrun (release) in $CARGO_TARGET_DIR"
    cargo build --release --locked
}
