#!/usr/bin/env bash
# Build llama.cpp's own reference tools and run them on the same pair, prompts, token count,
# temperature and threads as a specrun bench, for a side-by-side comparison.
#
# The llama.cpp tree comes from the llama-cpp-python source distribution on PyPI (0.3.36 carries
# llama.cpp from 2026-10-01, close to what llama-cpp-2 vendors). It is built in the cache, never
# in this repository.
#
# Usage: scripts/llama_cpp_reference.sh [PROMPTS.jsonl] [MAX_TOKENS] [K ...]
#   defaults: docs/bench/prompts-open.jsonl 64 2 4 8
# Output: a Markdown table on stdout (tool, setting, decode tok/s, ratio to llama-bench);
# with PER_PROMPT=1 each prompt's rate on stderr; TOOLS=lookup or TOOLS=speculative runs one.
#
# TOOLS=batched: llama-batched-bench (plain decoding of several sequences per decode) on the
#   target, -npp NPP (default 128) -ntg MAX_TOKENS -npl NPL (default 1,2,4,8,16); its table on
#   stdout. TOOLS=server: only build llama-server (for scripts/serve_load.py).
#   Every tool is built with GGML_NATIVE=OFF (AVX2, the flags llama-cpp-2 builds specrun's
#   llama.cpp with), in one build dir, so that rates compare like for like.
source "$(dirname "$0")/common.sh"
ensure_system_packages
fetch_models qwen-coder-0.5b qwen-coder-1.5b

PROMPTS="${1:-docs/bench/prompts-open.jsonl}"
N="${2:-64}"
shift 2 2>/dev/null || shift $#
KS=("$@")
[ ${#KS[@]} -gt 0 ] || KS=(2 4 8)
THREADS="${THREADS:-2}"
VERSION=$LLAMA_CPP_PYTHON_VERSION
CACHE="${SPECRUN_CACHE:-$HOME/.cache/specrun}/llama.cpp-ref"
MODELS="${SPECRUN_MODELS:-$HOME/.cache/specrun/models}"
TARGET="$MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
DRAFT="$MODELS/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
mkdir -p "$CACHE"

SRC="$CACHE/llama-cpp-python-$VERSION/vendor/llama.cpp"
if [ ! -d "$SRC" ]; then
    tar -xzf "$(llama_cpp_sdist)" -C "$CACHE"
    mv "$CACHE/llama_cpp_python-$VERSION" "$CACHE/llama-cpp-python-$VERSION"
fi
# Every tool in one build, GGML_NATIVE=OFF (AVX2, as specrun's llama.cpp): a native build
# compares unlike with specrun, and on one machine of this kind its llama-lookup died on an
# illegal instruction (the CPU the compiler saw offered more than the one that ran it).
BUILD="$CACHE/build-$VERSION-avx2"
build_tools() {
    local missing=() t
    for t in "$@"; do [ -x "$BUILD/bin/$t" ] || missing+=("$t"); done
    [ ${#missing[@]} -gt 0 ] || return 0
    say "building ${missing[*]} with GGML_NATIVE=OFF (minutes)"
    cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=OFF >/dev/null
    cmake --build "$BUILD" -j "$(nproc)" --target "${missing[@]}" >/dev/null
}
if [[ "${TOOLS:-}" == server ]]; then
    build_tools llama-server
    echo "$BUILD/bin/llama-server"
    exit 0
fi
if [[ "${TOOLS:-}" == batched ]]; then
    build_tools llama-batched-bench
    NPL="${NPL:-1,2,4,8,16}"
    NPP="${NPP:-128}"
    max_npl=$(echo "$NPL" | tr ',' '\n' | sort -n | tail -1)
    "$BUILD/bin/llama-batched-bench" -m "$TARGET" -t "$THREADS" -ngl 0 -c $((max_npl * (NPP + N) + 64)) -b 2048 -ub 512 \
        -npp "$NPP" -ntg "$N" -npl "$NPL" 2>/dev/null
    exit 0
fi
# TOOLS=lookup skips llama-speculative-simple (and TOOLS=speculative the lookup tool)
TOOLS="${TOOLS:-speculative,lookup}"
tools=(llama-bench)
[[ "$TOOLS" == *speculative* ]] && tools+=(llama-speculative-simple)
[[ "$TOOLS" == *lookup* ]] && tools+=(llama-lookup)
build_tools "${tools[@]}"

# The prompts as specrun's chat template renders them (`specrun run --chat --print-prompt`:
# the GGUF's own template), so that both tools read, and answer,
# the same text; each as one JSON string per line.
build_release >&2
mapfile -t PROMPT_TEXTS < <(python3 - "$PROMPTS" "$SPECRUN_BIN" "$THREADS" <<'EOF'
import json, subprocess, sys
prompts, specrun, threads = sys.argv[1:4]
for line in open(prompts):
    if not line.strip():
        continue
    r = json.loads(line)
    text = r["messages"][-1]["content"] if "messages" in r else r["prompt"]
    chat = subprocess.run(
        [specrun, "run", "--pair", "qwen-coder", "-t", threads, "--chat", "--print-prompt", "--prompt", text],
        check=True, capture_output=True, text=True,
    ).stdout
    print(json.dumps(chat))
EOF
)

# decoded tok/s from a tool's log ("decoded N tokens in S seconds, speed: X t/s"), averaged
# as total tokens over total seconds
run_tool() {
    local tokens=0 secs=0 out i=0
    for p in "${PROMPT_TEXTS[@]}"; do
        i=$((i + 1))
        # the text exactly: command substitution drops trailing newlines, and a chat prompt
        # ends in one ("<|im_start|>assistant\n"), so a sentinel goes after it and is cut off
        text=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]), end="")' "$p"; printf x)
        text="${text%x}"
        out=$("$@" -p "$text" 2>&1) || { echo "error: $1 failed" >&2; echo "$out" | tail -5 >&2; return 1; }
        read -r t s < <(echo "$out" | sed -n 's/.*decoded *\([0-9]*\) tokens in *\([0-9.]*\) seconds.*/\1 \2/p' | tail -1)
        tokens=$((tokens + t))
        secs=$(python3 -c "print($secs + $s)")
        # PER_PROMPT=1: each prompt's rate on stderr
        [ -z "${PER_PROMPT:-}" ] || echo "  $(basename "$1") ${*: -1} prompt $i: $(python3 -c "print(f'{$t / $s:.2f}')") tok/s" >&2
    done
    python3 -c "print(f'{$tokens / $secs:.2f}')"
}

COMMON=(-m "$TARGET" -n "$N" -t "$THREADS" -c 4096 --temp 0 -ngl 0)
plain=$("$BUILD/bin/llama-bench" -m "$TARGET" -p 0 -n "$N" -t "$THREADS" -ngl 0 -o csv 2>/dev/null \
    | python3 -c 'import csv, sys; rows = list(csv.DictReader(sys.stdin)); print("%.2f" % float(rows[-1]["avg_ts"]))')
echo "| tool | setting | decode tok/s | vs llama-bench |"
echo "|---|---|---|---|"
echo "| llama-bench (plain target) | -p 0 -n $N | $plain | 1.00x |"
[[ "$TOOLS" == *speculative* ]] && for k in "${KS[@]}"; do
    ts=$(run_tool "$BUILD/bin/llama-speculative-simple" "${COMMON[@]}" -md "$DRAFT" -ngld 0 --spec-type draft-simple --spec-draft-n-max "$k" --spec-draft-n-min 0)
    echo "| llama-speculative-simple | --spec-draft-n-max $k | $ts | $(python3 -c "print(f'{$ts / $plain:.2f}x')") |"
done
[[ "$TOOLS" == *lookup* ]] && for k in "${KS[@]}"; do
    ts=$(run_tool "$BUILD/bin/llama-lookup" "${COMMON[@]}" --spec-draft-n-max "$k")
    echo "| llama-lookup (n-gram) | --spec-draft-n-max $k | $ts | $(python3 -c "print(f'{$ts / $plain:.2f}x')") |"
done
exit 0
