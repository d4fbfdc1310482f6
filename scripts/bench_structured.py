#!/usr/bin/env python3
"""Structured output measured: constrained target-only against constrained speculative decoding.

Runs `specrun batch` on a records file whose records carry `response_format` (json_schema),
once with --no-draft and once with the pair's drafting, alternating, --repeat times; checks
every finished output against its record's schema with `jsonschema` (independent of specrun's
grammar engine) and that greedy outputs are identical in both modes; prints one table row
per class (the schema's name) and the totals, with the target rows speculative decoding left
unread (the grammar allowed one token there, so no logits were computed).

With --baseline OTHER_SPECRUN, another build's target-only and speculative decoding run in the
same alternation (after this build's) and get their own columns, the baseline's speed-up
against its own target-only run: two builds compared in one run.
The rounds column counts target decodes (generated tokens / tokens per round), which moves
with what was drafted and accepted, not with the machine's speed.

Usage: bench_structured.py RECORDS [--repeat N] [--bin SPECRUN] [--baseline SPECRUN] -- [batch flags...]
Example: scripts/bench_structured.py docs/eval/structured.jsonl --repeat 2 -- --pair qwen-coder -t 2
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

import jsonschema


def run_batch(binary, records, out, extra):
    cmd = [binary, "batch", records, "-o", out, "--overwrite", "--quiet", *extra]
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    rows = {}
    with open(out) as f:
        for line in f:
            r = json.loads(line)
            if "id" in r:
                rows[r["id"]] = r
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("records")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--bin", default=os.environ.get("SPECRUN_BIN", os.path.expanduser("~/.cache/specrun/target/release/specrun")))
    ap.add_argument("--baseline", help="another build whose speculative decoding runs in the same alternation")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    a = ap.parse_args(argv)
    a.extra = extra
    recs = [json.loads(l) for l in open(a.records) if l.strip()]
    schema = {r["id"]: r["response_format"]["json_schema"]["schema"] for r in recs}
    klass = {r["id"]: r["response_format"]["json_schema"]["name"] for r in recs}
    tmp = tempfile.mkdtemp()
    runs = {"plain": [], "spec": []}
    if a.baseline:
        runs["baseline_plain"] = []
        runs["baseline"] = []
    for i in range(a.repeat):
        order = ["plain", "spec"] if i % 2 == 0 else ["spec", "plain"]
        order += (["baseline_plain", "baseline"] if i % 2 == 0 else ["baseline", "baseline_plain"]) if a.baseline else []
        for mode in order:
            flags = a.extra + (["--no-draft"] if mode.endswith("plain") else [])
            binary = a.baseline if mode.startswith("baseline") else a.bin
            runs[mode].append(run_batch(binary, a.records, os.path.join(tmp, f"{mode}{i}.jsonl"), flags))
    by = collections.defaultdict(lambda: collections.Counter())
    for mode, rs in runs.items():
        for rows in rs:
            for rid, r in rows.items():
                c = by[(klass[rid], mode)]
                if "error" in r:
                    c["errors"] += 1
                    continue
                c["records"] += 1
                c["generated"] += r["n_generated"]
                c["rounds"] += round(r["n_generated"] / r["tokens_per_round"]) if r.get("tokens_per_round") else 0
                c["secs"] += r["n_generated"] / r["decode_tok_per_s"] if r["decode_tok_per_s"] > 0 else 0
                c["forced"] += r.get("n_forced", 0)
                c["closing"] += r.get("n_closing_accepted", 0)
                c["likely"] += r.get("n_likely_accepted", 0)
                c["unread"] += r.get("n_rows_unread", 0)
                c["drafted_accepted"] += (
                    r["n_accepted"] - r.get("n_forced_accepted", 0) - r.get("n_closing_accepted", 0) - r.get("n_likely_accepted", 0)
                )
                if r["finish_reason"] == "stop":
                    c["finished"] += 1
                    try:
                        jsonschema.validate(json.loads(r["text"]), schema[rid])
                        c["valid"] += 1
                    except (ValueError, jsonschema.ValidationError) as e:
                        print(f"INVALID {mode} {rid}: {e}", file=sys.stderr)
    same = collections.Counter()
    for rid in schema:
        texts = {rows[rid].get("text") for rs in runs.values() for rows in rs if rid in rows}
        same[klass[rid]] += len(texts) == 1
        if len(texts) != 1:
            print(f"DIFFER {rid}: {sorted(t or '' for t in texts)}", file=sys.stderr)
    base_cols = " baseline plain tok/s | baseline speculative tok/s | baseline speed-up | baseline rounds |" if a.baseline else ""
    print(f"| class | records | valid / finished | identical | plain tok/s | speculative tok/s | speed-up | rounds (plain / speculative) |{base_cols} forced | likely | closing | copied or drafted | rows unread |")
    print("|---" * (13 + (4 if a.baseline else 0)) + "|")
    classes = sorted({k for k, _ in by})
    tot = {m: collections.Counter() for m in runs}
    ext = {m: collections.Counter() for m in runs}
    for k in classes + ["all extraction", "all"]:
        if k == "all extraction":
            p, s, b, bp = ext["plain"], ext["spec"], ext.get("baseline"), ext.get("baseline_plain")
            n = sum(1 for r in klass.values() if r != "open")
            ident = sum(v for c, v in same.items() if c != "open")
        elif k == "all":
            p, s, b, bp = tot["plain"], tot["spec"], tot.get("baseline"), tot.get("baseline_plain")
            n = len(schema)
            ident = sum(same.values())
        else:
            p, s, b, bp = by[(k, "plain")], by[(k, "spec")], by[(k, "baseline")], by[(k, "baseline_plain")]
            for m in runs:
                tot[m].update(by[(k, m)])
                if k != "open":
                    ext[m].update(by[(k, m)])
            n = sum(1 for r in klass.values() if r == k)
            ident = same[k]
        rate = lambda c: c["generated"] / c["secs"] if c["secs"] else 0.0
        share = lambda key: f"{s[key] / max(1, s['generated']):.0%}"
        valid = p["valid"] + s["valid"] + (b["valid"] + bp["valid"] if a.baseline else 0)
        finished = p["finished"] + s["finished"] + (b["finished"] + bp["finished"] if a.baseline else 0)
        base = f" {rate(bp):.2f} | {rate(b):.2f} | {rate(b) / rate(bp) if rate(bp) else 0:.2f}x | {b['rounds']} |" if a.baseline else ""
        print(
            f"| {k} | {n} | {valid} / {finished} | {ident}/{n} | {rate(p):.2f} | {rate(s):.2f} | "
            f"{rate(s) / rate(p) if rate(p) else 0:.2f}x | {p['rounds']} / {s['rounds']} |{base} {share('forced')} | {share('likely')} | "
            f"{share('closing')} | {share('drafted_accepted')} | {s['unread']} |"
        )


if __name__ == "__main__":
    main()
