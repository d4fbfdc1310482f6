#!/usr/bin/env bash
# README command 1: set up on a bare machine and run the default pair (speculative, streamed).
# Extra arguments go to `specrun run` (e.g. --compare, --prompt "...", -n 256).
source "$(dirname "$0")/common.sh"
ensure_system_packages
fetch_models qwen-coder-0.5b qwen-coder-1.5b
build_release
if [ $# -eq 0 ]; then
    set -- --chat --prompt "Write a Python function that parses an ISO 8601 date string without using datetime, with a docstring and tests." -n 128
fi
exec "$SPECRUN_BIN" run "$@"
