#!/usr/bin/env bash
# Load-test specrun serve and llama.cpp's llama-server under the same load, one server at a
# time on loopback: the default pair, greedy, 2 threads, the same slots and per-slot context.
#
# Usage: scripts/serve_bench.sh [CONCURRENCY] [REQUESTS] [MAX_TOKENS]
#   defaults: 1,4,8  16  64; prompts: docs/bench/batch32.jsonl (PROMPTS=...)
#   SERVERS: which to run (default "specrun specrun-plain llama-md llama-ngram llama-plain";
#   also specrun-between: prompts read between rounds, --prefill-chunk 0; specrun-auto:
#   --prefill-chunk auto; specrun-nocache: --prompt-cache off; specrun-noram: --cache-ram 0;
#   llama-noram: llama-server --cache-ram 0)
#   NONCE=level: requests of a level may share prefixes (repeated prompts, one document);
#   the default gives every request its own first line
# Output: one Markdown table on stdout (scripts/serve_load.py's rows); on stderr, per server,
# the prompt tokens it read (its /metrics: prompt tokens less those a cache gave).
source "$(dirname "$0")/common.sh"
ensure_system_packages
fetch_models qwen-coder-0.5b qwen-coder-1.5b
build_release

CONC="${1:-1,4,8}"
REQUESTS="${2:-16}"
N="${3:-64}"
PROMPTS="${PROMPTS:-docs/bench/batch32.jsonl}"
THREADS="${THREADS:-2}"
SLOTS="${SLOTS:-8}"
CTX="${CTX:-1024}"
PORT="${PORT:-18080}"
SERVERS="${SERVERS:-specrun specrun-plain llama-md llama-ngram llama-plain}"
MODELS="${SPECRUN_MODELS:-$HOME/.cache/specrun/models}"
TARGET="$MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
DRAFT="$MODELS/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

LLAMA_SERVER=""
if [[ "$SERVERS" == *llama* ]]; then
    LLAMA_SERVER="$(TOOLS=server scripts/llama_cpp_reference.sh | tail -1)"
fi

wait_ready() {
    local pid="$1" i
    for i in $(seq 1 600); do
        if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then return 0; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    echo "error: the server did not come up" >&2
    return 1
}

# specrun counts prompt tokens and the cached ones; llama-server (--metrics) the ones it read
prompt_tokens_read() {
    curl -s "http://127.0.0.1:$PORT/metrics" | awk -v label="$1" '
        /^specrun_prompt_tokens_total / { total = $2 }
        /^specrun_prompt_cached_tokens_total / { cached = $2 }
        /^llamacpp:prompt_tokens_total / { read = $2; llama = 1 }
        END { if (llama) n = read; else n = total - cached; printf "%s: prompt tokens read %d\n", label, n > "/dev/stderr" }'
}

run_server() {
    local label="$1"
    shift
    "$@" >/tmp/serve_bench_server.log 2>&1 &
    local pid=$!
    if wait_ready "$pid"; then
        python3 scripts/serve_load.py "http://127.0.0.1:$PORT/v1" --concurrency "$CONC" --requests "$REQUESTS" \
            --max-tokens "$N" --prompts "$PROMPTS" --label "$label" --nonce "${NONCE:-request}"
        prompt_tokens_read "$label"
    else
        tail -5 /tmp/serve_bench_server.log >&2
    fi
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

echo "| server | clients | requests | tok/s | TTFT p50 / p95 (s) | ITL p50 / p95 (ms) | longest gap p95 / max (s) | failed |"
echo "|---|---|---|---|---|---|---|---|"
for s in $SERVERS; do
    case "$s" in
        specrun) run_server "specrun serve (pair default: n-gram, auto)" \
            "$SPECRUN_BIN" serve -t "$THREADS" -c "$CTX" --parallel "$SLOTS" --port "$PORT" --temp 0 ;;
        specrun-plain) run_server "specrun serve --no-draft" \
            "$SPECRUN_BIN" serve -t "$THREADS" -c "$CTX" --parallel "$SLOTS" --port "$PORT" --temp 0 --no-draft ;;
        specrun-auto) run_server "specrun serve --prefill-chunk auto (paced rounds)" \
            "$SPECRUN_BIN" serve -t "$THREADS" -c "$CTX" --parallel "$SLOTS" --port "$PORT" --temp 0 --prefill-chunk auto ;;
        specrun-nocache) run_server "specrun serve --prompt-cache off" \
            "$SPECRUN_BIN" serve -t "$THREADS" -c "$CTX" --parallel "$SLOTS" --port "$PORT" --temp 0 --prompt-cache off ;;
        specrun-noram) run_server "specrun serve --cache-ram 0" \
            "$SPECRUN_BIN" serve -t "$THREADS" -c "$CTX" --parallel "$SLOTS" --port "$PORT" --temp 0 --cache-ram 0 ;;
        specrun-plain-noram) run_server "specrun serve --no-draft --cache-ram 0" \
            "$SPECRUN_BIN" serve -t "$THREADS" -c "$CTX" --parallel "$SLOTS" --port "$PORT" --temp 0 --no-draft --cache-ram 0 ;;
        llama-noram) run_server "llama-server --cache-ram 0 (plain)" \
            "$LLAMA_SERVER" -m "$TARGET" -t "$THREADS" -c $((CTX * SLOTS)) -np "$SLOTS" -ngl 0 --port "$PORT" --cache-ram 0 --metrics ;;
        specrun-between) run_server "specrun serve --prefill-chunk 0 (prompts between rounds)" \
            "$SPECRUN_BIN" serve -t "$THREADS" -c "$CTX" --parallel "$SLOTS" --port "$PORT" --temp 0 --prefill-chunk 0 ;;
        llama-md) run_server "llama-server -md (draft model)" \
            "$LLAMA_SERVER" -m "$TARGET" -md "$DRAFT" -t "$THREADS" -c $((CTX * SLOTS)) -np "$SLOTS" -ngl 0 -ngld 0 --port "$PORT" --metrics ;;
        llama-ngram) run_server "llama-server n-gram" \
            "$LLAMA_SERVER" -m "$TARGET" -t "$THREADS" -c $((CTX * SLOTS)) -np "$SLOTS" -ngl 0 --port "$PORT" --spec-type ngram-simple --metrics ;;
        llama-plain) run_server "llama-server (plain)" \
            "$LLAMA_SERVER" -m "$TARGET" -t "$THREADS" -c $((CTX * SLOTS)) -np "$SLOTS" -ngl 0 --port "$PORT" --metrics ;;
        *) echo "error: unknown server $s" >&2; exit 2 ;;
    esac
done
