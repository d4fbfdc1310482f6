#!/usr/bin/env python3
"""Where a structured-output run's rounds went, from a round trace.

Reads the JSON lines of `specrun batch ... --trace-rounds TRACE` (or `run --trace-rounds`)
and sorts every round by what ended it:

- value start: every drafted token was accepted and the draft ended where a value begins
  (after a key, `[` or `{`), so the target's own token is the value's first one — the one
  round a field cannot do without unless the value's start is guessed;
- short: every drafted token was accepted, but the draft ended inside a value;
- plain: nothing was drafted;
- copy rejected / closing rejected: the target turned down a copied token, or one of the
  closing draft that replaced a copy's run-on (docs/benchmarks.md#structured-output).

Prints a Markdown table (rounds, tokens, rows, rejected rows, verification seconds and their
share per kind), a least-squares fit of a round's verification time as a fixed part plus a
part per row, and how many copied tokens were accepted in n-gram drafts whose text begins
with a digit or `.` `-` `/` `:` (inside a number) and in the others, over records whose id
does not start with OPEN_PREFIX (default `open`) — or over those only with --open.

Usage: rounds_summary.py TRACE [--open] [--open-prefix P]
Example:
  specrun batch docs/eval/structured.jsonl -o out.jsonl --pair qwen-coder -t 2 --trace-rounds rounds.jsonl
  scripts/rounds_summary.py rounds.jsonl
"""
import argparse
import collections
import json
import re
import sys

# a draft that ends where a value begins: after `": "`, `": `, `[`, `[{"`, `{"`, `, "`
VALUE_START = re.compile(r'(": "?|\[\{?"?|\{"?|, "?)$')


def kind(r):
    if r["rows"] == 1:
        return "plain"
    drafted, accepted, closing = r["n_drafted"], r["n_accepted"], r.get("n_closing", 0)
    if accepted == drafted:
        return "value start" if VALUE_START.search(r["drafted"]) else "short"
    if closing and accepted >= drafted - closing:
        return "closing rejected"
    return "copy rejected"


NUMBER_START = re.compile(r"^[0-9.\-/:]")


def copies(rounds):
    """(copied, accepted) tokens of n-gram drafts, by whether the draft's text begins inside
    a number; forced and closing tokens left out."""
    by = {"number": [0, 0], "text": [0, 0]}
    for r in rounds:
        forced, closing = r.get("n_forced", 0), r.get("n_closing", 0)
        copied = r["n_drafted"] - forced - closing
        if r["source"] != "ngram" or copied <= 0:
            continue
        accepted = min(max(r["n_accepted"] - forced, 0), copied)
        c = by["number" if NUMBER_START.match(r["drafted"]) else "text"]
        c[0] += copied
        c[1] += accepted
    return by


def fit(rounds):
    """verify_ms ≈ a + b × rows, least squares."""
    n = len(rounds)
    xs = [r["rows"] for r in rounds]
    ys = [r["verify_ms"] for r in rounds]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--open", action="store_true", help="summarise the open records instead")
    ap.add_argument("--open-prefix", default="open")
    a = ap.parse_args()
    rounds = []
    with open(a.trace) as f:
        for i, line in enumerate(f, 1):
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{a.trace}:{i}: not a JSON line ({e})")
            is_open = str(r.get("id", "")).startswith(a.open_prefix)
            if is_open == a.open:
                rounds.append(r)
    if not rounds:
        sys.exit(f"{a.trace}: no rounds to summarise")
    stats = collections.defaultdict(collections.Counter)
    for r in rounds:
        s = stats[kind(r)]
        s["rounds"] += 1
        s["tokens"] += r["n_emitted"]
        s["rows"] += r["rows"]
        s["rejected"] += r["n_drafted"] - r["n_accepted"]
        s["ms"] += r["verify_ms"]
    total = collections.Counter()
    for s in stats.values():
        total.update(s)
    print("| round ended by | rounds | tokens | rows | rejected rows | verification s | share of it |")
    print("|---|---|---|---|---|---|---|")
    for k, s in sorted(stats.items(), key=lambda kv: -kv[1]["ms"]):
        print(f"| {k} | {s['rounds']} | {s['tokens']} | {s['rows']} | {s['rejected']} | {s['ms'] / 1e3:.1f} | {100 * s['ms'] / total['ms']:.0f}% |")
    print(f"| all | {total['rounds']} | {total['tokens']} | {total['rows']} | {total['rejected']} | {total['ms'] / 1e3:.1f} | |")
    ab = fit(rounds)
    if ab:
        print(f"\na round's verification ≈ {ab[0]:.1f} ms + {ab[1]:.1f} ms per row (least squares over {len(rounds)} rounds)")
    for k, (copied, accepted) in copies(rounds).items():
        if copied:
            print(f"copies beginning {'inside a number' if k == 'number' else 'with text'}: {accepted} of {copied} tokens accepted ({100 * accepted / copied:.0f}%)")


if __name__ == "__main__":
    main()
