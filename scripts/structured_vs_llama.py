#!/usr/bin/env python3
"""Structured output beside llama.cpp: llama-server with `response_format` json_schema on the
same records, pair and threads as `scripts/bench_structured.py`.

Starts llama-server (plain, and with the draft model: `-md`) on loopback, sends each record of
a structured-output set (greedy, the record's max_tokens), takes llama-server's own decode rate
(`timings.predicted_per_second`), and checks every finished output with `jsonschema`. Prints
one table row per server and class.

With --completion LLAMA_COMPLETION --specrun SPECRUN, llama-completion -jf runs each record too
(a process per record; the prompt is the chat text `specrun run --print-prompt --chat` renders,
so both read the same tokens), its rate from its own timings (`eval time`).

Usage: structured_vs_llama.py RECORDS LLAMA_SERVER TARGET.gguf DRAFT.gguf [--threads N] [--only NAME]
           [--completion LLAMA_COMPLETION --specrun SPECRUN]
Example (after `TOOLS=server scripts/llama_cpp_reference.sh` printed the server's path):
  scripts/structured_vs_llama.py docs/eval/structured.jsonl PATH/llama-server \
      ~/.cache/specrun/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
      ~/.cache/specrun/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

import jsonschema


def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def run_server(binary, args, port, recs):
    proc = subprocess.Popen([binary, "--port", str(port), "--host", "127.0.0.1", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.5)
        out = {}
        for r in recs:
            body = {"messages": r["messages"], "max_tokens": r.get("max_tokens", 256), "temperature": 0, "response_format": r["response_format"]}
            res = post(port, body)
            out[r["id"]] = res
        return out
    finally:
        proc.terminate()
        proc.wait()


def run_completion(binary, specrun, target, threads, recs):
    """Each record through llama-completion -jf, as llama-server's answers: text, finish, tokens, rate."""
    out = {}
    tmp = tempfile.mkdtemp()
    for r in recs:
        content = r["messages"][-1]["content"]
        prompt = subprocess.run([specrun, "run", "--pair", "qwen-coder", "--chat", "--print-prompt", "--prompt", content], capture_output=True, text=True, check=True).stdout
        pfile, sfile = os.path.join(tmp, "prompt.txt"), os.path.join(tmp, "schema.json")
        open(pfile, "w").write(prompt)
        json.dump(r["response_format"]["json_schema"]["schema"], open(sfile, "w"))
        n = r.get("max_tokens", 256)
        cmd = [binary, "-m", target, "-t", threads, "-c", "4096", "--temp", "0", "-n", str(n), "-no-cnv", "--no-display-prompt", "-f", pfile, "-jf", sfile]
        p = subprocess.run(cmd, capture_output=True, text=True)
        text = p.stdout.replace("[end of text]", "").strip()
        m = re.search(r"eval time =\s*([\d.]+) ms /\s*(\d+) runs", p.stderr.split("prompt eval time")[-1])
        ms, runs = (float(m.group(1)), int(m.group(2))) if m else (0.0, 0)
        finish = "length" if runs >= n else "stop"
        out[r["id"]] = {"choices": [{"finish_reason": finish, "message": {"content": text}}], "usage": {"completion_tokens": runs},
                        "timings": {"predicted_n": runs, "predicted_per_second": runs / ms * 1000 if ms else 0}}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("records")
    ap.add_argument("server")
    ap.add_argument("target")
    ap.add_argument("draft")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--only", help='one server: "llama-server" or "llama-server -md"; "none" for llama-completion alone')
    ap.add_argument("--completion", help="llama-completion's path: run it on every record too")
    ap.add_argument("--specrun", help="specrun's path, to render the chat prompts for llama-completion")
    a = ap.parse_args()
    recs = [json.loads(l) for l in open(a.records) if l.strip()]
    klass = {r["id"]: r["response_format"]["json_schema"]["name"] for r in recs}
    schema = {r["id"]: r["response_format"]["json_schema"]["schema"] for r in recs}
    common = ["-m", a.target, "-t", a.threads, "-c", "4096", "-np", "1", "--temp", "0"]
    servers = [("llama-server", common), ("llama-server -md", common + ["-md", a.draft, "--spec-draft-n-max", "16"])]
    servers = [s for s in servers if a.only is None or s[0] == a.only]
    print("| server | class | records | valid / finished | tokens | decode s | decode tok/s |")
    print("|---|---|---|---|---|---|---|")
    runs = [(name, lambda args=args: run_server(a.server, args, 18111, recs)) for name, args in servers]
    if a.completion:
        runs.append(("llama-completion -jf", lambda: run_completion(a.completion, a.specrun, a.target, a.threads, recs)))
    for name, run in runs:
        out = run()
        agg = collections.defaultdict(collections.Counter)
        for rid, res in out.items():
            for k in (klass[rid], "all"):
                c = agg[k]
                t = res.get("timings", {})
                n = t.get("predicted_n", res["usage"]["completion_tokens"])
                c["n"] += n
                c["secs"] += n / t["predicted_per_second"] if t.get("predicted_per_second") else 0
                c["records"] += 1
                if res["choices"][0]["finish_reason"] == "stop":
                    c["finished"] += 1
                    try:
                        jsonschema.validate(json.loads(res["choices"][0]["message"]["content"]), schema[rid])
                        c["valid"] += 1
                    except (ValueError, jsonschema.ValidationError) as e:
                        print(f"INVALID {name} {rid}: {e}", file=sys.stderr)
        for k in sorted(agg, key=lambda k: (k == "all", k)):
            c = agg[k]
            print(f"| {name} | {k} | {c['records']} | {c['valid']} / {c['finished']} | {c['n']} | {c['secs']:.1f} | {c['n'] / c['secs'] if c['secs'] else 0:.2f} |")


if __name__ == "__main__":
    main()
