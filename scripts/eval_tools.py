#!/usr/bin/env python3
"""Tool calling measured against a running `specrun serve`: each case of a tools file sent as
a chat request with `tool_choice` auto (the model decides) and required (a call is forced by
the tools' schemas), greedy; every call's arguments checked with `jsonschema`, independently
of the server's grammar engine. Prints one row per case and the totals: did the model call
when it should (auto), the right tool, valid arguments, the expected argument values, and the
decode speed with drafting and with `speculative.enabled: false` (required only).

Usage: eval_tools.py CASES [--base-url URL] [--max-tokens N]
Example: specrun serve --pair qwen-coder -t 2 & scripts/eval_tools.py docs/eval/tools.jsonl

A case: {"id", "messages", "tools", "expect": tool name or null (no call), "expect_args":
{argument: value} the call must hold (strings compared without case, numbers as numbers)}.
"""
import argparse
import json
import time
import urllib.request

import jsonschema


def post(base, body):
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return out, time.monotonic() - t0


def same(a, b):
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() == b.strip().lower()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def judge(case, out):
    """(called, right tool, valid arguments, expected values) of the first call."""
    msg = out["choices"][0]["message"]
    calls = msg.get("tool_calls") or []
    if not calls:
        return False, case["expect"] is None, None, None
    call = calls[0]["function"]
    tool = next((t for t in case["tools"] if t["function"]["name"] == call["name"]), None)
    try:
        args = json.loads(call["arguments"])
        jsonschema.validate(args, tool["function"]["parameters"])
        valid = True
    except Exception:
        args, valid = {}, False
    values = all(same(args.get(k), v) for k, v in case["expect_args"].items())
    return True, call["name"] == case["expect"], valid, values


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cases")
    ap.add_argument("--base-url", default="http://127.0.0.1:8080")
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()
    cases = [json.loads(line) for line in open(args.cases) if line.strip()]
    totals = {"auto": [0, 0, 0, 0, 0], "required": [0, 0, 0, 0, 0]}
    speed = {"spec": [0, 0.0], "plain": [0, 0.0]}
    print("| case | auto: called | right tool | valid | values | required: right tool | valid | values | tok/s spec | tok/s plain |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        base = {"messages": c["messages"], "tools": c["tools"], "max_tokens": args.max_tokens, "temperature": 0}
        auto, _ = post(args.base_url, {**base, "tool_choice": "auto"})
        a = judge(c, auto)
        row = [c["id"], *["-" if x is None else ("yes" if x else "no") for x in a]]
        t = totals["auto"]
        t[0] += 1
        t[1] += a[0] == (c["expect"] is not None)
        t[2] += bool(a[1])
        t[3] += bool(a[2]) if a[0] else 0
        t[4] += bool(a[3]) if a[0] and c["expect"] else 0
        if c["expect"] is None:
            row += ["-", "-", "-", "-", "-"]
        else:
            rates = []
            for mode, extra in (("spec", {}), ("plain", {"speculative": {"enabled": False}})):
                out, secs = post(args.base_url, {**base, "tool_choice": "required", "parallel_tool_calls": False, **extra})
                n = out["usage"]["completion_tokens"]
                speed[mode][0] += n
                speed[mode][1] += secs
                rates.append(n / secs)
                if mode == "spec":
                    r = judge(c, out)
                    t = totals["required"]
                    t[0] += 1
                    t[2] += bool(r[1])
                    t[3] += bool(r[2])
                    t[4] += bool(r[3])
            row += ["yes" if r[1] else "no", "yes" if r[2] else "no", "yes" if r[3] else "no", f"{rates[0]:.1f}", f"{rates[1]:.1f}"]
        print("| " + " | ".join(row) + " |", flush=True)
    a, q = totals["auto"], totals["required"]
    n_call = sum(1 for c in cases if c["expect"])
    print(f"\nauto: {a[1]}/{a[0]} called exactly when a call was expected, right tool (or no call) {a[2]}/{a[0]}, "
          f"valid arguments {a[3]} of the calls made, expected values {a[4]}/{n_call}")
    print(f"required: right tool {q[2]}/{q[0]}, valid arguments {q[3]}/{q[0]}, expected values {q[4]}/{q[0]}")
    (ns, ss), (np_, sp) = speed["spec"], speed["plain"]
    print(f"required, end to end (prompt included): {ns / ss:.2f} tok/s drafting, {np_ / sp:.2f} tok/s plain, {(ns / ss) / (np_ / sp):.2f}x")


if __name__ == "__main__":
    main()
