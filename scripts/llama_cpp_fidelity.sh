#!/usr/bin/env bash
# Greedy agreement with llama.cpp itself: llama-simple (llama.cpp's minimal greedy example),
# built from the very llama.cpp tree specrun links (the one vendored by llama-cpp-sys-2) with
# the flags its build script uses (GGML_NATIVE=OFF: AVX2, no AVX-512, unless RUSTFLAGS asks for
# target-cpu=native), against specrun plain (--no-draft) and specrun with the pair's default
# drafting, on raw prompts. A llama.cpp of another version, or built for other instructions
# (GGML_NATIVE=ON on an AVX-512 machine), rounds differently and diverges at near-ties.
#
# Usage: scripts/llama_cpp_fidelity.sh [PROMPTS.jsonl] [MAX_TOKENS]
#   defaults: docs/bench/prompts-fidelity.jsonl 64
# Output: one line per prompt and mode (identical, or the first differing character and both
# texts around it) and the totals.
source "$(dirname "$0")/common.sh"
ensure_system_packages
fetch_models qwen-coder-0.5b qwen-coder-1.5b
build_release

PROMPTS="${1:-docs/bench/prompts-fidelity.jsonl}"
N="${2:-64}"
THREADS="${THREADS:-2}"
MODELS="${SPECRUN_MODELS:-$HOME/.cache/specrun/models}"
TARGET="$MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
SYS_DIR="$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "llama-cpp-sys-2"))')"
SRC="$SYS_DIR/llama.cpp"
CACHE="${SPECRUN_CACHE:-$HOME/.cache/specrun}"
BUILD="$CACHE/llama.cpp-vendored-$(basename "$SYS_DIR")"
NATIVE=OFF
case "${RUSTFLAGS:-}" in *target-cpu=native*) NATIVE=ON ;; esac
# The vendored tree carries the library but not the examples: llama-simple's one source file
# comes from llama-cpp-python's source distribution (the reference script's), and is built
# against the vendored library.
PY_VERSION=$LLAMA_CPP_PYTHON_VERSION
SIMPLE_CPP="$CACHE/llama.cpp-ref/llama-cpp-python-$PY_VERSION/vendor/llama.cpp/examples/simple/simple.cpp"
if [ ! -f "$SIMPLE_CPP" ]; then
    tar -xzf "$(llama_cpp_sdist)" -C "$CACHE/llama.cpp-ref"
    mv "$CACHE/llama.cpp-ref/llama_cpp_python-$PY_VERSION" "$CACHE/llama.cpp-ref/llama-cpp-python-$PY_VERSION"
fi
if [ ! -x "$BUILD/bin/llama-simple" ]; then
    say "building llama.cpp from $(basename "$SYS_DIR") with GGML_NATIVE=$NATIVE, and llama-simple on it (minutes)"
    cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_COMMON=OFF \
        -DLLAMA_BUILD_APP=OFF -DGGML_NATIVE=$NATIVE -DBUILD_SHARED_LIBS=ON >/dev/null
    cmake --build "$BUILD" -j "$(nproc)" --target llama >/dev/null
    c++ -O2 -std=c++17 "$SIMPLE_CPP" -I"$SRC/include" -I"$SRC/ggml/include" -L"$BUILD/bin" \
        -lllama -lggml -lggml-base -Wl,--disable-new-dtags,-rpath,"$BUILD/bin" -o "$BUILD/bin/llama-simple"
fi

python3 - "$PROMPTS" "$N" "$BUILD/bin/llama-simple" "$SPECRUN_BIN" "$TARGET" "$THREADS" <<'PY'
import json, subprocess, sys
prompts, n, simple, specrun, target, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]

def llama_simple(p):
    out = subprocess.run([simple, "-m", target, "-n", str(n), p], capture_output=True).stdout.decode("utf-8", "replace")
    if not out.startswith(p):
        raise SystemExit(f"llama-simple did not echo the prompt: {out[:80]!r}")
    return out[len(p):]

def spec(p, extra):
    cmd = [specrun, "run", "--prompt", p, "-n", str(n), "-t", threads, "--json"] + extra
    r = subprocess.run(cmd, capture_output=True, check=True)
    return json.loads(r.stdout)["text"]

def first_diff(a, b):
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return None if a == b else i

modes = (
    ("plain", ["-m", target, "--no-draft"]),
    ("speculative", ["--pair", "qwen-coder"]),
)
totals = {name: 0 for name, _ in modes}
rows = [json.loads(l) for l in open(prompts) if l.strip()]
for r in rows:
    ref = llama_simple(r["prompt"])
    for name, extra in modes:
        text = spec(r["prompt"], extra)
        # llama-simple always prints n tokens' pieces; specrun stops at end-of-generation too
        d = first_diff(ref, text)
        if d is None or (d == len(text) and len(text) < len(ref) and text == ref[:len(text)]):
            totals[name] += 1
            print(f"{r['id']} {name:11s} identical")
        else:
            print(f"{r['id']} {name:11s} differs at char {d}: llama.cpp {ref[max(0,d-20):d+20]!r} specrun {text[max(0,d-20):d+20]!r}")
print("identical to llama-simple: " + ", ".join(f"{k} {v}/{len(rows)}" for k, v in totals.items()))
PY
