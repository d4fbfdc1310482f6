#!/usr/bin/env bash
# README command 1: set up on a bare machine and run the default pair (speculative, streamed).
# Extra arguments go to `specrun run` (e.g. --compare, --prompt "...", -n 256).
source "$(dirname "$0")/common.sh"
ensure_system_packages
fetch_models qwen-coder-0.5b qwen-coder-1.5b
build_release
# Without a prompt of the caller's, the default one (chat-wrapped), and 128 tokens unless -n is given.
# has "PATTERN ..." ARGS...: does any argument match one of the space-separated patterns?
has() {
    local pats=$1 a p
    local -
    set -f
    shift
    for a in "$@"; do
        for p in $pats; do
            # shellcheck disable=SC2254
            case "$a" in $p) return 0 ;; esac
        done
    done
    return 1
}
if ! has "--prompt --prompt=* -f --prompt-file --prompt-file=*" "$@"; then
    set -- --chat --prompt "Write a Python function that parses an ISO 8601 date string without using datetime, with a docstring and tests." "$@"
fi
if ! has "-n --max-tokens --max-tokens=*" "$@"; then
    set -- -n 128 "$@"
fi
exec "$SPECRUN_BIN" run "$@"
