#!/usr/bin/env python3
"""Per-class speed-ups from a `specrun bench --export-json` file of one-sequence runs.

    scripts/bench_classes.py RESULTS.json [CLASS=ID,ID,... ...]

Each configuration's per-prompt results (`prompts`, in every JSON export of runs with one
sequence at a time) are grouped into classes: by default the classes of the shipped
evaluation sets (`docs/bench/eval-*.jsonl`); any other
prompt file names its own with CLASS=ID,... arguments. A class's speed-up is the geometric
mean of its prompts' median speed-ups; the lowest prompt is shown beside it. Prompts in no
class are listed as "other". The held-out sets (`eval-holdout.jsonl`, `eval-holdout2.jsonl`)
are classed by default too.
"""
import json
import math
import sys

DEFAULT = {
    "code edits": [
        "edit-rename", "edit-typehints", "edit-js-const", "edit-c-comment",
        "ho-edit-rename-py", "ho-edit-fix-js",
        "h2-docstring-py", "h2-logging-go", "h2-errcheck-rs", "h2-rename-ts", "h2-sql-index", "h2-java-final", "h2-yaml-edit",
    ],
    "copy-heavy": ["quote-answer", "copy-then-add", "h2-quote-lines"],
    "extract / cite": ["extract-actions", "summary-citations", "ho-quote", "ho-extract-names"],
    "reformat": ["json-to-yaml", "yaml-to-json", "csv-to-markdown", "reformat-list", "ho-json-rename", "ho-md-to-csv"],
    "open": [
        "open-fib", "open-hashmap", "open-sql", "open-haiku", "open-rust", "open-tcp", "open-regex", "open-advice",
        "ho-open-thread", "ho-open-bash", "ho-open-tests", "ho-open-go", "ho-open-deadlock", "ho-open-bottle",
        "h2-open-binary", "h2-open-py", "h2-open-git", "h2-open-cache",
    ],
}


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    classes = DEFAULT
    if len(argv) > 2:
        classes = {}
        for arg in argv[2:]:
            name, _, ids = arg.partition("=")
            if not ids:
                print(f"not CLASS=ID,...: {arg}", file=sys.stderr)
                return 2
            classes[name] = ids.split(",")
    with open(argv[1]) as f:
        results = json.load(f)
    for r in results:
        prompts = {p["id"]: p for p in r.get("prompts", [])}
        if not prompts:
            continue
        label = f"{r['pair']} {r['drafter']} {r['adaptive']} K={r['draft_max']} T={r['temp']}"
        print(f"{label}: all prompts {r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}), {r['repeats']} repeats")
        for name, ids in list(classes.items()) + [("other", [i for i in prompts if not any(i in v for v in classes.values())])]:
            rows = [prompts[i] for i in ids if i in prompts]
            if not rows:
                continue
            geo = math.exp(sum(math.log(max(p["speedup"], 1e-9)) for p in rows) / len(rows))
            low = min(rows, key=lambda p: p["speedup"])
            print(f"  {name:<15} {geo:.2f}x  ({len(rows)} prompts; lowest {low['id']} {low['speedup']:.2f}x)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except BrokenPipeError:
        # the reader went away (`| head`): end quietly, as specrun does
        sys.stderr.close()
        sys.exit(0)
